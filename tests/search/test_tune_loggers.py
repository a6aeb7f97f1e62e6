"""``TensorBoardLogger`` writes what Tune's own ``TBXLoggerCallback`` writes (tags, steps, values, histograms and
the hyperparameters at a trial's end), read back from the event files; and Tune does not add its own beside it."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorboardX")
from ray.tune.logger import TBXLoggerCallback            # noqa: E402
from tensorboardX.proto import event_pb2                  # noqa: E402

from search.tune_loggers import CsvLogger, JsonLogger, TensorBoardLogger     # noqa: E402


class Trial:                                               # what the loggers use of a Tune trial
    def __init__(self, path: Path):
        self.local_path = str(path)
        self.evaluated_params = {"params": {"lr": 3e-4, "schedule": "linear", "size_exp": np.float64(0.75)}}
        self.trial_id = path.name

    def init_local_path(self):
        Path(self.local_path).mkdir(parents=True, exist_ok=True)


RESULTS = [
    {"glue_avg": 61.5, "syn_noisy": {"score": 70.25, "best": 70.25}, "lambda": np.float32(0.25), "switched": "",
     "stopped_early": False, "examples_seen": 4000, "delta": float("nan"), "note": None, "lengths": [3, 4, 5],
     "training_iteration": 1, "time_total_s": 3.5, "pid": 123, "timestamp": 1, "config": {"x": 1}},
    {"glue_avg": 64.0, "syn_noisy": {"score": 72.0, "best": 72.0}, "lambda": np.float32(0.5), "switched": "syn_noisy",
     "stopped_early": True, "examples_seen": np.int64(8000), "delta": 1.5, "note": None, "lengths": [2, 9],
     "training_iteration": 2, "time_total_s": 7.0, "pid": 123, "timestamp": 2, "config": {"x": 1}},
]


def events(folder: Path) -> tuple[list, list, list]:
    """(scalars as (tag, step, value), histograms as (tag, step, count, sum), hparams plugin payloads)."""
    scalars, hists, hparams = [], [], []
    for f in sorted(folder.glob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                if v.metadata.plugin_data.plugin_name == "hparams":
                    hparams.append((v.tag, v.metadata.plugin_data.content))
                elif v.HasField("histo"):
                    hists.append((v.tag, ev.step, v.histo.num, v.histo.sum))
                else:
                    scalars.append((v.tag, ev.step, v.simple_value))
    return sorted(scalars), sorted(hists), sorted(hparams)


def run(logger, tmp: Path) -> tuple:
    trial = Trial(tmp)
    logger.log_trial_start(trial)
    for i, r in enumerate(RESULTS):
        logger.on_trial_result(i, [trial], trial, dict(r))
    logger.log_trial_end(trial)
    return events(tmp)


def test_the_same_events_as_tunes_own_logger(tmp_path):
    theirs = run(TBXLoggerCallback(), tmp_path / "tune")
    ours = run(TensorBoardLogger(), tmp_path / "ours")
    scalars, hists, hparams = ours
    assert ours == theirs
    tags = {t for t, _, _ in scalars}
    assert {"ray/tune/glue_avg", "ray/tune/syn_noisy/score", "ray/tune/lambda", "ray/tune/stopped_early"} <= tags
    assert not tags & {"ray/tune/pid", "ray/tune/timestamp", "ray/tune/time_total_s", "ray/tune/note"}
    assert ("ray/tune/delta", 2, 1.5) in scalars and ("ray/tune/delta", 1) not in {(t, s) for t, s, _ in scalars}
    assert ("ray/tune/glue_avg", 1, 61.5) in scalars and ("ray/tune/examples_seen", 2, 8000.0) in scalars
    assert [h[:3] for h in hists] == [("ray/tune/lengths", 1, 3.0), ("ray/tune/lengths", 2, 2.0)]
    assert len(hparams) == 3 and any(b"lr" in c for _, c in hparams)


def test_one_event_per_result_and_no_sync_per_result(tmp_path, monkeypatch):
    import os
    syncs = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: syncs.append(fd) or real(fd))
    logger = TensorBoardLogger()
    trial = Trial(tmp_path / "t")
    logger.log_trial_start(trial)
    logger.on_trial_result(0, [trial], trial, {"glue_avg": 50.0, "a": 1.0, "b": 2.0, "training_iteration": 1})
    logger.on_trial_result(1, [trial], trial, {"glue_avg": 51.0, "a": 1.0, "b": math.pi, "training_iteration": 2})
    assert syncs == []
    logger.log_trial_end(trial)                               # the end: flushed and closed
    scalars, _, _ = events(tmp_path / "t")
    assert len(scalars) == 6 and ("ray/tune/b", 2, pytest.approx(math.pi)) in scalars
    n_events = sum(1 for f in (tmp_path / "t").glob("events.*") for _ in [0])
    assert n_events == 1


def test_tune_adds_no_logger_of_its_own():
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    from search.tune_loggers import loggers
    cbs = _create_default_callbacks(loggers())
    for cls in (TBXLoggerCallback, JsonLoggerCallback, CSVLoggerCallback):
        assert sum(isinstance(c, cls) for c in cbs) == 1, cls


class Restarted(Trial):
    """A trial with a Tune checkpoint (as under PBT), staged on the driver and synced to a storage folder."""

    def __init__(self, staging: Path, storage: Path):
        import pyarrow.fs
        super().__init__(staging)
        self.checkpoint = object()
        self.config = {"lr": 1e-3}
        self.storage = type("S", (), {"trial_fs_path": str(storage),
                                      "storage_filesystem": pyarrow.fs.LocalFileSystem()})()


@pytest.mark.parametrize("cls,name", [("JsonLogger", "result.json"), ("CsvLogger", "progress.csv")])
def test_a_restarted_trial_keeps_the_rows_reported_since_the_last_sync(tmp_path, cls, name):
    """A PBT receiver restarts after its exploit: Tune copied the storage's result.json (synced every few minutes)
    over the driver's, and the rows reported since the last sync were lost (a CI run lost a receiver's 4 reports
    between two exploits). Ours keep the staging copy when it holds more, and restore from storage when it is
    missing (a new driver)."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    import search.tune_loggers as L
    tune_cls = {"JsonLogger": JsonLoggerCallback, "CsvLogger": CSVLoggerCallback}[cls]

    def scenario(logger_cls, where):
        trial = Restarted(where / "staging", where / "storage")
        trial.init_local_path()
        (where / "storage").mkdir(parents=True)
        logger = logger_cls()
        logger.log_trial_start(trial)
        for i in range(1, 5):
            logger.on_trial_result(i, [trial], trial, {"training_iteration": i, "glue_avg": float(i)})
        import shutil
        shutil.copy(where / "staging" / name, where / "storage" / name)         # the periodic sync
        for i in range(5, 9):
            logger.on_trial_result(i, [trial], trial, {"training_iteration": i, "glue_avg": float(i)})
        logger.log_trial_start(trial)                                             # the restart after an exploit
        logger.on_trial_result(9, [trial], trial, {"training_iteration": 9, "glue_avg": 9.0})
        logger.log_trial_end(trial)
        return (where / "staging" / name).read_text()

    theirs = scenario(tune_cls, tmp_path / "tune")
    ours = scenario(getattr(L, cls), tmp_path / "ours")
    if cls == "JsonLogger":                                         # Tune's: rows 5-8 gone (the bug, as seen)
        assert "8.0" not in theirs and "9.0" in theirs
    assert all(f"{i}.0" in ours for i in range(1, 10))

    trial = Restarted(tmp_path / "new-driver", tmp_path / "ours" / "storage")   # a driver started afresh
    trial.init_local_path()
    logger = getattr(L, cls)()
    logger.log_trial_start(trial)
    logger.on_trial_result(10, [trial], trial, {"training_iteration": 10, "glue_avg": 10.0})
    logger.log_trial_end(trial)
    text = (tmp_path / "new-driver" / name).read_text()
    assert text.startswith((tmp_path / "ours" / "storage" / name).read_text()) and "10.0" in text
