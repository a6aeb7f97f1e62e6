"""Inside a trial: ``train_fn_per_worker`` (one Ray Train worker) and ``train_driver_fn`` (the Tune
function trainable that launches a ``TorchTrainer`` and forwards its reports to Tune, ``tune_bridge.py``;
Train V2 API)."""
from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .data import load_examples, tokenize_split
from .errors import UserError
from .loop import (NonFiniteLoss, Run, TaskData, World, checkpoint_siblings, load_tensors, restore_latest_good,
                   run_training, verify_checkpoint)
from .model import MultiTaskModel, build_encoder, load_tokenizer, model_identity
from .recipe import Recipe, recipe_from_dict
from .storage import Storage
from .store import BaselineRegistry, StoreError, TeacherStore, teacher_key
from .tasks import get_task


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


# Recipe options added after teacher keys were first written: left out of the key while at their default, so
# that teachers already in a store keep their keys (and are not trained again).
LATER_OPTIM_DEFAULTS = {"decay": "linear"}


def teacher_config(recipe: Recipe) -> dict:
    """What makes two teachers of the same task, data, model and seed the same."""
    optim = {k: v for k, v in recipe.to_dict()["optim"].items()
             if not (k in LATER_OPTIM_DEFAULTS and v == LATER_OPTIM_DEFAULTS[k])}
    return {"optim": optim, "max_length": recipe.data.max_length,
            "precision": recipe.precision, "evals": recipe.evals, "pooling": recipe.student.pooling}


def load_task_data(recipe: Recipe, *, tokenizer, cache_dir: str | None) -> dict[str, TaskData]:
    d = recipe.data
    out = {}
    for name in recipe.tasks:
        task = get_task(name)
        train = load_examples(task=name, split="train", glue_dir=d.glue_dir)
        train = train.subsample(max_examples=d.max_train_examples, seed=d.data_seed)
        devs = {}
        for split in task.dev_splits:
            ex = load_examples(task=name, split=split, glue_dir=d.glue_dir)
            devs[split] = tokenize_split(ex.subsample(max_examples=d.max_dev_examples, seed=d.data_seed),
                                         tokenizer=tokenizer, max_length=d.max_length, cache_dir=cache_dir)
        out[name] = TaskData(task=task, train=tokenize_split(train, tokenizer=tokenizer, max_length=d.max_length,
                                                             cache_dir=cache_dir), dev=devs)
    return out


def missing_teachers(recipe: Recipe, *, storage: str) -> list[tuple[str, int]]:
    """(task, seed) pairs whose teacher predictions are not in the store for this data: checked before Ray."""
    if not recipe.teacher.use:
        return []
    model = model_identity(recipe.teacher.model or recipe.model)
    records = BaselineRegistry(storage).records()
    have = {(r["task"], r["seed"], r["fingerprint"]) for r in records if r["model"] == model}
    missing = []
    for t in recipe.tasks:
        ex = load_examples(task=t, split="train", glue_dir=recipe.data.glue_dir)
        fp = ex.subsample(max_examples=recipe.data.max_train_examples, seed=recipe.data.data_seed).fingerprint()
        missing += [(t, s) for s in recipe.teacher.seeds if (t, s, fp) not in have]
    return missing


def find_teachers(recipe: Recipe, data: dict[str, TaskData], *, storage: str) -> dict[str, list[dict]]:
    """Registry records of the teachers this student distils from: task -> one record per seed."""
    model = model_identity(recipe.teacher.model or recipe.model)
    records = BaselineRegistry(storage).records()
    found: dict[str, list[dict]] = {}
    for t in recipe.tasks:
        fp = data[t].train.fingerprint
        per_seed = []
        for seed in recipe.teacher.seeds:
            matches = [r for r in records if r["task"] == t and r["seed"] == seed and r["fingerprint"] == fp
                       and r["model"] == model]
            if not matches:
                raise StoreError(
                    f"no teacher predictions for task {t} seed {seed} (model {recipe.teacher.model or recipe.model}, "
                    f"these {len(data[t].train)} training examples) under {storage}: run "
                    f"`bam-search teachers --tasks {t} --seeds {seed} ...` with the same data settings first")
            per_seed.append(matches[-1])
        found[t] = per_seed
    return found


def attach_teacher_predictions(recipe: Recipe, data: dict[str, TaskData], *, storage: str) -> dict[str, list[dict]]:
    found = find_teachers(recipe, data, storage=storage)
    store = TeacherStore(storage)
    for t, recs in found.items():
        preds = [store.load(r["key"], task=t, expect_ids=data[t].train.ids, fingerprint=data[t].train.fingerprint)
                 for r in recs]
        data[t].teacher = np.mean(preds, axis=0) if recipe.teacher.ensemble else preds[0]
    return found


def teacher_baselines(found: dict[str, list[dict]]) -> dict[str, float]:
    """Each task's single-task teacher dev score: the mean over its teacher seeds' registry records."""
    return {t: float(np.mean([r["score"] for r in recs])) for t, recs in found.items() if recs}


def delta_vs_teachers(scores: dict[str, float], baselines: dict[str, float]) -> dict[str, float]:
    """``delta_vs_teachers``: mean over the run's tasks of (student dev score - the task's teacher dev score,
    mean over teacher seeds), in metric points; plus ``TASK/delta_vs_teachers`` for each task."""
    missing = sorted(set(scores) - set(baselines))
    if missing:
        raise KeyError(f"no teacher baseline for task(s) {', '.join(missing)}")
    out = {f"{t}/delta_vs_teachers": float(scores[t]) - baselines[t] for t in scores}
    out["delta_vs_teachers"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def student_baselines(run: Run, *, storage: str) -> dict[str, float] | None:
    """The teachers' dev scores for this student's tasks and data (None when the registry lacks any)."""
    try:
        return teacher_baselines(find_teachers(run.r, run.data, storage=storage))
    except StoreError:
        return None


def build_model(recipe: Recipe, *, tokenizer, tasks) -> MultiTaskModel:
    torch.manual_seed(recipe.seed)
    st = recipe.student
    enc = build_encoder(recipe.model, vocab_size=len(tokenizer), num_layers=st.num_layers,
                        hidden_size=st.hidden_size, init=st.init, dropout=st.dropout)
    return MultiTaskModel(enc, tasks, dropout=st.dropout, pooling=st.pooling)


def get_device() -> torch.device:
    try:
        import ray.train.torch
        return ray.train.torch.get_device()
    except Exception:  # noqa: BLE001 - outside Ray Train
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def load_teacher_encoders(recipe, found, *, storage, tokenizer) -> dict:
    out = {}
    tname = recipe.teacher.model or recipe.model
    for t, recs in found.items():
        store = TeacherStore(storage)
        if not store.has_file(recs[0]["key"], "model.pt"):
            raise StoreError(f"{store.dir(recs[0]['key'])}/model.pt: teacher weights missing "
                             "(student.hidden_distill needs them)")
        enc = build_encoder(tname, vocab_size=len(tokenizer))
        m = MultiTaskModel(enc, {t: get_task(t)})
        m.load_state_dict(load_tensors(io.BytesIO(store.read_file(recs[0]["key"], "model.pt")), map_location="cpu",
                                       name=f"{store.dir(recs[0]['key'])}/model.pt"))
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        out[t] = m.to(get_device())
    return out


def finish_teacher(run: Run, *, config: dict) -> dict:
    """Predict the train set with the best-dev weights; store predictions, weights and the baseline record."""
    task = run.tasks[0]
    sw = run.switch[task]
    if sw.best_step in run.snapshots:
        run.model.load_state_dict(run.snapshots[sw.best_step])
    preds = run.predict(task, run.data[task].train)
    record = None
    if run.world.rank == 0:
        recipe = run.r
        td = run.data[task]
        key = teacher_key(task=task, fingerprint=td.train.fingerprint, model=model_identity(recipe.model),
                          teacher_config=teacher_config(recipe), seed=recipe.seed)
        store = TeacherStore(config["storage"])
        store.save(key=key, predictions=preds, ids=td.train.ids,
                   meta={"task": task, "seed": recipe.seed, "fingerprint": td.train.fingerprint,
                         "model": model_identity(recipe.model), "n": len(td.train)})
        if not store.has_file(key, "model.pt"):          # atomic, local path or URI
            buf = io.BytesIO()
            torch.save(run.model.state_dict(), buf)
            store.write_file(key, "model.pt", buf.getvalue())
        record = {"task": task, "seed": recipe.seed, "fingerprint": td.train.fingerprint,
                  "model": model_identity(recipe.model), "model_name": recipe.model, "key": key,
                  "score": sw.best, "best_step": sw.best_step, "dev": run.evals[-1]["scores"] if run.evals else {},
                  "history": sw.history, "n_train": len(td.train), "wall_s": config.get("_wall_s"),
                  "experiment": config.get("experiment"), "time": time.time()}
        BaselineRegistry(config["storage"]).append(record)
    return record or {}


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


def with_params(recipe: dict, params: dict) -> dict:
    """The base recipe with sampled values set at their dotted keys."""
    import copy
    from .recipe import set_dotted
    out = copy.deepcopy(recipe)
    for key, value in params.items():
        set_dotted(out, key.split("."), value)
    return out


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
