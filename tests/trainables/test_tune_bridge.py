"""The report history a trial replays to Tune when Tune restarts it without a checkpoint
(trainables/tune_bridge.py): what it records, what it drops as a repeat, what it hands back."""
import json

import pytest

from trainables.tune_bridge import ReportHistory, train_run_for


def history(tmp_path, run="train-t1"):
    return ReportHistory(str(tmp_path), experiment="exp", trial_id="t1", run_name=run)


def test_rows_are_recorded_in_order_and_replayed_without_bookkeeping(tmp_path):
    h = history(tmp_path)
    assert h.replay() == [] and h.floor is None
    assert h.admit({"step": 10, "glue_avg": 50.0}) and h.admit({"step": 20, "glue_avg": float("nan")})
    f = tmp_path / "experiments" / "exp" / "reports" / "t1.jsonl"
    assert [json.loads(line)["_run"] for line in f.read_text().splitlines()] == ["train-t1", "train-t1"]
    again = history(tmp_path).replay()
    assert [r["step"] for r in again] == [10, 20] and all("_run" not in r for r in again)
    assert again[1]["glue_avg"] != again[1]["glue_avg"]          # NaN survives the round trip


def test_a_repeat_of_a_reported_step_is_dropped_and_not_recorded(tmp_path):
    h = history(tmp_path)
    h.admit({"step": 10})
    h.admit({"step": 20})
    assert not h.admit({"step": 20})                  # a run resumed at a checkpoint re-reports its row
    assert not h.admit({"step": 10})
    restarted = history(tmp_path)                      # the same run after the trial was restarted
    assert restarted.floor == 20 and not restarted.admit({"step": 20})
    assert restarted.admit({"step": 30})
    assert [r["step"] for r in history(tmp_path).replay()] == [10, 20, 30]


def test_a_new_train_run_of_the_trial_starts_without_a_floor(tmp_path):
    history(tmp_path).admit({"step": 40})
    run, resume_from = train_run_for("t1", {"trial_id": "t2", "run": "train-t2", "checkpoint": "/c", "step": 24})
    assert run != "train-t1" and resume_from == "/c"
    exploited = history(tmp_path, run)                # a PBT exploit goes on from the donor's step 24, below 40
    assert exploited.floor is None and exploited.admit({"step": 28})
    assert [r["step"] for r in history(tmp_path).replay()] == [40, 28]


def test_a_torn_last_line_is_left_out(tmp_path):
    h = history(tmp_path)
    h.admit({"step": 10})
    f = tmp_path / "experiments" / "exp" / "reports" / "t1.jsonl"
    f.write_text(f.read_text() + '{"step": 2')
    assert [r["step"] for r in history(tmp_path).replay()] == [10]


@pytest.mark.parametrize("pointer,expected", [(None, ("train-t1", None)),
                                              ({"trial_id": "t1", "run": "train-t1-from-0-t2-step8"},
                                               ("train-t1-from-0-t2-step8", None))])
def test_own_or_no_pointer_keeps_the_trials_run(pointer, expected):
    assert train_run_for("t1", pointer) == expected
