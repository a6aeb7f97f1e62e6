"""The early-stopping schedulers as built for a sweep: default rungs, and --grace-period / --reduction-factor."""
from __future__ import annotations

import pytest

from search.experiment import make_scheduler
from trainables.errors import UserError


def rungs(s) -> list[int]:
    return sorted(m for m, _ in s._brackets[0]._rungs)


def test_asha_defaults_a_quarter_of_the_evaluations_and_halving():
    s = make_scheduler("asha", max_t=8, metric="glue_avg")
    assert s._reduction_factor == 2 and s._max_t == 8
    assert rungs(s) == [2, 4, 8]


def test_asha_grace_period_and_reduction_factor():
    s = make_scheduler("asha", max_t=8, metric="glue_avg", grace_period=1, reduction_factor=3)
    assert s._reduction_factor == 3
    assert rungs(s) == [1, 3]                          # 1, 1*3; 9 is past the 8 evaluations


def test_median_grace_period():
    assert make_scheduler("median", max_t=8, metric="glue_avg")._grace_period == 2
    assert make_scheduler("median", max_t=8, metric="glue_avg", grace_period=3)._grace_period == 3


def test_unknown_scheduler_is_named():
    with pytest.raises(UserError, match="hyperband"):
        make_scheduler("hyperband", max_t=4, metric="glue_avg")
