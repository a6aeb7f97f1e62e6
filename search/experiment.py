"""The Tuner: one function trainable (``train_driver_fn``) per trial, each launching a TorchTrainer.

Used by every command that trains: ``teachers`` (one trial per task x seed), ``train`` (one per seed),
``sweep`` (a search space), ``resume``. Layout: ``<storage>/experiments/<name>/`` is Ray Tune's own.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from trainables.errors import UserError
from trainables.storage import Storage
from trainables.trial_config import TrialConfig

from .ray_env import DRIVER_CPU, Resources


NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_name(name: str, *, what: str = "--name") -> str:
    """An experiment's name is its folder under ``<storage>/experiments`` (and ``reports``): letters, digits,
    '.', '_', '-', not '.' or '..', so nothing a command writes or reads leaves the storage. ``what``: the flag
    or argument that gave it, for the one-line error."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in (".", ".."):
        raise UserError(f"{what} {name!r}: not an experiment name (letters, digits, '.', '_' and '-'; not '.' or "
                        f"'..'): it names a folder under <storage>/experiments, never a path")
    return name


def name_part(text: str) -> str:
    """``text`` (a recipe or space file's stem) as part of a default experiment name: other characters -> '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "x"


def experiment_dir(storage: str, name: str) -> Path | str:
    """The experiment's folder: a Path on local storage, a URI on s3://, gs://, ..."""
    st = Storage.resolve(storage)
    return st.local / "experiments" / name if st.is_local else st.join("experiments", name)


def wandb_settings(storage: str, *, enabled: bool = True, project: str | None = None, entity: str | None = None,
                   tags: tuple = ()) -> dict:
    """W&B writes to a local folder: under local storage, else ./bam-wandb where the driver runs (``bam-search
    sync`` finds it in bam_experiment.json). project None: $WANDB_PROJECT, else bam-search (tracking.project)."""
    st = Storage.resolve(storage)
    folder = st.local / "wandb" if st.is_local else Path("bam-wandb").resolve()
    return {"enabled": enabled, "dir": str(folder), "project": project, "entity": entity, "tags": list(tags)}


def make_scheduler(kind: str, *, max_t: int, metric: str, pbt: dict | None = None, experiment_dir=None,
                   grace_period: int | None = None, reduction_factor: float | None = None):
    """``grace_period``: evaluations before a trial may be stopped (default a quarter of them);
    ``reduction_factor``: ASHA keeps 1/reduction_factor of the trials at each rung (default 2)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule
    grace = grace_period or max(1, max_t // 4)
    if kind == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=grace,
                             reduction_factor=reduction_factor or 2)
    if kind == "median":
        return MedianStoppingRule(time_attr="training_iteration", grace_period=grace)
    if kind == "none":
        return FIFOScheduler()
    if kind == "pbt":                                # see search/pbt.py
        from .pbt import BamPBT, ClipToSpace
        if not (pbt or {}).get("mutations"):
            raise UserError("--scheduler pbt: needs a search space with parameters PBT can change during a run")
        return BamPBT(experiment_dir=experiment_dir, time_attr="training_iteration",
                      perturbation_interval=pbt.get("interval") or max(1, max_t // 4),
                      hyperparam_mutations={"params": pbt["mutations"]},
                      custom_explore_fn=ClipToSpace(pbt.get("bounds") or {}),
                      quantile_fraction=pbt.get("quantile_fraction", 0.25), resample_probability=0.25,
                      synch=bool(pbt.get("synch")))
    raise UserError(f"--scheduler {kind!r}: one of asha, median, pbt, none")


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


def check_pbt(*, scheduler: str, searcher: str, storage: str) -> None:
    """PBT samples its own population (random or grid searcher) and links checkpoint files (local storage)."""
    if scheduler == "pbt" and (searcher not in ("random", "grid") or not Storage.resolve(storage).is_local):
        raise UserError("--scheduler pbt samples its own population: use --searcher random or grid, and a local "
                        "--storage (the receiving trial links the donor's checkpoint files)")


def run_experiment(*, name: str, trial: TrialConfig, params: dict, resources: Resources, num_samples: int,
                   searcher: str = "random", scheduler: str = "none", metric: str = "glue_avg", seed: int = 0,
                   progress: bool = True, live_title: str | None = None, total_trials: int | None = None,
                   disk_budget: int | str | None = "20GB", pbt: dict | None = None,
                   early_stopping: dict | None = None, max_failures: int | None = 1, retry_errored: bool = False,
                   time_budget_s: float | None = None, quiet: bool = False):
    """Run (or continue) one Tune experiment under ``trial.storage``; returns the ResultGrid. ``quiet`` (the
    CLI's --quiet): no table, and Ray's and the libraries' console output goes to driver.log as with one.

    ``trial``: what every trial gets (Tune's param space holds ``trial.to_dict()`` under ``loop``).
    ``disk_budget``: bytes (or a size such as ``2GB``; None: no limit) the experiment's folder may hold;
    ended trials keep only their best checkpoint either way (``search/budget.py``).
    ``pbt``: with ``scheduler="pbt"``, ``{"mutations", "bounds", "interval"}`` (``search/pbt.py``).
    ``early_stopping``: with asha/median, ``{"grace_period", "reduction_factor"}`` (None: the defaults).
    ``max_failures``: Tune runs a failed trial (its driver's node lost, a Train run out of retries) again that
    often, from its last checkpoint (None, continuing: the experiment's own); ``retry_errored``: continuing,
    the trials that had errored run again too. ``time_budget_s``: Tune stops the experiment after this long
    (``TuneConfig.time_budget_s``; a resumed one gets it again from its restart)."""
    from ray import tune

    from trainables.trial import train_driver_fn

    from .budget import parse_size
    budget = parse_size(disk_budget)
    st = Storage.resolve(trial.storage)
    exp = st.join("experiments", name)
    trainable = tune.with_resources(train_driver_fn, {"CPU": DRIVER_CPU})
    check_pbt(scheduler=scheduler, searcher=searcher, storage=trial.storage)
    local_exp = st.local / "experiments" / name if st.is_local else None
    log = bool(progress and live_title) or quiet     # the table owns the terminal: Ray's console output to a file
    watch = ctrl_c_watch()
    if tune.Tuner.can_restore(exp):
        tuner = restore(exp, trainable, max_failures=max_failures, retry_errored=retry_errored)
        run_config = tuner._local_tuner.get_run_config()              # Ray 2.60: the unpickled RunConfig
        run_config.callbacks = [*(run_config.callbacks or []), watch]
        return _fit(tuner, st=st, name=name, log=log, watch=watch)
    loop = trial.to_dict()                           # the trial side rebuilds it: TrialConfig.from_dict
    space = {"loop": loop, "resources": resources.as_dict(), "experiment": name, "params": params,
             "metric": metric,                       # Train keeps each trial's best checkpoint by it
             "tune_checkpoints": scheduler == "pbt"}  # PBT exploits Tune checkpoints: trainables/tune_bridge.py
    callbacks = _callbacks(name=name, trial=trial, resources=resources, metric=metric, budget=budget,
                           local_exp=local_exp, live_title=live_title, total_trials=total_trials or num_samples,
                           shared=scheduler == "pbt")
    callbacks.append(watch)
    run_config = tune.RunConfig(name=name, storage_path=st.join("experiments"),
                                verbose=0 if (live_title or not progress) else 1, callbacks=callbacks,
                                failure_config=tune.FailureConfig(
                                    max_failures=1 if max_failures is None else max_failures))
    tuner = tune.Tuner(trainable, param_space=space, run_config=run_config,
                       tune_config=tune.TuneConfig(
                           metric=metric, mode="max", num_samples=num_samples, time_budget_s=time_budget_s,
                           max_concurrent_trials=resources.max_concurrent,
                           search_alg=make_searcher(searcher, metric=metric, seed=seed,
                                                    max_concurrent=resources.max_concurrent),
                           scheduler=make_scheduler(scheduler, max_t=trial.recipe.evals, metric=metric, pbt=pbt,
                                                    experiment_dir=local_exp, **(early_stopping or {}))))
    st.write_bytes("experiments", name, "bam_experiment.json", data=json.dumps(  # what `resume` reads: atomic
        {"name": name, "loop": loop, "params": _describe(params), "num_samples": num_samples,
         "searcher": searcher, "scheduler": scheduler, "metric": metric, "resources": resources.as_dict(),
         "disk_budget": budget, "pbt": pbt, "early_stopping": early_stopping, "time_budget_s": time_budget_s},
        indent=1, default=str).encode())
    return _fit(tuner, st=st, name=name, log=log, watch=watch)


LOG = "driver.log"


def ctrl_c_watch():
    """A Tune callback that sees whether Ctrl-C (SIGINT, or SIGUSR1) ended the experiment. Tune catches the first such
    signal itself: it saves the experiment, stops the trials and returns from ``fit()`` as if the sweep had ended
    (the CLI would print a table of unfinished trials and exit 0). When Tune's run starts, its handler is installed
    (``setup`` records it); the handler puts the previous one back when it fires, and only then."""
    import signal

    from ray.tune import Callback

    class CtrlCWatch(Callback):
        tune_handler = None

        def setup(self, **info):
            self.tune_handler = signal.getsignal(signal.SIGINT)

        def __getstate__(self):                      # pickled with the experiment: a handler is not picklable
            return {}

        def interrupted(self, before) -> bool:
            return self.tune_handler not in (None, before) and signal.getsignal(signal.SIGINT) is before
    return CtrlCWatch()


def fit_or_interrupt(tuner, watch=None):
    """``tuner.fit()``; KeyboardInterrupt when ``watch`` (``ctrl_c_watch``, one of the tuner's callbacks) saw Ctrl-C
    end it. The SIGINT handler from before is put back either way."""
    import signal
    import threading
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        result = tuner.fit()
        stopped = bool(main and watch is not None and watch.interrupted(before))
    finally:
        if main:
            signal.signal(signal.SIGINT, before)
    if stopped:
        raise KeyboardInterrupt("the sweep was interrupted")
    return result


def _fit(tuner, *, st: Storage, name: str, log: bool, watch=None):
    """``tuner.fit()``; with ``log``, what Ray, Tune and the libraries print goes to ``experiments/NAME/driver.log``
    under the storage (a URI storage: copied up at the end), named on stderr at the end."""
    if not log:
        return fit_or_interrupt(tuner, watch)
    import sys
    import tempfile

    from .progress import console_to_log
    local = st.local / "experiments" / name / LOG if st.is_local else Path(tempfile.mkdtemp(prefix="bam-log-")) / LOG
    try:
        with console_to_log(local):
            return fit_or_interrupt(tuner, watch)
    finally:
        if not st.is_local and local.is_file():
            st.write_bytes("experiments", name, LOG, data=local.read_bytes())
            local.unlink()
            local.parent.rmdir()
        print(f"Ray's and the libraries' output: {st.join('experiments', name, LOG)}", file=sys.stderr)


def restore(exp: str, trainable, *, max_failures: int | None, retry_errored: bool):
    """The Tuner of an interrupted experiment. ``retry_errored``: Tune's ``resume_errored`` (errored trials run
    again under their own ids, so each picks up its Train checkpoints and recorded rows; ``restart_errored``
    would start them afresh under new ids, beside the old ones). ``max_failures``: set on the restored
    RunConfig (new trials) and, by ``trial_retries``, on the restored trials, which keep their own otherwise."""
    from ray import tune
    tuner = tune.Tuner.restore(exp, trainable=trainable, resume_errored=retry_errored, restart_errored=False)
    if max_failures is not None:
        run_config = tuner._local_tuner.get_run_config()          # Ray 2.60: the unpickled RunConfig
        run_config.failure_config = tune.FailureConfig(max_failures=max_failures)
        run_config.callbacks = [*(run_config.callbacks or []), trial_retries(max_failures)]
    return tuner


def trial_retries(max_failures: int):
    """A Tune callback that gives every trial ``max_failures`` before each step of the run (a restored trial
    keeps the value of its first run otherwise). Defined here so that importing this module needs no Ray."""
    from ray.tune import Callback

    class TrialRetries(Callback):
        def on_step_begin(self, iteration, trials, **info):
            for t in trials:
                t.max_failures = max_failures
    cb = TrialRetries()
    cb.max_failures = max_failures
    return cb


def _callbacks(*, name: str, trial: TrialConfig, resources: Resources, metric: str, budget: int | None,
               local_exp: Path | None, live_title: str | None, total_trials: int, shared: bool = True) -> list:
    """W&B runs (unless off), the live table (with ``live_title``), Tune's loggers (``tune_loggers``), the disk
    budget (local storage; ``shared``: trials may refer to each other's files, as under PBT)."""
    callbacks = []
    if trial.wandb:
        from .tracking import WandbTrials
        callbacks.append(WandbTrials(settings=trial.wandb, experiment=name))
    if live_title:
        from .progress import LiveTable
        callbacks.append(LiveTable(title=live_title, total_trials=total_trials,
                                   concurrency=resources.max_concurrent, metric=metric))
    from .tune_loggers import loggers                # result.json, progress.csv, TensorBoard, in place of Tune's
    callbacks.extend(loggers())
    if local_exp is not None:                        # ended trials keep their best checkpoint; bytes sampled
        from .budget import DiskBudget
        callbacks.append(DiskBudget(experiment_dir=local_exp, metric=metric, budget=budget, shared=shared))
    return callbacks


def run_plan(plan, resources: Resources, *, progress: bool = True, live_title: str | None = None,
             total_trials: int | None = None, quiet: bool = False):
    """``run_experiment`` with a ``preflight.Plan``'s settings."""
    return run_experiment(name=plan.name, trial=plan.trial, params=plan.params, resources=resources,
                          num_samples=plan.num_samples, searcher=plan.searcher, scheduler=plan.scheduler,
                          metric=plan.metric, seed=plan.searcher_seed, progress=progress, live_title=live_title,
                          total_trials=total_trials, disk_budget=plan.disk_budget, pbt=plan.pbt,
                          early_stopping=plan.early_stopping, max_failures=getattr(plan, "max_failures", 1),
                          retry_errored=getattr(plan, "retry_errored", False),
                          time_budget_s=getattr(plan, "time_budget_s", None), quiet=quiet)


def _describe(params: dict) -> dict:
    return {k: str(v) for k, v in params.items()}
