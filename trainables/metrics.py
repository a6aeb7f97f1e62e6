"""GLUE's official metrics (scikit-learn / scipy) and the GLUE average. Imports nothing of the project."""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def _safe(x: float) -> float:
    return 0.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def compute_metrics(*, metrics: tuple[str, ...], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``predictions`` are logits (N, C) for classification, values (N,) or (N, 1) for regression.

    Returns each named metric plus the task's score, the mean of its metrics (GLUE's convention for
    MRPC/QQP/STS-B), under the key ``score``. Scores are in [0, 100] as on the GLUE leaderboard.
    """
    preds = np.asarray(predictions)
    labels = np.asarray(labels)
    out: dict[str, float] = {}
    if {"pearson", "spearman"} & set(metrics):
        values = preds.reshape(-1).astype(np.float64)
        gold = labels.astype(np.float64)
        if np.std(values) == 0 or np.std(gold) == 0:
            out["pearson"] = out["spearman"] = 0.0   # constant predictions: correlation undefined
        else:
            out["pearson"] = 100 * _safe(pearsonr(values, gold)[0])
            out["spearman"] = 100 * _safe(spearmanr(values, gold)[0])
    else:
        classes = preds.argmax(-1) if preds.ndim == 2 else preds.astype(np.int64)
        gold = labels.astype(np.int64)
        if "accuracy" in metrics:
            out["accuracy"] = 100 * float(accuracy_score(gold, classes))
        if "f1" in metrics:
            out["f1"] = 100 * float(f1_score(gold, classes, zero_division=0))
        if "mcc" in metrics:
            out["mcc"] = 100 * _safe(matthews_corrcoef(gold, classes))
    out = {k: out[k] for k in metrics}
    out["score"] = float(np.mean([out[k] for k in metrics]))
    return out


def glue_average(task_scores: dict[str, float]) -> float:
    """Mean over tasks of each task's score (itself the mean of its metrics)."""
    if not task_scores:
        raise ValueError("glue_average of no tasks")
    return float(np.mean(list(task_scores.values())))
