"""Which stored teachers a student distils from (``teacher_store.pick_teacher``, the one lookup used by the trial
and by preflight): one teacher config per (task, seed, data, model), or the one ``teacher.experiment`` names;
several is a one-line refusal naming them, never the newest picked in silence."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from trainables import teachers
from trainables.errors import UserError
from trainables.recipe import recipe_from_dict
from trainables.tasks import get_task
from trainables.teacher_store import (AmbiguousTeachers, BaselineRegistry, StoreError, TeacherStore, pick_teacher,
                                      teacher_key)

FP = "f" * 64
IDS = np.arange(10, 16, dtype=np.int64)


def plant(storage, *, lr: float, experiment: str | None, seed: int = 0, score: float = 50.0,
          task: str = "rte", legacy: bool = False) -> tuple[dict, np.ndarray]:
    """A teacher of ``task`` trained at ``lr``, as finish_teacher stores it: predictions under its key and a
    registry record (``legacy``: a record written before records carried their config)."""
    config = teachers.teacher_config(recipe_from_dict({"tasks": [task], "model": "tiny", "optim": {"lr": lr}}))
    key = teacher_key(task=task, fingerprint=FP, model="tiny-id", teacher_config=config, seed=seed)
    preds = np.full((len(IDS), 2), lr * 1000, dtype=np.float32)
    TeacherStore(storage).save(key=key, predictions=preds, ids=IDS, meta={"task": task, "fingerprint": FP})
    rec = {"task": task, "seed": seed, "fingerprint": FP, "model": "tiny-id", "model_name": "tiny", "key": key,
           "score": score, "experiment": experiment, **({} if legacy else {"config": config})}
    BaselineRegistry(storage).append(rec)
    return rec, preds


def pick(storage, **kw):
    return pick_teacher(BaselineRegistry(storage).records(), task="rte", seed=0, fingerprint=FP, model="tiny-id",
                        **kw)


def test_two_teacher_lrs_are_refused_in_one_line_naming_both(tmp_path):
    plant(tmp_path, lr=1e-3, experiment="teachers-lr1")
    plant(tmp_path, lr=2e-3, experiment="teachers-lr2")
    with pytest.raises(AmbiguousTeachers) as e:
        pick(tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, UserError) and isinstance(e.value, StoreError) and "\n" not in msg
    assert msg.startswith("teacher.experiment: 2 stored teachers match task rte seed 0")
    assert "teachers-lr1 (optim.lr=0.001); teachers-lr2 (optim.lr=0.002)" in msg      # only what differs
    assert "--set teacher.experiment=teachers-lr1 or --set teacher.experiment=teachers-lr2" in msg


def test_the_selector_picks_its_teacher_not_the_newest(tmp_path):
    old, _ = plant(tmp_path, lr=1e-3, experiment="teachers-lr1")
    new, _ = plant(tmp_path, lr=2e-3, experiment="teachers-lr2")
    assert pick(tmp_path, experiments=("teachers-lr1",)) == old
    assert pick(tmp_path, experiments=("teachers-lr2",)) == new
    assert pick(tmp_path, experiments=("teachers-other",)) is None
    with pytest.raises(AmbiguousTeachers, match="within teacher.experiment teachers-lr1,teachers-lr2: "):
        pick(tmp_path, experiments=("teachers-lr1", "teachers-lr2"))


def test_one_teacher_needs_no_selector_and_reruns_of_it_are_one_teacher(tmp_path):
    assert pick(tmp_path) is None
    first, _ = plant(tmp_path, lr=1e-3, experiment="teachers-a")
    assert pick(tmp_path) == first
    again, _ = plant(tmp_path, lr=1e-3, experiment="teachers-b", score=51.0)     # the same config, re-run
    assert again["key"] == first["key"]
    assert pick(tmp_path) == again                                               # its newest record
    assert pick(tmp_path, experiments=("teachers-a",)) == first
    plant(tmp_path, lr=2e-3, experiment="teachers-c", seed=1)                    # another seed: not a rival
    assert pick(tmp_path) == again


def test_candidates_without_a_config_or_an_experiment_are_still_named(tmp_path):
    a, _ = plant(tmp_path, lr=1e-3, experiment=None, legacy=True)
    b, _ = plant(tmp_path, lr=2e-3, experiment="teachers-lr2")
    with pytest.raises(AmbiguousTeachers) as e:
        pick(tmp_path)
    msg = str(e.value)
    assert f"(no experiment recorded) (key {a['key']}); teachers-lr2 (key {b['key']})" in msg
    assert "bam-search teachers --name NAME" in msg and "--set teacher.experiment=NAME" in msg


class _Split(SimpleNamespace):
    def __len__(self):
        return len(self.ids)


def test_the_trial_attaches_the_selected_teachers_predictions(tmp_path, monkeypatch):
    """find_teachers / attach_teacher_predictions go through the same lookup: refused without a selector,
    the named experiment's predictions (the older one here) and dev score with it."""
    _, p1 = plant(tmp_path, lr=1e-3, experiment="teachers-lr1", score=61.0)
    _, p2 = plant(tmp_path, lr=2e-3, experiment="teachers-lr2", score=72.0)
    assert not np.array_equal(p1, p2)
    monkeypatch.setattr(teachers, "model_identity", lambda name: "tiny-id")
    data = {"rte": SimpleNamespace(task=get_task("rte"), teacher=None, train=_Split(fingerprint=FP, ids=IDS))}
    with pytest.raises(AmbiguousTeachers, match="teachers-lr1 .*teachers-lr2"):
        teachers.attach_teacher_predictions(recipe_from_dict({"tasks": ["rte"]}), data, storage=str(tmp_path))
    for name, want, score in (("teachers-lr1", p1, 61.0), ("teachers-lr2", p2, 72.0)):
        r = recipe_from_dict({"tasks": ["rte"], "teacher": {"experiment": name}})
        found = teachers.attach_teacher_predictions(r, data, storage=str(tmp_path))
        assert np.array_equal(data["rte"].teacher, want)
        assert teachers.teacher_baselines(found) == {"rte": score}
    r = recipe_from_dict({"tasks": ["rte"], "teacher": {"experiment": "teachers-none"}})
    with pytest.raises(StoreError, match="no teacher predictions for task rte seed 0 .* in teacher.experiment "
                                         "teachers-none under .* --seeds 1 "):
        teachers.find_teachers(r, data, storage=str(tmp_path))


def test_teacher_experiment_is_a_recipe_setting():
    assert recipe_from_dict({}).teacher.experiment == ()
    assert recipe_from_dict({"teacher": {"experiment": "teachers-a"}}).teacher.experiment == ("teachers-a",)
    assert recipe_from_dict({"teacher": {"experiment": "a,b"}}).teacher.experiment == ("a", "b")
    assert recipe_from_dict({"teacher": {"experiment": ["a"]}}).to_dict()["teacher"]["experiment"] == ["a"]
    with pytest.raises(UserError, match="^recipe: teacher.experiment: expected experiment names"):
        recipe_from_dict({"teacher": {"experiment": [3]}})


def test_a_teachers_own_dropout_and_unfreeze_are_in_its_key_only_when_set():
    """Teachers train with student.dropout / student.unfreeze: two dropouts must not share a key (the store
    keeps the first folder of a key). At their defaults they stay out, so stored teachers keep their keys."""
    cfg = lambda **st: teachers.teacher_config(recipe_from_dict({"tasks": ["rte"], "student": st}))  # noqa: E731
    assert "student" not in cfg()
    assert cfg(dropout=0.3)["student"] == {"dropout": 0.3}
    assert cfg(unfreeze="gradual")["student"] == {"unfreeze": "gradual"}
    key = lambda c: teacher_key(task="rte", fingerprint=FP, model="tiny", teacher_config=c, seed=0)  # noqa: E731
    assert len({key(cfg()), key(cfg(dropout=0.3)), key(cfg(unfreeze="gradual"))}) == 3
