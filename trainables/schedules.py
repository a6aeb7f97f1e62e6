"""Pure functions of training progress p in [0, 1]: teacher annealing, task sampling, LR, unfreezing.

Imports nothing of the project, so every function is trivially unit-testable.
"""
from __future__ import annotations

import math

import numpy as np


def anneal_lambda(p: float, *, schedule: str, w: float = 0.5, p0: float = 0.5, k: float = 10.0) -> float:
    """Weight of the gold label in the target: target = lambda*gold + (1-lambda)*teacher.

    none: 1 (gold only); constant: w; linear: p (BAM); cosine: (1-cos(pi p))/2; exponential:
    (e^{kp}-1)/(e^k-1); step: 0 before p0, 1 after; delayed_linear: 0 until p0 then linear to 1;
    sigmoid: logistic around p0 with steepness k, rescaled to hit 0 at p=0 and 1 at p=1.
    """
    p = min(max(float(p), 0.0), 1.0)
    if schedule == "none":
        return 1.0
    if schedule == "constant":
        return float(w)
    if schedule == "linear":
        return p
    if schedule == "cosine":
        return (1 - math.cos(math.pi * p)) / 2
    if schedule == "exponential":
        if k == 0:
            return p
        if k > 0:                                   # e^{k(p-1)} (1-e^{-kp}) / (1-e^{-k}): no overflow
            return math.exp(k * (p - 1)) * math.expm1(-k * p) / math.expm1(-k)
        return math.expm1(k * p) / math.expm1(k)
    if schedule == "step":
        return 0.0 if p < p0 else 1.0
    if schedule == "delayed_linear":
        return 0.0 if p <= p0 else (1.0 if p0 >= 1 else (p - p0) / (1 - p0))
    if schedule == "sigmoid":
        lo, hi = _logistic(-k * p0), _logistic(k * (1 - p0))
        f = lambda x: _logistic(k * (x - p0))  # noqa: E731
        return (f(p) - lo) / (hi - lo) if hi > lo else p
    raise ValueError(f"unknown anneal schedule {schedule!r}")


def _logistic(z: float) -> float:
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)


def sampling_weights(sizes: dict[str, int], *, p: float = 0.0, method: str = "size_alpha", alpha: float = 0.75,
                     alpha_end: float | None = None, temperature: float = 1.0,
                     weights: dict[str, float] | None = None) -> dict[str, float]:
    """Probability of drawing each task; sums to 1.

    proportional: n_i; size_alpha: n_i^alpha (BAM: 0.75), with alpha moving linearly to alpha_end over
    training when given (time-varying, as jiant's TimeDependentProb / MT-DNN's annealed sampling);
    temperature: n_i^(1/T); uniform; weights: explicit (tasks missing from the mapping get 0).
    """
    names = list(sizes)
    n = np.asarray([float(sizes[t]) for t in names])
    if method == "proportional":
        raw = n
    elif method == "size_alpha":
        a = alpha if alpha_end is None else alpha + (alpha_end - alpha) * min(max(p, 0.0), 1.0)
        raw = n ** a
    elif method == "temperature":
        raw = n ** (1.0 / temperature)
    elif method == "uniform":
        raw = np.ones_like(n)
    elif method == "weights":
        raw = np.asarray([float((weights or {}).get(t, 0.0)) for t in names])
    else:
        raise ValueError(f"unknown sampling method {method!r}")
    total = raw.sum()
    if not total > 0:
        raise ValueError("sampling weights sum to zero")
    return {t: float(v / total) for t, v in zip(names, raw)}


def lr_multiplier(step: int, *, total: int, warmup: float, decay: str = "linear") -> float:
    """Linear warmup over the first ``warmup`` fraction of steps, then linear decay to 0 (BAM) or, with
    ``decay="constant"``, the full rate to the end (Hugging Face's ``constant_with_warmup``)."""
    w = int(total * warmup)
    if step < w:
        return (step + 1) / w
    if decay == "constant":
        return 1.0
    if decay != "linear":
        raise ValueError(f"decay {decay!r}: linear or constant")
    return max(0.0, (total - step) / max(1, total - w))


def layer_lr_scale(depth: int, *, num_layers: int, decay: float) -> float:
    """Layer-wise LR decay: the top (heads, depth num_layers+1) gets 1, each layer below decay times less."""
    return decay ** (num_layers + 1 - depth)


def unfrozen_layers(p: float, *, num_layers: int) -> int:
    """Gradual unfreezing: one layer per stage from the top; stage = equal slice of training.

    Stage 0 trains the heads and the top layer; at the last stage every layer (and the embeddings) train.
    """
    stages = num_layers + 1
    stage = min(stages - 1, int(min(max(p, 0.0), 1.0) * stages))
    return stage + 1
