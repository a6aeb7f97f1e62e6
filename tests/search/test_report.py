"""Tests for search/report.py (pure numpy/scipy/matplotlib; fast)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from search import report
from search.report import compare, holm, load_runs, paired_bootstrap, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(group, seed, scores, **extra):
    return {"group": group, "seed": seed, "scores": scores, **extra}


@pytest.fixture
def runs():
    """Teachers and student share seed numbers 1-3 (independent runs all the same: Welch); multitask has others."""
    teachers = {1: (70.0, 90.0), 2: (72.0, 91.0), 3: (74.0, 92.0)}
    student = {1: (75.0, 91.0), 2: (76.0, 91.0), 3: (77.5, 93.0)}
    multitask = {7: (69.0, 89.0), 8: (71.0, 90.5)}
    out = []
    for seed, (rte, sst2) in teachers.items():
        out.append(_run("teachers", seed, {"rte": rte, "sst2": sst2}))
    for seed, (rte, sst2) in multitask.items():
        out.append(_run("multitask", seed, {"rte": rte, "sst2": sst2}))
    for seed, (rte, sst2) in student.items():
        out.append(
            _run(
                "student",
                seed,
                {"rte": rte, "sst2": sst2},
                curves={
                    "rte": [[0, 50.0], [100, 60.0 + seed], [200, 70.0 + seed], [300, rte]],
                    "sst2": [[0, 80.0], [100, 88.0], [200, sst2]],
                },
                switch_steps={"rte": 150 + 10 * seed, "sst2": None},
            )
        )
    return out


# --------------------------------------------------------------------------- holm


def test_holm_worked_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []
    assert holm([0.2]) == pytest.approx([0.2])


@pytest.mark.parametrize("seed", range(6))
def test_holm_matches_statsmodels(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 15))
    p = rng.uniform(0, 1, m) ** 3  # skew towards small p-values so the step-down matters
    if seed == 0:
        p[: min(3, m)] = 0.01  # ties
    expected = multipletests(p, method="holm")[1]
    got = holm(list(p))
    assert isinstance(got, list) and all(isinstance(x, float) for x in got)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_holm_rejects_bad_values():
    with pytest.raises(ValueError):
        holm([0.1, 1.5])
    with pytest.raises(ValueError):
        holm([float("nan")])


# --------------------------------------------------------------------------- compare


def _row(result, task):
    return next(r for r in result["tasks"] if r["task"] == task)


def test_compare_known_numbers(runs):
    res = compare(runs=runs)
    json.dumps(res, allow_nan=False)  # plain, strict JSON
    assert res["baseline"] == "teachers" and res["candidate"] == "student"
    assert res["groups"] == ["teachers", "multitask", "student"]
    assert [r["task"] for r in res["tasks"]] == ["rte", "sst2"]

    rte = _row(res, "rte")
    assert rte["groups"]["teachers"]["mean"] == pytest.approx(72.0)
    assert rte["groups"]["teachers"]["sd"] == pytest.approx(2.0)
    assert rte["groups"]["student"]["mean"] == pytest.approx(76.0 + 0.5 / 3)
    assert rte["groups"]["student"]["sd"] == pytest.approx(np.std([75, 76, 77.5], ddof=1))
    assert rte["groups"]["multitask"]["mean"] == pytest.approx(70.0)
    assert rte["groups"]["multitask"]["n"] == 2
    assert rte["delta"] == pytest.approx(76.0 + 0.5 / 3 - 72.0)
    assert rte["deltas"]["multitask"] == pytest.approx(-2.0)

    # same seed numbers, but independent runs: Welch's t, never a paired t-test
    assert rte["test"] == "welch_t" and rte["test_n"] == 6
    expected = stats.ttest_ind([75.0, 76.0, 77.5], [70.0, 72.0, 74.0], equal_var=False)
    assert rte["p"] == pytest.approx(float(expected.pvalue), rel=1e-12)
    assert rte["statistic"] == pytest.approx(float(expected.statistic), rel=1e-12)
    assert rte["welch"]["p"] == rte["p"]
    assert rte["bootstrap"]["p"] is None and "stored no dev predictions" in rte["bootstrap"]["why"]

    sst2 = _row(res, "sst2")
    expected_sst2 = stats.ttest_ind([91.0, 91.0, 93.0], [90.0, 91.0, 92.0], equal_var=False).pvalue
    assert sst2["p"] == pytest.approx(float(expected_sst2), rel=1e-12)

    adj = multipletests([rte["p"], sst2["p"]], method="holm")[1]
    assert [rte["p_adj"], sst2["p_adj"]] == pytest.approx(list(adj))
    assert rte["significant"] == (rte["p_adj"] < 0.05)
    assert sst2["significant"] is False

    avg = res["glue_average"]
    assert avg["means"]["teachers"] == pytest.approx((72.0 + 91.0) / 2)
    assert avg["means"]["student"] == pytest.approx((76.0 + 0.5 / 3 + 91.0 + 2 / 3) / 2)
    assert avg["means"]["multitask"] == pytest.approx((70.0 + 89.75) / 2)
    assert avg["delta"] == pytest.approx(avg["means"]["student"] - avg["means"]["teachers"])


def test_compare_welch_when_seeds_not_shared(runs):
    res = compare(runs=runs, baseline="teachers", candidate="multitask", tasks=["rte"])
    row = _row(res, "rte")
    assert [r["task"] for r in res["tasks"]] == ["rte"]
    assert row["test"] == "welch_t"
    expected = stats.ttest_ind([69.0, 71.0], [70.0, 72.0, 74.0], equal_var=False).pvalue
    assert row["p"] == pytest.approx(float(expected), rel=1e-12)
    assert row["p_adj"] == pytest.approx(row["p"])  # single test: Holm is the identity


def test_compare_single_seed_no_predictions_gives_none():
    runs = [_run("teachers", 0, {"rte": 70.0}), _run("student", 0, {"rte": 71.0})]
    row = compare(runs=runs)["tasks"][0]
    assert row["groups"]["teachers"]["sd"] == 0.0
    assert row["p"] is None and row["p_adj"] is None and row["test"] is None
    assert row["significant"] is False


def _preds(correct):
    """Dev predictions of a binary accuracy task whose gold labels are all 1: ``correct`` is the prediction."""
    correct = [int(c) for c in correct]
    return {"rte": {"metrics": ["accuracy"],
                    "splits": {"dev": {"ids": list(range(len(correct))), "gold": [1] * len(correct), "pred": correct}}}}


def _bootstrap_runs(student_correct, teacher_correct):
    def score(c):
        return 100.0 * float(np.mean(c))

    return [
        _run("teachers", 0, {"rte": score(teacher_correct)}, dev_predictions=_preds(teacher_correct)),
        _run("student", 0, {"rte": score(student_correct)}, dev_predictions=_preds(student_correct)),
    ]


def test_bootstrap_small_p_when_candidate_clearly_better():
    rng = np.random.default_rng(1)
    teacher = (rng.uniform(size=400) < 0.6).astype(int)
    student = teacher.copy()
    student[teacher == 0] = (rng.uniform(size=int((teacher == 0).sum())) < 0.6).astype(int)
    row = compare(runs=_bootstrap_runs(student.tolist(), teacher.tolist()))["tasks"][0]
    assert row["test"] == "bootstrap" and row["test_n"] == 400
    assert row["p"] < 0.001
    assert row["significant"] is True
    assert row["statistic"] == pytest.approx(100 * (student.mean() - teacher.mean()))
    assert row["welch"]["p"] is None and "2+ runs" in row["welch"]["why"]   # one run each: no Welch


def test_bootstrap_large_p_when_identical():
    rng = np.random.default_rng(2)
    same = (rng.uniform(size=300) < 0.7).astype(int).tolist()
    row = compare(runs=_bootstrap_runs(same, same))["tasks"][0]
    assert row["test"] == "bootstrap"
    assert row["p"] == pytest.approx(1.0)
    assert row["significant"] is False


def test_paired_bootstrap_is_deterministic_and_calibrated():
    rng = np.random.default_rng(3)
    a = (rng.uniform(size=500) < 0.8).astype(int)
    b = a.copy()
    ones, zeros = np.flatnonzero(a == 1), np.flatnonzero(a == 0)
    b[ones[:3]] = 0  # candidate (a) wins 3 examples ...
    b[zeros[:2]] = 1  # ... and loses 2: a tiny, insignificant edge
    gold = np.ones(500, dtype=int)
    p1 = paired_bootstrap([(gold, [a, b])], metrics=["accuracy"], n_candidate=1)["p"]
    assert p1 == paired_bootstrap([(gold, [a, b])], metrics=["accuracy"], n_candidate=1)["p"]  # fixed seed
    assert p1 > 0.5
    # many wins, no losses: significant
    c = a.copy()
    c[zeros[:40]] = 1
    assert paired_bootstrap([(gold, [c, a])], metrics=["accuracy"], n_candidate=1)["p"] < 0.001
    with pytest.raises(ValueError):
        paired_bootstrap([(np.ones(3), [[1, 0], [1, 0, 1]])], metrics=["accuracy"], n_candidate=1)


def test_missing_group_raises(runs):
    no_student = [r for r in runs if r["group"] != "student"]
    with pytest.raises(ValueError, match="student"):
        compare(runs=no_student)
    with pytest.raises(ValueError, match="nope"):
        compare(runs=runs, baseline="nope")


def test_missing_task_score_raises(runs):
    runs[-1]["scores"].pop("sst2")
    with pytest.raises(ValueError, match="sst2"):
        compare(runs=runs)
    with pytest.raises(ValueError, match="mnli"):
        compare(runs=runs, tasks=["mnli"])


def test_duplicate_seed_in_group_raises(runs):
    runs.append(_run("student", 1, {"rte": 1.0, "sst2": 2.0}))
    with pytest.raises(ValueError, match="seed"):
        compare(runs=runs)


# --------------------------------------------------------------------------- load_runs


def test_load_runs_roundtrip_and_bad_line(tmp_path, runs):
    good = tmp_path / "runs.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in runs) + "\n\n")
    assert load_runs(good) == runs

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(runs[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_runs(bad)

    bad2 = tmp_path / "bad2.jsonl"
    bad2.write_text(json.dumps(runs[0]) + "\n" + json.dumps({"group": "x", "seed": 1}) + "\n")
    with pytest.raises(ValueError, match=r"bad2\.jsonl:2.*scores"):
        load_runs(bad2)


# --------------------------------------------------------------------------- write_report


def _assert_png(path):
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000


def test_write_report_files(tmp_path, runs):
    recipe = {"kd": {"switch": "per_task", "temperature": np.float64(2.0)}, "lr": 3e-5, "tasks": ("rte", "sst2")}
    title = "BAM <search> & report"
    out = write_report(runs=runs, out_dir=tmp_path / "rep", title=title, recipe=recipe)
    assert set(out) == {"html", "markdown", "json", "bars", "curves"}
    for key in out:
        assert (tmp_path / "rep").joinpath(out[key].rsplit("/", 1)[-1]).exists()
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.endswith(".tmp")]

    page = open(out["html"], encoding="utf-8").read()
    assert page.lstrip().lower().startswith("<!doctype html>")
    assert "BAM &lt;search&gt; &amp; report" in page and "<search>" not in page
    for name in ("rte", "sst2", "teachers", "multitask", "student"):
        assert name in page
    imgs = re.findall(r'<img src="([^"]+)" alt="([^"]+)"', page)
    assert [src for src, _ in imgs] == ["bars.png", "curves.png"]
    assert all(alt.strip() for _, alt in imgs)
    assert "<pre" in page and "temperature: 2.0" in page and "per_task" in page
    assert "GLUE average" in page

    comparison = json.load(open(out["json"]))
    assert comparison == json.loads(json.dumps(compare(runs=runs)))

    _assert_png(out["bars"])
    _assert_png(out["curves"])

    md = open(out["markdown"], encoding="utf-8").read()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2  # header, separator, one row per task
    assert table[2].startswith("| rte |") and table[3].startswith("| sst2 |")
    assert "](bars.png)" in md


def test_write_report_without_curves_and_group_selection(tmp_path, runs):
    for r in runs:
        r.pop("curves", None)
        r.pop("switch_steps", None)
    out = write_report(runs=runs, out_dir=tmp_path, title="t", groups=["student", "teachers"])
    assert "curves" not in out and not (tmp_path / "curves.png").exists()
    page = open(out["html"], encoding="utf-8").read()
    assert 'src="bars.png"' in page and "curves.png" not in page
    assert "multitask" not in page and "<pre" not in page
    assert json.load(open(out["json"]))["groups"] == ["student", "teachers"]
    with pytest.raises(ValueError, match="baseline"):
        write_report(runs=runs, out_dir=tmp_path, title="t", groups=["student", "multitask"])


def test_module_has_no_heavy_imports():
    code = (
        "import sys, search.report; "
        "print(','.join(m for m in ('ray', 'torch', 'wandb') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(report.__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ""


# --------------------------------------------------------------------------- the bar chart: differences (issue 20, 8)

def test_welch_interval_is_statsmodels_and_inverts_welchs_test():
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW
    from search.stats import welch_interval
    a, b = [75.0, 76.0, 77.5], [70.0, 72.0, 74.0, 71.0]
    lo, hi = welch_interval(a, b)
    exp_lo, exp_hi = CompareMeans(DescrStatsW(a), DescrStatsW(b)).tconfint_diff(alpha=0.05, usevar="unequal")
    assert (lo, hi) == (pytest.approx(exp_lo, rel=1e-10), pytest.approx(exp_hi, rel=1e-10))
    # the 95% interval just excludes 0 exactly when Welch's two-sided p is below 0.05
    for shift in (0.0, 1.5, 3.0, 5.0, 8.0):
        lo, hi = welch_interval([x - shift for x in a], b)
        p = stats.ttest_ind([x - shift for x in a], b, equal_var=False).pvalue
        assert (lo > 0 or hi < 0) == (p < 0.05)
    assert welch_interval([1.0], b) is None and welch_interval([2.0, 2.0], [2.0, 2.0]) is None


def test_bar_chart_draws_differences_to_the_baseline_with_intervals_and_holm_marks(runs):
    cmp = compare(runs=runs, n_resamples=200)
    bars = report.delta_bars(cmp)
    assert {(b["task"], b["group"]) for b in bars} == {(t, g) for t in ("rte", "sst2") for g in ("multitask", "student")}
    by = {(b["task"], b["group"]): b for b in bars}
    # student rte: mean 76.17 - teachers' 72.0; the interval is Welch's over the seeds' scores
    assert by["rte", "student"]["delta"] == pytest.approx(76.1666666 - 72.0, abs=1e-6)
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW
    lo, hi = CompareMeans(DescrStatsW([75.0, 76.0, 77.5]), DescrStatsW([70.0, 72.0, 74.0])).tconfint_diff(
        usevar="unequal")
    assert by["rte", "student"]["interval"] == (pytest.approx(lo), pytest.approx(hi))
    assert by["sst2", "multitask"]["delta"] == pytest.approx(89.75 - 91.0)
    rows = {r["task"]: r for r in cmp["tasks"]}
    for (task, group), b in by.items():        # only the candidate carries the report's (Holm) mark
        assert b["significant"] == (group == "student" and rows[task]["significant"])
    png = report._bars_png(cmp)
    assert png[:8] == PNG_MAGIC
