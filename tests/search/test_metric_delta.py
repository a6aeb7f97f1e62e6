"""`--metric delta_vs_teachers`: mean over the trial's tasks of (student dev score - the task's single-task
teacher dev score from the baseline registry, mean over teacher seeds), reported with every evaluation."""
from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import teachers, trial
from trainables.model import model_identity
from trainables.teacher_store import BaselineRegistry

CACHE = os.environ.get("BAM_CACHE_DIR") or "/tmp/utcache"
TASKS = ("syn_noisy", "syn_pairmatch")


def test_delta_is_the_mean_over_tasks_of_student_minus_mean_teacher():
    found = {"syn_noisy": [{"score": 60.0}, {"score": 70.0}, {"score": 80.0}],     # three teacher seeds: 70
             "syn_pairmatch": [{"score": 50.0}]}
    base = teachers.teacher_baselines(found)
    assert base == {"syn_noisy": pytest.approx(70.0), "syn_pairmatch": pytest.approx(50.0)}
    out = teachers.delta_vs_teachers({"syn_noisy": 64.0, "syn_pairmatch": 59.0}, base)
    assert out["syn_noisy/delta_vs_teachers"] == pytest.approx(-6.0)
    assert out["syn_pairmatch/delta_vs_teachers"] == pytest.approx(9.0)
    assert out["delta_vs_teachers"] == pytest.approx(1.5)
    # a task without a baseline is an error, never a silent mean over fewer tasks
    with pytest.raises(KeyError, match="syn_similarity"):
        teachers.delta_vs_teachers({"syn_noisy": 1.0, "syn_similarity": 2.0}, base)


def _recipe(**over) -> dict:
    r = {"tasks": list(TASKS), "model": "tiny", "precision": "fp32", "evals": 2, "seed": 0,
         "teacher": {"use": False, "seeds": [0, 1]}, "optim": {"steps": 6, "batch_size": 8, "lr": 1e-3},
         "data": {"max_train_examples": 48, "max_dev_examples": 48, "max_length": 32}}
    r.update(over)
    return r


def _register(storage: Path, run, *, scores: dict[str, list[float]]) -> None:
    reg = BaselineRegistry(storage)
    for t, per_seed in scores.items():
        for seed, s in enumerate(per_seed):
            reg.append({"task": t, "seed": seed, "fingerprint": run.data[t].train.fingerprint,
                        "model": model_identity("tiny"), "key": f"{t}-s{seed}", "score": s})


@pytest.fixture
def cpu(monkeypatch):
    monkeypatch.setattr(trial, "get_device", lambda: torch.device("cpu"))


def test_student_finds_its_teachers_scores_in_the_registry(tmp_path, cpu):
    storage = tmp_path / "storage"
    run = trial.setup_run({"recipe": _recipe(), "job": "student", "storage": str(storage),
                            "artifacts_dir": str(tmp_path / "art"), "cache_dir": CACHE})
    assert teachers.student_baselines(run, storage=str(storage)) is None          # an empty registry
    _register(storage, run, scores={"syn_noisy": [40.0, 50.0]})
    assert teachers.student_baselines(run, storage=str(storage)) is None          # a task missing
    _register(storage, run, scores={"syn_pairmatch": [61.0, 63.0]})
    assert teachers.student_baselines(run, storage=str(storage)) == {"syn_noisy": pytest.approx(45.0),
                                                                    "syn_pairmatch": pytest.approx(62.0)}


def test_every_report_and_checkpoint_carry_the_delta(tmp_path, cpu, monkeypatch):
    """The worker function (Ray Train faked): Tune receives delta_vs_teachers with each evaluation, computed
    from that evaluation's scores, and the checkpoint's state records it (Train keeps the best by it)."""
    storage = tmp_path / "storage"
    probe = trial.setup_run({"recipe": _recipe(), "job": "student", "storage": str(storage),
                              "artifacts_dir": str(tmp_path / "probe"), "cache_dir": CACHE})
    _register(storage, probe, scores={"syn_noisy": [30.0, 40.0], "syn_pairmatch": [55.0, 65.0]})
    reports = []

    def report(metrics, checkpoint=None, checkpoint_dir_name=None):
        state = json.loads((Path(checkpoint) / "state.json").read_text())
        reports.append((metrics, state["last_metrics"]))

    fake_train = types.SimpleNamespace(get_checkpoint=lambda: None, report=report,
                                       Checkpoint=types.SimpleNamespace(from_directory=lambda d: d))
    import ray
    monkeypatch.setitem(sys.modules, "ray.train", fake_train)
    monkeypatch.setattr(ray, "train", fake_train, raising=False)
    monkeypatch.setattr(ray, "get_runtime_context",
                        lambda: types.SimpleNamespace(get_node_id=lambda: "node"))
    trial.train_fn_per_worker({"recipe": _recipe(), "job": "student", "storage": str(storage),
                                "artifacts_dir": str(tmp_path / "art"), "cache_dir": CACHE, "run_id": "t"})
    assert len(reports) == 2
    for metrics, saved in reports:
        want = np.mean([metrics["syn_noisy/score"] - 35.0, metrics["syn_pairmatch/score"] - 60.0])
        assert metrics["delta_vs_teachers"] == pytest.approx(want)
        assert metrics["syn_noisy/delta_vs_teachers"] == pytest.approx(metrics["syn_noisy/score"] - 35.0)
        assert saved["delta_vs_teachers"] == pytest.approx(want)
    shutil.rmtree(tmp_path / "art", ignore_errors=True)
