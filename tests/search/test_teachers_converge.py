"""`bam-search teachers` trains teachers to convergence by default (issue 18): --patience (evaluations, one
per epoch) within --max-epochs, checked before Ray starts; the demo's teachers are trained the same way and its
headline says so; the teachers' table shows each teacher's best step and where it stopped."""
from __future__ import annotations

import json

import pytest

from search.cli import build_parser, main
from search.preflight import plan_demo, plan_teachers
from search.report import compare
from search.results import baseline_lines, demo_headline, summarize, teacher_stops
from trainables.teacher_store import BaselineRegistry

TEACHERS = ["teachers", "--tasks", "syn_noisy", "--model", "tiny", "--max-train-examples", "24"]


def one_line_error(capsys, argv) -> str:
    import ray
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.splitlines()) == 1, (rc, err)
    assert not ray.is_initialized()
    return err.strip()


@pytest.mark.parametrize("flags, message", [
    (["--patience", "-1"], "--patience -1: must be >= 0 evaluations (0: no early stopping, train --epochs)"),
    (["--max-epochs", "0"], "--max-epochs 0: must be more than 0"),
    (["--epochs", "3"], "--epochs: teachers stop early (--patience 2) within --max-epochs (default 10); give "
                        "--max-epochs, or --patience 0 for a fixed budget of --epochs"),
    (["--patience", "0", "--max-epochs", "5"], "--max-epochs: only with early stopping (--patience >= 1)"),
    (["--patience", "9"], "--patience 9: a teacher evaluates 10 times (once an epoch of --max-epochs, or --evals) "
                          "and stops at the earliest after patience + 1 of them: give --patience at most 8"),
    (["--max-epochs", "3"], "--patience 2: a teacher evaluates 3 times"),
    (["--patience", "3", "--evals", "4"], "--patience 3: a teacher evaluates 4 times"),
    (["--set", "early_stop.patience=9"], "teachers: early_stop.patience: 9 leaves no room to stop early with "
                                         "evals 10"),
])
def test_bad_teacher_stopping_flags_are_one_line_exit_2(tmp_path, capsys, flags, message):
    err = one_line_error(capsys, [*TEACHERS, *flags, "--storage", str(tmp_path)])
    assert err.startswith(f"bam-search: error: {message}")


def plan(tmp_path, *flags):
    return plan_teachers(build_parser().parse_args([*TEACHERS, *flags, "--storage", str(tmp_path)]))


def test_teachers_converge_by_default(tmp_path):
    r = plan(tmp_path).recipe
    assert (r.early_stop.patience, r.optim.epochs, r.evals) == (2, 10.0, 10)        # one evaluation an epoch
    r = plan(tmp_path, "--patience", "3", "--max-epochs", "6").recipe
    assert (r.early_stop.patience, r.optim.epochs, r.evals) == (3, 6.0, 6)
    assert plan(tmp_path, "--max-epochs", "4", "--evals", "8").recipe.evals == 8      # --evals beats one an epoch
    assert plan(tmp_path, "--set", "early_stop.patience=4").recipe.early_stop.patience == 4   # --set beats flags
    assert plan(tmp_path, "--patience", "9", "--set", "evals=20").recipe.evals == 20      # room for patience 9


def test_patience_zero_is_the_old_fixed_budget(tmp_path):
    fixed = plan(tmp_path, "--patience", "0").recipe
    assert (fixed.early_stop.patience, fixed.optim.epochs, fixed.evals) == (0, 3.0, 10)
    assert plan(tmp_path, "--patience", "0", "--epochs", "5").recipe.optim.epochs == 5.0
    assert plan(tmp_path, "--patience", "0").name != plan(tmp_path).name          # other teachers, other experiment


@pytest.mark.parametrize("quick, expected", [(True, (1, 3.0, 3)), (False, (2, 10.0, 10))])
def test_demo_teachers_converge_and_its_students_do_not(tmp_path, monkeypatch, quick, expected):
    monkeypatch.delenv("BAM_GLUE_DIR", raising=False)                 # the built-in synthetic tasks
    demo = plan_demo(build_parser().parse_args(["demo", "--model", "tiny", *(["--quick"] if quick else []),
                                                "--storage", str(tmp_path)]))
    t, s = demo.teachers.recipe, demo.sweep.recipe
    assert (t.early_stop.patience, t.optim.epochs, t.evals) == expected
    assert s.early_stop.patience == 0 and s.evals == (2 if quick else 4)
    assert t.optim.lr == s.optim.lr and t.data == s.data                 # the same budget otherwise
    demo = plan_demo(build_parser().parse_args(["demo", "--model", "tiny", "--quick", "--storage", str(tmp_path),
                                                "--set", "early_stop.patience=0"]))
    assert demo.teachers.recipe.early_stop.patience == 0                 # --set beats the demo's own settings


def record(task, seed, *, experiment, epochs_run=None, stopped_early=None, patience=2, most=10.0, **extra):
    r = {"task": task, "seed": seed, "fingerprint": "f", "model": "tiny", "key": f"{task}-s{seed}-k", "score": 80.0,
         "experiment": experiment, "best_step": 6,
         "config": {"optim": {"epochs": most}, **({"early_stop": {"patience": patience}} if patience else {})}}
    if epochs_run is not None:
        r.update(stopped_at_step=int(epochs_run * 3), epochs_run=epochs_run, stopped_early=stopped_early)
    return {**r, **extra}


def test_teachers_table_shows_best_step_and_stop(tmp_path):
    reg = BaselineRegistry(str(tmp_path))
    reg.append(record("syn_noisy", 0, experiment="old", patience=0))                # written before issue 18
    reg.append(record("syn_noisy", 1, experiment="new", epochs_run=4.0, stopped_early=True))
    lines = baseline_lines(str(tmp_path), ["syn_noisy"])
    assert lines[0].split() == ["task", "seed", "dev", "score", "best", "step", "stopped", "at", "epochs", "key"]
    assert lines[1].split() == ["syn_noisy", "0", "80.00", "6", "-", "-", "syn_noisy-s0-k"]
    assert lines[2].split() == ["syn_noisy", "1", "80.00", "6", "12", "early", "4.0", "syn_noisy-s1-k"]


def test_demo_headline_names_the_converged_teachers(tmp_path):
    reg = BaselineRegistry(str(tmp_path))
    reg.append(record("a", 0, experiment="demo-teachers", epochs_run=9.0, stopped_early=True))  # an older run
    reg.append(record("a", 0, experiment="demo-teachers", epochs_run=3.0, stopped_early=True))
    reg.append(record("b", 0, experiment="demo-teachers", epochs_run=6.0, stopped_early=True))
    reg.append(record("b", 0, experiment="other", epochs_run=1.0, stopped_early=True))
    out = tmp_path / "reports" / "demo-sweep"
    out.mkdir(parents=True)
    runs = [{"group": "teachers", "seed": 0, "scores": {"a": 90.0, "b": 90.2}},
            {"group": "student", "seed": 0, "scores": {"a": 96.0, "b": 96.64}}]
    (out / "comparison.json").write_text(json.dumps(compare(runs=runs, baseline="teachers", candidate="student")))
    assert demo_headline(str(tmp_path), "demo-sweep", teachers="demo-teachers") == (
        "student 96.32 vs teachers (early-stopped at epochs 3-6 of at most 10, patience 2) 90.10 (+6.22)")
    reg.append(record("b", 0, experiment="demo-teachers", epochs_run=10.0, stopped_early=False))
    assert teacher_stops(str(tmp_path), ["a", "b"], experiment="demo-teachers") == (
        "1 of 2 early-stopped at epochs 3-10 of at most 10, patience 2")
    reg.append(record("c", 0, experiment="fixed", epochs_run=3.0, stopped_early=False, patience=0, most=3.0))
    assert teacher_stops(str(tmp_path), ["c"], experiment="fixed") == "trained 3 epochs, no early stopping"


def test_an_early_stopped_trial_is_done_not_stopped():
    rows = [{"step": 3, "progress": 0.17, "glue_avg": 50.0, "stopped_early": 0},
            {"step": 12, "progress": 0.67, "glue_avg": 53.0, "stopped_early": 1}]
    trial = {"trial_id": "t", "params": {}, "rows": rows, "error": False, "dir": "d"}
    assert summarize([trial])[0]["state"] == "DONE"
    assert summarize([{**trial, "rows": rows[:1]}])[0]["state"] == "STOPPED"


def test_the_live_table_shows_an_early_stopped_teacher_as_done():
    from types import SimpleNamespace

    from search.progress import LiveTable
    table = LiveTable(title="teachers", total_trials=2, concurrency=1)
    conf = {"params": {}, "loop": {"recipe": {"evals": 10}}}
    early, cut = SimpleNamespace(trial_id="a", config=conf), SimpleNamespace(trial_id="b", config=conf)
    table.on_trial_result(0, [], early, {"training_iteration": 4, "glue_avg": 80.0, "stopped_early": 1})
    table.on_trial_result(0, [], cut, {"training_iteration": 4, "glue_avg": 70.0, "stopped_early": 0})
    table.on_trial_complete(0, [], early)
    table.on_trial_complete(0, [], cut)
    assert table.rows["a"]["state"] == "DONE (early stop)"
    assert table.rows["b"]["state"] == "STOPPED"        # cut by the scheduler before its last evaluation
    assert table._eta() == "-"                         # both count as finished
