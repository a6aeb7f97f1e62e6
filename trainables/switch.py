"""Per-task KD switch (Lu et al., NAACL 2022): criteria over a task's dev-metric history.

A task switches when its criterion fires; the loop then takes the weights of that task's best evaluation,
predicts the task's train set with them, and trains the task against those predictions from then on.
``TaskSwitch`` is plain data (JSON-serialisable) so that it travels in checkpoints.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
        fire = False
        c = self.criterion
        if c == "patience" or c == "min_delta":
            ref = self.best_smoothed          # best score that counted as an improvement
            delta = self.min_delta if c == "min_delta" else 0.0
            if ref is None or score > ref + delta:
                self.best_smoothed, self.since_best = float(score), 0
            else:
                self.since_best += 1
            fire = self.since_best >= self.patience
        elif c == "ema":
            self.smoothed = score if self.smoothed is None else self.ema * score + (1 - self.ema) * self.smoothed
            if self.best_smoothed is None or self.smoothed > self.best_smoothed:
                self.best_smoothed, self.since_best = self.smoothed, 0
            else:
                self.since_best += 1
            fire = self.since_best >= self.patience
        elif c == "fixed_step":
            fire = self.at_step is not None and step >= self.at_step
        elif c != "never":
            raise ValueError(f"unknown switch criterion {c!r}")
        return new_best, fire

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSwitch":
        return cls(**d)


def switch_steps(*, criterion: str, scores: list[float], steps: list[int] | None = None, **kw) -> int | None:
    """Replay a score sequence; the step at which the switch fires (None if never). For tests and reports."""
    s = TaskSwitch(criterion=criterion, **kw)
    steps = steps or list(range(len(scores)))
    for st, sc in zip(steps, scores):
        _, fire = s.observe(step=st, score=sc)
        if fire:
            return st
    return None
