"""Pure functions of training progress p in [0, 1]: teacher annealing (ANNEAL), task sampling (SAMPLERS), LR
after warm-up (LR_DECAYS), layer scales, unfreezing.

Imports nothing of the project but ``registry``, so every function is trivially unit-testable.
"""
from __future__ import annotations

import math

import numpy as np

from .registry import call_with, choose

# ------------------------------------------------------------------------------------------- annealing


def _none(p):
    return 1.0


def _constant(p, *, w=0.5):
    return float(w)


def _linear(p):
    return p


def _cosine(p):
    return (1 - math.cos(math.pi * p)) / 2


def _exponential(p, *, k=10.0):
    if k == 0:
        return p
    if k > 0:                                       # e^{k(p-1)} (1-e^{-kp}) / (1-e^{-k}): no overflow
        return math.exp(k * (p - 1)) * math.expm1(-k * p) / math.expm1(-k)
    return math.expm1(k * p) / math.expm1(k)


def _step(p, *, p0=0.5):
    return 0.0 if p < p0 else 1.0


def _delayed_linear(p, *, p0=0.5):
    return 0.0 if p <= p0 else (1.0 if p0 >= 1 else (p - p0) / (1 - p0))


def _sigmoid(p, *, p0=0.5, k=10.0):
    lo, hi = _logistic(-k * p0), _logistic(k * (1 - p0))
    return (_logistic(k * (p - p0)) - lo) / (hi - lo) if hi > lo else p


def _logistic(z: float) -> float:
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    e = math.exp(z)
    return e / (1 + e)


# name -> lambda(p), p clamped to [0, 1]; keyword parameters are the Anneal fields of the same name.
ANNEAL = {"none": _none, "constant": _constant, "linear": _linear, "cosine": _cosine, "exponential": _exponential,
          "step": _step, "delayed_linear": _delayed_linear, "sigmoid": _sigmoid}


def anneal_lambda(p: float, *, schedule: str, **params) -> float:
    """Weight of the gold label in the target: target = lambda*gold + (1-lambda)*teacher.

    none: 1 (gold only); constant: w; linear: p (BAM); cosine: (1-cos(pi p))/2; exponential:
    (e^{kp}-1)/(e^k-1); step: 0 before p0, 1 after; delayed_linear: 0 until p0 then linear to 1;
    sigmoid: logistic around p0 with steepness k, rescaled to hit 0 at p=0 and 1 at p=1.
    ``params``: the schedule's parameters (``**vars(anneal)``); those it does not take are ignored.
    """
    return call_with(choose(ANNEAL, schedule, "anneal schedule"), min(max(float(p), 0.0), 1.0), **params)


# ------------------------------------------------------------------------------------------- sampling

def _size_alpha(n, *, p=0.0, alpha=0.75, alpha_end=None):
    a = alpha if alpha_end is None else alpha + (alpha_end - alpha) * min(max(p, 0.0), 1.0)
    return n ** a


def _by_weights(n, *, names, weights=None):
    return np.asarray([float((weights or {}).get(t, 0.0)) for t in names])


# name -> unnormalised weights of the tasks (sizes ``n``, in the order of ``names``); keyword parameters are
# the Sampling fields of the same name, and ``p``.
SAMPLERS = {"proportional": lambda n: n, "size_alpha": _size_alpha,
            "temperature": lambda n, *, temperature=1.0: n ** (1.0 / temperature),
            "uniform": lambda n: np.ones_like(n), "weights": _by_weights}


def sampling_weights(sizes: dict[str, int], *, method: str = "size_alpha", **params) -> dict[str, float]:
    """Probability of drawing each task; sums to 1.

    proportional: n_i; size_alpha: n_i^alpha (BAM: 0.75), with alpha moving linearly to alpha_end over
    training when given (time-varying, as jiant's TimeDependentProb / MT-DNN's annealed sampling);
    temperature: n_i^(1/T); uniform; weights: explicit (tasks missing from the mapping get 0).
    ``params``: ``p`` and the method's parameters (``**vars(sampling)``); those it does not take are ignored.
    """
    names = list(sizes)
    n = np.asarray([float(sizes[t]) for t in names])
    raw = call_with(choose(SAMPLERS, method, "sampling method"), n, names=names, **params)
    total = raw.sum()
    if not total > 0:
        raise ValueError("sampling weights sum to zero")
    return {t: float(v / total) for t, v in zip(names, raw)}


# ------------------------------------------------------------------------------------------- LR etc.

def _linear_decay(step, *, total, warmup_steps):
    return max(0.0, (total - step) / max(1, total - warmup_steps))


# name -> LR multiplier after the warm-up (which ends at step ``warmup_steps``).
LR_DECAYS = {"linear": _linear_decay, "constant": lambda step: 1.0}


def lr_multiplier(step: int, *, total: int, warmup: float, decay: str = "linear") -> float:
    """Linear warmup over the first ``warmup`` fraction of steps, then linear decay to 0 (BAM) or, with
    ``decay="constant"``, the full rate to the end (Hugging Face's ``constant_with_warmup``)."""
    w = int(total * warmup)
    if step < w:
        return (step + 1) / w
    return call_with(choose(LR_DECAYS, decay, "lr decay"), step, total=total, warmup_steps=w)


def layer_lr_scale(depth: int, *, num_layers: int, decay: float) -> float:
    """Layer-wise LR decay as BAM's ``optimization._get_edecay_lrs``: lr * decay^(num_layers+2-depth), depths
    from ``model.layer_depths`` (embeddings 0, layer i -> i+1, pooler num_layers+1, heads num_layers+2)."""
    return decay ** (num_layers + 2 - depth)


def unfrozen_layers(p: float, *, num_layers: int) -> int:
    """Gradual unfreezing: one layer per stage from the top; stage = equal slice of training.

    Stage 0 trains the heads and the top layer; at the last stage every layer (and the embeddings) train.
    """
    stages = num_layers + 1
    stage = min(stages - 1, int(min(max(p, 0.0), 1.0) * stages))
    return stage + 1
