"""The per-task KD switch criteria on scripted dev-score sequences."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainables.switch import CRITERIA as SWITCH_CRITERIA, TaskSwitch, switch_steps


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("rise", [1, 4])
def test_patience_fires_after_k_evaluations_without_improvement(k, rise):
    scores = list(range(rise)) + [rise - 1 - 0.5 * i for i in range(1, 20)]   # peak at index rise-1, then falls
    assert switch_steps(criterion="patience", scores=scores, patience=k) == rise - 1 + k
    steps = [100 * (i + 1) for i in range(len(scores))]
    assert switch_steps(criterion="patience", scores=scores, steps=steps, patience=k) == steps[rise - 1 + k]


def test_patience_resets_on_improvement_and_ties_do_not_count():
    #          0  1  2  3  4  5  6  7
    scores = [50, 40, 45, 51, 51, 50, 49, 60]
    # best 50 @0; 40, 45 no -> since 2; 51 improves @3; 51 is a tie (no), 50 no, 49 no -> since 3 @6
    assert switch_steps(criterion="patience", scores=scores, patience=3) == 6
    assert switch_steps(criterion="patience", scores=scores, patience=2) == 2
    assert switch_steps(criterion="patience", scores=scores, patience=4) is None


def test_min_delta_small_improvements_do_not_reset():
    creeping = [50 + 0.02 * i for i in range(12)]                 # +0.02 per evaluation
    assert switch_steps(criterion="patience", scores=creeping, patience=3) is None
    assert switch_steps(criterion="min_delta", scores=creeping, patience=3, min_delta=0.0) is None
    assert switch_steps(criterion="min_delta", scores=creeping, patience=3, min_delta=0.1) == 3
    # an improvement larger than min_delta resets the counter and moves the reference
    scores = [50, 50.05, 51, 51.05, 51.08, 51.09]
    assert switch_steps(criterion="min_delta", scores=scores, patience=2, min_delta=0.5) == 4
    # an improvement of exactly min_delta does not count
    assert switch_steps(criterion="min_delta", scores=[1.0, 1.5, 1.5], patience=2, min_delta=0.5) == 2


def test_min_delta_reference_does_not_creep():
    """Steps of 0.4 with min_delta 0.5: 50 -> 50.4 (no) -> 50.8 (> 50.5: yes, new ref 50.8) -> 51.2 (no) -> ..."""
    drift = [50, 50.4, 50.8, 51.2, 51.6, 52.0]
    s = TaskSwitch(criterion="min_delta", patience=99, min_delta=0.5)
    counters = []
    for i, v in enumerate(drift):
        s.observe(step=i, score=v)
        counters.append(s.since_best)
    assert counters == [0, 1, 0, 1, 0, 1]
    assert s.best == 52.0 and s.best_step == 5                    # raw best still tracks every improvement


def test_ema_with_factor_one_equals_patience():
    rng = np.random.default_rng(0)
    for _ in range(30):
        scores = np.cumsum(rng.normal(size=25)).tolist()
        for k in (1, 2, 4):
            assert switch_steps(criterion="ema", scores=scores, patience=k, ema=1.0) == \
                switch_steps(criterion="patience", scores=scores, patience=k)


def test_ema_smoothing_delays_the_switch():
    scores = [0, 4, 8, 7, 6, 5, 4, 3, 2, 1, 0]                    # raw peak at index 2
    assert switch_steps(criterion="patience", scores=scores, patience=2) == 4
    # ema 0.5: 0, 2, 5, 6, 6, 5.5, ... -> smoothed peak at index 3 (the tie at 4 does not count) -> fires at 5
    assert switch_steps(criterion="ema", scores=scores, patience=2, ema=0.5) == 5
    # heavier smoothing delays more: ema 0.2 -> 0, .8, 2.24, 3.19, 3.75, 4.0029, 4.0023, 3.80 -> fires at 7
    assert switch_steps(criterion="ema", scores=scores, patience=2, ema=0.2) == 7


def test_ema_rides_out_oscillation():
    scores = [10, 20, 15, 25, 20, 30, 25, 35]                      # rising trend with dips
    assert switch_steps(criterion="patience", scores=scores, patience=1) == 2
    assert switch_steps(criterion="ema", scores=scores, patience=1, ema=0.3) is None


def test_fixed_step_and_never():
    falling = [90, 80, 70, 60, 50, 40]
    steps = [0, 5, 10, 15, 20, 25]
    assert switch_steps(criterion="fixed_step", scores=falling, steps=steps, at_step=7) == 10
    assert switch_steps(criterion="fixed_step", scores=falling, steps=steps, at_step=10) == 10
    assert switch_steps(criterion="fixed_step", scores=falling, steps=steps, at_step=0) == 0
    assert switch_steps(criterion="fixed_step", scores=falling, steps=steps, at_step=26) is None
    assert switch_steps(criterion="fixed_step", scores=falling, steps=steps, at_step=None) is None
    assert switch_steps(criterion="never", scores=falling, steps=steps, patience=1) is None


def test_unknown_criterion():
    with pytest.raises(ValueError, match="unknown switch criterion"):
        TaskSwitch(criterion="sometimes").observe(step=0, score=1.0)
    assert set(SWITCH_CRITERIA) == {"never", "patience", "min_delta", "ema", "fixed_step"}


@pytest.mark.parametrize("criterion", SWITCH_CRITERIA)
def test_best_and_best_step(criterion):
    s = TaskSwitch(criterion=criterion, patience=100, at_step=10 ** 9)
    scores = [3.0, 7.0, 5.0, 7.0, 9.5, 1.0]
    flags = [s.observe(step=10 * i, score=v)[0] for i, v in enumerate(scores)]
    assert flags == [True, True, False, False, True, False]    # a tie is not a new best
    assert s.best == max(scores) and s.best_step == 40
    assert s.history == [[10 * i, v] for i, v in enumerate(scores)]
    assert not s.switched


def test_after_the_switch_it_never_fires_again_but_keeps_tracking():
    s = TaskSwitch(criterion="patience", patience=1)
    assert s.observe(step=1, score=5.0) == (True, False)
    assert s.observe(step=2, score=4.0) == (False, True)
    s.switched_at = 2
    assert s.switched
    for i, v in enumerate([3.0, 2.0, 6.0, 1.0], start=3):
        new_best, fire = s.observe(step=i, score=v)
        assert not fire
        assert new_best == (v == 6.0)
    assert s.best == 6.0 and s.best_step == 5


@pytest.mark.parametrize("criterion", ["patience", "min_delta", "ema", "fixed_step"])
def test_round_trip_continues_identically(criterion):
    rng = np.random.default_rng(3)
    scores = np.cumsum(rng.normal(size=30)).tolist()
    kw = dict(criterion=criterion, patience=3, min_delta=0.2, ema=0.4, at_step=22)
    a = TaskSwitch(**kw)
    for i in range(10):
        a.observe(step=i, score=scores[i])
    b = TaskSwitch.from_dict(json.loads(json.dumps(a.to_dict())))     # as in a checkpoint's state.json
    assert b == a and b.to_dict() == a.to_dict()
    for i in range(10, 30):
        assert a.observe(step=i, score=scores[i]) == b.observe(step=i, score=scores[i])
    assert a == b
