"""Losses: teacher-annealed targets, KD (soft CE / KL / MSE), hidden-state MSE, MTL weightings, PCGrad."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def annealed_target_probs(*, gold: torch.Tensor, teacher_logits: torch.Tensor | None, lam: float,
                          num_classes: int, temperature: float = 1.0) -> torch.Tensor:
    """lambda*onehot(gold) + (1-lambda)*softmax(teacher/T): the BAM target for classification."""
    onehot = F.one_hot(gold.long(), num_classes).float()
    if teacher_logits is None or lam >= 1.0:
        return onehot
    soft = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    return lam * onehot + (1 - lam) * soft


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, temperature: float = 1.0,
                       kind: str = "ce") -> torch.Tensor:
    """Mean over the batch of -sum target*log softmax(logits/T); ``kl`` subtracts the target's entropy."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    ce = -(target * logp).sum(-1)
    if kind == "kl":
        ce = ce + (target * torch.log(target.clamp_min(1e-12))).sum(-1)
    return ce.mean()


def task_loss(*, logits: torch.Tensor, gold: torch.Tensor, teacher: torch.Tensor | None, lam: float,
              regression: bool, temperature: float = 1.0, kind: str = "ce") -> torch.Tensor:
    """The loss of one task's batch against its annealed target (regression: mse to the mixed value)."""
    if regression:
        target = gold.float() if teacher is None or lam >= 1.0 else lam * gold.float() + (1 - lam) * teacher.float()
        return F.mse_loss(logits.float(), target)
    target = annealed_target_probs(gold=gold, teacher_logits=teacher, lam=lam, num_classes=logits.shape[-1],
                                   temperature=temperature)
    return soft_cross_entropy(logits, target, temperature=temperature, kind=kind)


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
    precision = torch.exp(-log_var)
    return (0.5 if regression else 1.0) * precision * loss + 0.5 * log_var


def pcgrad(grads: list[torch.Tensor], *, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020): project each task's gradient off the others' it conflicts with; sum."""
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
