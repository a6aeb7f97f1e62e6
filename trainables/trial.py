"""Inside a trial: ``train_driver_fn`` (the Tune function trainable that launches a ``TorchTrainer`` and
forwards its reports to Tune, ``tune_bridge.py``; Train V2 API) and ``train_fn_per_worker`` (one Ray Train
worker running THE loop)."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from .checkpoint import checkpoint_siblings, restore_latest_good
from .data import load_task_data
from .loop import NonFiniteLoss, Run, World, run_training
from .model import MultiTaskModel, build_encoder, get_device, load_tokenizer
from .recipe import Recipe, recipe_from_dict, with_params
from .storage import Storage
from .teachers import attach_teacher_predictions, finish_teacher, load_teacher_encoders, student_baselines, delta_vs_teachers


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
    """No per-worker progress-bar or info spam from datasets/transformers inside trials."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
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


def setup_run(config: dict, *, world: World | None = None) -> Run:
    """Everything before the first step, shared by Ray workers and in-process runs."""
    quiet_libraries()
    recipe = recipe_from_dict(config["recipe"])
    tokenizer = load_tokenizer(recipe.model, cache_dir=config.get("cache_dir"))
    data = load_task_data(recipe, tokenizer=tokenizer, cache_dir=config.get("cache_dir"))
    hidden_teachers = {}
    if config.get("job", "student") == "student" and recipe.teacher.use:
        found = attach_teacher_predictions(recipe, data, storage=config["storage"])
        if recipe.student.hidden_distill > 0:
            hidden_teachers = load_teacher_encoders(recipe, found, storage=config["storage"], tokenizer=tokenizer)
    model = build_model(recipe, tokenizer=tokenizer, tasks={t: d.task for t, d in data.items()})
    return Run(recipe=recipe, data=data, model=model, world=world or World(), device=get_device(),
               artifacts_dir=config["artifacts_dir"], hidden_teachers=hidden_teachers)


def train_fn_per_worker(config: dict) -> None:
    """One Ray Train worker: THE loop, reporting metrics and checkpoints through ``ray.train.report``."""
    import ray.train

    t0 = time.perf_counter()
    timing = bool(os.environ.get("BAM_STARTUP_LOG"))
    if timing:
        startup_mark("worker_entered", trial=config.get("run_id"), process_created=_process_created())
    run = setup_run(config)
    if timing:
        startup_mark("setup_done", trial=config.get("run_id"))
        first_step = run.train_step

        def timed_first_step():
            out = first_step()
            startup_mark("first_step", trial=config.get("run_id"))
            run.train_step = first_step
            return out
        run.train_step = timed_first_step
    job = config.get("job", "student")
    baselines = student_baselines(run, storage=config["storage"]) if job == "student" else None
    if job == "teacher":                           # keep best-dev weights to predict with at the end
        sw = run.switch[run.tasks[0]]
        sw.criterion = "never"
        run._keep_best = True
    ckpt = ray.train.get_checkpoint()              # this run's own latest (a restarted worker or trial)
    if ckpt:
        with ckpt.as_directory() as d:             # a corrupt latest one: the previous good one, with a warning
            restore_latest_good(run, checkpoint_siblings(Path(d)))
    elif config.get("resume_from"):                # start from another run's checkpoint folder (a PBT exploit):
        mine = [(g["base_lr"], g["weight_decay"]) for g in run.opt.param_groups]
        run.load_checkpoint(Path(config["resume_from"]))
        for g, (lr, wd) in zip(run.opt.param_groups, mine):   # its state, this run's (mutated) optimiser settings
            g["base_lr"], g["weight_decay"] = lr, wd

    def report(metrics: dict, r: Run, *, checkpoint_path: str | None = None) -> None:
        """Metrics and a new checkpoint; with ``checkpoint_path``, metrics only, naming that (existing) one."""
        if job == "teacher" and r.switch[r.tasks[0]].best_step == r.step:
            r.snapshots = {r.step: {k: v.detach().cpu().clone() for k, v in r.model.state_dict().items()}}
        metrics = {**metrics, "job": job, "node_id": ray.get_runtime_context().get_node_id()}   # which machine
        if baselines:
            metrics.update(delta_vs_teachers({t: metrics[f"{t}/score"] for t in r.tasks}, baselines))
            r.last_metrics = metrics               # the checkpoint carries the sweep metric (best-checkpoint choice)
        if timing and len(r.evals) <= 1 and r.world.rank == 0:
            startup_mark("first_report", trial=config.get("run_id"), train_s=metrics.get("train_s"))
        if checkpoint_path:
            ray.train.report({**metrics, "checkpoint_path": checkpoint_path})
            return
        with tempfile.TemporaryDirectory() as tmp:
            if r.world.rank == 0:
                r.save_checkpoint(Path(tmp))
            else:
                r.state()                          # joins the collectives of state()
                r.save_rng(Path(tmp))              # merged into the same checkpoint folder by Ray Train
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint-step{r.step:07d}")

    if run.step >= run.total and run.last_metrics:   # resumed at the end: tell Tune the final result again
        report(run.last_metrics, run)
    elif ckpt and run.last_metrics:    # resumed part-way: the checkpoint's row again, in case it never reached Tune
        report(run.last_metrics, run, checkpoint_path=ckpt.path)   # (ReportHistory drops it if it did)
    try:
        run_training(run, report=report)
    except NonFiniteLoss as e:
        raise RuntimeError(f"trial stopped: {e}") from None
    if job == "teacher":
        config = {**config, "_wall_s": time.perf_counter() - t0}
        finish_teacher(run, config=config)
    if timing:
        startup_mark("worker_fn_returned", trial=config.get("run_id"))


def train_driver_fn(config: dict) -> None:
    """The Tune function trainable: one ``TorchTrainer`` per trial, results forwarded to Tune.

    The Train run is named after the Tune trial, so a restarted trial (Tune resume or FailureConfig)
    finds its own checkpoints in storage and continues from the latest one. Reports reach Tune through Ray's
    ``TuneReportCallback`` (``RecordedTuneReport``: metrics and the Train checkpoint's path). Under PBT (``config["tune_checkpoints"]``)
    they go through ``tune_bridge.ToTune`` instead, which adds the small Tune checkpoint PBT needs to exploit a
    trial (``TuneReportCallback`` hands Tune none); a trial restarted from another trial's checkpoint starts a
    new Train run from it. Either way every report is recorded first (``tune_bridge.ReportHistory``): a trial that
    Tune restarts without a checkpoint (so with an empty result.json) replays its recorded rows to Tune before
    training on. Train keeps each run's best checkpoint (by the sweep metric) and its latest;
    ``search/budget.py`` prunes further when the trial ends.
    """
    import ray.tune
    startup_mark("driver_entered", trial=ray.tune.get_context().get_trial_id(), process_created=_process_created())
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from .tune_bridge import RecordedTuneReport, ReportHistory, ToTune, fit_reporting_to_tune, pointer_of, train_run_for

    from .recipe import recipe_from_dict
    res = config["resources"]
    trial_id = ray.tune.get_context().get_trial_id()
    loop_config = dict(config["loop"])
    recipe = recipe_from_dict(with_params(loop_config["recipe"], config.get("params") or {}),
                              source="sampled config")           # a sampled config that breaks a rule fails here
    loop_config["recipe"] = recipe.to_dict()
    storage = Storage.resolve(loop_config["storage"])
    # soft labels and switch snapshots: under the experiment on local storage; on a URI, on this node's disk
    # (the checkpoints refer to them by path, so a trial resumed on another node loses them: see docs/cluster.md)
    loop_config["artifacts_dir"] = (storage.join("experiments", config["experiment"], "artifacts", trial_id)
                                    if storage.is_local else
                                    str(Path(tempfile.gettempdir()) / "bam-artifacts" / config["experiment"] / trial_id))
    loop_config["run_id"] = trial_id
    loop_config["experiment"] = config["experiment"]
    pointer = pointer_of(ray.tune.get_checkpoint())
    run_name, resume_from = train_run_for(trial_id, pointer)
    if resume_from:                                  # another trial's checkpoint: PBT exploited it
        loop_config["resume_from"] = resume_from
    history = ReportHistory(loop_config["storage"], experiment=config["experiment"], trial_id=trial_id,
                            run_name=run_name)
    if pointer is None:          # restarted with no Tune checkpoint: Tune begins its result.json afresh
        for row in history.replay():
            ray.tune.report(row)
    bridge = bool(config.get("tune_checkpoints"))   # PBT: Tune needs a checkpoint to hand to another trial
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0}) if bridge else None
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if res["use_gpu"] else "gloo"),
        scaling_config=ScalingConfig(num_workers=res["workers"], use_gpu=res["use_gpu"],
                                     resources_per_worker={"CPU": res["cpus_per_worker"],
                                                           **({"GPU": 1} if res["use_gpu"] else {})}),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage.join("experiments", config["experiment"], "train"),
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=config.get("metric", "glue_avg"),
                                               checkpoint_score_order="max"),   # the best, and always the latest
            failure_config=FailureConfig(max_failures=res.get("max_failures", 1)),
            callbacks=[ToTune(queue, history) if bridge else RecordedTuneReport(history)],
        ),
    )
    startup_mark("driver_fit", trial=trial_id)
    if bridge:
        fit_reporting_to_tune(trainer, queue, trial_id=trial_id, run_name=run_name)
    else:
        trainer.fit()
    startup_mark("driver_fit_returned", trial=trial_id)
