"""bench/asha_replay.py feeds fixed curves to Ray's own ASHAScheduler in simulated time.

The expected decisions are worked by hand from ASHA's rule (Li et al. 2018, "A System for Massively Parallel
Hyperparameter Tuning", Algorithm 2, as Ray implements it: at a rung, a trial goes on when its metric is at least
the (1 - 1/rf) quantile of the values recorded there before it; the first to reach a rung always goes on).
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import asha_replay  # noqa: E402

# rf 2, grace 1, 4 evaluations: rungs at 1, 2 (and 4). One trial at a time, in this order:
CURVES = [[1, 1, 1, 1],    # first everywhere: goes on to the end
          [2, 2, 2, 2],    # rung 1: 2 >= median{1} = 1; rung 2: 2 >= 1: to the end
          [0, 5, 5, 5],    # rung 1: 0 < median{1, 2} = 1.5: stopped after 1 evaluation
          [3, 0, 9, 9]]    # rung 1: 3 >= median{1, 2, 0} = 1; rung 2: 0 < median{1, 2} = 1.5: stopped after 2


def test_decisions_follow_ashas_rule():
    r = asha_replay.replay(CURVES, startup_s=[0.0] * 4, eval_s=[1.0] * 4, at_once=1, grace=1, rf=2)
    assert r["evals"] == [4, 4, 1, 2]
    assert r["best"] == 3                          # configuration 3's 9 was never reached
    assert r["trial_s"] == pytest.approx(11.0)     # 4 + 4 + 1 + 2 evaluations of 1 s
    assert r["wall_s"] == pytest.approx(11.0)


def test_slots_and_start_up_in_simulated_time():
    # ties are not below the cutoff: nobody stops; two slots, so the third trial starts when the first ends
    r = asha_replay.replay([[1, 1]] * 3, startup_s=[1.0] * 3, eval_s=[1.0] * 3, at_once=2, grace=1, rf=2)
    assert r["evals"] == [2, 2, 2]
    assert r["trial_s"] == pytest.approx(9.0)      # each: 1 s start-up + 2 evaluations
    assert r["wall_s"] == pytest.approx(6.0)       # 0-3 and 0-3, then 3-6


def test_table_from_a_bench_json():
    full = [{"seed": i, "evals": 4, "best": max(c), "curve": c, "trial_s": 1.0 + 4 * 1.0, "startup_s": 1.0}
            for i, c in enumerate(CURVES)]
    run = {"at_once": 1, "full": {"trials": full}}
    (row,) = asha_replay.table(run, graces=[1], rfs=[2])
    assert row["gap"] == pytest.approx(9 - 3)
    assert row["ratio"] == pytest.approx((4 * 1.0 + 11.0) / (4 * 5.0))     # start-ups + evaluations run
    assert row["ratio_after_startup"] == pytest.approx(11.0 / 16.0)
    assert row["kept_to_end"] == 2 and row["stopped_at"] == {"1": 1, "2": 1, "4": 2}
    # --startup replaces the measured start-up: 0 s makes both ratios the training-only one
    (row0,) = asha_replay.table(run, graces=[1], rfs=[2], startup=0.0)
    assert row0["ratio"] == pytest.approx(11.0 / 16.0)


def test_json_without_curves_is_refused():
    run = {"full": {"trials": [{"seed": 0, "evals": 4, "best": 1.0, "trial_s": 5.0, "startup_s": 1.0}]}}
    with pytest.raises(SystemExit, match="no per-evaluation curves"):
        asha_replay.from_run(run)
