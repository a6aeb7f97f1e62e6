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

from search.tensorboard_log import TensorBoardLogger     # noqa: E402


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


def test_tune_adds_no_tensorboard_logger_of_its_own():
    from ray.tune.utils.callback import _create_default_callbacks
    cbs = _create_default_callbacks([TensorBoardLogger()])
    assert sum(isinstance(c, TBXLoggerCallback) for c in cbs) == 1
