"""Ray Tune's per-trial loggers (TensorBoard, result.json, progress.csv) as the product runs them.

``JsonLogger`` and ``CsvLogger`` are Tune's own but keep rows a restarted trial would lose: when a trial with a
Tune checkpoint restarts (every PBT exploit), Tune copies its result.json / progress.csv from the storage over
the driver's staging copy, which holds the rows reported since the last periodic sync; those rows were gone
(a receiver's reports between two exploits). They restore from storage only when the staging copy is missing
or shorter (a driver started afresh, say on another machine).

TensorBoard, at a fraction of the driver's cost (issue 19):

Tune's ``TBXLoggerCallback`` turns a result into one event per scalar (a student reports ~65), pushes each through
a ``multiprocessing.Queue`` of 10 to a writer thread (the driver blocks when it is full) and fsyncs the file
after every result. ``TensorBoardLogger`` writes the same tags (``ray/tune/<key>``), steps and values, and the
same hyperparameters at a trial's end, as one event per result, without syncing each one to disk: the writer
thread flushes within ``flush_secs`` and at the trial's end. Being a ``TBXLoggerCallback``, it stands in for Tune's
own (Tune adds its default loggers only where none of their class is given).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
from ray.tune.logger.tensorboardx import VALID_SUMMARY_TYPES
from ray.tune.result import TIME_TOTAL_S, TIMESTEPS_TOTAL, TRAINING_ITERATION
from ray.tune.utils import flatten_dict

SCALARS = tuple(VALID_SUMMARY_TYPES)
SKIPPED = ("config", "pid", "timestamp", TIME_TOTAL_S, TRAINING_ITERATION)    # as Tune's logger


class TensorBoardLogger(TBXLoggerCallback):
    def __init__(self, *, flush_secs: int = 30, max_queue: int = 1000):
        super().__init__()                          # ImportError without tensorboardX, as Tune's
        self.flush_secs, self.max_queue = flush_secs, max_queue

    def log_trial_start(self, trial):
        if trial in self._trial_writer:
            self._trial_writer[trial].close()
        trial.init_local_path()
        self._trial_writer[trial] = self._summary_writer_cls(trial.local_path, flush_secs=self.flush_secs,
                                                             max_queue=self.max_queue)
        self._trial_result[trial] = {}

    def log_trial_result(self, iteration, trial, result):
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import _clean_tag
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        step = result.get(TIMESTEPS_TOTAL) or result[TRAINING_ITERATION]
        flat = flatten_dict({k: v for k, v in result.items() if k not in SKIPPED}, delimiter="/")
        values, valid, other = [], {}, {}
        for attr, value in flat.items():
            tag = f"ray/tune/{attr}"
            if isinstance(value, SCALARS):
                if not np.isnan(value):
                    valid[tag] = value
                    values.append(Summary.Value(tag=_clean_tag(tag), simple_value=float(value)))
            elif (isinstance(value, list) and value) or (isinstance(value, np.ndarray) and value.size):
                other[attr] = value                 # images, histograms: Tune's own code, value by value
        writer = self._trial_writer[trial]
        if values:
            writer._get_file_writer().add_summary(Summary(value=values), step)
        self._trial_result[trial] = valid
        if other:
            super().log_trial_result(iteration, trial, {**other, TRAINING_ITERATION: result.get(TRAINING_ITERATION),
                                                        TIMESTEPS_TOTAL: result.get(TIMESTEPS_TOTAL)})
            self._trial_result[trial] = {**valid, **self._trial_result[trial]}


class _KeepStaged:
    """``_restore_from_remote`` that keeps the driver's staging copy when it holds at least what storage holds."""

    def _restore_from_remote(self, file_name: str, trial) -> None:
        local = Path(trial.local_path, file_name)
        try:
            remote = trial.storage.storage_filesystem.get_file_info(
                Path(trial.storage.trial_fs_path, file_name).as_posix()).size
        except Exception:  # noqa: BLE001 - no remote copy to compare: Tune's own handling
            remote = None
        if local.is_file() and (remote is None or local.stat().st_size >= remote):
            return
        super()._restore_from_remote(file_name, trial)


class JsonLogger(_KeepStaged, JsonLoggerCallback):
    pass


class CsvLogger(_KeepStaged, CSVLoggerCallback):
    pass


def loggers() -> list:
    """The loggers a sweep gets in place of Tune's defaults (TensorBoard only where tensorboardX is installed,
    as Tune's)."""
    out = [JsonLogger(), CsvLogger()]
    try:
        out.append(TensorBoardLogger())
    except ImportError:
        pass
    return out
