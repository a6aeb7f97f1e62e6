"""``bam-search sweep --dry-run``: what a checked sweep plan would run and what it would cost, as lines to print.

Runs after ``preflight.plan_sweep`` (every check, the same one-line errors), starts no Ray and writes nothing
under --storage: the resources are those the embedded local Ray would get (this machine's CPUs and GPUs), the
wall time comes from the step rates finished trials under the same storage measured.
"""
from __future__ import annotations

import math
import os
import statistics

from trainables.errors import UserError
from trainables.storage import Storage

from .budget import check_budget, format_size
from .ray_env import DRIVER_CPU, Resources, choose_resources, resource_problem


def local_resources(plan) -> Resources | None:
    """What ``ray_env.start_ray`` would choose on the embedded Ray (one logical CPU more than the machine has,
    its GPUs); None when the command joins a cluster (--address, $RAY_ADDRESS): known only once joined."""
    req = plan.request
    if req.address or os.environ.get("RAY_ADDRESS"):
        return None
    try:
        import torch
        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch / no CUDA: a CPU machine
        gpus = 0
    node = {"CPU": (os.cpu_count() or 1) + 1, "GPU": gpus}
    res = choose_resources(node, workers=req.workers, cpus_per_worker=req.cpus_per_worker, use_gpu=req.use_gpu,
                           max_concurrent=req.max_concurrent, trials=plan.trials, gpus_per_worker=req.gpus_per_worker)
    # the real run refuses a trial the local Ray can never hold (ray_env.check_fits): so does the dry run
    problem = resource_problem([node], workers=res.workers, cpus_per_worker=res.cpus_per_worker,
                               use_gpu=res.use_gpu, gpus_per_worker=res.gpus_per_worker)
    if problem:
        raise UserError(problem)
    return res


def space_lines(space: dict) -> list[str]:
    """Each parameter of a loaded space with its distribution, as the trials will sample it."""
    width = max(len(n) for n in space["parameters"]) + 2
    out = []
    for name, spec in space["parameters"].items():
        kind = space["kinds"][name]
        if kind == "constant":
            shown = f"fixed {spec['value']}"
        elif kind == "categorical":
            probs = spec.get("probabilities")
            shown = "one of " + ", ".join(f"{v}" + (f" (p {p:g})" if probs else "")
                                          for v, p in zip(spec["values"], probs or spec["values"]))
        elif kind == "normal":
            shown = f"normal mu {spec['mu']:g} sigma {spec['sigma']:g}"
        else:
            q = f" step {spec['q']:g}" if "q" in spec else ""
            shown = f"{kind} {spec['min']:g} .. {spec['max']:g}{q}"
        out.append(f"  {name:<{width}}{shown}")
    return out


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def trial_examples(recipe) -> int:
    """Training examples one trial goes through at the base recipe (``Run.total`` steps x batch size)."""
    from trainables.teachers import train_examples
    o = recipe.optim
    if o.steps:
        return o.steps * o.batch_size
    total = sum(len(ex) for ex in train_examples(recipe).values())
    return max(1, math.ceil(o.epochs * total / o.batch_size)) * o.batch_size


def wall_time_line(plan, at_once: int | None) -> str:
    """An estimate of wall time from the step rates measured by finished trials of the same model under the
    storage (median examples/s while training, and the median ratio of a trial's wall time to its training
    time for start-up and evaluations); "no measured rate yet" without any."""
    from .results import measured_rates
    rates = measured_rates(plan.storage, plan.recipe.model)
    if not rates:
        return (f"wall time: no measured rate yet (no finished trial of model {plan.recipe.model} under "
                f"{plan.storage})")
    rate = statistics.median(r["examples_per_s"] for r in rates)
    overhead = statistics.median(max(1.0, r["wall_s"] / r["train_s"]) for r in rates)
    examples = trial_examples(plan.recipe)
    per_trial = examples / rate * overhead
    line = (f"wall time: ~{_duration(per_trial)} per trial ({examples} training examples at {rate:.1f} examples/s "
            f"x {overhead:.2f} for start-up and evaluations: the median of {len(rates)} finished trial"
            f"{'s' * (len(rates) != 1)} of model {plan.recipe.model})")
    if at_once:
        waves = math.ceil(plan.trials / at_once)
        stops = "; less when trials stop early" if plan.scheduler in ("asha", "median") else ""
        line += (f"; ~{_duration(waves * per_trial)} for {plan.trials} trials, {min(at_once, plan.trials)} at "
                 f"once{stops}")
    return line


def budget_line(plan, at_once: int) -> str:
    """The disk-budget check ``preflight`` ran (it passed, or the plan would not exist), with its estimate."""
    if plan.disk_budget is None:
        return "disk budget: none (no limit); ended trials keep only their best checkpoint"
    if not Storage.resolve(plan.storage).is_local:
        return f"disk budget: {format_size(plan.disk_budget)}, not checked on {plan.storage} (local storage only)"
    est = check_budget(plan.disk_budget, recipe=plan.recipe, trials=plan.trials, concurrent=at_once)
    if est is None:
        return f"disk budget: {format_size(plan.disk_budget)}: ok (the checkpoint size of {plan.recipe.model} " \
               "cannot be estimated here; the running sweep measures it)"
    return (f"disk budget: {format_size(plan.disk_budget)}: ok, the sweep keeps at least {format_size(est['minimum'])}"
            f" (~{format_size(est['per_ended_trial'])} per ended trial, checkpoint "
            f"{format_size(est['checkpoint_bytes'])})")


def _stopping(plan) -> str:
    """The early-stopping settings a scheduler runs with (``experiment.make_scheduler``'s defaults)."""
    given = plan.early_stopping or {}
    grace = given.get("grace_period") or max(1, plan.recipe.evals // 4)
    if plan.scheduler == "asha":
        return f" (grace period {grace} evaluations, reduction factor {given.get('reduction_factor') or 2:g})"
    return f" (grace period {grace} evaluations)" if plan.scheduler == "median" else ""


def dry_run_lines(plan) -> list[str]:
    """``sweep --dry-run``'s report of a checked sweep ``plan``."""
    res = local_resources(plan)
    req = plan.request
    at_once = res.max_concurrent if res else req.max_concurrent
    stopping = _stopping(plan)
    grid = ", times the grid" if plan.trials != plan.num_samples else ""
    lines = [f"dry run of sweep {plan.name}: nothing started, nothing written under {plan.storage}",
             f"space: {plan.space['path']} ({len(plan.space['parameters'])} parameters)", *space_lines(plan.space),
             f"trials: {plan.trials} (--num-samples {plan.num_samples}{grid}), searcher {plan.searcher}, scheduler "
             f"{plan.scheduler}{stopping}, metric {plan.metric}, {plan.recipe.evals} evaluations each"]
    if res:
        gpu = f" + {res.gpus_per_worker:g} GPU" if res.use_gpu else ""
        lines += [f"trials at once: {min(res.max_concurrent, plan.trials)}",
                  f"resources per trial: {res.workers} worker{'s' * (res.workers != 1)} x ({res.cpus_per_worker:g} "
                  f"CPU{gpu}) + {DRIVER_CPU:g} CPU for its driver (the local Ray: {(os.cpu_count() or 1) + 1} CPUs)"]
    else:
        cpus = "CPUs chosen by" if req.cpus_per_worker is None else f"{req.cpus_per_worker:g} CPU from"
        gpw = req.gpus_per_worker if req.gpus_per_worker is not None else 1.0 if req.use_gpu else 0.0
        lines += [f"trials at once: {req.max_concurrent or 'what the cluster holds'} (chosen when joining the cluster)",
                  f"resources per trial: {req.workers} worker{'s' * (req.workers != 1)} x ({cpus} the cluster"
                  f"{f', {gpw:g} GPU' if gpw else ''}) + {DRIVER_CPU:g} CPU for its driver"]
    budget_at_once = req.max_concurrent or max(1, (os.cpu_count() or 1) // max(1, req.workers))  # as preflight
    lines += [budget_line(plan, budget_at_once), wall_time_line(plan, at_once)]
    if getattr(plan, "time_budget_s", None):
        lines.append(f"time budget: the sweep stops after {plan.time_budget_s:g} s (--time-budget)")
    if Storage.resolve(plan.storage).is_dir("experiments", plan.name):
        lines.append(f"note: experiment {plan.name} exists under {plan.storage}: this sweep would continue it")
    return lines
