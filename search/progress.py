"""Terminal progress: phases and a live trial table (rich), with an ETA, fed by a Ray Tune callback; a plain
line per event when stdout is not a terminal (logs stay readable); and ``console_to_log``, which sends Ray's,
Tune's and the libraries' own console output to a file while the table owns the terminal."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

from ray.tune import Callback


class LiveTable(Callback):
    """A rich table of trials that updates on every result (trial, state, evaluations done of the run's,
    current and best score, KD switches, parameters), the best trial so far and the errored ones in its title,
    and an ETA from the measured rate. ``console``: where it draws (default: this process's stdout); not a
    terminal: one plain line per trial start, result and end instead."""

    def __init__(self, *, title: str, total_trials: int, concurrency: int, metric: str = "glue_avg", console=None):
        self.title, self.total, self.concurrency, self.metric = title, total_trials, max(1, concurrency), metric
        self.rows: dict[str, dict] = {}
        self.started = time.time()
        self.durations: list[float] = []
        self.live = None
        self.console = console
        self._lock = threading.Lock()              # rows change in Tune's thread, are drawn in rich's

    def setup(self, **info):
        from rich.console import Console
        from rich.live import Live
        self.console = self.console or Console(file=terminal())
        if self.console.is_terminal:
            # redirect_stdout off: prints of Tune and the libraries go to console_to_log's file, not above the table
            self.live = Live(_Lazy(self._render), console=self.console, refresh_per_second=2, transient=False,
                             redirect_stdout=False, redirect_stderr=False)
            self.live.start()

    def __getstate__(self):                        # Tune pickles callbacks with the experiment
        return {**self.__dict__, "live": None, "console": None, "_lock": None}

    def __setstate__(self, state):
        self.__dict__.update({**state, "_lock": threading.Lock()})

    def _update(self):
        """Nothing to do on a terminal: the refresh thread draws the rows as they are (``_Lazy``)."""

    def _plain(self, tid: str | None, text: str) -> None:
        if self.live is None and self.console is not None:
            where = self.title if tid is None else f"{self.title} {tid}"
            self.console.print(f"{where}: {text}", markup=False, highlight=False, soft_wrap=True)

    def _eta(self) -> str:
        """Finished trials' mean duration, or (none finished yet) the running trials' measured time per
        evaluation times the evaluations of a whole run; the trials left share the concurrent slots."""
        done = sum(1 for r in self.rows.values() if r["state"] in ("DONE", "DONE (early stop)", "STOPPED", "ERROR"))
        if done >= self.total:
            return "-"
        per_trial = sum(self.durations) / len(self.durations) if self.durations else None
        if per_trial is None:
            rates = [(time.time() - r["t0"]) / r["iter"] * r["evals"] for r in self.rows.values()
                     if r["state"] == "RUNNING" and r["iter"] and r.get("evals")]
            per_trial = sum(rates) / len(rates) if rates else None
        if per_trial is None:
            return "-"
        left = (self.total - done) * per_trial / self.concurrency
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def _best(self) -> str:
        scored = [(r["best"], tid) for tid, r in self.rows.items() if r["best"] is not None]
        errored = sorted(tid for tid, r in self.rows.items() if r["state"] == "ERROR")
        best = f"best {max(scored)[0]:.2f} ({max(scored)[1]})" if scored else "best -"
        return best + (f"; errored: {', '.join(errored)}" if errored else "")

    def _shown(self) -> tuple[list[tuple[str, dict]], str]:
        """The rows that fit the terminal (all of them when they do), in trial order, and a note on the rest."""
        rows = sorted(self.rows.items())
        room = max(8, (self.console.height if self.console is not None else 40) - 8)
        if len(rows) <= room:
            return rows, ""
        order = {"RUNNING": 0, "ERROR": 1}
        ranked = sorted(rows, key=lambda kv: (order.get(kv[1]["state"], 2 if kv[1]["best"] is not None else 3),
                                              -(kv[1]["best"] or 0.0), kv[0]))
        shown = sorted(ranked[:room - 1])
        left = [r["state"] for _, r in ranked[room - 1:]]
        counts = ", ".join(f"{left.count(k)} {k.lower()}" for k in sorted(set(left)))
        return shown, f"… {len(left)} more trials not shown ({counts})"

    def _render(self):
        from rich.table import Table
        with self._lock:
            shown, more = self._shown()
            t = Table(title=f"{self.title}  (elapsed {int(time.time() - self.started)}s, ETA {self._eta()}; "
                            f"{self._best()})", caption=more or None)
            cells = [(tid, r["state"], f"{r['iter']}/{r['evals'] or '?'}",
                      f"{r['metric']:.2f}" if r["metric"] is not None else "-",
                      f"{r['best']:.2f}" if r["best"] is not None else "-", _count(r.get("switched", "")),
                      r.get("params", "")) for tid, r in shown]
        heads = ("trial", "state", "evals", self.metric, "best", "switched")      # switched: tasks on KD
        used = sum(max([len(h), *(len(c[i]) for c in cells)]) + 3 for i, h in enumerate(heads)) + 4
        room = max(12, (self.console.width if self.console is not None else 120) - used)
        widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(heads)]
        for col, w in zip((*heads, "params"), (*widths, None)):   # one line per trial: the parameters get the rest
            t.add_column(col, no_wrap=True, min_width=w)
        for *c, params in cells:
            t.add_row(*c, params if len(params) <= room else params[:room - 1] + "…")
        return t

    def _row(self, trial) -> dict:
        params = trial.config.get("params") or {}
        short = ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                          for k, v in params.items())
        evals = (trial.config.get("loop") or {}).get("recipe", {}).get("evals")
        new = {"state": "PENDING", "iter": 0, "metric": None, "best": None, "params": short, "t0": time.time(),
               "evals": evals}
        with self._lock:
            return self.rows.setdefault(trial.trial_id, new)

    def on_trial_start(self, iteration, trials, trial, **info):
        r = self._row(trial)
        r["state"] = "RUNNING"
        self._update()
        self._plain(trial.trial_id, f"RUNNING {r['params']}".rstrip())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        r = self._row(trial)
        r["iter"] = result.get("training_iteration", r["iter"])
        r["metric"] = result.get(self.metric)
        if r["metric"] is not None:
            r["best"] = r["metric"] if r["best"] is None else max(r["best"], r["metric"])
        r["switched"] = result.get("switched", "")
        r["stopped_early"] = bool(result.get("stopped_early"))     # a teacher out of patience: converged
        self._update()
        score = f"{r['metric']:.2f}" if r["metric"] is not None else "-"
        best = f"{r['best']:.2f}" if r["best"] is not None else "-"
        self._plain(trial.trial_id, f"evaluation {r['iter']}/{r['evals'] or '?'}  {self.metric} {score}  best {best}"
                    + (f"  switched {r['switched']}" if r["switched"] else ""))

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
        self._plain(trial.trial_id, f"{r['state']} after {int(time.time() - r['t0'])}s")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, "DONE")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, "ERROR")

    def on_experiment_end(self, trials, **info):
        if self.live is not None:
            self.live.stop()                          # draws the last frame
        else:
            self._plain(None, f"ended; {self._best()}")


def _count(switched: str) -> str:
    """The table's "switched" cell: how many tasks have switched to KD ("rte,sst2" -> "2"); "" for none."""
    return str(len(switched.split(","))) if switched else ""


# loggers whose console output the table replaces while it runs (Ray, Tune, Train, Optuna's study lines)
_LOGGERS = ("ray", "optuna", "filelock")
_terminal: list = []                         # the stdout that console_to_log replaced (innermost last)


def terminal():
    """The real stdout, also inside ``console_to_log`` (where ``sys.stdout`` is the log file)."""
    import sys
    return _terminal[-1] if _terminal else sys.stdout


@contextlib.contextmanager
def console_to_log(path: Path):
    """While the live table owns the terminal: stdout (Tune's configuration box, its "View detailed results
    here" and TensorBoard lines, anything a library prints) and the console handlers of Ray's and Optuna's
    loggers go to ``path``; stderr stays the console (bam-search's own warnings and errors). Restored after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(path, "a", encoding="utf-8")
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    moved = []
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
                moved.append((lg, h))
        lg.addHandler(handler)
    import sys
    _terminal.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(log):
            yield
    finally:
        _terminal.pop()
        for name in _LOGGERS:
            logging.getLogger(name).removeHandler(handler)
        for lg, h in moved:
            lg.addHandler(h)
        log.close()


def phase(console, n: int, total: int, text: str) -> None:
    console.rule(f"[bold]phase {n}/{total}: {text}")


class _Lazy:
    """A renderable that asks for the table when rich draws it (at its refresh rate), not when a result comes."""

    def __init__(self, render):
        self.render = render

    def __rich__(self):
        return self.render()
