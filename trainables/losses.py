"""Losses: teacher-annealed targets, KD (KD_LOSSES: soft CE / KL; MSE for regression), hidden-state MSE, MTL
weightings (WEIGHTINGS), PCGrad.

torch is imported inside the functions that need the module (the rest use tensor methods only), so the
recipe schema reads the registries' names without importing torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .registry import call_with, choose

if TYPE_CHECKING:
    import torch


def annealed_target_probs(*, gold: torch.Tensor, teacher_logits: torch.Tensor | None, lam: float,
                          num_classes: int, temperature: float = 1.0) -> torch.Tensor:
    """lambda*onehot(gold) + (1-lambda)*softmax(teacher/T): the BAM target for classification."""
    import torch
    import torch.nn.functional as F
    onehot = F.one_hot(gold.long(), num_classes).float()
    if teacher_logits is None or lam >= 1.0:
        return onehot
    soft = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    return lam * onehot + (1 - lam) * soft


def _soft_ce(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * logp).sum(-1)


def _kl(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return _soft_ce(logp, target) + (target * target.clamp_min(1e-12).log()).sum(-1)


# name -> per-example loss of log-probabilities against a target distribution (``anneal.loss``)
KD_LOSSES = {"ce": _soft_ce, "kl": _kl}


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, temperature: float = 1.0,
                       kind: str = "ce") -> torch.Tensor:
    """Mean over the batch of ``KD_LOSSES[kind]``: ce, -sum target*log softmax(logits/T); kl subtracts the
    target's entropy."""
    logp = (logits.float() / temperature).log_softmax(dim=-1)
    return choose(KD_LOSSES, kind, "KD loss")(logp, target).mean()


def task_loss(*, logits: torch.Tensor, gold: torch.Tensor, teacher: torch.Tensor | None, lam: float,
              regression: bool, temperature: float = 1.0, kind: str = "ce") -> torch.Tensor:
    """The loss of one task's batch against gold (weight ``lam``) and the teacher (weight 1 - ``lam``).

    Classification (Hinton et al. 2015): lam * CE(gold, softmax(z)) + (1-lam) * T^2 * KD(softmax(t/T),
    softmax(z/T)); the gold term at T = 1, the soft one times T^2 so that its gradients keep their size as T
    grows. At T = 1 and ``kind="ce"`` this is BAM's CE to the mixed target ``annealed_target_probs``.
    Regression (BAM): MSE to lam * gold + (1-lam) * teacher."""
    import torch.nn.functional as F
    if regression:
        target = gold.float() if teacher is None or lam >= 1.0 else lam * gold.float() + (1 - lam) * teacher.float()
        return F.mse_loss(logits.float(), target)
    hard = soft_cross_entropy(logits, F.one_hot(gold.long(), logits.shape[-1]).float(), kind=kind)  # = CE, kl too
    if teacher is None or lam >= 1.0:
        return hard
    soft = soft_cross_entropy(logits, (teacher.float() / temperature).softmax(-1), temperature=temperature, kind=kind)
    return lam * hard + (1 - lam) * temperature ** 2 * soft


def hidden_mse(student_states, teacher_states, projections, *, attention_mask) -> torch.Tensor:
    """MSE between projected student layers and mapped teacher layers, on real tokens only."""
    ls, lt = len(student_states) - 1, len(teacher_states) - 1
    m = attention_mask.unsqueeze(-1).float()
    total = 0.0
    for i in range(1, ls + 1):
        j = round(i * lt / ls)
        s = projections[i - 1](student_states[i].float())
        t = teacher_states[j].float()
        total = total + (((s - t) ** 2) * m).sum() / (m.sum() * t.shape[-1]).clamp(min=1)
    return total / ls


def dwa_weights(history: list[dict[str, float]], tasks: list[str], *, temperature: float = 2.0) -> dict[str, float]:
    """Dynamic Weight Average (Liu et al. 2019): w_k ∝ exp(r_k / T), r_k = L_k(t-1)/L_k(t-2); sums to K."""
    if len(history) < 2:
        return {t: 1.0 for t in tasks}
    prev, prev2 = history[-1], history[-2]
    r = {t: prev.get(t, 1.0) / max(prev2.get(t, 1.0), 1e-12) for t in tasks}
    e = {t: math.exp(r[t] / temperature) for t in tasks}
    z = sum(e.values())
    return {t: len(tasks) * e[t] / z for t in tasks}


def uncertainty_weighted(loss: torch.Tensor, log_var: torch.Tensor, *, regression: bool) -> torch.Tensor:
    """Kendall et al. 2018: L/(2σ²) + log σ for regression, L/σ² + log σ for classification."""
    precision = (-log_var).exp()
    return (0.5 if regression else 1.0) * precision * loss + 0.5 * log_var


@dataclass(frozen=True)
class Weighting:
    """One MTL weighting. ``factor(task, **context)``: a number on the task's static weight (``mtl.weights``);
    ``transform(loss, task, **context)``: the loss as the weighting trains it; ``learns_log_vars``: it trains a
    log-variance per task with the model (``log_vars`` in ``context``). Keyword parameters are filled from the
    MTL fields of the same name, ``tasks``, ``history`` (mean loss per task per evaluation window),
    ``log_vars`` and ``regression``."""
    factor: Callable = lambda task: 1.0
    transform: Callable = lambda loss, task: loss
    learns_log_vars: bool = False


WEIGHTINGS = {
    "static": Weighting(),
    "uncertainty": Weighting(learns_log_vars=True,
                             transform=lambda loss, task, *, log_vars, regression: uncertainty_weighted(
                                 loss, log_vars[task], regression=regression)),
    "dwa": Weighting(factor=lambda task, *, tasks, history, dwa_temperature: dwa_weights(
        history, tasks, temperature=dwa_temperature)[task]),
}


def weigh_task_loss(loss, task: str, *, weighting: str, weights: dict | None = None, **context):
    """``task``'s loss as its MTL weighting trains it, times its static weight and the weighting's factor
    (``**vars(mtl)``, plus the context a weighting may name)."""
    w = choose(WEIGHTINGS, weighting, "MTL weighting")
    factor = float((weights or {}).get(task, 1.0)) * call_with(w.factor, task, **context)
    return call_with(w.transform, loss, task, **context) * factor


def pcgrad(grads: list[torch.Tensor], *, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020): project each task's gradient off the others' it conflicts with; sum."""
    import torch
    projected = [g.clone() for g in grads]
    n = len(grads)
    for i in range(n):
        order = torch.randperm(n, generator=generator).tolist()
        for j in order:
            if j == i:
                continue
            dot = torch.dot(projected[i], grads[j])
            if dot < 0:
                projected[i] -= dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
    return torch.stack(projected).sum(0)
