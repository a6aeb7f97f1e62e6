"""From a trial's Ray Train run to Ray Tune, with a checkpoint Tune can hand to another trial: used under PBT
only (``--scheduler pbt``); every other sweep reports through Ray's own ``TuneReportCallback``.

Ray 2.60's ``ray.tune.integration.ray_train.TuneReportCallback`` forwards each Train report's metrics (and
the checkpoint's path as a metric) but no Tune checkpoint, so PBT has nothing to exploit and a restored trial
has nothing to restore from. Here the Train controller puts each report on a queue (``ToTune``); the trial's
driver function runs ``trainer.fit()`` in a thread and reports every item to Tune itself, with a small Tune
checkpoint: ``bam_checkpoint.json``, naming the trial, its Train run and the Train checkpoint folder.

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

POINTER = "bam_checkpoint.json"
CHECKPOINT_PATH_KEY = "checkpoint_path"          # the metric TuneReportCallback used for the same thing


def write_pointer(directory: Path, pointer: dict) -> None:
    from .store import atomic_write_bytes
    atomic_write_bytes(Path(directory) / POINTER, json.dumps(pointer, indent=1).encode())


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


class ToTune(UserCallback):
    """Runs in the Train controller: each report's metrics (rank 0) and checkpoint path onto the queue."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint):
        item = dict(metrics[0])
        if checkpoint is not None:
            item[CHECKPOINT_PATH_KEY] = checkpoint.path
        self.queue.put(item)                      # blocks while Tune handles the previous one


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
