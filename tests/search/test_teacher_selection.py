"""Before Ray starts, a student's teachers are looked up as the trial will look them up: two stored teacher
configs for one task and seed (two learning rates) are refused in one line naming both and how to pick;
``teacher.experiment`` picks; ``bam-search teachers`` refuses a compact teacher shape. Teachers here are real:
two tiny ``bam-search teachers`` trials run in-process (no Ray) and stored by ``finish_teacher``."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from search.cli import main
from search.preflight import _check_delta_baselines, check_teachers, teacher_recipe
from trainables import trial
from trainables.errors import UserError
from trainables.loop import run_training
from trainables.recipe import apply_overrides, recipe_from_dict
from trainables.teacher_store import AmbiguousTeachers, BaselineRegistry, TeacherStore
from trainables.teachers import finish_teacher

TASK = "syn_noisy"
DATA = {"max_train_examples": 24, "max_dev_examples": 16, "max_length": 32}


def student(**over) -> dict:
    r = {"tasks": [TASK], "model": "tiny", "precision": "fp32", "evals": 1, "data": dict(DATA),
         "optim": {"steps": 2, "batch_size": 8, "lr": 1e-3}}
    return apply_overrides(r, [f"{k}={v}" for k, v in over.items()])


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache_dir):
    """Two teachers of syn_noisy seed 0 on the same data and model: lr 1e-3 (experiment teachers-lr1), then
    lr 2e-3 (teachers-lr2, the newer record). Returns (storage, {experiment: its record})."""
    root = tmp_path_factory.mktemp("teacher-selection")
    storage = str(root / "storage")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    records = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trial, "get_device", lambda: torch.device("cpu"))
        for name, lr in (("teachers-lr1", 1e-3), ("teachers-lr2", 2e-3)):
            base = teacher_recipe(student(**{"optim.lr": lr, "optim.steps": 3}))
            run = trial.setup_run({"recipe": base, "job": "teacher", "storage": storage, "cache_dir": cache_dir,
                                   "artifacts_dir": str(root / "art" / name)})
            run_training(run, report=lambda metrics, r: None)
            records[name] = finish_teacher(run, storage=storage, experiment=name)
    torch.set_num_threads(threads)
    return storage, records


def one_line_error(capsys, argv) -> str:
    import ray
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, (rc, err)
    assert not ray.is_initialized()
    return err.strip()


def test_records_carry_their_config_and_experiment(store):
    _, recs = store
    a, b = recs["teachers-lr1"], recs["teachers-lr2"]
    assert a["key"] != b["key"] and a["experiment"] == "teachers-lr1"
    assert (a["config"]["optim"]["lr"], b["config"]["optim"]["lr"]) == (1e-3, 2e-3)


def test_two_teacher_lrs_are_refused_before_ray_naming_both(store, capsys):
    storage, _ = store
    with pytest.raises(AmbiguousTeachers) as e:
        check_teachers(storage, recipe_from_dict(student()))
    msg = str(e.value)
    assert "teachers-lr1 (optim.lr=0.001); teachers-lr2 (optim.lr=0.002)" in msg and "\n" not in msg
    argv = ["sweep", "smoke", "--tasks", TASK, "--model", "tiny", "--max-train-examples", "24", "--storage", storage]
    err = one_line_error(capsys, argv)
    assert err == f"bam-search: error: {msg}"
    assert err.endswith("name one with --set teacher.experiment=teachers-lr1 "
                        "or --set teacher.experiment=teachers-lr2")


def test_the_selector_picks_its_teachers_predictions_not_the_newest(store, cache_dir, tmp_path, monkeypatch):
    storage, recs = store
    monkeypatch.setattr(trial, "get_device", lambda: torch.device("cpu"))
    st = TeacherStore(storage)
    attached = {}
    for name in ("teachers-lr1", "teachers-lr2"):
        rec = student(**{"teacher.experiment": name})
        check_teachers(storage, recipe_from_dict(rec))                          # preflight passes
        run = trial.setup_run({"recipe": rec, "job": "student", "storage": storage, "cache_dir": cache_dir,
                               "artifacts_dir": str(tmp_path / name)})
        td = run.data[TASK]
        want = st.load(recs[name]["key"], task=TASK, expect_ids=td.train.ids, fingerprint=td.train.fingerprint)
        assert np.array_equal(td.teacher, want)
        attached[name] = td.teacher
    assert not np.array_equal(attached["teachers-lr1"], attached["teachers-lr2"])   # two different teachers


def test_one_stored_teacher_needs_no_selector(store, tmp_path):
    """A registry holding only the lr 1e-3 teacher: found without teacher.experiment, as before."""
    storage, recs = store
    import shutil
    shutil.copytree(storage, tmp_path / "one", ignore=shutil.ignore_patterns("baselines.jsonl"))
    BaselineRegistry(tmp_path / "one").append(recs["teachers-lr1"])
    check_teachers(str(tmp_path / "one"), recipe_from_dict(student()))


def test_an_unknown_teacher_experiment_is_one_line(store, capsys):
    storage, _ = store
    with pytest.raises(UserError) as e:
        check_teachers(storage, recipe_from_dict(student(**{"teacher.experiment": "teachers-lr3"})))
    assert str(e.value) == (f"teacher.experiment: no stored teacher comes from experiment 'teachers-lr3' under "
                            f"{storage} (teacher experiments there: teachers-lr1, teachers-lr2)")


def test_delta_vs_teachers_uses_the_same_rule(store):
    """A plain multi-task student (teacher.use false) ranked on delta_vs_teachers: the baselines it would
    compare with are ambiguous too; teacher.experiment picks them."""
    storage, _ = store
    plain = recipe_from_dict(student(**{"teacher.use": "false"}))
    check_teachers(storage, plain)                                  # no KD: no teachers looked up
    with pytest.raises(AmbiguousTeachers, match="teachers-lr1 .*teachers-lr2"):
        _check_delta_baselines("delta_vs_teachers", storage, plain)
    picked = dataclasses.replace(plain, teacher=dataclasses.replace(plain.teacher, experiment=("teachers-lr2",)))
    _check_delta_baselines("delta_vs_teachers", storage, picked)
    _check_delta_baselines("glue_avg", storage, plain)              # not asked for: not looked up


@pytest.mark.parametrize("sets, key", [(["student.num_layers=3"], "student.num_layers"),
                                       (["student.init=random", "student.hidden_size=64"], "student.hidden_size"),
                                       (["student.init=random"], "student.init")])
def test_teachers_refuse_a_compact_shape_in_one_line(tmp_path, capsys, sets, key):
    """`teachers --set student.num_layers=3` would store a compact teacher that a full-size lookup finds."""
    argv = ["teachers", "--tasks", TASK, "--model", "tiny", "--storage", str(tmp_path / "st")]
    for s in sets:
        argv += ["--set", s]
    err = one_line_error(capsys, argv)
    assert err.startswith(f"bam-search: error: {key}: teachers are trained at their model's full size")
    assert f"--set {key}=..." in err
    assert not (tmp_path / "st" / "baselines.jsonl").exists() and not (tmp_path / "st" / "teachers").exists()
    teacher_recipe(student(**{"student.pooling": "mean", "student.init": "pretrained"}))      # not a shape: fine


def test_the_report_compares_against_the_teachers_the_student_names(store):
    """``bam-search report``'s teacher group is found by the same rule: the named experiment's teacher, and
    one line (not the newest) when the student's recipe leaves two configs to choose from."""
    from search.report import _teacher_records
    storage, recs = store
    for name in ("teachers-lr1", "teachers-lr2"):
        chosen = _teacher_records(storage, recipe_from_dict(student(**{"teacher.experiment": name})).to_dict())
        assert [{k: r[k] for k in ("group", "seed", "scores")} for r in chosen] == \
            [{"group": "teachers", "seed": 0, "scores": {TASK: recs[name]["score"]}}]
    with pytest.raises(AmbiguousTeachers):
        _teacher_records(storage, recipe_from_dict(student()).to_dict())
