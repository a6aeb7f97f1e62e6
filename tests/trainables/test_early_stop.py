"""Teachers trained to convergence (issue 18): ``early_stop.patience`` ends a run after that many evaluations
without a better dev score; the weights of the best evaluation predict the teacher's train set; the registry
record and meta.json say when it stopped. In-process on the tiny model (no Ray), with hand-fed dev scores:
``Run.evaluate`` is replaced by a scripted score sequence, so the stopping point is known in advance."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from search.preflight import teacher_recipe
from trainables import loop, trial
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.errors import UserError
from trainables.loop import early_stop, run_training
from trainables.recipe import recipe_from_dict
from trainables.teacher_store import BaselineRegistry, TeacherStore
from trainables.teachers import finish_teacher, teacher_config

TASK = "syn_noisy"
# 24 train examples, batch 8: 3 steps an epoch; 6 epochs, one evaluation each (steps 3, 6, ..., 18)
BASE = {"tasks": [TASK], "model": "tiny", "precision": "fp32", "evals": 6,
        "optim": {"epochs": 6, "batch_size": 8, "lr": 1e-3},
        "data": {"max_train_examples": 24, "max_dev_examples": 16, "max_length": 32}}
# best at the 2nd evaluation (step 6); then 55, 54: two without a better score -> stops at the 4th (step 12)
PEAKED = [50.0, 60.0, 55.0, 54.0, 53.0, 52.0]


@pytest.fixture(autouse=True, scope="module")
def _cpu_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trial, "get_device", lambda: torch.device("cpu"))
        yield
    torch.set_num_threads(before)


def teacher(patience, **over) -> dict:
    r = copy.deepcopy(BASE)
    r.update(over)
    if patience is not None:
        r["early_stop"] = {"patience": patience}
    return teacher_recipe(r)


def scripted(monkeypatch, scores: list[float]) -> None:
    """Each evaluation (a real one) reports the next of ``scores`` as the task's dev score; once they are used
    up (an evaluation after training), its real score."""
    it, real = iter(scores), loop.Run.evaluate

    def evaluate(self):
        ev, score = real(self), next(it, None)
        return ev if score is None else {**ev, "scores": {TASK: float(score)}}
    monkeypatch.setattr(loop.Run, "evaluate", evaluate)


def setup(tmp_path, rec: dict, name: str = "t"):
    return trial.setup_run({"recipe": rec, "job": "teacher", "storage": str(tmp_path / "storage"),
                            "cache_dir": str(tmp_path.parent / "cache"), "artifacts_dir": str(tmp_path / "art" / name)})


def train(run, states: dict | None = None) -> list[dict]:
    """Run it; ``states``: step -> a copy of the weights at each evaluation."""
    reports = []

    def report(metrics, r):
        reports.append(metrics)
        if states is not None:
            states[r.step] = copy.deepcopy(r.model.state_dict())
    run_training(run, report=report)
    return reports


def predict_with(run, state: dict) -> np.ndarray:
    run.model.load_state_dict(state)
    return run.predict(TASK, run.data[TASK].train)


def test_early_stop_counts_evaluations_without_a_strictly_better_score():
    def state(scores, patience=2):
        evals = [{"step": 3 * (i + 1), "scores": {TASK: s}} for i, s in enumerate(scores)]
        return early_stop(SimpleNamespace(r=SimpleNamespace(early_stop=SimpleNamespace(patience=patience)),
                                          evals=evals))
    assert state([50, 60, 55]) == {"best_step": 6, "since_best": 1, "stop": False}
    assert state([50, 60, 55, 54]) == {"best_step": 6, "since_best": 2, "stop": True}
    assert state([50, 60, 60, 61, 61]) == {"best_step": 12, "since_best": 1, "stop": False}   # equal: no gain
    assert state([50, 60, 55, 54], patience=3)["stop"] is False
    assert state([50, 60, 55, 54], patience=0) is None and state([50], patience=None) is None


def test_a_peaked_teacher_stops_and_predicts_with_its_best_weights(tmp_path, monkeypatch):
    scripted(monkeypatch, PEAKED)
    run = setup(tmp_path, teacher(2))
    assert run.total == 18 and sorted(run.eval_steps) == [3, 6, 9, 12, 15, 18]
    states: dict[int, dict] = {}
    reports = train(run, states)
    assert [m["step"] for m in reports] == [3, 6, 9, 12] and run.step == 12       # the 4th evaluation
    assert [m["stopped_early"] for m in reports] == [0, 0, 0, 1]
    assert [m["early_stop_best_step"] for m in reports] == [3, 6, 6, 6]
    rec = finish_teacher(run, storage=str(tmp_path / "storage"), experiment="conv")
    assert {k: rec[k] for k in ("score", "best_step", "stopped_at_step", "epochs_run", "stopped_early", "dev")} == {
        "score": 60.0, "best_step": 6, "stopped_at_step": 12, "epochs_run": 4.0, "stopped_early": True,
        "dev": {TASK: 60.0}}
    assert rec["config"]["early_stop"] == {"patience": 2} and rec["config"]["optim"]["epochs"] == 6.0
    assert BaselineRegistry(str(tmp_path / "storage")).records()[-1]["stopped_at_step"] == 12
    store = TeacherStore(str(tmp_path / "storage"))
    meta = store.meta(rec["key"])
    assert (meta["best_step"], meta["stopped_at_step"], meta["epochs_run"], meta["stopped_early"]) == (6, 12, 4.0, True)
    td = run.data[TASK].train
    stored = store.load(rec["key"], task=TASK, expect_ids=td.ids, fingerprint=td.fingerprint)
    best, last = predict_with(run, states[6]), predict_with(run, states[12])
    assert not np.allclose(best, last)                  # the weights moved after the best evaluation
    np.testing.assert_allclose(stored, best, rtol=0, atol=1e-6)
    weights = torch.load(store.dir(rec["key"]) / "model.pt", weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in states[6].items())


def test_patience_zero_runs_to_the_end(tmp_path, monkeypatch):
    scripted(monkeypatch, PEAKED)
    run = setup(tmp_path, teacher(0))
    reports = train(run)
    assert [m["step"] for m in reports] == [3, 6, 9, 12, 15, 18] and run.step == run.total == 18
    assert "stopped_early" not in reports[-1]
    rec = finish_teacher(run, storage=str(tmp_path / "storage"))
    assert (rec["best_step"], rec["stopped_at_step"], rec["epochs_run"], rec["stopped_early"]) == (6, 18, 6.0, False)


def test_a_stop_at_the_last_evaluation_is_not_early(tmp_path, monkeypatch):
    scripted(monkeypatch, [50, 51, 52, 60, 55, 54])      # runs out of patience exactly at the end
    run = setup(tmp_path, teacher(2))
    reports = train(run)
    assert len(reports) == 6 and reports[-1]["stopped_early"] == 0
    assert finish_teacher(run, storage=str(tmp_path / "storage"))["stopped_early"] is False


def test_a_run_resumed_after_its_stop_trains_no_further(tmp_path, monkeypatch):
    """A restarted trial continues from its last checkpoint: the stop is read off its evaluations, so it
    neither trains on nor loses the best weights."""
    scripted(monkeypatch, PEAKED)
    run = setup(tmp_path, teacher(2), "first")
    states: dict[int, dict] = {}
    train(run, states)
    save_checkpoint(run, tmp_path / "ckpt")
    again = setup(tmp_path, teacher(2), "again")
    load_checkpoint(again, tmp_path / "ckpt")
    assert train(again) == [] and again.step == 12 and loop.stopped_early(again)
    rec = finish_teacher(again, storage=str(tmp_path / "storage"))
    td = again.data[TASK].train
    stored = TeacherStore(str(tmp_path / "storage")).load(rec["key"], task=TASK, expect_ids=td.ids,
                                                          fingerprint=td.fingerprint)
    np.testing.assert_allclose(stored, predict_with(again, states[6]), rtol=0, atol=1e-6)


def test_early_stop_is_part_of_the_teacher_key_only_when_on():
    def config(patience):
        return teacher_config(recipe_from_dict(teacher(patience)))
    assert "early_stop" not in config(None) and config(0) == config(None)    # fixed-budget teachers keep their keys
    assert config(2)["early_stop"] == {"patience": 2} and config(2) != config(3)


@pytest.mark.parametrize("setting, message", [
    ({"patience": -1}, "teachers: early_stop.patience: must be >= 0 evaluations (0 or null: no early stopping)"),
    ({"patience": 5}, "teachers: early_stop.patience: 5 leaves no room to stop early with evals 6"),
    ({"patience": "two"}, "teachers: early_stop.patience: expected an integer, got 'two'"),
    ({"patience": 2, "min_delta": 1}, "teachers: unknown key 'early_stop.min_delta' (known: patience)"),
])
def test_bad_early_stop_settings_are_refused_in_one_line(setting, message):
    r = copy.deepcopy(BASE)
    r["early_stop"] = setting
    with pytest.raises(UserError) as e:
        recipe_from_dict(teacher_recipe(r), source="teachers")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_early_stop_is_refused_with_sequential_switching():
    r = {**copy.deepcopy(BASE), "tasks": ["syn_noisy", "syn_pairmatch"], "early_stop": {"patience": 2},
         "switch": {"mode": "sequential", "criterion": "patience"}}
    with pytest.raises(UserError, match=r"^recipe: early_stop.patience: not with switch.mode sequential"):
        recipe_from_dict(r)
    assert recipe_from_dict({**r, "early_stop": {"patience": None}}).early_stop.patience is None   # null: off
