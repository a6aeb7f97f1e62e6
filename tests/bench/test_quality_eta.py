"""bench/quality.py estimates a resumed phase by the part of it left to run.

A protocol stopped with 14 of the reference phase's 15 runs stored resumed and estimated the whole phase
(1:18), then calibrated the ETA of every later phase on the one run it did (x0.10). The estimate, and the
calibration, count only the runs not in the storage.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import quality  # noqa: E402


def protocol(tmp_path) -> "quality.Protocol":
    budget = quality.Budget(tasks=("rte", "stsb", "mrpc"), model="tiny", seeds=2, trials=4, epochs=1.0,
                            max_train_examples=None, max_dev_examples=None, max_length=64, lr=1e-4,
                            pooling="mean", evals=2)
    return quality.Protocol(budget=budget, storage=tmp_path, glue_dir=None, rates=quality.DEFAULT_RATES["tiny"])


def test_a_resumed_reference_phase_counts_only_its_missing_runs(tmp_path):
    p = protocol(tmp_path)
    assert p.left_share("reference") == 1.0
    (tmp_path / "reference").mkdir()
    for task, seed in [("rte", 0), ("rte", 1), ("stsb", 0), ("mrpc", 1), ("mrpc", 0)]:
        p.reference_path(task, seed).write_text("{}")
    assert p.left_share("reference") == 1 / 6


def test_an_experiment_phase_counts_its_finished_trials(tmp_path, monkeypatch):
    p = protocol(tmp_path)
    monkeypatch.setattr(p, "trial_states", lambda name: {"a": "TERMINATED", "b": "RUNNING"} if name == "q-sweep"
                        else {"c": "TERMINATED"})
    assert p.left_share("sweep") == 0.75          # 1 of 4 sweep trials finished
    assert p.left_share("multitask") == 0.5       # 1 of 2 seeds
    monkeypatch.setattr(p, "trial_states", lambda name: {})
    assert p.left_share("kd_switch") == 1.0
