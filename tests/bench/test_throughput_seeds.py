"""bench/throughput.py compares its loops' dev metrics over seeds as the independent runs they are.

Each loop (the plain reference, the student, the student with the reference's optimiser) trains its own run
per seed: the same seed does not pair them (own data order, own dropout draws). The comparison is the
difference of means with Welch's t-test over seeds, not a mean of per-seed differences.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import throughput  # noqa: E402

REFERENCE = [80.0, 82.0, 81.0]
STUDENT = [79.0, 77.0, 80.5]
REFOPT = [81.5, 83.0, 79.0]


def test_loops_compared_by_welch_not_paired(monkeypatch):
    by_seed = iter([STUDENT[1], REFOPT[1], STUDENT[2], REFOPT[2]])
    monkeypatch.setattr(throughput, "run_reference",
                        lambda args, task_name, epochs, seed: {"score": {"sst2": REFERENCE[seed]}})
    monkeypatch.setattr(throughput, "run_student", lambda *a, **k: {"score": {"sst2": next(by_seed)}})
    first = ({"score": {"sst2": REFERENCE[0]}}, {"score": {"sst2": STUDENT[0]}}, {"score": {"sst2": REFOPT[0]}})
    out = throughput.seed_scores(SimpleNamespace(score_seeds=3, epochs=2), task="sst2", storage="unused",
                                 first=first, log=lambda _m: None)

    assert out["reference"]["scores"] == REFERENCE and out["student"]["scores"] == STUDENT
    assert "Welch" in out["test"]
    for loop, scores in (("student", STUDENT), ("student_reference_optimiser", REFOPT)):
        want = stats.ttest_ind(scores, REFERENCE, equal_var=False)
        assert out[loop]["welch_p_vs_reference"] == pytest.approx(want.pvalue, rel=1e-12)
        assert out[loop]["diff_vs_reference"] == pytest.approx(sum(scores) / 3 - sum(REFERENCE) / 3)
        lo, hi = out[loop]["welch_ci95_vs_reference"]
        ci = want.confidence_interval(0.95)
        assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9)
        assert not any(k.startswith("paired") for k in out[loop])
