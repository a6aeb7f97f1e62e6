"""bam-search: find the best multi-task knowledge-distillation (BAM) recipe with Ray Tune.

A user mistake is one line on stderr and exit code 2 (no traceback).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from trainables.errors import UserError

from . import __version__

EPILOG = """examples:
  bam-search teachers --tasks rte,mrpc --model tiny --seeds 1 --max-train-examples 200 --storage runs
  bam-search sweep spaces/smoke.yaml --tasks rte,mrpc --model tiny --num-samples 8 --scheduler asha --storage runs
  bam-search sweep spaces/smoke.yaml --tasks rte,mrpc --model tiny --num-samples 8 --storage runs --dry-run
  bam-search list --storage runs
  bam-search status NAME --storage runs
  bam-search best NAME --export best.yaml --storage runs
  bam-search train best.yaml --seeds 3 --first-seed 1 --storage runs
  bam-search report NAME --student TRAIN_NAME --storage runs
"""


def _common(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    p.add_argument("--storage", help="storage root: a local path or a URI such as s3://BUCKET/PATH, gs://BUCKET/PATH "
                                     "(default ./bam-storage or $BAM_STORAGE)")
    p.add_argument("--storage-is-shared", action="store_true",
                   help="the local --storage path is a shared mount (NFS) at the same place on every node")
    p.add_argument("--address", help="a running Ray cluster (default: $RAY_ADDRESS, else a local Ray started here)")
    if data:
        p.add_argument("--glue-dir", help="classic glue_data folder (default $BAM_GLUE_DIR; else the hub)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="dotted recipe override, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers per trial (default 1)")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per Train worker (default 1)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: what the cluster holds)")
    p.add_argument("--use-gpu", action="store_true", default=None,
                   help="one GPU per Train worker even if the cluster has none yet (an autoscaler adds GPU nodes); "
                        "default: GPUs when the cluster has them")
    p.add_argument("--gpus-per-worker", type=float, default=None, metavar="N",
                   help="GPUs per Train worker: a fraction (0.5) lets trials share a GPU; 0: CPU only, even on a GPU "
                        "cluster (default 1 when the cluster has GPUs or with --use-gpu)")
    p.add_argument("--no-wandb", action="store_true", help="do not log to W&B")
    p.add_argument("--wandb-project", help="W&B project (default: $WANDB_PROJECT, else bam-search)")
    p.add_argument("--wandb-entity", help="W&B entity, a user or team (default: $WANDB_ENTITY, else your key's)")
    p.add_argument("--wandb-tags", metavar="A,B", help="comma-separated tags added to every W&B run")


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", help="comma-separated tasks, e.g. cola,sst2,mrpc,stsb,rte")
    p.add_argument("--model", help="minilm | tiny | a local HF folder | a hub name")
    p.add_argument("--max-train-examples", type=int)
    p.add_argument("--max-dev-examples", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--evals", type=int, help="evaluations (reports, checkpoints) per run")


def _start(plan):
    """Start or join Ray for a checked plan; the trial resources it gets."""
    from .ray_env import start_ray
    return start_ray(plan.request, storage=plan.storage, trials=plan.trials)


def _run(plan, *, quiet: bool, banner: str | None = None) -> None:
    """Start Ray, print ``banner``, run the plan's experiment (resume: with the experiment's own resources)."""
    from .experiment import run_plan
    resources = _start(plan)
    if banner:
        print(banner)
    run_plan(plan, plan.resources or resources, progress=not quiet, live_title=None if quiet else plan.kind,
             total_trials=plan.trials, quiet=quiet)   # the live table (none with --quiet); Ray's output to driver.log


def _status(storage: str, name: str, *, as_json: bool = False) -> int:
    from .results import status_data, status_lines, to_json
    print(to_json(status_data(storage, name)) if as_json else "\n".join(status_lines(storage, name)))
    return 0


def _errored(storage: str, name: str) -> int:
    """A command that ran trials: 1 when any of them errored (one line each on stderr: its id and the reason,
    the last line of its error.txt, where the traceback stays), else 0. Scripts and CI see the failure."""
    from .experiment import experiment_dir
    from .results import errored_trials
    errored = errored_trials(storage, name)
    for trial_id, reason in errored:
        print(f"bam-search: trial {trial_id} of {name} errored: {reason}", file=sys.stderr)
    if errored:
        print(f"bam-search: tracebacks in {experiment_dir(storage, name)}/*/error.txt", file=sys.stderr)
    return 1 if errored else 0


def _report(storage: str, name: str, *, students=(), multitask=()) -> list[dict]:
    from .report import publish_report, report_records
    records, recipe = report_records(storage, name, students=students, multitask=multitask)
    print(f"report: {publish_report(storage, name, records=records, recipe=recipe)}")
    return records


# ------------------------------------------------------------------------------------------------ commands

def cmd_teachers(args) -> int:
    from .preflight import plan_teachers, with_retries
    from .results import baseline_lines
    plan = with_retries(plan_teachers(args), args)
    if not plan.trials:                               # every (task, seed) stored for the current data
        print(f"every teacher of these flags is stored for the current data under {plan.storage}: nothing to train")
        print("\n".join(baseline_lines(plan.storage, plan.recipe.tasks)))
        return 0
    _run(plan, quiet=args.quiet,
         banner=f"experiment: {plan.name}  ({len(plan.recipe.tasks)} tasks x {len(plan.seeds)} seeds"
                + ("" if plan.trials == len(plan.recipe.tasks) * len(plan.seeds) else
                   f"; {plan.trials} to train, the others are stored for the current data") + ")")
    print("\n".join(baseline_lines(plan.storage, plan.recipe.tasks)))
    return _errored(plan.storage, plan.name)


def cmd_train(args) -> int:
    from .preflight import plan_train, with_retries
    plan = with_retries(plan_train(args), args)
    _run(plan, quiet=args.quiet, banner=f"experiment: {plan.name}")
    return _status(plan.storage, plan.name) or _errored(plan.storage, plan.name)


def cmd_sweep(args) -> int:
    from .preflight import plan_sweep, with_retries
    plan = with_retries(plan_sweep(args), args)
    if args.dry_run:                                  # every check ran; no Ray, nothing written
        from .dry_run import dry_run_lines
        print("\n".join(dry_run_lines(plan)))
        return 0
    _run(plan, quiet=args.quiet, banner=f"experiment: {plan.name}   (resume with: bam-search resume {plan.name} "
                                        f"--storage {args.storage or 'bam-storage'})")
    return _status(plan.storage, plan.name) or _errored(plan.storage, plan.name)


def cmd_resume(args) -> int:
    from .preflight import plan_resume, with_retries
    plan = with_retries(plan_resume(args), args)
    _run(plan, quiet=args.quiet)
    return _status(plan.storage, plan.name) or _errored(plan.storage, plan.name)


def cmd_status(args) -> int:
    from .preflight import storage_root
    return _status(storage_root(args), args.name, as_json=args.json)


def cmd_list(args) -> int:
    from .preflight import storage_root
    from .results import list_experiments, list_lines, to_json
    storage = storage_root(args)
    found = list_experiments(storage)
    print(to_json({"storage": storage, "experiments": found}) if args.json else "\n".join(list_lines(storage, found)))
    return 0


def cmd_best(args) -> int:
    from .preflight import storage_root
    from .results import best_data, best_recipe, check_export, export_recipe, retrain_command, selected_lines, to_json
    storage = storage_root(args)
    if args.pareto:
        return _pareto(storage, args)
    if args.export is not None:
        check_export(args.export)                     # a folder or an unwritable path: one line, before anything
    recipe, top = best_recipe(storage, args.name)
    # the retrain command runs as printed: the same storage (its teachers) wherever it is run from
    retrain = shlex.join(retrain_command(args.export, recipe, storage))
    if args.json:
        if args.export:
            export_recipe(recipe, args.export, command=retrain, source=f"best trial of {args.name}")
        print(to_json(best_data(args.name, top, export=args.export)))
        return 0
    print(f"best trial {top['trial_id']}: {top['metric']} {top['best']:.2f}  {json.dumps(top['params'], default=str)}")
    print("\n".join(selected_lines(top)))
    if args.export:
        export_recipe(recipe, args.export, command=retrain, source=f"best trial of {args.name}")
        print(f"recipe written to {args.export}; retrain it with: {retrain}")
    return 0


def _pareto(storage: str, args) -> int:
    """``best --pareto``: the trials no other beats on score, latency and size (``search/pareto.py``)."""
    from .pareto import pareto_data, pareto_lines
    from .results import to_json
    if args.export is not None:
        raise UserError("--pareto lists several trials; --export writes one: pick a trial from the front, or "
                        "drop --pareto to export the best")
    doc = pareto_data(storage, args.name)
    print(to_json(doc) if args.json else "\n".join(pareto_lines(doc)))
    return 0


def cmd_report(args) -> int:
    from .preflight import storage_root
    storage, students, multitask = storage_root(args), args.student or (), args.multitask or ()
    records = _report(storage, args.name, students=students, multitask=multitask)
    if not args.wandb:
        return 0
    from .wandb_report import publish, spec_for          # a W&B Report too (saved when online)
    spec = spec_for(storage, args.name, records=records, students=students, multitask=multitask,
                    project=args.wandb_project, entity=args.wandb_entity)
    command = shlex.join(["bam-search", "report", args.name, "--wandb", "--storage", str(storage),
                          *[x for n in students for x in ("--student", n)],
                          *[x for n in multitask for x in ("--multitask", n)],
                          *(["--wandb-project", args.wandb_project] if args.wandb_project else []),
                          *(["--wandb-entity", args.wandb_entity] if args.wandb_entity else [])])
    return publish(storage, args.name, spec, command=command)


def cmd_demo(args) -> int:
    """teachers -> sweep (ASHA) -> best --export -> report, on the embedded default."""
    from rich.console import Console

    from .experiment import run_plan
    from .preflight import plan_demo
    from .progress import phase
    from .results import best_recipe, demo_headline, export_recipe, retrain_command
    console, t0 = Console(), time.time()
    demo = plan_demo(args)
    storage, name, tasks = demo.sweep.storage, demo.sweep.name, demo.tasks
    console.print(f"[bold]bam-search demo[/]: {len(tasks)} {'GLUE' if demo.glue else 'synthetic'} tasks "
                  f"({', '.join(tasks)}), model {demo.model}, storage {storage}")
    resources = _start(demo.teachers)
    console.print(f"local Ray: {resources.max_concurrent} trials at once, {resources.workers} worker x "
                  f"{resources.cpus_per_worker:g} CPU"
                  f"{f' + {resources.gpus_per_worker:g} GPU' * resources.use_gpu} each")
    phase(console, 1, 4, "single-task teachers, trained to convergence (early stopping on the dev score; the "
                         "best weights' train-set predictions are stored)")
    run_plan(demo.teachers, resources, live_title="teachers", total_trials=len(tasks))
    if _errored(storage, demo.teachers.name):          # a student without its teachers would error too
        return 1
    phase(console, 2, 4, f"sweep of {args.trials} students with ASHA early stopping (spaces/demo.yaml)")
    run_plan(demo.sweep, resources, live_title="sweep", total_trials=args.trials)
    failed = _errored(storage, name)                   # said now; the demo goes on with the trials that ended
    phase(console, 3, 4, "the best recipe")
    try:
        best, top = best_recipe(storage, name)
    except UserError:
        if failed:                                     # no trial ended: the errors above are the reason
            return 1
        raise
    out = Path(storage) / "reports" / name
    recipe_path = out / "best_recipe.yaml"
    export_recipe(best, recipe_path, command=shlex.join(retrain_command(recipe_path, best, storage)),
                  source=f"best trial of {name}")
    console.print(f"best trial {top['trial_id']}: glue_avg {top['best']:.2f}  {json.dumps(top['params'], default=str)}")
    phase(console, 4, 4, "report: best recipe vs single-task teachers")
    _report(storage, name)
    console.print(f"[bold]{demo_headline(storage, name, teachers=demo.teachers.name)}[/]", highlight=False, soft_wrap=True)
    console.print(f"\n[bold green]done in {time.time() - t0:.0f}s[/]")
    console.print(f"  report:     {out / 'report.html'}")
    console.print(f"  recipe:     {recipe_path}")
    console.print(f"  W&B runs:   {Path(storage) / 'wandb'}  (offline; upload with: bam-search sync NAME "
                  f"--storage {storage}, NAME {demo.teachers.name} and {name})", highlight=False)
    return failed


def cmd_sync(args) -> int:
    """``wandb sync`` of exactly this experiment's offline W&B runs (the command is printed first)."""
    import os
    import shlex
    import subprocess

    from .preflight import storage_root
    from .wandb_sync import sync_command, wandb_dir
    storage = storage_root(args)
    cmd = sync_command(storage, args.name)
    print("running: " + shlex.join(cmd), flush=True)
    env = {**os.environ, "WANDB_DIR": str(wandb_dir(storage, args.name))}   # its own logs stay under --storage
    return subprocess.run(cmd, check=False, env=env).returncode


def cmd_spaces(args) -> int:
    from trainables.recipe import load_yaml, method_families

    from .spaces import list_spaces, load_space
    if args.name:
        sp = load_space(args.name, base_recipe={})
        print(Path(sp["path"]).read_text())
        return 0
    for p in list_spaces():
        print(f"{p.stem:<12} {load_yaml(p).get('description', '')}")
    print("method families (recipe key: allowed values):")
    for key, names in method_families().items():
        print(f"  {key}: {', '.join(names)}")
    return 0


# ------------------------------------------------------------------------------------------------ main

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line too (no usage block): ``bam-search: error: ...``."""

    def error(self, message: str):
        self.exit(2, f"bam-search: error: {message} (see: {self.prog} --help)\n")


def _retries(p: argparse.ArgumentParser, *, resume: bool = False) -> None:
    """--max-failures (every command that runs trials); resume: --retry-errored, and its own N by default."""
    p.add_argument("--max-failures", type=int, default=None, metavar="N",
                   help="Tune runs a failed trial (its node lost, its Train run out of retries) again up to N times, "
                        "from its last checkpoint (default " + ("the experiment's own)" if resume else "1; 0: never)"))
    if resume:
        p.add_argument("--retry-errored", action="store_true",
                       help="run the trials that had errored again too, from their last checkpoints")


def _command(sub, name: str, func, help: str, epilog: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def _training_commands(sub) -> None:
    """teachers, train, sweep."""
    t = _command(sub, "teachers", cmd_teachers, "fine-tune single-task teachers; store train-set predictions and "
                 "dev scores", "example:\n  bam-search teachers --tasks rte,mrpc --model tiny --seeds 1 "
                 "--max-train-examples 200 --storage runs")
    _recipe_args(t); _common(t)
    t.add_argument("--seeds", type=int, default=1, help="teachers per task (seeds 0..N-1)")
    t.add_argument("--patience", type=int, default=None, metavar="EVALS",
                   help="early stopping: stop after this many evaluations (one per epoch) without a better dev "
                        "score and predict the train set with the best weights (default 2; 0: train --epochs)")
    t.add_argument("--max-epochs", type=float, default=None,
                   help="early stopping: the most epochs a teacher trains; its LR schedule spans them (default 10)")
    t.add_argument("--name"); t.add_argument("--quiet", action="store_true")
    tr = _command(sub, "train", cmd_train, "train the student of a recipe (N seeds), no search",
                  "example:\n  bam-search train best.yaml --seeds 3 --first-seed 1 --storage runs")
    tr.add_argument("recipe"); _common(tr)
    tr.add_argument("--seeds", type=int, default=1, help="runs of the recipe, seeds 0..N-1 (default 1: the recipe's seed)")
    tr.add_argument("--first-seed", type=int, metavar="K",
                    help="seeds K..K+N-1 instead; `best --export` writes K = the best trial's seed + 1, so the "
                         "retrain never repeats the run the sweep picked on the dev set it is scored on")
    tr.add_argument("--name"); tr.add_argument("--quiet", action="store_true")
    sw = _command(sub, "sweep", cmd_sweep, "search a space (spaces/*.yaml) with Ray Tune",
                  "example:\n  bam-search sweep spaces/smoke.yaml --tasks rte,mrpc --model tiny "
                  "--num-samples 8 --scheduler asha --storage runs")
    sw.add_argument("space"); _recipe_args(sw); _common(sw)
    # flags given here beat the space's W&B keys (method, metric, early_terminate, name), which beat the
    # defaults shown: so these default to None and preflight.sweep_settings merges
    sw.add_argument("--name", help="experiment name (default: the space's name:, else sweep-SPACE-DATE-TIME)")
    sw.add_argument("--num-samples", type=int, default=8)
    sw.add_argument("--searcher", default=None, choices=["optuna", "random", "grid"],
                    help="default: the space's method: (grid, random, bayes = Optuna's TPE), else optuna "
                         "(random with --scheduler pbt)")
    sw.add_argument("--scheduler", default=None, choices=["asha", "median", "pbt", "none"],
                    help="asha (default; also what a space's early_terminate: {type: hyperband} runs as), "
                         "median, pbt (population-based training: mutates optim.lr, anneal.*, sampling.* ... "
                         "during the run), none")
    sw.add_argument("--grace-period", type=int, default=None, metavar="EVALS",
                    help="asha/median: evaluations every trial runs before it may be stopped (default: the "
                         "space's early_terminate min_iter, else evals/4)")
    sw.add_argument("--reduction-factor", type=float, default=None, metavar="F",
                    help="asha: keep 1/F of the trials at each rung (default: the space's early_terminate eta, "
                         "else 2; Tune's own default is 4)")
    sw.add_argument("--perturbation-interval", type=int, default=None,
                    help="pbt: evaluations between exploit/explore steps (default evals/4)")
    sw.add_argument("--pbt-synch", action="store_true",
                    help="pbt: synchronous PBT (Tune's synch=True): exploit only once every trial has reached the "
                         "interval, so every interval exploits; the fastest trials wait for the slowest")
    sw.add_argument("--metric", default=None,
                    help="glue_avg (default, or the space's metric: name), delta_vs_teachers (mean over tasks of "
                         "student minus single-task teacher dev score), or TASK/score; always maximized")
    sw.add_argument("--disk-budget", default=None, metavar="SIZE",
                    help="bytes the experiment may hold on disk, e.g. 2GB (default 20GB; none for no limit); "
                         "ended trials keep only their best checkpoint")
    sw.add_argument("--seed", type=int, default=0, help="searcher seed")
    sw.add_argument("--time-budget", default=None, metavar="TIME",
                    help="stop the sweep after this long, e.g. 90m, 2h, 3600 (seconds): running trials stop, "
                         "started trials are kept (default: no limit)")
    sw.add_argument("--dry-run", action="store_true",
                    help="check everything, then print the space, trials, resources, disk budget and an estimate of "
                         "wall time; start nothing, write nothing")
    for p in (t, tr, sw):
        _retries(p)
    sw.add_argument("--quiet", action="store_true")


def _experiment_commands(sub) -> None:
    """status, resume, best, report, demo, spaces."""
    for cmd, fn, helptext in (("status", cmd_status, "trials of an experiment"),
                              ("resume", cmd_resume, "continue an interrupted experiment")):
        s = _command(sub, cmd, fn, helptext, f"example:\n  bam-search {cmd} NAME --storage runs")
        s.add_argument("name"); s.add_argument("--storage")
        if cmd == "status":
            s.add_argument("--json", action="store_true", help="one JSON document on stdout (README: Scripting)")
        if cmd == "resume":
            s.add_argument("--address"); s.add_argument("--quiet", action="store_true")
            s.add_argument("--storage-is-shared", action="store_true")
            _retries(s, resume=True)
            from .preflight import RESUME_REFUSED   # parsed only to be refused in one line (plan_resume)
            for dest in RESUME_REFUSED:
                s.add_argument("--" + dest.replace("_", "-"), default=None, help=argparse.SUPPRESS)
    b = _command(sub, "best", cmd_best, "the best trial; --export writes it as a runnable recipe",
                 "examples:\n  bam-search best NAME --export best.yaml --storage runs\n"
                 "  bam-search best NAME --pareto --storage runs")
    b.add_argument("name"); b.add_argument("--storage"); b.add_argument("--export")
    b.add_argument("--json", action="store_true", help="one JSON document on stdout (README: Scripting)")
    b.add_argument("--pareto", action="store_true", help="list the Pareto front: score vs latency per example "
                   "(measured here, batch 1 and 32) and parameters")
    ls = _command(sub, "list", cmd_list, "the experiments under --storage: kind, trials by state, best, started, size",
                  "example:\n  bam-search list --storage runs\n  bam-search list --storage runs --json")
    ls.add_argument("--storage"); ls.add_argument("--json", action="store_true", help="one JSON document on stdout")
    rp = _command(sub, "report", cmd_report, "best recipe vs single-task baselines: HTML, Markdown, plots",
                  "example:\n  bam-search report NAME --storage runs")
    rp.add_argument("name"); rp.add_argument("--storage")
    rp.add_argument("--student", action="append", help="extra experiments (e.g. `train --seeds 3`) of the best recipe")
    rp.add_argument("--multitask", action="append", help="experiments of plain multi-task to compare")
    rp.add_argument("--wandb", action="store_true",
                    help="also a W&B Report (wandb-workspaces): saved when W&B is online with a key, else its spec "
                         "is written to experiments/NAME/report/wandb_report.json")
    rp.add_argument("--wandb-project", help="W&B project of the runs (default: the experiment's, else $WANDB_PROJECT)")
    rp.add_argument("--wandb-entity", help="W&B entity of the runs (default: the experiment's, else $WANDB_ENTITY)")
    dm = _command(sub, "demo", cmd_demo, "the whole pipeline on this machine: teachers, sweep (ASHA), best, report",
                  "examples:\n  bam-search demo\n  bam-search demo --glue-dir ../shared/data/glue\n"
                  "  bam-search demo --model tiny --quick")
    dm.add_argument("--model", default="auto", help="auto (minilm if its package is installed, else tiny) | minilm | tiny")
    dm.add_argument("--trials", type=int, default=8, help="sweep trials (default 8)")
    dm.add_argument("--quick", action="store_true", help="a reduced budget (for tests)")
    _common(dm)
    sy = _command(sub, "sync", cmd_sync, "upload an experiment's offline W&B runs (wandb sync of exactly them)",
                  "example:\n  bam-search sync NAME --storage runs")
    sy.add_argument("name"); sy.add_argument("--storage")
    sp = _command(sub, "spaces", cmd_spaces, "list the shipped search spaces, or show one",
                  "example:\n  bam-search spaces\n  bam-search spaces anneal")
    sp.add_argument("name", nargs="?")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bam-search", description=__doc__.splitlines()[0], epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"bam-search {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _training_commands(sub)
    _experiment_commands(sub)
    return p


def _check_names(args) -> None:
    """Every experiment name the command line gives (--name, NAME, report's --student/--multitask) is a folder
    name under the storage, never a path (``experiment.check_name``); ``spaces NAME`` names a space."""
    from .experiment import check_name
    if args.command == "spaces":
        return
    if getattr(args, "name", None) is not None:
        check_name(args.name, what="--name" if args.command in ("teachers", "train", "sweep") else "NAME")
    for flag in ("student", "multitask"):
        for name in getattr(args, flag, None) or ():
            check_name(name, what=f"--{flag}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_names(args)
        return args.func(args) or 0
    except UserError as e:
        print(f"bam-search: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bam-search: interrupted; finished trials are kept (bam-search resume NAME)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
