"""One evaluated model's dev-set predictions, small, for the report's paired bootstrap over dev examples.

Every evaluation of a trial writes ``experiments/<name>/artifacts/<trial>/dev_predictions/step<NNNNNNN>.npz``
(``trial.train_reporter``; rank 0, through ``Storage``, so a URI storage has them too); a teacher writes its
best weights' predictions as ``teachers/<key>/dev_predictions.npz`` (``teachers.finish_teacher``). The report
finds a student's by the step of its selected evaluation.

In memory (and in the report's run records) the predictions of one model are::

    {task: {"metrics": ["accuracy", "f1"],                  # the task's metrics: its score is their mean
            "splits": {"dev": {"ids": int64[n], "gold": [n], "pred": [n]}}}}   # MNLI: two dev splits

``pred`` is the predicted class (classification) or value (regression): what ``metrics.compute_metrics``
scores, a few bytes per example. Imports numpy only (the report reads these files).
"""
from __future__ import annotations

import io
import json

import numpy as np

DIR = "dev_predictions"                  # under a trial's artifacts folder
TEACHER_FILE = "dev_predictions.npz"     # in a teacher's store folder


def eval_file(step: int) -> str:
    """The file name of the predictions of the evaluation at ``step``."""
    return f"step{int(step):07d}.npz"


def compact(outputs: np.ndarray, *, regression: bool) -> np.ndarray:
    """A model's outputs (logits (n, C), or values (n,)/(n, 1)) as what is scored: classes or values."""
    out = np.asarray(outputs)
    if regression:
        return out.reshape(-1).astype(np.float32)
    return (out.argmax(-1) if out.ndim == 2 else out).astype(np.int16)


def encode(tasks: dict) -> bytes:
    """``{task: {"metrics", "splits"}}`` as the bytes of one compressed ``.npz`` (no pickle)."""
    arrays, meta, k = {}, {}, 0
    for t, entry in tasks.items():
        meta[t] = {"metrics": list(entry["metrics"]), "splits": list(entry["splits"])}
        for split in entry["splits"].values():           # the k-th split of the file: arrays k-ids, k-gold, k-pred
            for part in ("ids", "gold", "pred"):
                arrays[f"{k}-{part}"] = np.asarray(split[part])
            k += 1
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.asarray(json.dumps(meta)), **arrays)
    return buf.getvalue()


def decode(data: bytes) -> dict:
    """The inverse of ``encode``."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        out, k = {}, 0
        for t, m in meta.items():
            splits = {}
            for name in m["splits"]:
                splits[name] = {part: z[f"{k}-{part}"] for part in ("ids", "gold", "pred")}
                k += 1
            out[t] = {"metrics": m["metrics"], "splits": splits}
    return out


def current_weights_bytes(run) -> bytes:
    """``run``'s (a ``loop.Run``) dev predictions with its current weights, encoded: a teacher's best weights'
    (``teachers.finish_teacher``). Call it on every rank: the dev pass is sharded over the workers."""
    run.evaluate()
    return encode(run.last_dev["tasks"])
