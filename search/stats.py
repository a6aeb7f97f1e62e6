"""The report's tests: Welch's t over seeds, a paired bootstrap over dev examples, Holm over tasks.

numpy and scipy only (no ray, torch or wandb), like ``report.py``.

* ``welch``: two groups of independent runs (teachers and students share no training run, so seed i of one
  is not paired with seed i of the other): Welch's unequal-variance t-test on their per-seed scores.
* ``paired_bootstrap``: the models of both groups scored on the SAME dev examples. Each resample draws the
  dev examples with replacement (each dev split on its own), recomputes every model's task score on them with
  the task's own metrics (accuracy, binary F1, MCC, Pearson, Spearman; a task's score is the mean of its
  metrics and of its dev splits, as ``trainables.metrics.compute_metrics`` and ``Run.evaluate`` define it),
  averages the scores within each group (seeds averaged: each model counts once, as in the table's mean) and
  takes the difference. The p-value is two-sided: the share of resampled differences at least as far from
  the observed one as the observed one is from 0 (the bootstrap distribution shifted to the null), with the
  +1 correction. It covers the sampling of dev examples, not the randomness of training: with these models
  fixed, would another draw of dev examples show the difference? That gives a test power with 3 seeds.
* ``holm``: Holm-Bonferroni step-down adjusted p-values (the family: the tasks of one comparison).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

#: Number of bootstrap resamples.
BOOTSTRAP_RESAMPLES = 10_000
#: Fixed seed of the bootstrap, so reports are reproducible.
BOOTSTRAP_SEED = 0
_CHUNK = 500                              # resamples computed at once (bounds memory)
_REGRESSION = {"pearson", "spearman"}


def holm(pvalues) -> list[float]:
    """Holm-Bonferroni step-down adjusted p-values (monotone, capped at 1), in input order.

    Identical to ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]``.
    """
    p = np.asarray(list(pvalues), dtype=float)
    if p.ndim != 1:
        raise ValueError("holm: expected a flat sequence of p-values")
    if p.size == 0:
        return []
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="mergesort")
    adjusted_sorted = np.maximum.accumulate(p[order] * np.arange(m, 0, -1))
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(adjusted_sorted, 1.0)
    return [float(x) for x in adjusted]


def welch(candidate, baseline) -> dict:
    """Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) of two groups' per-seed scores:
    ``{"statistic", "p", "n"}``; p is None when undefined (fewer than 2 runs in a group, or both groups
    constant and different), 1 when both are constant and equal."""
    c = np.asarray(candidate, dtype=float)
    b = np.asarray(baseline, dtype=float)
    out = {"statistic": None, "p": None, "n": int(c.size + b.size)}
    if c.size < 2 or b.size < 2:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(c, b, equal_var=False)
    stat, p = float(res.statistic), float(res.pvalue)
    out["statistic"] = stat if math.isfinite(stat) else None
    if math.isfinite(p):
        out["p"] = p
    elif math.isclose(float(c.mean()), float(b.mean()), rel_tol=0.0, abs_tol=1e-12):
        out["p"] = 1.0
    return out


def welch_interval(candidate, baseline, *, level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` confidence interval of mean(candidate) - mean(baseline) that Welch's test inverts
    (Welch-Satterthwaite degrees of freedom); None with fewer than 2 runs in a group or no spread at all."""
    c = np.asarray(candidate, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if c.size < 2 or b.size < 2:
        return None
    vc, vb = c.var(ddof=1) / c.size, b.var(ddof=1) / b.size
    if vc + vb == 0:
        return None
    df = (vc + vb) ** 2 / (vc ** 2 / (c.size - 1) + vb ** 2 / (b.size - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(vc + vb)
    diff = float(c.mean() - b.mean())
    return diff - half, diff + half


# --------------------------------------------------------------------------- task metrics, many resamples at once


def _from_confusion(conf: np.ndarray, metrics) -> np.ndarray:
    """Task scores (x100, the mean of ``metrics``) from confusion counts ``conf`` (R, k, k) [gold, pred]."""
    total = conf.sum(axis=(1, 2))
    correct = np.trace(conf, axis1=1, axis2=2)
    parts = []
    for name in metrics:
        if name == "accuracy":
            parts.append(np.where(total > 0, correct / np.maximum(total, 1), 0.0))
        elif name == "f1":                               # binary F1 of class 1, 0 without a true positive
            tp = conf[:, 1, 1]
            parts.append(np.where(tp > 0, 2 * tp / np.maximum(2 * tp + total - correct, 1), 0.0))
        elif name == "mcc":                              # Gorodkin's R_K, 0 when undefined
            t_sum, p_sum = conf.sum(axis=2), conf.sum(axis=1)
            cov_tp = correct * total - np.einsum("rk,rk->r", t_sum, p_sum)
            cov_pp = total ** 2 - np.einsum("rk,rk->r", p_sum, p_sum)
            cov_tt = total ** 2 - np.einsum("rk,rk->r", t_sum, t_sum)
            den = cov_tt * cov_pp
            parts.append(np.where(den > 0, cov_tp / np.sqrt(np.where(den > 0, den, 1.0)), 0.0))
        else:
            raise ValueError(f"metric {name!r} is not a classification metric")
    return 100.0 * np.mean(parts, axis=0)


def _correlation(sxy: np.ndarray, sxx: np.ndarray, syy: np.ndarray) -> np.ndarray:
    den = np.sqrt(np.maximum(sxx, 0.0) * np.maximum(syy, 0.0))
    return np.where(den > 0, np.clip(sxy / np.where(den > 0, den, 1.0), -1.0, 1.0), 0.0)


def _value_counts(w: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How often each distinct value of ``x`` is drawn in each resample (counts ``w`` (R, n) of each example):
    (counts (R, distinct values in order), the examples' sort order, each sorted example's value index)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    return np.add.reduceat(w[:, order], np.flatnonzero(new), axis=1), order, np.cumsum(new) - 1


def _ranks(counts: np.ndarray, order: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Each example's rank in each resample: the resampled values' average ranks, ties sharing their mean rank
    (``scipy.stats.rankdata`` of the resampled multiset), looked up per example."""
    of_value = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2
    ranks = np.empty((counts.shape[0], order.size))
    ranks[:, order] = of_value[:, value]
    return ranks


def _regression_rows(w: np.ndarray, preds, gold: np.ndarray, metrics) -> np.ndarray:
    """Task scores (x100, mean of ``metrics``) of every model in each resample (counts ``w`` (R, n)): (R, M).
    Pearson from weighted moments; Spearman = Pearson of the resample's average ranks (their mean is (N+1)/2).
    0 where the drawn predictions or gold values are constant (``compute_metrics``' convention)."""
    total = w.sum(axis=1)
    mid = total * ((total + 1) / 2) ** 2                      # N * mean rank^2
    g_counts, g_order, g_value = _value_counts(w, gold)
    g_ranks = _ranks(g_counts, g_order, g_value) if "spearman" in metrics else None
    g_sum = w @ gold
    g_ss = w @ (gold * gold) - g_sum ** 2 / total
    out = []
    for p in preds:
        counts, order, value = _value_counts(w, p)
        parts = []
        for name in metrics:
            if name == "pearson":
                p_sum = w @ p
                parts.append(_correlation(w @ (p * gold) - p_sum * g_sum / total,
                                          w @ (p * p) - p_sum ** 2 / total, g_ss))
            elif name == "spearman":
                r = _ranks(counts, order, value)
                parts.append(_correlation(np.einsum("rn,rn,rn->r", w, r, g_ranks) - mid,
                                          np.einsum("rn,rn,rn->r", w, r, r) - mid,
                                          np.einsum("rn,rn,rn->r", w, g_ranks, g_ranks) - mid))
            else:
                raise ValueError(f"metric {name!r} is not a regression metric")
        constant = (counts.max(axis=1) == total) | (g_counts.max(axis=1) == total)
        out.append(np.where(constant, 0.0, 100.0 * np.mean(parts, axis=0)))
    return np.column_stack(out)


def _classification_scores(gold, preds, metrics, *, rng, n_resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """(observed (M,), resampled (R, M)) scores of M models. The scores depend only on how many examples of
    each pattern (gold, prediction of every model) a resample holds: a multinomial draw over the distinct
    patterns, so a resample costs O(patterns), not O(examples)."""
    rows = np.column_stack([gold, *preds]).astype(np.int64)
    patterns, counts = np.unique(rows, axis=0, return_counts=True)
    k = int(max(2, patterns.max() + 1))
    n = int(counts.sum())
    # cells[m]: (patterns, k*k) indicator of the confusion cell [gold, prediction of model m] of each pattern
    cells = [np.eye(k * k)[patterns[:, 0] * k + patterns[:, m + 1]] for m in range(len(preds))]

    def scores(draws: np.ndarray) -> np.ndarray:               # draws: (R, patterns) counts
        return np.column_stack([_from_confusion((draws @ c).reshape(-1, k, k), metrics) for c in cells])

    observed = scores(counts[None, :].astype(float))[0]
    chunks = []
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        chunks.append(scores(rng.multinomial(n, counts / n, size=size).astype(float)))
    return observed, np.vstack(chunks)


def _regression_scores(gold, preds, metrics, *, rng, n_resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """(observed (M,), resampled (R, M)) scores of M regression models; a resample is drawn as example indices
    and scored as the count of each example in it (weighted moments and ranks, no sort per resample)."""
    gold = np.asarray(gold, dtype=np.float64)
    preds = [np.asarray(p, dtype=np.float64) - np.mean(p) for p in preds]    # centred: stabler moments
    gold = gold - gold.mean()
    n = gold.size
    observed = _regression_rows(np.ones((1, n)), preds, gold, metrics)[0]
    chunk = max(1, min(_CHUNK, 150_000 // n))                # (chunk, n) arrays that stay in cache
    chunks = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        w = np.bincount(idx.ravel(), minlength=size * n).reshape(size, n).astype(np.float64)
        chunks.append(_regression_rows(w, preds, gold, metrics))
    return observed, np.vstack(chunks)


def paired_bootstrap(splits, *, metrics, n_candidate: int, n_resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict:
    """Paired bootstrap over dev examples of one task (see the module docstring).

    ``splits``: one ``(gold, preds)`` per dev split, ``preds`` a list of every model's predictions aligned
    with ``gold`` (classes, or values for Pearson/Spearman): the ``n_candidate`` candidate models first,
    then the baseline's. ``metrics``: the task's metrics. Returns ``{"delta"`` (observed difference of the
    groups' mean task scores, points x100), ``"p"``, ``"ci"`` (95% percentile interval of the resampled
    differences), ``"n"`` (dev examples), ``"resamples"}``."""
    if n_resamples < 1 or not splits:
        raise ValueError("paired_bootstrap: need n_resamples >= 1 and at least one dev split")
    regression = bool(_REGRESSION & set(metrics))
    rng = np.random.default_rng(seed)
    observed, resampled, n = 0.0, np.zeros(n_resamples), 0
    for gold, preds in splits:
        gold = np.asarray(gold)
        if gold.ndim != 1 or gold.size == 0 or any(np.shape(p) != gold.shape for p in preds):
            raise ValueError("paired_bootstrap: every model's predictions must align with the non-empty gold labels")
        if not 0 < n_candidate < len(preds):
            raise ValueError("paired_bootstrap: need at least one candidate and one baseline model")
        fn = _regression_scores if regression else _classification_scores
        obs, res = fn(gold, preds, metrics, rng=rng, n_resamples=n_resamples)
        observed += obs[:n_candidate].mean() - obs[n_candidate:].mean()
        resampled += res[:, :n_candidate].mean(axis=1) - res[:, n_candidate:].mean(axis=1)
        n += gold.size
    observed, resampled = observed / len(splits), resampled / len(splits)
    extreme = int(np.count_nonzero(np.abs(resampled - observed) >= abs(observed) - 1e-9))
    lo, hi = np.percentile(resampled, [2.5, 97.5])
    return {"delta": float(observed), "p": float(min(1.0, (extreme + 1) / (n_resamples + 1))),
            "ci": [float(lo), float(hi)], "n": n, "resamples": n_resamples}
