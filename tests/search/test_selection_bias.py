"""A sweep's best trial was picked on the dev examples it is scored on, so its score carries the luck of that one
run. The report says so wherever that trial is the student (the demo's headline too), and the retrain command
`best --export` writes runs seeds after that trial's own, so the retrain never repeats it (the luck again)."""
from __future__ import annotations

import json

from test_list_dry_run import _row, fake_experiment

from search import report
from search.report import _methods, _summary, compare
from search.results import demo_headline

TEACHERS = [{"group": "teachers", "seed": 0, "scores": {"syn_noisy": 50.0}}]


def _records(storage, monkeypatch, **kw):
    monkeypatch.setattr(report, "_teacher_records", lambda storage, recipe: [dict(r) for r in TEACHERS])
    return report.report_records(str(storage), "sw", **kw)[0]


def test_the_sweep_s_best_trial_is_marked_picked_and_a_retrain_is_not(tmp_path, monkeypatch):
    st = tmp_path / "st"
    fake_experiment(st, "sw", job="student", params=[{"optim.lr": 0.001}, {"optim.lr": 0.002}, {"optim.lr": 0.003}],
                    rows=[[_row(0, 5, 60.0, 1.0)], [_row(1, 5, 80.0, 1.0)], [_row(2, 5, 70.0, 1.0)]])
    fake_experiment(st, "retrain", job="student", params=[{"seed": 1}, {"seed": 2}],
                    rows=[[_row(0, 5, 74.0, 1.0)], [_row(1, 5, 76.0, 1.0)]])
    student = _records(st, monkeypatch)[-1]
    assert student["scores"] == {"syn_noisy": 80.0}
    assert student["picked"] == {"trials": 3, "experiment": "sw", "metric": "glue_avg"}
    retrained = [r for r in _records(st, monkeypatch, students=("retrain",)) if r["group"] == "student"]
    assert [r["scores"]["syn_noisy"] for r in retrained] == [74.0, 76.0]
    assert not any("picked" in r for r in retrained)


def test_a_one_trial_experiment_is_not_a_pick(tmp_path, monkeypatch):
    st = tmp_path / "st"
    fake_experiment(st, "sw", job="student", params=[{"seed": 0}], rows=[[_row(0, 5, 60.0, 1.0)]])
    assert "picked" not in _records(st, monkeypatch)[-1]


def test_the_report_and_the_demo_headline_say_the_student_was_picked(tmp_path):
    picked = {"trials": 8, "experiment": "demo-sweep", "metric": "glue_avg"}
    runs = [{"group": "teachers", "seed": 0, "scores": {"a": 90.0, "b": 90.2}},
            {"group": "student", "seed": 0, "scores": {"a": 96.0, "b": 96.64}, "picked": picked}]
    comp = compare(runs=runs, baseline="teachers", candidate="student")
    assert comp["picked"] == {"student": picked}
    assert _summary(comp).endswith(" student is the best of 8 trials, picked on these dev examples: optimistic "
                                   "(see Selection).")
    notes = [n for n in _methods(comp) if n.startswith("Selection:")]
    assert len(notes) == 1 and "best of 8 trials of demo-sweep (by glue_avg)" in notes[0] and "optimistic" in notes[0]
    out = tmp_path / "reports" / "demo-sweep"
    out.mkdir(parents=True)
    (out / "comparison.json").write_text(json.dumps(comp))
    headline = demo_headline(str(tmp_path), "demo-sweep", teachers="demo-teachers")
    assert headline.startswith("student (best of 8 trials, picked on these dev examples) 96.32 vs teachers (")
    assert headline.endswith(" 90.10 (+6.22)")
    del runs[1]["picked"]                    # retrained runs: no such words
    assert compare(runs=runs, baseline="teachers", candidate="student")["picked"] == {}


def test_the_wandb_report_text_carries_the_selection_caveat():
    from search.wandb_report import _markdown
    runs = [{"group": "teachers", "seed": 0, "scores": {"a": 90.0}},
            {"group": "student", "seed": 0, "scores": {"a": 96.0}, "picked": {"trials": 8, "experiment": "sw",
                                                                            "metric": "glue_avg"}}]
    text = _markdown("sw", "glue_avg", "t1", compare(runs=runs, baseline="teachers", candidate="student"))
    assert "**Selection**: student is the best of 8 trials (by `glue_avg`)" in text
    del runs[1]["picked"]
    assert "Selection" not in _markdown("sw", "glue_avg", "t1", compare(runs=runs, baseline="teachers",
                                                                        candidate="student"))
