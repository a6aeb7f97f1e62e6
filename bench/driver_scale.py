"""The driver's cost per reported result at sweep scale: how many concurrent trials one driver can serve.

A simulated sweep (default 256 trials x 8 reports) on the embedded local Ray, through THE SAME Tune callbacks
``run_experiment`` builds (``search.experiment._callbacks``: offline W&B runs, the live table, the disk budget;
plus ``trial_retries``, which a resumed sweep adds), with a cheap function trainable in place of
``train_driver_fn``: no Train, no torch. Each trial reports rows shaped like a real student's (per-task
metrics, glue_avg, step, examples_seen, switched, TASK/lambda, delta_vs_teachers, ...) and, at every report,
writes a small real checkpoint folder where Ray Train would (``<exp>/train/train-<trial>/checkpoint-step...``,
with ``state.json`` referring to a best-weights snapshot under ``artifacts/``, ``checksums.json``), keeps the
best and latest as Train does, records the row in its report history (``ReportHistory``, trial side, as the
product does) and reports ``checkpoint_path``: the disk-budget callback does its real work on every result.

Measured in the driver (this process): every hook of every callback (Tune's own JSON/CSV/TensorBoard loggers
included: they record the results), the whole of Tune's per-result processing (``_process_trial_result``:
scheduler, searcher, callbacks), Tune's own "operation took" warnings, and the driver's CPU (and the W&B
writer's, a child process). Capacity: a trial reporting every R s needs R / (driver cost per result) ...

    python bench/driver_scale.py --trials 8                      # smoke
    nice -n 5 python bench/driver_scale.py --trials 256 --out /tmp/driver-scale.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from host import describe  # bench/host.py (bench scripts run with bench/ on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = {"cola": "mcc", "sst2": "accuracy", "mrpc": "f1", "stsb": "pearson", "rte": "accuracy"}
HOOKS = ("setup", "on_step_begin", "on_step_end", "on_trial_start", "on_trial_restore", "on_trial_save",
         "on_trial_result", "on_trial_complete", "on_trial_recover", "on_trial_error", "on_checkpoint",
         "on_experiment_end")
TARGET_MS = 20.0
REPORT_EVERY_S = (30.0, 60.0)   # a MiniLM student on one GPU evaluates every ~30-60 s (recipe evals)


# ------------------------------------------------------------------------------------------------ the trial

def student_row(rng, *, step: int, evals_done: int, evals: int, params: dict, switched: list[str]) -> dict:
    """One evaluation's report as ``loop.eval_metrics`` + ``trial.train_reporter`` build it (5 GLUE tasks)."""
    row, scores = {}, {}
    p = evals_done / evals
    for t, m in TASKS.items():
        s = 40 + 45 * p + rng.uniform(-5, 5)
        scores[t] = s
        row.update({f"{t}/{m}": s, f"{t}/score": s, f"{t}/best": s + rng.uniform(0, 2), f"{t}/switched": int(
            t in switched), f"{t}/loss": rng.uniform(0.1, 0.7), f"{t}/joined_at": 0, f"{t}/lambda": p,
            f"{t}/sampling_weight": rng.uniform(0.1, 0.3), f"{t}/examples_seen": step * 6,
            f"{t}/delta_vs_teachers": s - 80})
    glue = sum(scores.values()) / len(scores)
    row.update({"glue_avg": glue, "glue_avg_best": glue + 1, "lambda": p, "joined": ",".join(TASKS), "joined_now": "",
                "switched": ",".join(switched), "switched_now": switched[-1] if switched and rng.random() < .3 else "",
                "step": step, "progress": p, "examples_per_s": 900.0, "tokens_per_s": 110000.0, "train_s": 40.0 * p,
                "peak_rss_mb": 2100.0, "delta_vs_teachers": glue - 80, "job": "student", "node_id": "0" * 56,
                "examples_seen": step * 32})
    return row


def write_checkpoint(exp: Path, trial_id: str, *, step: int, row: dict, snapshot: str | None) -> Path:
    """A small real checkpoint folder, as ``trainables.checkpoint.save_checkpoint`` writes it."""
    import hashlib
    ckpt = exp / "train" / f"train-{trial_id}" / f"checkpoint-step{step:07d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    sums = {}
    state = {"step": step, "total": 8 * 125, "snapshot_files": {str(step): snapshot} if snapshot else {},
             "soft_labels": {}, "examples_seen": row["examples_seen"], "last_metrics": row,
             "evals": [{"step": step, "scores": {t: row[f"{t}/score"] for t in TASKS}}]}
    for name, data in (("model.pt", os.urandom(64 * 1024)), ("rng-rank0.pt", os.urandom(6 * 1024)),
                       ("state.json", json.dumps(state).encode())):
        (ckpt / name).write_bytes(data)
        sums[name] = hashlib.sha256(data).hexdigest()
    (ckpt / "checksums.json").write_text(json.dumps(sums))
    return ckpt


def keep_best_and_latest(run: Path, best: Path | None, latest: Path) -> None:
    """Ray Train's ``num_to_keep=1`` with a score attribute: the best and the latest checkpoint stay."""
    import shutil
    for c in run.glob("checkpoint-step*"):
        if c not in (best, latest):
            shutil.rmtree(c, ignore_errors=True)


def cheap_trial(config: dict) -> None:
    """The function trainable: ``evals`` reports, ``interval_s`` apart, each with a checkpoint."""
    import random

    import ray.tune

    from trainables.tune_bridge import ReportHistory
    b = config["bench"]
    trial_id = ray.tune.get_context().get_trial_id()
    exp = Path(b["exp"])
    rng = random.Random(trial_id)
    history = ReportHistory(b["storage"], experiment=b["experiment"], trial_id=trial_id, run_name=f"train-{trial_id}")
    best, best_score, switched, snap = None, float("-inf"), [], None
    for i in range(1, b["evals"] + 1):
        time.sleep(b["interval_s"] * rng.uniform(0.7, 1.3))
        step = i * 125
        if rng.random() < 0.15 and len(switched) < len(TASKS):
            switched.append(list(TASKS)[len(switched)])
        row = student_row(rng, step=step, evals_done=i, evals=b["evals"], params=config.get("params") or {},
                          switched=switched)
        if row["glue_avg"] > best_score:                    # a new best: a best-weights snapshot (older ones freed)
            snap_dir = exp / "artifacts" / trial_id / "snapshots"
            snap_dir.mkdir(parents=True, exist_ok=True)
            snap = str(snap_dir / f"step{step}.pt")
            Path(snap).write_bytes(os.urandom(32 * 1024))
        ckpt = write_checkpoint(exp, trial_id, step=step, row=row, snapshot=snap)
        if row["glue_avg"] > best_score:
            best, best_score = ckpt, row["glue_avg"]
        keep_best_and_latest(ckpt.parent, best, ckpt)
        item = {**row, "checkpoint_path": str(ckpt)}
        if history.admit(item):
            ray.tune.report(item)


# ------------------------------------------------------------------------------------------------ the timers

class Timings:
    """Wall and CPU (this thread) seconds per (callback, hook); Tune's per-result processing; slow warnings."""

    def __init__(self):
        self.calls: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.cpu: dict[tuple[str, str], float] = defaultdict(float)
        self.per_result: list[float] = []        # ms of each whole _process_trial_result
        self.per_result_cpu: list[float] = []    # ... and its CPU ms (this thread): what a driver with a core pays
        self.result_callbacks: list[float] = []  # ms of each result's callbacks, all together
        self.warnings: list[str] = []

    def install(self) -> None:
        from ray.tune.callback import CallbackList
        from ray.tune.execution.tune_controller import TuneController
        for hook in HOOKS:
            setattr(CallbackList, hook, self._timed_hook(hook))
        process = TuneController._process_trial_result

        def timed_process(controller, trial, result):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return process(controller, trial, result)
            finally:
                self.per_result.append((time.perf_counter() - t0) * 1e3)
                self.per_result_cpu.append((time.thread_time() - c0) * 1e3)
        TuneController._process_trial_result = timed_process
        timings = self

        class SlowOps(logging.Handler):            # Tune's warn_if_slow: "... operation took 1.218 s ..."
            def emit(self, record):
                text = record.getMessage()
                if "took" in text:
                    timings.warnings.append(text.strip()[:300])
        logging.getLogger("ray.tune.utils.util").addHandler(SlowOps())
        logging.getLogger("ray.tune.execution.tune_controller").addHandler(SlowOps())

    def _timed_hook(self, hook: str):
        timings = self

        def run(callbacks, **info):
            total = 0.0
            for cb in callbacks._callbacks:
                w0, c0 = time.perf_counter(), time.thread_time()
                getattr(cb, hook)(**info) if hook != "setup" else cb.setup(**info)
                dw = time.perf_counter() - w0
                total += dw
                key = (type(cb).__name__, hook)
                timings.calls[key].append(dw * 1e3)
                timings.cpu[key] += time.thread_time() - c0
            if hook == "on_trial_result":
                timings.result_callbacks.append(total * 1e3)
        return run


def stats(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    s = sorted(ms)
    return {"n": len(s), "median_ms": round(statistics.median(s), 3), "p95_ms": round(s[int(0.95 * (len(s) - 1))], 3),
            "max_ms": round(s[-1], 3), "total_s": round(sum(s) / 1e3, 3)}


def child_cpu(match: str) -> float:
    """CPU seconds of this process's children whose command line contains ``match`` (the W&B writer)."""
    import psutil
    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            if match in " ".join(p.cmdline()):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total




# ------------------------------------------------------------------------------------------------ the sweep

def product_callbacks(*, name: str, storage: str, exp: Path, max_concurrent: int, total: int, live: bool,
                      shared: bool = False, tune_tensorboard: bool = False) -> tuple:
    """The callback objects ``run_experiment`` builds for a sweep (``_callbacks``), plus ``trial_retries``."""
    from search.budget import parse_size
    from search.experiment import _callbacks, trial_retries, wandb_settings
    from search.ray_env import Resources
    from trainables.trial_config import TrialConfig
    trial = TrialConfig(recipe=base_recipe(), job="student", storage=storage, wandb=wandb_settings(storage))
    resources = Resources(workers=1, cpus_per_worker=1.0, use_gpu=False, max_concurrent=max_concurrent)
    cbs = _callbacks(name=name, trial=trial, resources=resources, metric="glue_avg", budget=parse_size("20GB"),
                     local_exp=exp, live_title=f"sweep {name}" if live else None, total_trials=total,
                     shared=shared)
    if tune_tensorboard:                            # Tune then adds its own TBXLoggerCallback
        cbs = [c for c in cbs if type(c).__name__ != "TensorBoardLogger"]
    return [*cbs, trial_retries(1)], trial


def base_recipe():
    from trainables.recipe import recipe_from_dict
    return recipe_from_dict({"tasks": list(TASKS), "model": "minilm", "evals": 8}, source="driver_scale")


def start_ray(attempts: int = 3) -> None:
    """The embedded local Ray (``init_ray``), again if its raylet misses Ray's 30 s start-up wait (a busy machine)."""
    import ray

    from search.ray_env import init_ray
    for i in range(attempts):
        try:
            init_ray(address=None)
            return
        except Exception as e:  # noqa: BLE001 - "The current node timed out during startup"
            print(f"driver_scale: Ray did not start ({str(e)[:80]}), attempt {i + 1} of {attempts}", file=sys.stderr)
            ray.shutdown()
            if i == attempts - 1:
                raise


def run_sweep(args, storage: Path, timings: Timings) -> dict:
    from ray import tune

    from search.experiment import make_scheduler
    from search.spaces import load_space, to_tune
    name = "driver-scale"
    exp = storage / "experiments" / name
    callbacks, trial = product_callbacks(name=name, storage=str(storage), exp=exp, max_concurrent=args.concurrent,
                                         total=args.trials, live=args.live, shared=args.budget_shared,
                                         tune_tensorboard=args.tune_tensorboard)
    start_ray()
    space = load_space("spaces/demo.yaml", base_recipe=trial.recipe.to_dict())
    param_space = {"loop": trial.to_dict(), "resources": {"workers": 1, "cpus_per_worker": 1.0, "use_gpu": False},
                   "experiment": name, "params": to_tune(space, searcher="random"), "metric": "glue_avg",
                   "tune_checkpoints": False,
                   "bench": {"exp": str(exp), "storage": str(storage), "experiment": name, "evals": args.evals,
                             "interval_s": args.interval}}
    tuner = tune.Tuner(
        tune.with_resources(cheap_trial, {"CPU": args.cpu_per_trial}), param_space=param_space,
        run_config=tune.RunConfig(name=name, storage_path=str(storage / "experiments"), verbose=0,
                                  callbacks=callbacks, failure_config=tune.FailureConfig(max_failures=1)),
        tune_config=tune.TuneConfig(metric="glue_avg", mode="max", num_samples=args.trials, reuse_actors=True,
                                    max_concurrent_trials=args.concurrent,
                                    scheduler=make_scheduler(args.scheduler, max_t=args.evals, metric="glue_avg")))
    ru0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.time()
    if args.profile:                                 # cProfile of the driver's Tune loop (this thread)
        import cProfile
        prof = cProfile.Profile()
        grid = prof.runcall(tuner.fit)
        prof.dump_stats(args.profile)
    else:
        grid = tuner.fit()
    wall = time.time() - w0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    driver_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    budget = json.loads((exp / "bam_disk.json").read_text()) if (exp / "bam_disk.json").is_file() else {}
    return {"wall_s": round(wall, 2), "driver_cpu_s": round(driver_cpu, 2),
            "driver_cpu_share": round(driver_cpu / wall, 3), "wandb_writer_cpu_s": round(child_cpu("wandb"), 2),
            "trials": len(grid), "errors": sum(1 for r in grid if r.error),
            "disk": {k: budget.get(k) for k in ("peak_bytes", "last_bytes", "pruned_checkpoints",
                                                "freed_files_bytes")}}


# ------------------------------------------------------------------------------------------------ the summary

def summarize(timings: Timings, run: dict) -> dict:
    n = len(timings.result_callbacks)    # reported results (Tune's end-of-trial repeat of the last is not one)
    hooks = {f"{cb}.{hook}": {**stats(ms), "cpu_s": round(timings.cpu[(cb, hook)], 3)}
             for (cb, hook), ms in sorted(timings.calls.items())}
    other_s = sum(sum(ms) for (cb, hook), ms in timings.calls.items() if hook != "on_trial_result") / 1e3
    result_s = sum(timings.per_result) / 1e3
    cost_ms = (result_s + other_s) * 1e3 / max(n, 1)      # all the driver's callback work, per result
    other_cpu = sum(c for (cb, hook), c in timings.cpu.items() if hook != "on_trial_result")
    cost_cpu_ms = (sum(timings.per_result_cpu) / 1e3 + other_cpu) * 1e3 / max(n, 1)
    cpu_ms = run["driver_cpu_s"] * 1e3 / max(n, 1)
    per_cb = defaultdict(float)
    for (cb, hook), ms in timings.calls.items():
        per_cb[cb] += sum(ms)
    return {
        "results": n, "process_trial_result": stats(timings.per_result),
        "process_trial_result_cpu": stats(timings.per_result_cpu), "cost_per_result_cpu_ms": round(cost_cpu_ms, 3),
        "on_trial_result_all_callbacks": stats(timings.result_callbacks),
        "per_callback_total_ms_per_result": {cb: round(t / max(n, 1), 3) for cb, t in sorted(per_cb.items())},
        "hooks": hooks, "other_hooks_s": round(other_s, 3),
        "cost_per_result_ms": round(cost_ms, 3), "driver_cpu_per_result_ms": round(cpu_ms, 3),
        "target_ms": TARGET_MS, "within_target": cost_ms <= TARGET_MS,
        "capacity": {f"R={r:g}s": {"by_cost": int(r * 1e3 / cost_ms) if cost_ms else None,
                                   "by_cost_cpu": int(r * 1e3 / cost_cpu_ms) if cost_cpu_ms else None,
                                   "by_driver_cpu": int(r * 1e3 / cpu_ms) if cpu_ms else None}
                     for r in REPORT_EVERY_S},
        "tune_slow_warnings": timings.warnings[:50], "tune_slow_warning_count": len(timings.warnings), **run}


def markdown(s: dict) -> str:
    out = ["| callback.hook | calls | median ms | p95 ms | max ms | total s | CPU s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for k, v in sorted(s["hooks"].items(), key=lambda kv: -kv[1].get("total_s", 0)):
        out.append(f"| {k} | {v['n']} | {v.get('median_ms', '-')} | {v.get('p95_ms', '-')} | {v.get('max_ms', '-')} | "
                   f"{v.get('total_s', '-')} | {v['cpu_s']} |")
    p, c = s["process_trial_result"], s["on_trial_result_all_callbacks"]
    out += ["", f"| per result ({s['results']} results) | median ms | p95 ms | max ms | total s |", "|---|---:|---:|---:|---:|",
            f"| Tune _process_trial_result (scheduler, searcher, callbacks) | {p.get('median_ms')} | {p.get('p95_ms')} | "
            f"{p.get('max_ms')} | {p.get('total_s')} |",
            f"| the same, CPU of the driver thread | {s['process_trial_result_cpu'].get('median_ms')} | "
            f"{s['process_trial_result_cpu'].get('p95_ms')} | {s['process_trial_result_cpu'].get('max_ms')} | "
            f"{s['process_trial_result_cpu'].get('total_s')} |",
            f"| callbacks.on_trial_result (all) | {c.get('median_ms')} | {c.get('p95_ms')} | {c.get('max_ms')} | "
            f"{c.get('total_s')} |", "",
            f"driver cost per result (all hooks amortized): **{s['cost_per_result_ms']} ms** (target <= {TARGET_MS:g}); "
            f"CPU {s['cost_per_result_cpu_ms']} ms; driver process CPU per result {s['driver_cpu_per_result_ms']} ms; driver CPU share {s['driver_cpu_share']} "
            f"of one core over {s['wall_s']} s; W&B writer CPU {s['wandb_writer_cpu_s']} s",
            "capacity (concurrent trials one driver serves): " + "; ".join(
                f"{r}: {v['by_cost']} (by wall cost), {v['by_cost_cpu']} (by CPU cost), {v['by_driver_cpu']} (by driver "
                f"process CPU)" for r, v in s["capacity"].items()),
            f"Tune slow-operation warnings: {s['tune_slow_warning_count']}"]
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=256)
    ap.add_argument("--evals", type=int, default=8, help="reports per trial")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between a trial's reports (+-30%%)")
    ap.add_argument("--concurrent", type=int, default=32, help="trials at once")
    ap.add_argument("--cpu-per-trial", type=float, default=0.05)
    ap.add_argument("--scheduler", default="none", choices=["asha", "median", "none"])
    ap.add_argument("--no-live", dest="live", action="store_false", help="without the live table")
    ap.add_argument("--budget-shared", action="store_true",
                    help="the disk budget reads every trial's checkpoints for each collection, as under PBT "
                         "(the product does it only with --scheduler pbt)")
    ap.add_argument("--tune-tensorboard", action="store_true",
                    help="Tune's own TBXLoggerCallback in place of the product's TensorBoardLogger")
    ap.add_argument("--storage", help="default: a temporary folder, deleted after")
    ap.add_argument("--out", help="the JSON summary (default: under a temporary folder)")
    ap.add_argument("--profile", help="write a cProfile of the driver (tuner.fit) here (pstats format)")
    args = ap.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    if args.live:                                   # render the live table as on a terminal (what it costs there)
        os.environ.setdefault("TTY_COMPATIBLE", "1")
        os.environ.setdefault("TTY_INTERACTIVE", "1")
    timings = Timings()
    timings.install()
    with tempfile.TemporaryDirectory(prefix="bam-driver-scale-") as tmp:
        storage = Path(args.storage).resolve() if args.storage else Path(tmp)
        run = run_sweep(args, storage, timings)
        summary = {"bench": "driver_scale", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv,
                   "args": vars(args), **describe(),
                   "load_avg": os.getloadavg(), **summarize(timings, run)}
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bam-driver-scale-out-")) / "driver_scale.json"
        out.write_text(json.dumps(summary, indent=1))
    print(markdown(summary))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
