"""Single-task teachers inside a trial: finding their predictions in the store, attaching them to a
student's data, loading their weights (hidden-state distillation), finishing a teacher run (best-dev weights
predict the train set; predictions, weights and the baseline record are stored)."""
from __future__ import annotations

import io
import time

import numpy as np
import torch

from . import dev_predictions
from .data import TaskData, load_examples, tokenizer_fingerprint
from .errors import UserError
from .loop import Run, stopped_early
from .checkpoint import load_tensors
from .model import MultiTaskModel, build_encoder, get_device, load_tokenizer, model_identity
from .recipe import Recipe
from .tasks import get_task
from .teacher_store import BaselineRegistry, StoreError, TeacherStore, pick_teacher, teacher_key


# Recipe options added after teacher keys were first written: left out of the key while at their default, so
# that teachers already in a store keep their keys (and are not trained again).
LATER_OPTIM_DEFAULTS = {"decay": "linear"}
LATER_STUDENT_DEFAULTS = {"dropout": 0.1, "unfreeze": "none"}      # the teacher's own training settings


def teacher_config(recipe: Recipe) -> dict:
    """What makes two teachers of the same task, data, model and seed the same. The teacher's shape is not in
    it: teachers are the full model (``search.preflight.teacher_recipe`` refuses a compact one)."""
    optim = {k: v for k, v in recipe.to_dict()["optim"].items()
             if not (k in LATER_OPTIM_DEFAULTS and v == LATER_OPTIM_DEFAULTS[k])}
    # BAM's depths (pooler L+1, heads L+2: the top layer at decay^2) changed decayed rates: such teachers re-key
    extra = {"layer_depths": "bam"} if recipe.optim.layer_decay != 1 else {}
    student = {k: getattr(recipe.student, k) for k, v in LATER_STUDENT_DEFAULTS.items()
               if getattr(recipe.student, k) != v}
    if student:
        extra["student"] = student
    if recipe.early_stop.patience:                     # off: left out, so fixed-budget teachers keep their keys
        extra["early_stop"] = {"patience": recipe.early_stop.patience}
    return {"optim": optim, "max_length": recipe.data.max_length,
            "precision": recipe.precision, "evals": recipe.evals, "pooling": recipe.student.pooling, **extra}


def train_examples(recipe: Recipe) -> dict:
    """Each task's training examples as the trials will see them (subsampled): what teachers are matched on."""
    out = {}
    for t in recipe.tasks:
        ex = load_examples(task=t, split="train", glue_dir=recipe.data.glue_dir)
        out[t] = ex.subsample(max_examples=recipe.data.max_train_examples, seed=recipe.data.data_seed)
    return out


def teacher_records(recipe: Recipe, fingerprints: dict[str, str], *,
                    storage: str) -> tuple[dict[str, list[dict]], list[tuple[str, int]]]:
    """The teachers this student distils from, found the same way before Ray starts and in the trial
    (``teacher_store.pick_teacher``, with ``teacher.experiment``): task -> one registry record per teacher seed,
    and the (task, seed) pairs with none. Several teacher configs for one pair: ``AmbiguousTeachers``."""
    model = model_identity(recipe.teacher.model or recipe.model)
    records = BaselineRegistry(storage).records()
    found: dict[str, list[dict]] = {}
    missing: list[tuple[str, int]] = []
    for t in recipe.tasks:
        found[t] = []
        for seed in recipe.teacher.seeds:
            rec = pick_teacher(records, task=t, seed=seed, fingerprint=fingerprints[t], model=model,
                               experiments=recipe.teacher.experiment)
            if rec is None:
                missing.append((t, seed))
            else:
                found[t].append(rec)
    return found, missing


def missing_teachers(recipe: Recipe, *, storage: str) -> list[tuple[str, int]]:
    """(task, seed) pairs whose teacher predictions are not in the store for this data: checked before Ray."""
    if not recipe.teacher.use:
        return []
    fps = {t: ex.fingerprint() for t, ex in train_examples(recipe).items()}
    return teacher_records(recipe, fps, storage=storage)[1]


def find_teachers(recipe: Recipe, data: dict[str, TaskData], *, storage: str) -> dict[str, list[dict]]:
    """Registry records of the teachers this student distils from: task -> one record per seed."""
    found, missing = teacher_records(recipe, {t: data[t].train.fingerprint for t in recipe.tasks}, storage=storage)
    if missing:
        t, seed = missing[0]
        within = (f" in teacher.experiment {','.join(recipe.teacher.experiment)}"
                  if recipe.teacher.experiment else "")
        raise StoreError(
            f"no teacher predictions for task {t} seed {seed} (model {recipe.teacher.model or recipe.model}, "
            f"these {len(data[t].train)} training examples){within} under {storage}: run "
            f"`bam-search teachers --tasks {t} --seeds {seed + 1} ...` with the same data settings first")
    return found


def ensemble_predictions(preds: list[np.ndarray], *, regression: bool) -> np.ndarray:
    """Several teachers' predictions as one teacher (Hinton et al. 2015: an ensemble's soft targets are its
    members' averaged probabilities). Classification: the log of the mean of the seeds' softmax, so the
    student's softmax(teacher / T) gives back exactly the mean probabilities at T = 1; at T != 1 it gives the
    mean probabilities sharpened (T < 1) or flattened (T > 1) as p^(1/T) renormalised, not the mean of the
    seeds' own tempered softmaxes. Regression: the mean value."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in preds])
    if regression:
        return stack.mean(0).astype(np.float32)
    logp = stack - stack.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))                  # each seed's log-softmax
    m = logp.max(0)                                                       # log mean exp over seeds, stably
    return (m + np.log(np.exp(logp - m).mean(0))).astype(np.float32)


def attach_teacher_predictions(recipe: Recipe, data: dict[str, TaskData], *, storage: str) -> dict[str, list[dict]]:
    """Each task's teacher predictions on its train set: the first seed's, or with ``teacher.ensemble`` all
    seeds' as one (``ensemble_predictions``)."""
    found = find_teachers(recipe, data, storage=storage)
    store = TeacherStore(storage)
    for t, recs in found.items():
        preds = [store.load(r["key"], task=t, expect_ids=data[t].train.ids, fingerprint=data[t].train.fingerprint)
                 for r in recs]
        data[t].teacher = (ensemble_predictions(preds, regression=data[t].task.is_regression)
                           if recipe.teacher.ensemble else preds[0])
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


def check_teacher_tokenizer(recipe: Recipe, *, student_tokenizer=None) -> None:
    """Hidden-state distillation feeds the student's token ids to the teacher encoder: refuse (one line) a
    ``teacher.model`` that tokenizes differently. Predictions alone are matched by example id, so logit
    distillation takes a teacher of any tokenizer. Called before Ray starts (preflight) and in the trial."""
    tname = recipe.teacher.model or recipe.model
    if not (recipe.teacher.use and recipe.student.hidden_distill > 0) or tname == recipe.model:
        return
    student = student_tokenizer if student_tokenizer is not None else load_tokenizer(recipe.model)
    if tokenizer_fingerprint(load_tokenizer(tname)) != tokenizer_fingerprint(student):
        raise UserError(f"teacher.model: {tname} tokenizes differently from model {recipe.model}, and "
                        "student.hidden_distill feeds the student's token ids to the teacher encoder; use a "
                        "teacher of the same tokenizer or student.hidden_distill 0")


def load_teacher_encoders(recipe, found, *, storage, tokenizer) -> dict:
    """Each task's teacher (its first seed; the recipe refuses ``teacher.ensemble`` with hidden distillation)
    as a frozen ``MultiTaskModel`` of the teacher's own model (``teacher.model``); ``tokenizer``: the student's."""
    check_teacher_tokenizer(recipe, student_tokenizer=tokenizer)
    out = {}
    tname = recipe.teacher.model or recipe.model
    vocab = len(load_tokenizer(tname))                                 # the teacher's own vocabulary
    store = TeacherStore(storage)
    for t, recs in found.items():
        if not store.has_file(recs[0]["key"], "model.pt"):
            raise StoreError(f"{store.dir(recs[0]['key'])}/model.pt: teacher weights missing "
                             "(student.hidden_distill needs them)")
        enc = build_encoder(tname, vocab_size=vocab, init="random")    # the skeleton; every weight is loaded
        m = MultiTaskModel(enc, {t: get_task(t)})
        m.load_state_dict(load_tensors(io.BytesIO(store.read_file(recs[0]["key"], "model.pt")), map_location="cpu",
                                       name=f"{store.dir(recs[0]['key'])}/model.pt"))
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
        out[t] = m.to(get_device())
    return out


def stop_fields(run: Run) -> dict:
    """When a teacher stopped: the step it stopped at, its best evaluation's step (whose weights predict the
    train set), the epochs it trained and whether ``early_stop`` ended it before its last step."""
    task = run.tasks[0]
    return {"stopped_at_step": run.step, "best_step": run.switch[task].best_step,
            "epochs_run": round(run.step * run.r.optim.batch_size / max(1, sum(run.sizes.values())), 2),
            "stopped_early": stopped_early(run)}


def finish_teacher(run: Run, *, storage: str, experiment: str | None = None, wall_s: float | None = None) -> dict:
    """Predict the train set with the best-dev weights (``Run.best_weights``, else the last ones); store
    predictions, weights and the baseline record (with the run's ``wall_s`` and ``experiment``, and when it
    stopped: ``stop_fields``)."""
    task = run.tasks[0]
    sw = run.switch[task]
    best = run.best_weights(task)
    if best is not None:
        run.model.load_state_dict(best)
    preds = run.predict(task, run.data[task].train)
    dev_preds = dev_predictions.current_weights_bytes(run)     # the best weights' dev predictions (the report)
    record = None
    if run.world.rank == 0:
        recipe = run.r
        td = run.data[task]
        config = teacher_config(recipe)
        key = teacher_key(task=task, fingerprint=td.train.fingerprint, model=model_identity(recipe.model),
                          teacher_config=config, seed=recipe.seed)
        store = TeacherStore(storage)
        stop = stop_fields(run)
        dev = next((e["scores"] for e in run.evals if e["step"] == sw.best_step), {})   # the best weights' scores
        store.save(key=key, predictions=preds, ids=td.train.ids,
                   meta={"task": task, "seed": recipe.seed, "fingerprint": td.train.fingerprint,
                         "model": model_identity(recipe.model), "n": len(td.train), "config": config, **stop})
        if not store.has_file(key, "model.pt"):          # atomic, local path or URI
            buf = io.BytesIO()
            torch.save(run.model.state_dict(), buf)
            store.write_file(key, "model.pt", buf.getvalue())
        store.write_file(key, dev_predictions.TEACHER_FILE, dev_preds)
        record = {"task": task, "seed": recipe.seed, "fingerprint": td.train.fingerprint,
                  "model": model_identity(recipe.model), "model_name": recipe.model, "key": key, "config": config,
                  "score": sw.best, **stop, "dev": dev,
                  "history": sw.history, "n_train": len(td.train), "wall_s": wall_s,
                  "experiment": experiment, "time": time.time()}
        BaselineRegistry(storage).append(record)
    return record or {}
