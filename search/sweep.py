"""The Tuner: one function trainable (``train_driver_fn``) per trial, each launching a TorchTrainer.

Used by every command that trains: ``teachers`` (one trial per task x seed), ``train`` (one per seed),
``sweep`` (a search space), ``resume``. Layout: ``<storage>/experiments/<name>/`` is Ray Tune's own.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from trainables.errors import UserError

from .ray_env import DRIVER_CPU, Resources


def experiment_dir(storage: str, name: str) -> Path:
    return Path(storage).resolve() / "experiments" / name


def wandb_settings(storage: str, *, enabled: bool = True, project: str = "bam-search") -> dict:
    return {"enabled": enabled, "dir": str(Path(storage).resolve() / "wandb"), "project": project}


def make_scheduler(kind: str, *, max_t: int, metric: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
    if kind == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=max(1, max_t // 4),
                             reduction_factor=2)
    if kind == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=max(1, max_t // 4))
    if kind == "none":
        return FIFOScheduler()
    raise UserError(f"--scheduler {kind!r}: one of asha, median, none (pbt is not supported yet)")


def make_searcher(kind: str, *, metric: str, seed: int, max_concurrent: int):
    from ray.tune.search import ConcurrencyLimiter
    if kind == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch
        alg = OptunaSearch(metric=metric, mode="max", sampler=optuna.samplers.TPESampler(seed=seed))
        return ConcurrencyLimiter(alg, max_concurrent=max_concurrent)
    if kind in ("random", "grid"):
        return None                                  # Tune's BasicVariantGenerator
    raise UserError(f"--searcher {kind!r}: one of optuna, random, grid")


def run_experiment(*, name: str, storage: str, loop: dict, params: dict, resources: Resources, num_samples: int,
                   searcher: str = "random", scheduler: str = "none", metric: str = "glue_avg", seed: int = 0,
                   progress: bool = True, live_title: str | None = None, total_trials: int | None = None):
    """Run (or continue) one Tune experiment; returns the ResultGrid."""
    from ray import tune

    from trainables.driver import train_driver_fn

    exp = experiment_dir(storage, name)
    trainable = tune.with_resources(train_driver_fn, {"CPU": DRIVER_CPU})
    space = {"loop": loop, "resources": resources.as_dict(), "experiment": name, "params": params}
    max_t = int(loop["recipe"].get("evals", 10))
    callbacks = []
    if loop.get("wandb"):
        from .tracking import WandbTrials
        callbacks.append(WandbTrials(settings=loop["wandb"], experiment=name))
    if live_title:
        from .progress import LiveTable
        callbacks.append(LiveTable(title=live_title, total_trials=total_trials or num_samples,
                                   concurrency=resources.max_concurrent, metric=metric))
    run_config = tune.RunConfig(name=name, storage_path=str(exp.parent),
                                verbose=0 if (live_title or not progress) else 1, callbacks=callbacks,
                                failure_config=tune.FailureConfig(max_failures=0))
    if tune.Tuner.can_restore(str(exp)):
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=False, restart_errored=False)
    else:
        tuner = tune.Tuner(trainable, param_space=space, run_config=run_config,
                           tune_config=tune.TuneConfig(
                               metric=metric, mode="max", num_samples=num_samples,
                               max_concurrent_trials=resources.max_concurrent,
                               search_alg=make_searcher(searcher, metric=metric, seed=seed,
                                                        max_concurrent=resources.max_concurrent),
                               scheduler=make_scheduler(scheduler, max_t=max_t, metric=metric)))
        exp.mkdir(parents=True, exist_ok=True)
        (exp / "bam_experiment.json").write_text(json.dumps(
            {"name": name, "loop": loop, "params": _describe(params), "num_samples": num_samples,
             "searcher": searcher, "scheduler": scheduler, "metric": metric, "resources": resources.as_dict()},
            indent=1, default=str))
    return tuner.fit()


def _describe(params: dict) -> dict:
    return {k: str(v) for k, v in params.items()}


def trial_results(storage: str, name: str) -> list[dict]:
    """Every trial of an experiment from Tune's own files: params, every reported row, state."""
    exp = experiment_dir(storage, name)
    if not exp.is_dir():
        raise UserError(f"no experiment {name!r} under {Path(storage) / 'experiments'}")
    trials = []
    for d in sorted(p for p in exp.iterdir() if p.is_dir() and (p / "params.json").exists()):
        try:
            params = json.loads((d / "params.json").read_text())
        except json.JSONDecodeError:
            continue
        rows = []
        if (d / "result.json").exists():
            for line in (d / "result.json").read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break                                 # a torn last line after a crash
        trials.append({"dir": str(d), "trial_id": rows[-1]["trial_id"] if rows else d.name, "params": params,
                       "rows": rows, "error": (d / "error.txt").exists() or (d / "error.pkl").exists()})
    return trials
