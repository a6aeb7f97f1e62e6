"""GLUE's official metrics and the GLUE average, in numpy. Imports nothing of the project.

The definitions are scikit-learn's (accuracy, binary F1 of class 1, Matthews correlation for any number of
classes) and scipy's (Pearson; Spearman = Pearson of average ranks, ties sharing their mean rank);
``tests/trainables/test_metrics.py`` checks them against those libraries. They are written here because
importing scikit-learn and scipy.stats costs each Ray Train worker (one per trial) about a second of start-up.
"""
from __future__ import annotations

import math

import numpy as np


def accuracy_score(gold: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(gold == pred)) if len(gold) else 0.0


def f1_score(gold: np.ndarray, pred: np.ndarray) -> float:
    """Binary F1 of class 1; 0 when there is no positive in either (scikit-learn's ``zero_division=0``)."""
    tp = int(np.sum((pred == 1) & (gold == 1)))
    wrong = int(np.sum(pred != gold))
    return 2 * tp / (2 * tp + wrong) if tp else 0.0


def matthews_corrcoef(gold: np.ndarray, pred: np.ndarray) -> float:
    """Multi-class MCC from the confusion matrix (Gorodkin's R_K, as scikit-learn); 0 when undefined."""
    classes, inverse = np.unique(np.concatenate([gold, pred]), return_inverse=True)
    k, n = len(classes), len(gold)
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (inverse[:n], inverse[n:]), 1.0)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    correct, total = np.trace(cm), cm.sum()
    cov_tp = correct * total - t_sum @ p_sum
    cov_pp = total ** 2 - p_sum @ p_sum
    cov_tt = total ** 2 - t_sum @ t_sum
    return float(cov_tp / math.sqrt(cov_tt * cov_pp)) if cov_tt * cov_pp > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(np.clip((x @ y) / denom, -1.0, 1.0)) if denom > 0 else 0.0


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks (scipy's ``rankdata(method="average")``)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


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
            out["pearson"] = 100 * _safe(pearson(values, gold))
            out["spearman"] = 100 * _safe(spearman(values, gold))
    else:
        classes = preds.argmax(-1) if preds.ndim == 2 else preds.astype(np.int64)
        gold = labels.astype(np.int64)
        if "accuracy" in metrics:
            out["accuracy"] = 100 * float(accuracy_score(gold, classes))
        if "f1" in metrics:
            out["f1"] = 100 * float(f1_score(gold, classes))
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
