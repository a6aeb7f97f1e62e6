"""Trial start-up timing (``bench/startup.py``), off unless ``BAM_STARTUP_LOG`` names a file.

Every event is one JSON line ``{"t": epoch seconds, "event", "trial", "pid", "loaded"}`` appended to that file
by the process where it happens, in one ``O_APPEND`` write (lines from concurrent processes never tear);
``loaded`` lists the heavy libraries that process had imported by then. ``trainables.trial`` marks the Tune
function and the Train worker; ``TrainStartupTimes`` marks Train's controller and is switched on through
Ray's own variable, never by code: ``RAY_TRAIN_CALLBACKS=trainables.startup_log.TrainStartupTimes``.

It imports nothing a Train controller or worker has not already imported, so timing does not slow what it
times (the Tune-side callback lives in ``bench/startup.py`` for that reason: it needs ``ray.tune``).
"""
from __future__ import annotations

import json
import os
import sys
import time

from ray.train.v2._internal.execution.callback import (ControllerCallback, ReportCallback, WorkerCallback,
                                                       WorkerGroupCallback)

ENV = "BAM_STARTUP_LOG"
HEAVY = ("torch", "transformers", "datasets", "sklearn", "scipy", "pandas", "ray.tune", "ray.data")


def mark(event: str, *, trial: str | None, **extra) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    row = {"t": time.time(), "event": event, "trial": trial, "pid": os.getpid(),
           "loaded": [m for m in HEAVY if m in sys.modules], **extra}
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode())
    finally:
        os.close(fd)


class TrainStartupTimes(ControllerCallback, WorkerGroupCallback, WorkerCallback, ReportCallback):
    """Built where ``TorchTrainer.fit`` runs (the Tune trial), then lives in Train's controller; a copy runs
    in each worker (``after_init_train_context``)."""

    def __init__(self):
        try:
            from ray.train._internal.session import get_session
            self.trial = get_session().trial_id
        except Exception:  # noqa: BLE001 - a TorchTrainer outside Tune
            self.trial = None
        self._reported = False

    def after_controller_start(self, train_run_context):
        mark("controller_started", trial=self.trial)

    def before_worker_group_start(self, worker_group_context):
        mark("worker_group_start", trial=self.trial)

    def after_worker_group_start(self, worker_group):
        mark("worker_group_started", trial=self.trial)

    def after_worker_group_training_start(self, worker_group):
        mark("train_fn_launched", trial=self.trial)

    def after_init_train_context(self):
        mark("worker_context_ready", trial=self.trial)

    def after_controller_state_update(self, previous_state, current_state):
        if type(current_state).__name__ == "ShuttingDownState":
            mark("controller_saw_end", trial=self.trial)

    def after_report(self, training_report, metrics):
        if not self._reported:
            self._reported = True
            mark("controller_first_report", trial=self.trial)
