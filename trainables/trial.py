"""Inside a trial: ``train_driver_fn`` (the Tune function trainable that launches a ``TorchTrainer`` and
forwards its reports to Tune, ``tune_bridge.py``; Train V2 API) and ``train_fn_per_worker`` (one Ray Train
worker running THE loop). A ``TrialConfig`` is what they hand on: built from the Tune config once, it travels
to the workers as its ``to_dict()``."""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import torch

from .artifacts import artifacts_dir, remote_store
from .checkpoint import checkpoint_siblings, load_checkpoint, restore_latest_good, save_checkpoint
from .data import load_task_data
from .loop import NonFiniteLoss, Run, World, run_training, stopped_early
from .model import MultiTaskModel, build_encoder, get_device, load_tokenizer
from .recipe import Recipe, recipe_from_dict, with_params
from .storage import Storage
from .teachers import (attach_teacher_predictions, delta_vs_teachers, finish_teacher, load_teacher_encoders,
                       student_baselines)
from .trial_config import TrialConfig


def startup_mark(event: str, *, trial: str | None, **extra) -> None:
    """Start-up timing for ``bench/startup.py``: a no-op unless ``BAM_STARTUP_LOG`` is set."""
    if os.environ.get("BAM_STARTUP_LOG"):
        from .startup_log import mark
        mark(event, trial=trial, **extra)


def _process_created() -> float | None:
    try:
        import psutil
        return psutil.Process().create_time()
    except Exception:  # noqa: BLE001
        return None


def quiet_libraries() -> None:
    """No per-worker progress-bar or info spam from datasets/transformers inside trials. ``datasets`` only
    through its variables unless already imported: a trial with its tokenisation cached never imports it."""
    import sys
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("DATASETS_VERBOSITY", "error")
    try:
        if "datasets" in sys.modules:
            import datasets
            datasets.disable_progress_bars()
            datasets.logging.set_verbosity_error()
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001
        pass


def build_model(recipe: Recipe, *, tokenizer, tasks) -> MultiTaskModel:
    torch.manual_seed(recipe.seed)
    st = recipe.student
    enc = build_encoder(recipe.model, vocab_size=len(tokenizer), num_layers=st.num_layers,
                        hidden_size=st.hidden_size, init=st.init, dropout=st.dropout)
    return MultiTaskModel(enc, tasks, dropout=st.dropout, pooling=st.pooling)


def setup_run(config: TrialConfig | dict, *, world: World | None = None) -> Run:
    """Everything before the first step, shared by Ray workers and in-process runs (``config``: a TrialConfig
    or its plain dict)."""
    cfg = TrialConfig.of(config)
    quiet_libraries()
    recipe = cfg.recipe
    tokenizer = load_tokenizer(recipe.model, cache_dir=cfg.cache_dir)
    data = load_task_data(recipe, tokenizer=tokenizer, cache_dir=cfg.cache_dir)
    hidden_teachers = {}
    if cfg.job == "student" and recipe.teacher.use:
        found = attach_teacher_predictions(recipe, data, storage=cfg.storage)
        if recipe.student.hidden_distill > 0:
            hidden_teachers = load_teacher_encoders(recipe, found, storage=cfg.storage, tokenizer=tokenizer)
    model = build_model(recipe, tokenizer=tokenizer, tasks={t: d.task for t, d in data.items()})
    return Run(recipe=recipe, data=data, model=model, world=world or World(), device=get_device(),
               artifacts_dir=cfg.artifacts_dir, store=remote_store(cfg.storage), hidden_teachers=hidden_teachers,
               keep_best_weights=cfg.job == "teacher")     # a teacher predicts with its best-dev weights


# ------------------------------------------------------------------------------------------- a Train worker

def train_fn_per_worker(config: TrialConfig | dict) -> None:
    """One Ray Train worker: THE loop, reporting metrics and checkpoints through ``ray.train.report``."""
    import ray.train

    t0 = time.perf_counter()
    cfg = TrialConfig.of(config)
    check_not_diverged(cfg)
    timing = bool(os.environ.get("BAM_STARTUP_LOG"))
    if timing:
        startup_mark("worker_entered", trial=cfg.run_id, process_created=_process_created())
    run = setup_run(cfg)
    if timing:
        startup_mark("setup_done", trial=cfg.run_id)
    ckpt = ray.train.get_checkpoint()              # this run's own latest (a restarted worker or trial)
    restore_run(run, own=ckpt, resume_from=cfg.resume_from)
    baselines = student_baselines(run, storage=cfg.storage) if cfg.job == "student" else None
    report = train_reporter(cfg, baselines=baselines, timing=timing)
    if (run.step >= run.total or stopped_early(run)) and run.last_metrics:   # resumed at the end (or after an
        report(run.last_metrics, run)                  # early stop): tell Tune the final result again
    elif ckpt and run.last_metrics:    # resumed part-way: the checkpoint's row again, in case it never reached Tune
        report(run.last_metrics, run, checkpoint_path=ckpt.path)   # (ReportHistory drops it if it did)
    try:
        run_training(run, report=report, on_step=first_step_mark(cfg.run_id) if timing else None)
    except NonFiniteLoss as e:
        if run.world.rank == 0:
            mark_diverged(cfg, str(e))
        raise RuntimeError(f"trial stopped: {e}") from None
    if cfg.job == "teacher":
        finish_teacher(run, storage=cfg.storage, experiment=cfg.experiment, wall_s=time.perf_counter() - t0)
    if timing:
        startup_mark("worker_fn_returned", trial=cfg.run_id)


DIVERGED = "diverged.txt"      # beside a trial's reports: a non-finite loss, which a retry would only repeat


def _diverged_parts(cfg: TrialConfig) -> tuple[str, ...]:
    return ("experiments", cfg.experiment or "", "reports", f"{cfg.run_id}.{DIVERGED}")


def mark_diverged(cfg: TrialConfig, reason: str) -> None:
    """Record that this trial's loss went non-finite (under the storage, so any node sees it)."""
    if cfg.experiment and cfg.run_id:
        Storage.resolve(cfg.storage).write_bytes(*_diverged_parts(cfg), data=reason.encode())


def check_not_diverged(cfg: TrialConfig) -> None:
    """A retried trial (Train's or Tune's FailureConfig) whose loss went non-finite fails again at once: the
    same weights, data order and settings would diverge the same way, so retrying only burns compute."""
    if cfg.experiment and cfg.run_id:
        st = Storage.resolve(cfg.storage)
        if st.is_file(*_diverged_parts(cfg)):
            reason = st.read_bytes(*_diverged_parts(cfg)).decode(errors="replace")
            raise RuntimeError(f"trial stopped: {reason} (recorded in {DIVERGED}; not retried)")


def restore_run(run: Run, *, own, resume_from: str | None) -> None:
    """Continue from ``own`` (this run's latest Ray Train checkpoint; a corrupt one: the previous good one, with
    a warning), else start from ``resume_from`` (another run's checkpoint folder: a PBT exploit) keeping this
    run's (mutated) optimiser settings."""
    if own:
        with own.as_directory() as d:
            restore_latest_good(run, checkpoint_siblings(Path(d)))
    elif resume_from:
        mine = [(g["base_lr"], g["weight_decay"]) for g in run.opt.param_groups]
        load_checkpoint(run, Path(resume_from))
        for g, (lr, wd) in zip(run.opt.param_groups, mine):
            g["base_lr"], g["weight_decay"] = lr, wd


def train_reporter(cfg: TrialConfig, *, baselines: dict[str, float] | None, timing: bool):
    """``report(metrics, run, checkpoint_path=None)`` for ``run_training``: the metrics (with the delta to the
    teachers when ``baselines``) and a new checkpoint to Ray Train; with ``checkpoint_path``, metrics only, naming
    that (existing) checkpoint."""
    import ray.train

    def report(metrics: dict, r: Run, *, checkpoint_path: str | None = None) -> None:
        metrics = {**metrics, "job": cfg.job, "node_id": ray.get_runtime_context().get_node_id()}   # which machine
        if baselines:
            joined = {t: metrics[f"{t}/score"] for t in r.tasks if f"{t}/score" in metrics}   # sequential: so far
            metrics.update(delta_vs_teachers(joined, baselines))
            r.last_metrics = metrics               # the checkpoint carries the sweep metric (best-checkpoint choice)
        if timing and len(r.evals) <= 1 and r.world.rank == 0:
            startup_mark("first_report", trial=cfg.run_id, train_s=metrics.get("train_s"))
        save_dev_predictions(cfg, r)
        if checkpoint_path:
            ray.train.report({**metrics, "checkpoint_path": checkpoint_path})
            return
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(r, Path(tmp))          # every rank: rank 0 the checkpoint, the others their RNG
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint-step{r.step:07d}")
    return report


def save_dev_predictions(cfg: TrialConfig, run: Run) -> None:
    """Rank 0: the evaluation just made (``Run.last_dev``) as ``dev_predictions/step<N>.npz`` under the trial's
    artifacts folder in ``--storage`` (through ``Storage``, so a URI storage holds it too), for the report's
    paired bootstrap. A re-report of a restored row (nothing evaluated since) writes nothing."""
    from . import dev_predictions
    dev = run.last_dev
    if run.world.rank != 0 or not dev or dev["step"] != run.step or not (cfg.experiment and cfg.run_id):
        return
    Storage.resolve(cfg.storage).write_bytes("experiments", cfg.experiment, "artifacts", cfg.run_id,
                                             dev_predictions.DIR, dev_predictions.eval_file(dev["step"]),
                                             data=dev_predictions.encode(dev["tasks"]))


def first_step_mark(run_id: str | None):
    """An ``on_step`` hook for ``run_training``: the ``first_step`` start-up mark, once."""
    done = []

    def on_step(run: Run) -> None:
        if not done:
            done.append(True)
            startup_mark("first_step", trial=run_id)
    return on_step


# ------------------------------------------------------------------------------------------- the Tune trial

def train_driver_fn(config: dict) -> None:
    """The Tune function trainable: one ``TorchTrainer`` per trial, results forwarded to Tune.

    ``config``: Tune's param space (``search/experiment.py``): ``loop`` (a ``TrialConfig.to_dict()``),
    ``params`` (the sampled values), ``resources``, ``experiment``, ``metric``, ``tune_checkpoints``.
    The Train run is named after the Tune trial, so a restarted trial (Tune resume or FailureConfig)
    finds its own checkpoints in storage and continues from the latest one. Reports reach Tune through Ray's
    ``TuneReportCallback`` (``RecordedTuneReport``: metrics and the Train checkpoint's path). Under PBT
    (``config["tune_checkpoints"]``) they go through ``tune_bridge.ToTune`` instead, which adds the small Tune
    checkpoint PBT needs to exploit a trial (``TuneReportCallback`` hands Tune none); a trial restarted from
    another trial's checkpoint starts a new Train run from it. Either way every report is recorded first
    (``tune_bridge.ReportHistory``): a trial that Tune restarts without a checkpoint (so with an empty
    result.json) replays its recorded rows to Tune before training on. Train keeps each run's best checkpoint
    (by the sweep metric) and its latest; ``search/budget.py`` prunes further when the trial ends.
    """
    import ray.tune
    trial_id = ray.tune.get_context().get_trial_id()
    startup_mark("driver_entered", trial=trial_id, process_created=_process_created())
    from ray.util.queue import Queue

    from .tune_bridge import RecordedTuneReport, ReportHistory, ToTune, fit_reporting_to_tune, pointer_of, train_run_for

    pointer = pointer_of(ray.tune.get_checkpoint())
    run_name, resume_from = train_run_for(trial_id, pointer)
    cfg = build_trial_config(config, trial_id=trial_id, resume_from=resume_from)
    check_not_diverged(cfg)                        # Tune's retry of a trial whose loss went non-finite
    history = ReportHistory(cfg.storage, experiment=cfg.experiment, trial_id=trial_id, run_name=run_name)
    if pointer is None:          # restarted with no Tune checkpoint: Tune begins its result.json afresh
        for row in history.replay():
            ray.tune.report(row)
    bridge = bool(config.get("tune_checkpoints"))   # PBT: Tune needs a checkpoint to hand to another trial
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0}) if bridge else None
    trainer = torch_trainer(cfg, run_name=run_name, resources=config["resources"],
                            metric=config.get("metric", "glue_avg"),
                            callback=ToTune(queue, history) if bridge else RecordedTuneReport(history))
    startup_mark("driver_fit", trial=trial_id)
    if bridge:
        fit_reporting_to_tune(trainer, queue, trial_id=trial_id, run_name=run_name)
    else:
        trainer.fit()
    startup_mark("driver_fit_returned", trial=trial_id)


def build_trial_config(config: dict, *, trial_id: str, resume_from: str | None) -> TrialConfig:
    """This trial's ``TrialConfig`` from its Tune config: the recipe with the sampled values, built once (a
    sampled config that breaks a rule fails here), the experiment, run id, artifacts folder and, after a PBT
    exploit, the checkpoint folder to start from."""
    loop = config["loop"]
    recipe = recipe_from_dict(with_params(loop["recipe"], config.get("params") or {}), source="sampled config")
    cfg = TrialConfig.from_dict({**loop, "recipe": recipe})
    experiment = config["experiment"]
    cfg = cfg.replace(experiment=experiment, run_id=trial_id,
                      artifacts_dir=artifacts_dir(cfg.storage, experiment=experiment, trial_id=trial_id))
    return cfg.replace(resume_from=resume_from) if resume_from else cfg


def pending_retries(pending_timeout_s: float | None) -> int:
    """Train's ``controller_failure_limit`` for a trial that waits at most ``pending_timeout_s`` for its workers'
    resources (an autoscaler adding a node): Train gives up on a placement group after
    RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) and retries, forever by default (-1)."""
    if not pending_timeout_s:
        return -1
    wait = float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S") or 60)
    return max(0, math.ceil(pending_timeout_s / wait) - 1)


def gpus_per_worker(resources: dict) -> dict:
    """``{"GPU": n}`` for Train's ``resources_per_worker`` ({} without GPUs): n from --gpus-per-worker, 1 when
    not recorded (experiments from before it); a fraction lets several trials share one GPU."""
    if not resources.get("use_gpu"):
        return {}
    return {"GPU": float(resources.get("gpus_per_worker") or 1.0)}


def trainer_class():
    """Ray's ``TorchTrainer`` without its Ray Data callback: a trial passes no Ray Datasets (each worker reads
    its tokenised tasks itself), yet Ray 2.60's ``DatasetsCallback`` starts a ``DatasetManager`` actor (one
    more Ray process per trial, ~5 CPU-s on 2 cores) and ships Ray Data's context to the workers. Dropped only
    when the trainer has no datasets; a Ray without this (private) hook gets its plain ``TorchTrainer``, and so
    does ``BAM_RAY_DATA_CALLBACK=1``."""
    from ray.train.torch import TorchTrainer
    if os.environ.get("BAM_RAY_DATA_CALLBACK") == "1":          # Ray's own way back (bench/startup.py compares)
        return TorchTrainer
    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    except ImportError:
        return TorchTrainer
    if not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer

    class NoDataTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            return callbacks if self.datasets else [c for c in callbacks if not isinstance(c, DatasetsCallback)]
    return NoDataTorchTrainer


def torch_trainer(cfg: TrialConfig, *, run_name: str, resources: dict, metric: str, callback):
    """The trial's ``TorchTrainer``: ``resources["workers"]`` workers (``Resources.as_dict()``: CPUs and GPUs
    each) running ``train_fn_per_worker`` on ``cfg.to_dict()``; Train keeps the best checkpoint by ``metric``
    and always the latest."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig
    res = resources
    return trainer_class()(
        train_fn_per_worker,
        train_loop_config=cfg.to_dict(),
        torch_config=TorchConfig(backend="nccl" if res["use_gpu"] else "gloo"),
        scaling_config=ScalingConfig(num_workers=res["workers"], use_gpu=res["use_gpu"],
                                     resources_per_worker={"CPU": res["cpus_per_worker"], **gpus_per_worker(res)}),
        run_config=RunConfig(
            name=run_name,
            storage_path=Storage.resolve(cfg.storage).join("experiments", cfg.experiment, "train"),
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric,
                                               checkpoint_score_order="max"),   # the best, and always the latest
            failure_config=FailureConfig(max_failures=res.get("max_failures", 1),
                                         controller_failure_limit=pending_retries(res.get("pending_timeout_s"))),
            callbacks=[callback],
        ),
    )
