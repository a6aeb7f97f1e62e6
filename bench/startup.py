"""Where a trial's start-up goes: launch -> first report, phase by phase, through the product's own path.

Runs N minimal trials (tiny model, 2 synthetic tasks, a few steps, 1 evaluation) with ``run_experiment`` on
the embedded local Ray, as many at once as ``choose_resources`` allows (2 on a 2-core machine), and reads
the timestamps the code itself writes (``BAM_STARTUP_LOG``, see ``trainables/startup_log.py``):

    launch            Tune asks for the trial's actor (``TuneController._schedule_trial_actor``)
    tune_actor        Tune sees the trial actor up (``on_trial_start``)
    driver_entered    ``train_driver_fn`` runs in that actor
    driver_fit        the ``TorchTrainer`` is built, ``fit()`` called
    controller_up     Train's controller actor runs (``after_controller_start``)
    wg_start          the controller starts the worker group
    worker_ready      the worker process is up, its train context set (in the worker)
    wg_started        placement group + workers + backend (gloo) ready (in the controller)
    fn_launched       ``train_fn_per_worker`` launched on the workers
    worker_entered    ``train_fn_per_worker`` runs (in the worker)
    setup_done        tokenizer, data (tokenisation cache), model built
    first_step        the first optimiser step done
    first_report      the worker calls ``ray.train.report`` (after its evaluation)
    ctrl_report       Train's controller has the report (it polls every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S)
    tune_result       Tune's controller has the first result
    (and after it)    trial complete in Tune: the worker ends, the controller sees it, shuts down, fit returns

It also lists every Ray worker process the run started (State API: launch -> registered, per actor class)
and checks that the tokenisation cache was written once, not once per trial.

    python bench/startup.py --trials 4            # prints a JSON summary and a Markdown table
    python bench/startup.py --trials 2 --imports  # and what each process imports, with its CPU cost
                                                  # (bench/import_profile.py)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from host import describe  # bench/host.py (bench scripts run with bench/ on sys.path)

TEARDOWN = [("worker_returned", "worker_fn_returned"), ("controller_saw_end", "controller_saw_end"),
            ("fit_returned", "driver_fit_returned"), ("tune_complete", "tune_trial_complete")]
PHASES = [("launch", "tune_schedule"), ("tune_actor", "tune_actor_started"), ("driver_entered", "driver_entered"),
          ("driver_fit", "driver_fit"), ("controller_up", "controller_started"), ("wg_start", "worker_group_start"),
          ("worker_ready", "worker_context_ready"), ("wg_started", "worker_group_started"),
          ("fn_launched", "train_fn_launched"), ("worker_entered", "worker_entered"), ("setup_done", "setup_done"),
          ("first_step", "first_step"), ("first_report", "first_report"),
          ("ctrl_report", "controller_first_report"), ("tune_result", "tune_first_result")]


def recipe(args) -> dict:
    return {"tasks": args.tasks.split(","), "model": "tiny", "evals": 1, "teacher": {"use": False},
            "anneal": {"schedule": "none"}, "optim": {"steps": args.steps, "batch_size": 16, "lr": 1e-3},
            "data": {"max_train_examples": 200, "max_dev_examples": 100}}


def instrument(log: Path) -> None:
    """Timing on: the log file, Ray's callback variables, and Tune's launch of each trial marked here."""
    os.environ["BAM_STARTUP_LOG"] = str(log)
    os.environ["RAY_TUNE_CALLBACKS"] = "__main__.TuneStartupTimes"
    os.environ["RAY_TRAIN_CALLBACKS"] = "trainables.startup_log.TrainStartupTimes"
    from ray.tune.execution.tune_controller import TuneController

    from trainables.startup_log import mark
    schedule = TuneController._schedule_trial_actor

    def timed_schedule(self, trial):
        mark("tune_schedule", trial=trial.trial_id)
        return schedule(self, trial)
    TuneController._schedule_trial_actor = timed_schedule


def _tune_callback():
    from ray.tune import Callback

    from trainables.startup_log import mark

    class TuneStartupTimes(Callback):
        """In the Tune driver (this process): actor up, first result in, trial complete."""

        def __init__(self):
            self._seen: set[str] = set()

        def on_trial_start(self, iteration, trials, trial, **info):
            mark("tune_actor_started", trial=trial.trial_id)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if trial.trial_id not in self._seen:
                self._seen.add(trial.trial_id)
                mark("tune_first_result", trial=trial.trial_id)

        def on_trial_complete(self, iteration, trials, trial, **info):
            mark("tune_trial_complete", trial=trial.trial_id)
    return TuneStartupTimes


def read_events(log: Path) -> dict[str, dict[str, dict]]:
    per_trial: dict[str, dict[str, dict]] = {}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        if row.get("trial"):
            per_trial.setdefault(row["trial"], {}).setdefault(row["event"], row)   # the first of each
    return per_trial


def phase_table(per_trial: dict) -> tuple[list[dict], dict]:
    rows = []
    for trial, ev in sorted(per_trial.items(), key=lambda kv: kv[1].get("tune_schedule", {}).get("t", 0)):
        t0 = ev.get("tune_schedule", {}).get("t")
        row = {"trial": trial}
        prev = None
        for name, event in PHASES:
            if event not in ev or t0 is None:
                continue
            t = ev[event]["t"]
            row[name] = round(t - (prev if prev is not None else t0), 3)   # time since the previous phase
            prev = t
        if "tune_first_result" in ev and t0 is not None:
            row["total"] = round(ev["tune_first_result"]["t"] - t0, 3)
            prev = ev["tune_first_result"]["t"]
            for name, event in TEARDOWN:                       # the end of a 1-evaluation trial
                if event in ev:
                    row[name] = round(ev[event]["t"] - prev, 3)
                    prev = ev[event]["t"]
            if "tune_trial_complete" in ev:
                row["result_to_complete"] = round(ev["tune_trial_complete"]["t"] - ev["tune_first_result"]["t"], 3)
        for who in ("driver_entered", "worker_entered"):
            created = ev.get(who, {}).get("process_created")
            if created:
                row[f"{who}_process_age"] = round(ev[who]["t"] - created, 3)
        row["train_s"] = ev.get("first_report", {}).get("train_s")
        row["loaded"] = {e: ev[e].get("loaded") for e in ("driver_entered", "controller_started",
                                                           "worker_context_ready", "worker_entered") if e in ev}
        rows.append(row)
    medians = {}
    for name in [p for p, _ in PHASES[1:]] + ["total"] + [p for p, _ in TEARDOWN] + [
            "result_to_complete", "driver_entered_process_age", "worker_entered_process_age"]:
        vals = [r[name] for r in rows if r.get(name) is not None]
        if vals:
            medians[name] = round(statistics.median(vals), 2)
    return rows, medians


def processes() -> list[dict]:
    """Every worker process of this Ray session: its actor class, launch -> registered, launched at."""
    import ray
    from ray.util.state import list_actors, list_workers
    at = ray.get_runtime_context().gcs_address      # this run's Ray, also when another one runs beside it
    actors = {a.pid: a.class_name for a in list_actors(address=at, detail=True, limit=10000,
                                                       raise_on_missing_output=False) if a.pid}
    out = []
    for w in list_workers(address=at, detail=True, limit=10000, raise_on_missing_output=False):
        if w.worker_type != "WORKER" or not w.worker_launch_time_ms:
            continue
        out.append({"pid": w.pid, "actor": actors.get(w.pid, "(task / idle)"),
                    "launch": w.worker_launch_time_ms / 1000,
                    "registered_s": round(((w.start_time_ms or w.worker_launched_time_ms) - w.worker_launch_time_ms)
                                          / 1000, 3) if (w.start_time_ms or w.worker_launched_time_ms) else None})
    return sorted(out, key=lambda p: p["launch"])


class CpuSampler:
    """CPU seconds per kind of process while the experiment runs (psutil, every ``every`` s): Ray's worker
    processes by actor class (their ``ray::Class`` title), Ray's own daemons, and this driver. A process that
    exits between two samples loses at most its last interval."""

    def __init__(self, every: float = 1.0):
        import threading
        self.every, self.last = every, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def kind(cmdline: list[str]) -> str | None:
        head = cmdline[0] if cmdline else ""
        if head.startswith("ray::"):
            name = head[5:].split(".")[0].split(" ")[0]
            return None if name in ("IDLE", "") else name
        text = " ".join(cmdline)
        for key, name in (("raylet", "raylet"), ("gcs_server", "gcs_server"), ("dashboard/agent.py", "dashboard_agent"),
                          ("runtime_env/agent", "runtime_env_agent"), ("dashboard.py", "dashboard"),
                          ("log_monitor.py", "log_monitor"), ("monitor.py", "monitor"),
                          ("default_worker.py", "worker (idle)")):
            if key in text:
                return name
        return None

    def _run(self) -> None:
        import psutil
        me = os.getpid()
        while not self._stop.is_set():
            for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
                try:
                    info = proc.info
                    kind = "driver (Tune)" if info["pid"] == me else self.kind(info["cmdline"] or [])
                    if kind is None:
                        if info["pid"] in self.last:       # an actor back to IDLE keeps its class
                            self.last[info["pid"]]["cpu"] = sum(info["cpu_times"][:2])
                        continue
                    old = self.last.get(info["pid"])
                    if old and old["kind"] != "worker (idle)" and kind == "worker (idle)":
                        kind = old["kind"]
                    self.last[info["pid"]] = {"kind": kind, "cpu": sum(info["cpu_times"][:2])}
                except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
                    continue
            self._stop.wait(self.every)

    def __enter__(self):
        import psutil
        self.baseline = {}                                 # CPU already spent before the experiment
        for proc in psutil.process_iter(["pid", "cpu_times"]):
            try:
                self.baseline[proc.info["pid"]] = sum(proc.info["cpu_times"][:2])
            except (TypeError, psutil.Error):
                continue
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def by_kind(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for pid, rec in self.last.items():
            k = out.setdefault(rec["kind"], {"processes": 0, "cpu_s": 0.0})
            k["processes"] += pid not in self.baseline
            k["cpu_s"] = round(k["cpu_s"] + rec["cpu"] - self.baseline.get(pid, 0.0), 2)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_s"]))


def markdown(medians: dict) -> str:
    lines = ["| phase (time since the previous one) | median s |", "| --- | ---: |"]
    for name, _ in PHASES[1:]:
        if name in medians:
            lines.append(f"| {name} | {medians[name]:.2f} |")
    lines.append(f"| **launch -> first result in Tune** | **{medians.get('total', float('nan')):.2f}** |")
    for name, _ in TEARDOWN:
        if name in medians:
            lines.append(f"| then {name} | {medians[name]:.2f} |")
    lines.append(f"| **first result -> trial complete** (1 evaluation: the end) | "
                 f"**{medians.get('result_to_complete', float('nan')):.2f}** |")
    return "\n".join(lines)


def reuse_tune_actors() -> None:
    """Every ``tune.TuneConfig`` built in this process defaults to ``reuse_actors=True`` (bench only)."""
    import dataclasses

    from ray import tune

    @dataclasses.dataclass
    class ReuseActors(tune.TuneConfig):
        reuse_actors: bool = True
    tune.TuneConfig = ReuseActors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--max-concurrent", type=int, default=None, help="default: what choose_resources allows")
    ap.add_argument("--tasks", default="syn_pairmatch,syn_noisy")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--storage", default=None, help="default: a temporary folder, removed afterwards")
    ap.add_argument("--ray-data-callback", action="store_true",
                    help="keep Ray Train's DatasetsCallback (BAM_RAY_DATA_CALLBACK=1): the before of issue 19's cut")
    ap.add_argument("--label", default="", help="a name for this run in the JSON output (e.g. before / after)")
    ap.add_argument("--json", default=None, help="also write the summary here")
    ap.add_argument("--ray-defaults", action="store_true",
                    help="Ray's own Train settings instead of search/ray_env.py's (the 'before' of RESULTS.md)")
    ap.add_argument("--imports", action="store_true",
                    help="every Ray process logs its imports (PYTHONPROFILEIMPORTTIME); each kind's imports are "
                         "then replayed in a fresh interpreter for their CPU seconds (bench/import_profile.py)")
    ap.add_argument("--replay-repeats", type=int, default=3, help="replays per process kind with --imports")
    ap.add_argument("--reuse-actors", action="store_true",
                    help="Tune's reuse_actors=True (the product leaves it off, Ray's default): a later trial may run "
                         "in an ended trial's function actor (issue 19's 'reuse Tune's trial actors')")
    args = ap.parse_args()
    if args.reuse_actors:
        reuse_tune_actors()
    if args.ray_defaults:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "2.0"
        os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "1"
    if args.ray_data_callback:
        os.environ["BAM_RAY_DATA_CALLBACK"] = "1"

    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(args.storage or tmp).resolve()
        storage.mkdir(parents=True, exist_ok=True)
        log = storage / f"startup-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        instrument(log)
        if args.imports:                       # read by every Python process Ray starts from here on
            os.environ["PYTHONPROFILEIMPORTTIME"] = "1"
        import ray
        from ray import tune

        from search.ray_env import choose_resources, init_ray
        from search.experiment import run_experiment
        from trainables.recipe import recipe_from_dict
        from trainables.trial_config import TrialConfig
        cache = storage / "cache"
        load = os.getloadavg()
        t0 = time.time()
        cluster = init_ray(address=None)
        ray_up = time.time() - t0
        res = choose_resources(cluster, trials=args.trials, max_concurrent=args.max_concurrent)
        trial = TrialConfig(recipe=recipe_from_dict(recipe(args)), storage=str(storage), cache_dir=str(cache))
        t1 = time.time()
        with CpuSampler() as cpu:
            run_experiment(name=f"startup-{int(t1)}", trial=trial,
                           params={"seed": tune.grid_search(list(range(args.trials)))}, resources=res,
                           num_samples=1, progress=False)
        wall = time.time() - t1
        procs = processes()
        logs_dir = Path(ray._private.worker._global_node.get_logs_dir_path())
        ray.shutdown()
        os.environ.pop("PYTHONPROFILEIMPORTTIME", None)
        rows, medians = phase_table(read_events(log))
        tokenized = _tokenized_by_trial(cache, read_events(log))
        summary = {
            "label": args.label, "date": time.strftime("%Y-%m-%d %H:%M"), "reuse_actors": args.reuse_actors,
            **describe(),
            "load_avg_before": [round(x, 2) for x in load], "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "trials": args.trials, "at_once": res.max_concurrent, "cpus_per_worker": res.cpus_per_worker,
            "train_env": {k: os.environ.get(k, "(Ray's default)") for k in
                          ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
                           "BAM_RAY_DATA_CALLBACK")},
            "ray_init_s": round(ray_up, 2), "experiment_wall_s": round(wall, 2),
            "median_s": medians, "trials_detail": rows,
            "tokenized_cache_entries_written_by_trial": tokenized,
            "worker_processes": len(procs),
            "worker_processes_by_actor": _count(p["actor"] for p in procs),
            "cpu_s_by_process_kind": cpu.by_kind(),
            "cpu_s_total": round(sum(v["cpu_s"] for v in cpu.by_kind().values()), 1),
            "median_process_registration_s": round(statistics.median([p["registered_s"] for p in procs
                                                                      if p["registered_s"] is not None]), 2)
            if procs else None,
        }
        if args.imports:
            summary["imports"] = import_summary(logs_dir, procs, repeats=args.replay_repeats)
    text = json.dumps(summary, indent=1, default=str)
    print(text)
    print()
    print(markdown(medians))
    if args.imports:
        import import_profile
        print()
        print(import_profile.markdown(summary["imports"]["by_kind"], summary["cpu_s_by_process_kind"]))
        print()
        print(import_profile.reference_markdown(summary["imports"]["reference_sets"]))
    if args.json:
        Path(args.json).write_text(text)


def import_summary(logs_dir: Path, procs: list[dict], *, repeats: int) -> dict:
    """Each Ray process's import log (read before the session's folder goes), grouped by actor class, each
    kind's imports replayed in a fresh interpreter for their CPU seconds."""
    import import_profile
    kinds = import_profile.by_kind(import_profile.read_logs(logs_dir, {p["pid"]: p["actor"] for p in procs}))
    for k in kinds.values():
        k["replay"] = import_profile.replay_cpu(k["roots"], repeats=repeats)
    return {"logs_dir": str(logs_dir), "by_kind": kinds,
            "reference_sets": import_profile.reference_cpu(repeats=repeats)}


def _tokenized_by_trial(cache: Path, per_trial: dict) -> dict[str, int]:
    """Which trial wrote each tokenisation-cache entry (its ``dataset_info.json`` written between the
    trial's ``worker_entered`` and ``setup_done``): with a working cache only the first trials write any."""
    out: dict[str, int] = {}
    root = cache / "tokenized"
    for entry in (root.iterdir() if root.is_dir() else []):
        info = entry / "dataset_info.json"
        if not info.exists():
            continue
        t = info.stat().st_mtime
        who = next((trial for trial, ev in per_trial.items() if "worker_entered" in ev and "setup_done" in ev
                    and ev["worker_entered"]["t"] - 0.01 <= t <= ev["setup_done"]["t"] + 0.01), "(none)")
        out[who] = out.get(who, 0) + 1
    return out


def _count(items) -> dict:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


if __name__ == "__main__":
    TuneStartupTimes = _tune_callback()          # RAY_TUNE_CALLBACKS finds it as __main__.TuneStartupTimes
    main()
