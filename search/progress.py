"""Terminal progress: phases and a live trial table (rich), with an ETA, fed by a Ray Tune callback."""
from __future__ import annotations

import time

from ray.tune import Callback


class LiveTable(Callback):
    """A rich table of trials that updates on every result; ETA from finished trials' durations."""

    def __init__(self, *, title: str, total_trials: int, concurrency: int, metric: str = "glue_avg"):
        self.title, self.total, self.concurrency, self.metric = title, total_trials, max(1, concurrency), metric
        self.rows: dict[str, dict] = {}
        self.started = time.time()
        self.durations: list[float] = []
        self.live = None

    def setup(self, **info):
        from rich.console import Console
        from rich.live import Live
        self.live = Live(self._render(), console=Console(), refresh_per_second=2, transient=False)
        self.live.start()

    def __getstate__(self):                        # Tune pickles callbacks with the experiment
        return {**self.__dict__, "live": None}

    def _update(self):
        if self.live is not None:
            self.live.update(self._render())

    def _eta(self) -> str:
        done = sum(1 for r in self.rows.values() if r["state"] in ("DONE", "DONE (early stop)", "STOPPED", "ERROR"))
        if not self.durations or done >= self.total:
            return "-"
        mean = sum(self.durations) / len(self.durations)
        left = (self.total - done) * mean / self.concurrency
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def _render(self):
        from rich.table import Table
        t = Table(title=f"{self.title}  (elapsed {int(time.time() - self.started)}s, ETA {self._eta()})")
        for col in ("trial", "state", "evals", self.metric, "best", "switched", "params"):
            t.add_column(col)
        for tid, r in sorted(self.rows.items()):
            t.add_row(tid, r["state"], str(r["iter"]), f"{r['metric']:.2f}" if r["metric"] is not None else "-",
                      f"{r['best']:.2f}" if r["best"] is not None else "-", r.get("switched", ""),
                      r.get("params", ""))
        return t

    def _row(self, trial) -> dict:
        params = trial.config.get("params") or {}
        short = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                          for k, v in params.items())
        return self.rows.setdefault(trial.trial_id, {"state": "PENDING", "iter": 0, "metric": None, "best": None,
                                                     "params": short[:60], "t0": time.time()})

    def on_trial_start(self, iteration, trials, trial, **info):
        self._row(trial)["state"] = "RUNNING"
        self._update()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        r = self._row(trial)
        r["iter"] = result.get("training_iteration", r["iter"])
        r["metric"] = result.get(self.metric)
        if r["metric"] is not None:
            r["best"] = r["metric"] if r["best"] is None else max(r["best"], r["metric"])
        r["switched"] = result.get("switched", "")
        r["stopped_early"] = bool(result.get("stopped_early"))     # a teacher out of patience: converged
        self._update()

    def _finish(self, trial, state):
        r = self._row(trial)
        evals = trial.config.get("loop", {}).get("recipe", {}).get("evals")
        r["state"] = state
        if state == "DONE" and r.get("stopped_early"):
            r["state"] = "DONE (early stop)"           # its own patience ran out: finished, not cut by the scheduler
        elif state == "DONE" and evals and r["iter"] < evals:
            r["state"] = "STOPPED"
        self.durations.append(time.time() - r["t0"])
        self._update()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "DONE")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "ERROR")

    def on_experiment_end(self, trials, **info):
        self._update()
        if self.live is not None:
            self.live.stop()


def phase(console, n: int, total: int, text: str) -> None:
    console.rule(f"[bold]phase {n}/{total}: {text}")
