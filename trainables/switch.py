"""Per-task KD switch (Lu et al., NAACL 2022): criteria over a task's dev-metric history.

A task switches when its criterion fires; the loop then takes the weights of that task's best evaluation,
predicts the task's train set with them, and trains the task against those predictions from then on.
``TaskSwitch`` is plain data (JSON-serialisable) so that it travels in checkpoints. ``CRITERIA``: name ->
function(state, step, score) -> fire now; it reads its parameters from the state (copied from ``Switch``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .registry import choose


@dataclass
class TaskSwitch:
    criterion: str = "never"
    patience: int = 3
    min_delta: float = 0.0
    ema: float = 0.5
    at_step: int | None = None
    best: float | None = None            # best raw dev score
    best_step: int | None = None
    smoothed: float | None = None        # EMA of the dev score
    best_smoothed: float | None = None
    since_best: int = 0                  # evaluations since the criterion's reference improved
    history: list = field(default_factory=list)   # [(step, score)]
    switched_at: int | None = None

    @property
    def switched(self) -> bool:
        return self.switched_at is not None

    def observe(self, *, step: int, score: float) -> tuple[bool, bool]:
        """Record one evaluation. Returns (new_best, switch_now)."""
        self.history.append([int(step), float(score)])
        new_best = self.best is None or score > self.best
        if new_best:
            self.best, self.best_step = float(score), int(step)
        if self.switched:
            return new_best, False
        return new_best, choose(CRITERIA, self.criterion, "switch criterion")(self, step=step, score=score)

    @classmethod
    def from_config(cls, config) -> "TaskSwitch":
        """A fresh state for a task's ``Switch`` settings (the fields both have: the criterion's parameters)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSwitch":
        return cls(**d)


def _no_gain(s: TaskSwitch, value: float, delta: float = 0.0) -> bool:
    """Count an evaluation whose ``value`` does not beat the reference by more than ``delta``; True after
    ``patience`` of them in a row."""
    if s.best_smoothed is None or value > s.best_smoothed + delta:
        s.best_smoothed, s.since_best = float(value), 0
    else:
        s.since_best += 1
    return s.since_best >= s.patience


def _ema(s: TaskSwitch, *, step: int, score: float) -> bool:
    s.smoothed = score if s.smoothed is None else s.ema * score + (1 - s.ema) * s.smoothed
    return _no_gain(s, s.smoothed)


CRITERIA = {
    "never": lambda s, *, step, score: False,
    "patience": lambda s, *, step, score: _no_gain(s, score),
    "min_delta": lambda s, *, step, score: _no_gain(s, score, s.min_delta),
    "ema": _ema,
    "fixed_step": lambda s, *, step, score: s.at_step is not None and step >= s.at_step,
}


def switch_steps(*, criterion: str, scores: list[float], steps: list[int] | None = None, **kw) -> int | None:
    """Replay a score sequence; the step at which the switch fires (None if never). For tests and reports."""
    s = TaskSwitch(criterion=criterion, **kw)
    steps = steps or list(range(len(scores)))
    for st, sc in zip(steps, scores):
        _, fire = s.observe(step=st, score=sc)
        if fire:
            return st
    return None
