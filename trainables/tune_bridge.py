"""From a trial's Ray Train run to Ray Tune, with a checkpoint Tune can hand to another trial: used under PBT
only (``--scheduler pbt``); every other sweep reports through Ray's own ``TuneReportCallback``.

Ray 2.60's ``ray.tune.integration.ray_train.TuneReportCallback`` forwards each Train report's metrics (and
the checkpoint's path as a metric) but no Tune checkpoint, so PBT has nothing to exploit and a restored trial
has nothing to restore from. Here the Train controller puts each report on a queue (``ToTune``); the trial's
driver function runs ``trainer.fit()`` in a thread and reports every item to Tune itself, with a small Tune
checkpoint: ``bam_checkpoint.json``, naming the trial, its Train run and the Train checkpoint folder.

Every report that goes to Tune (through either callback) is first appended to the trial's report history,
``experiments/<name>/reports/<trial>.jsonl`` (``ReportHistory``). Tune restarts a trial that has no Tune
checkpoint (any trial of a resumed non-PBT sweep, or one killed before Tune saved its state) from scratch and
rewrites its ``result.json``; the driver then replays the history to Tune before training on, so the trial's
rows survive, and the Train run's repeat of a row Tune already has (a run resumed at its end re-reports its last
evaluation) is dropped.

When Tune restarts a trial from such a checkpoint (``train_run_for``):

* its own (a restored experiment): the same Train run, which resumes from its own latest checkpoint;
* another trial's (a PBT exploit; ``search/pbt.py`` copies the donor's Train checkpoint first): a new Train
  run, ``train-<trial>-from-<lineage>``, whose loop starts from that folder (``resume_from``).
"""
from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

from ray.train.v2.api.callback import UserCallback
from ray.tune.integration.ray_train import TuneReportCallback

POINTER = "bam_checkpoint.json"
CHECKPOINT_PATH_KEY = "checkpoint_path"          # the metric TuneReportCallback used for the same thing


def write_pointer(directory: Path, pointer: dict) -> None:
    from .storage import atomic_write
    atomic_write(Path(directory) / POINTER, json.dumps(pointer, indent=1).encode())


def read_pointer(directory: Path) -> dict | None:
    try:
        return json.loads((Path(directory) / POINTER).read_text())
    except (OSError, ValueError):
        return None


def pointer_of(checkpoint) -> dict | None:
    """The pointer inside a Tune checkpoint (``ray.tune.get_checkpoint()``), or None."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return read_pointer(Path(d))


def train_run_for(trial_id: str, pointer: dict | None) -> tuple[str, str | None]:
    """(Train run name, checkpoint folder to start from or None) for a trial (re)started from ``pointer``."""
    if not pointer:
        return f"train-{trial_id}", None
    if pointer.get("trial_id") == trial_id:
        return pointer.get("run") or f"train-{trial_id}", None
    lineage = pointer.get("lineage") or f"{pointer.get('trial_id')}-step{pointer.get('step')}"
    return f"train-{trial_id}-from-{lineage}", pointer["checkpoint"]


class ReportHistory:
    """What one trial has reported to Tune, one JSON line per report, with the Train run it came from.

    Rewritten whole (atomically, through ``Storage``) on each report: a few KB per trial. ``floor`` is the last
    step this trial's current Train run has reported; a later report at or below it repeats a row and is dropped.
    """

    def __init__(self, storage: str, *, experiment: str, trial_id: str, run_name: str):
        self.storage, self.parts = storage, ("experiments", experiment, "reports", f"{trial_id}.jsonl")
        self.run_name = run_name
        self._st = None
        self.rows = self.load()
        self.floor = max((r["step"] for r in self.rows if r.get("_run") == run_name and "step" in r), default=None)

    def __getstate__(self):                       # sent to the Train controller: without the open filesystem
        return {**self.__dict__, "_st": None}

    def _storage(self):
        from .storage import Storage
        if self._st is None:
            self._st = Storage.resolve(self.storage)
        return self._st

    def load(self) -> list[dict]:
        try:
            text = self._storage().read_bytes(*self.parts).decode()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:                    # not ours to judge: replay what can be read
                break
        return out

    def admit(self, item: dict) -> bool:
        """Record ``item`` (True) unless it repeats a step this run has already reported (False)."""
        step = item.get("step")
        if step is not None and self.floor is not None and step <= self.floor:
            return False
        self.rows.append({**item, "_run": self.run_name})
        self._storage().write_bytes(
            *self.parts, data="".join(json.dumps(r, default=str) + "\n" for r in self.rows).encode())
        if step is not None:
            self.floor = step
        return True

    def replay(self) -> list[dict]:
        """The rows to hand Tune again, without the bookkeeping key."""
        return [{k: v for k, v in r.items() if k != "_run"} for r in self.rows]


def report_item(metrics: list[dict], checkpoint) -> dict:
    item = dict(metrics[0])                       # rank 0's metrics, as TuneReportCallback sends them
    if checkpoint is not None:
        item[CHECKPOINT_PATH_KEY] = checkpoint.path
    return item


class ToTune(UserCallback):
    """Runs in the Train controller: each report's metrics (rank 0) and checkpoint path onto the queue."""

    def __init__(self, queue, history: ReportHistory):
        self.queue, self.history = queue, history

    def after_report(self, run_context, metrics, checkpoint):
        item = report_item(metrics, checkpoint)
        if self.history.admit(item):
            self.queue.put(item)                  # blocks while Tune handles the previous one


class RecordedTuneReport(TuneReportCallback):
    """Ray's ``TuneReportCallback``, each report first admitted to the trial's ``history`` (repeats not sent)."""

    def __init__(self, history: ReportHistory):
        super().__init__()
        self.history = history

    def after_report(self, run_context, metrics, checkpoint):
        if self.history.admit(report_item(metrics, checkpoint)):
            super().after_report(run_context, metrics, checkpoint)


def report_to_tune(item: dict, *, trial_id: str, run_name: str) -> None:
    import ray.tune
    path = item.get(CHECKPOINT_PATH_KEY)
    if not path:
        ray.tune.report(item)
        return
    with tempfile.TemporaryDirectory(prefix="bam-tune-checkpoint-") as d:
        write_pointer(Path(d), {"trial_id": trial_id, "run": run_name, "checkpoint": path, "step": item.get("step")})
        ray.tune.report(item, checkpoint=ray.tune.Checkpoint.from_directory(d))


def fit_reporting_to_tune(trainer, queue, *, trial_id: str, run_name: str, poll_s: float = 1.0):
    """``trainer.fit()`` in a thread; every report it makes goes to Tune from this (the trial's) thread."""
    from ray.util.queue import Empty
    box: dict = {}

    def fit():
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 - re-raised in the trial's thread below
            box["error"] = e

    thread = threading.Thread(target=fit, name=f"bam-fit-{trial_id}", daemon=True)
    thread.start()
    while True:
        try:
            item = queue.get(timeout=poll_s)
        except Empty:
            if thread.is_alive():
                continue
            try:                                  # the controller puts before fit() returns: drain once
                item = queue.get(block=False)
            except Empty:
                break
        report_to_tune(item, trial_id=trial_id, run_name=run_name)
    thread.join()
    try:
        queue.shutdown()
    except Exception:  # noqa: BLE001 - the queue actor is gone with its owner anyway
        pass
    if "error" in box:
        raise box["error"]
    return box.get("result")
