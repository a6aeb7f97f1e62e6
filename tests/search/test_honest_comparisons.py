"""Issue 18 part 1: one model, one score; valid tests (Welch over seeds, a paired bootstrap over dev examples that
recomputes the task's metric, Holm over tasks); the teachers' score as a reference line on the curves. Fast: no
Ray (the end-to-end case trains the tiny model in-process on the synthetic tasks)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from search import report, results, stats
from trainables import dev_predictions
from trainables.metrics import compute_metrics

CACHE = os.environ.get("BAM_CACHE_DIR") or "/tmp/utcache"


# ------------------------------------------------------------------------------------------ one model, one score

def _trial(rows, metric="glue_avg"):
    return results.summarize([{"dir": "d", "trial_id": "t1", "params": {"params": {}}, "rows": rows,
                               "error": False}], metric=metric)[0]


def _row(step, a, b, best_a, best_b, **extra):
    return {"trial_id": "t1", "step": step, "a/score": a, "b/score": b, "a/best": best_a, "b/best": best_b,
            "glue_avg": (a + b) / 2, "glue_avg_best": (best_a + best_b) / 2, "progress": step / 30, **extra}


# task a peaks at step 10, task b at step 30; the evaluation with the highest glue_avg is step 20
ROWS = [_row(10, 90.0, 50.0, 90.0, 50.0), _row(20, 85.0, 70.0, 90.0, 70.0), _row(30, 60.0, 80.0, 90.0, 80.0)]


def test_a_sequential_run_is_scored_by_an_evaluation_of_every_task():
    """switch.mode sequential: task b joins at step 20; the early glue_avg (task a alone, 90) is higher than
    any average over both, but a model that never trained on b has no score for it: step 30 is selected."""
    rows = [{"step": 10, "a/score": 90.0, "glue_avg": 90.0, "progress": 0.3},
            {"step": 20, "a/score": 70.0, "b/score": 40.0, "glue_avg": 55.0, "progress": 0.6},
            {"step": 30, "a/score": 72.0, "b/score": 60.0, "glue_avg": 66.0, "progress": 1.0}]
    t = _trial(rows)
    assert t["selected_step"] == 30 and t["best"] == pytest.approx(66.0)
    assert results.best_scores(t, ["a", "b"]) == {"a": 72.0, "b": 60.0}
    assert _trial(rows[:1])["selected_step"] == 10          # no evaluation of both yet: the only one there is


def test_a_run_that_never_reached_a_task_is_not_ranked_against_runs_that_scored_them_all(monkeypatch):
    """A sweep mixing joint and sequential trials (spaces/kd_switch.yaml samples switch.mode): a sequential
    trial that never reached b averages a alone (90) and would beat a joint one's average over a and b (66);
    it has no comparable score, so ``best`` picks the joint trial, and with no complete trial names the gap."""
    def trial(tid, mode, rows):
        return {"dir": tid, "trial_id": tid, "error": False, "rows": rows,
                "params": {"params": {"switch.mode": mode},
                           "loop": {"recipe": {"tasks": ["a", "b"], "switch": {"mode": "joint"}}}}}
    seq = trial("seq", "sequential", [{"step": 10, "a/score": 90.0, "glue_avg": 90.0, "progress": 1.0}])
    joint = trial("joint", "joint", [{"step": 10, "a/score": 72.0, "b/score": 60.0, "glue_avg": 66.0,
                                      "progress": 1.0}])
    s = {t["trial_id"]: t for t in results.summarize([seq, joint])}
    assert s["seq"]["best"] is None and s["seq"]["unreached"] == ["b"] and s["seq"]["selected_step"] == 10
    assert s["joint"]["best"] == 66.0 and s["joint"]["unreached"] == []
    by_a = {t["trial_id"]: t for t in results.summarize([seq, joint], metric="a/score")}
    assert by_a["seq"]["best"] == 90.0 and by_a["seq"]["unreached"] == ["b"]    # a per-task metric compares
    monkeypatch.setattr(results, "experiment_metric", lambda storage, name: "glue_avg")
    monkeypatch.setattr(results, "trial_results", lambda storage, name: [seq, joint])
    recipe, top = results.best_recipe("unused", "sw")
    assert top["trial_id"] == "joint" and recipe["switch"]["mode"] == "joint"
    monkeypatch.setattr(results, "trial_results", lambda storage, name: [seq])
    with pytest.raises(results.UserError, match="no trial has reached b: switch.mode sequential"):
        results.best_recipe("unused", "sw")


def test_a_run_is_scored_by_one_evaluation_not_each_tasks_best():
    t = _trial(ROWS)
    assert t["selected_step"] == 20 and t["best"] == pytest.approx(77.5)
    assert results.best_scores(t, ["a", "b"]) == {"a": 85.0, "b": 70.0}          # one checkpoint's scores
    assert results.best_of_run(t, ["a", "b"]) == {"a": 90.0, "b": 80.0}          # the labelled extra
    by_b = _trial(ROWS, metric="b/score")                                          # the run's own metric decides
    assert by_b["selected_step"] == 30 and results.best_scores(by_b, ["a", "b"]) == {"a": 60.0, "b": 80.0}


def test_the_selected_evaluation_is_what_status_best_and_the_report_show(tmp_path, capsys):
    exp = tmp_path / "experiments" / "sw"
    (exp / "trial_1").mkdir(parents=True)
    (exp / "trial_1" / "params.json").write_text(json.dumps({"params": {"optim.lr": 0.1},
                                                             "loop": {"recipe": {"tasks": ["a", "b"]}}}))
    (exp / "trial_1" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    lines = results.status_lines(str(tmp_path), "sw")
    text = "\n".join(lines)
    assert "task scores at its selected evaluation (step 20, the evaluation with the highest glue_avg): " \
           "a 85.00, b 70.00" in text
    assert "best of each task over the run (different checkpoints, not one model): a 90.00, b 80.00" in text
    from search.cli import main
    assert main(["best", "sw", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "best trial t1: glue_avg 77.50" in out and "a 85.00, b 70.00" in out
    record = results.run_record(str(tmp_path), "sw", _trial(ROWS), ["a", "b"], group="student", seed=0)
    assert record["scores"] == {"a": 85.0, "b": 70.0} and record["best_of_run"] == {"a": 90.0, "b": 80.0}
    assert record["selected"] == "the evaluation with the highest glue_avg" and "dev_predictions" not in record


def test_the_wandb_summary_holds_the_selected_evaluation():
    from search.tracking import WandbTrials

    class FakeRun:
        def __init__(self):
            self.summary, self.logged = {}, []

        def log(self, metrics, step):
            self.logged.append(step)

    class FakeTrial:
        trial_id, config = "t1", {"metric": "glue_avg"}

    cb = WandbTrials(settings={"dir": "unused"}, experiment="sw")
    cb.runs["t1"] = run = FakeRun()
    for r in ROWS:
        cb.on_trial_result(0, [], FakeTrial(), {**r, "switched_now": ""})
    assert run.logged == [10, 20, 30]
    assert {k: v for k, v in run.summary.items() if k.startswith("selected/")} == {
        "selected/a": 85.0, "selected/b": 70.0, "selected/step": 20, "selected/glue_avg": 77.5, "selected/by": "glue_avg"}


# ------------------------------------------------------------------------------------------ the tests

def test_welch_is_scipys_and_the_paired_t_test_is_gone():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.normal(75, 2, 3), rng.normal(73, 1, 4)
        expected = scipy_stats.ttest_ind(a, b, equal_var=False)
        got = stats.welch(a, b)
        assert got["p"] == pytest.approx(expected.pvalue, rel=1e-12)
        assert got["statistic"] == pytest.approx(expected.statistic, rel=1e-12)
    # seed i of the teachers and seed i of the students are independent runs: pairing them by seed number
    # (here it would give p ~ 0.0002) is not done; the p-value is Welch's
    teachers = [70.0, 72.0, 74.0]
    students = [71.0, 73.1, 74.9]
    runs = [{"group": "teachers", "seed": i, "scores": {"rte": s}} for i, s in enumerate(teachers)]
    runs += [{"group": "student", "seed": i, "scores": {"rte": s}} for i, s in enumerate(students)]
    row = report.compare(runs=runs)["tasks"][0]
    assert row["test"] == "welch_t"
    assert row["p"] == pytest.approx(scipy_stats.ttest_ind(students, teachers, equal_var=False).pvalue, rel=1e-12)
    assert row["p"] > 0.5 > scipy_stats.ttest_rel(students, teachers).pvalue
    assert not hasattr(report, "_ttest_p") and "ttest_rel" not in Path(report.__file__).read_text()
    assert stats.welch([1.0], [2.0, 3.0])["p"] is None                    # needs 2+ runs per group
    assert stats.welch([2.0, 2.0], [2.0, 2.0])["p"] == 1.0


def _naive_bootstrap(splits, metrics, n_candidate, n_resamples, seed):
    """The bootstrap written out: draw example indices, score every model with compute_metrics."""
    rng = np.random.default_rng(seed)
    observed, deltas = 0.0, np.zeros(n_resamples)
    for gold, preds in splits:
        def delta(idx):
            s = [compute_metrics(metrics=tuple(metrics), predictions=np.asarray(p)[idx],
                                 labels=np.asarray(gold)[idx])["score"] for p in preds]
            return np.mean(s[:n_candidate]) - np.mean(s[n_candidate:])
        observed += delta(np.arange(len(gold))) / len(splits)
        for r in range(n_resamples):
            deltas[r] += delta(rng.integers(0, len(gold), len(gold))) / len(splits)
    p = (np.count_nonzero(np.abs(deltas - observed) >= abs(observed) - 1e-9) + 1) / (n_resamples + 1)
    return observed, p


def _models(gold, accuracies, rng):
    """Classifiers right on each example with the given probability (wrong: another class)."""
    k = int(gold.max()) + 1
    return [np.where(rng.uniform(size=gold.size) < a, gold, (gold + rng.integers(1, k, gold.size)) % k)
            for a in accuracies]


@pytest.mark.parametrize("metrics", [("accuracy", "f1"), ("mcc",)])
def test_paired_bootstrap_matches_the_bootstrap_written_out(metrics):
    rng = np.random.default_rng(7)
    gold = rng.integers(0, 2, 300)
    preds = _models(gold, [0.80, 0.79, 0.76, 0.75], rng)       # 2 students a little better than 2 teachers
    got = stats.paired_bootstrap([(gold, preds)], metrics=list(metrics), n_candidate=2, n_resamples=4000)
    delta, p = _naive_bootstrap([(gold, preds)], metrics, 2, 1500, seed=1)
    assert got["delta"] == pytest.approx(delta, abs=1e-9) and got["delta"] > 0
    assert 0.002 < p < 0.5 and got["p"] == pytest.approx(p, abs=0.03)
    assert got["ci"][0] < got["delta"] < got["ci"][1]


def test_paired_bootstrap_regression_and_two_dev_splits_match_the_bootstrap_written_out():
    rng = np.random.default_rng(3)
    splits = []
    for n in (120, 90):                                        # e.g. MNLI's two dev splits: their scores averaged
        gold = np.round(rng.uniform(0, 5, n), 1)
        splits.append((gold, [np.round(gold + rng.normal(0, s, n), 1) for s in (1.0, 1.6, 1.7)]))
    got = stats.paired_bootstrap(splits, metrics=["pearson", "spearman"], n_candidate=1, n_resamples=3000)
    delta, p = _naive_bootstrap(splits, ["pearson", "spearman"], 1, 1000, seed=2)
    assert got["delta"] == pytest.approx(delta, abs=1e-9) and got["delta"] > 0 and got["n"] == 210
    assert got["p"] == pytest.approx(p, abs=0.03)


def test_paired_bootstrap_of_accuracy_agrees_with_the_normal_approximation():
    """One model per group, accuracy: the bootstrap of the mean paired difference is ~ a paired t over examples."""
    gold = np.ones(2000, dtype=int)
    base = (np.arange(2000) % 4 != 0).astype(int)                     # 75% right
    cand = base.copy()
    cand[np.flatnonzero(base == 0)[:55]] = 1                          # the candidate wins 55 examples ...
    cand[np.flatnonzero(base == 1)[:35]] = 0                          # ... and loses 35: +1.0 point
    got = stats.paired_bootstrap([(gold, [cand, base])], metrics=["accuracy"], n_candidate=1)
    expected = scipy_stats.ttest_rel(cand, base).pvalue
    assert 0.01 < expected < 0.1 and got["p"] == pytest.approx(expected, abs=0.01)
    assert got["delta"] == pytest.approx(1.0) and got["ci"][0] > 0
    reverse = stats.paired_bootstrap([(gold, [base, cand])], metrics=["accuracy"], n_candidate=1)
    assert reverse["delta"] == pytest.approx(-1.0) and reverse["p"] == pytest.approx(got["p"], abs=0.01)


def _pred_entry(metrics, gold, pred, ids=None):
    ids = np.arange(len(gold)) if ids is None else ids
    return {"metrics": list(metrics), "splits": {"dev": {"ids": ids, "gold": np.asarray(gold), "pred": np.asarray(pred)}}}


def _bootstrap_case(rng):
    """Two tasks; teachers (3 seeds) and students (3 seeds) with dev predictions whose scores are the records'."""
    runs = []
    gold = {"rte": rng.integers(0, 2, 250), "sts": np.round(rng.uniform(0, 5, 200), 1)}
    for group, acc, noise in (("teachers", 0.70, 1.4), ("student", 0.78, 1.0)):
        for seed in range(3):
            p_rte = _models(gold["rte"], [acc], rng)[0]
            p_sts = np.round(gold["sts"] + rng.normal(0, noise, 200), 1)
            preds = {"rte": _pred_entry(["accuracy"], gold["rte"], p_rte),
                     "sts": _pred_entry(["pearson", "spearman"], gold["sts"], p_sts)}
            scores = {t: compute_metrics(metrics=tuple(e["metrics"]), predictions=e["splits"]["dev"]["pred"],
                                         labels=e["splits"]["dev"]["gold"])["score"] for t, e in preds.items()}
            runs.append({"group": group, "seed": seed, "scores": scores, "dev_predictions": preds})
    return runs


def test_compare_uses_the_bootstrap_holm_over_tasks_and_keeps_welch():
    runs = _bootstrap_case(np.random.default_rng(5))
    res = report.compare(runs=runs, n_resamples=2000)
    json.dumps(res, allow_nan=False)
    rows = {r["task"]: r for r in res["tasks"]}
    for row in rows.values():
        assert row["test"] == "bootstrap" and row["bootstrap"]["models"] == [3, 3]
        assert row["bootstrap"]["delta"] == pytest.approx(row["delta"], abs=1e-9)   # predictions = scores
        assert row["welch"]["p"] is not None
    assert rows["sts"]["bootstrap"]["metrics"] == ["pearson", "spearman"]
    ps = [rows[t]["p"] for t in ("rte", "sts")]
    assert [rows[t]["p_adj"] for t in ("rte", "sts")] == pytest.approx(list(multipletests(ps, method="holm")[1]))
    wp = [rows[t]["welch"]["p"] for t in ("rte", "sts")]
    assert [rows[t]["welch"]["p_adj"] for t in ("rte", "sts")] == pytest.approx(
        list(multipletests(wp, method="holm")[1]))


def test_holm_is_statsmodels_and_holm_1979():
    p = [0.01, 0.04, 0.03, 0.005]
    assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert stats.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])        # by hand: 4p, 3p, 2p, p, running max


def test_the_bootstrap_is_skipped_with_the_reason_when_it_cannot_pair():
    runs = _bootstrap_case(np.random.default_rng(6))
    shuffled = [dict(r) for r in runs]                                   # example order does not matter ...
    for r in shuffled:
        order = np.random.default_rng(r["seed"]).permutation(250)
        e = r["dev_predictions"]["rte"]["splits"]["dev"]
        r["dev_predictions"] = {**r["dev_predictions"], "rte": _pred_entry(
            ["accuracy"], e["gold"][order], e["pred"][order], ids=e["ids"][order])}
    base = report.compare(runs=runs, n_resamples=500)["tasks"][0]
    assert report.compare(runs=shuffled, n_resamples=500)["tasks"][0]["bootstrap"]["p"] == base["bootstrap"]["p"]
    other = [dict(r) for r in runs]                                      # ... but other examples do
    other[0]["dev_predictions"] = {"rte": _pred_entry(["accuracy"], [1, 0], [1, 1], ids=np.array([900, 901]))}
    row = report.compare(runs=other, n_resamples=500)["tasks"][0]
    assert row["test"] == "welch_t" and "different dev examples" in row["bootstrap"]["why"]
    del other[0]["dev_predictions"]
    row = report.compare(runs=other, n_resamples=500)["tasks"][0]
    assert row["bootstrap"]["why"] == "1 of 3 teachers run(s) stored no dev predictions"


def test_the_report_says_which_test_ran_and_why(tmp_path):
    runs = _bootstrap_case(np.random.default_rng(8))
    for r in runs:
        r["dev_predictions"].pop("sts")
        r["selected"] = "the evaluation with the highest glue_avg" if r["group"] == "student" else "its best"
        if r["group"] == "student":
            r["best_of_run"] = {t: v + 1.0 for t, v in r["scores"].items()}
    out = report.write_report(runs=runs, out_dir=tmp_path, title="t")
    for path in (out["markdown"], out["html"]):
        text = Path(path).read_text()
        assert "paired bootstrap over 250 dev examples (accuracy; 3 student vs 3 teachers models)" in text
        assert "no bootstrap: 3 of 3 student run(s) stored no dev predictions" in text
        assert "significance from the bootstrap" in text and "significance from Welch t" in text
        assert "independent training runs" in text and "seeds averaged" in text
        assert "ONE evaluation" in text and "the evaluation with the highest glue_avg" in text
        assert "best of each task (different checkpoints)" in text
        assert "paired t" not in text
    comparison = json.loads(Path(out["json"]).read_text())
    sts = next(r for r in comparison["tasks"] if r["task"] == "sts")
    assert sts["candidate_best_of_run"] == pytest.approx(sts["groups"]["student"]["mean"] + 1.0)


def test_the_curves_show_each_tasks_teacher_score_as_a_reference_line():
    runs = [{"group": "teachers", "seed": s, "scores": {"a": 60.0 + s, "b": 80.0}} for s in range(3)]
    runs += [{"group": "student", "seed": s, "scores": {"a": 65.0, "b": 82.0},
              "curves": {"a": [[10, 50.0], [20, 65.0]], "b": [[10, 70.0], [20, 82.0]]}} for s in range(2)]
    fig = report._curves_figure(runs, report.compare(runs=runs))
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    for task, teacher_mean in (("a", 61.0), ("b", 80.0)):
        flat = [line.get_ydata() for line in axes[task].get_lines() if len(set(line.get_ydata())) == 1
                and list(line.get_xdata()) == [0, 1]]                 # axhline: x in axes coordinates
        assert [list(y) for y in flat] == [[teacher_mean, teacher_mean]]
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "teachers (mean dev score)" in labels


# ------------------------------------------------------------------------------------------ stored predictions

def test_dev_predictions_round_trip():
    tasks = {"mnli": {"metrics": ["accuracy"], "splits": {
                 "dev_matched": {"ids": np.arange(4), "gold": np.array([0, 1, 2, 0]),
                                 "pred": dev_predictions.compact(np.eye(3)[[0, 2, 2, 0]], regression=False)},
                 "dev_mismatched": {"ids": np.array([7, 3]), "gold": np.array([1, 1]), "pred": np.array([1, 0])}}},
             "stsb": {"metrics": ["pearson", "spearman"], "splits": {
                 "dev": {"ids": np.arange(3), "gold": np.array([0.1, 0.5, 0.9]),
                         "pred": dev_predictions.compact(np.array([[0.2], [0.4], [1.0]]), regression=True)}}}}
    back = dev_predictions.decode(dev_predictions.encode(tasks))
    assert list(back) == ["mnli", "stsb"] and list(back["mnli"]["splits"]) == ["dev_matched", "dev_mismatched"]
    for t, entry in tasks.items():
        assert back[t]["metrics"] == entry["metrics"]
        for name, split in entry["splits"].items():
            for part in ("ids", "gold", "pred"):
                np.testing.assert_array_equal(back[t]["splits"][name][part], split[part])
    assert back["mnli"]["splits"]["dev_matched"]["pred"].tolist() == [0, 2, 2, 0]


@pytest.fixture
def _cpu(monkeypatch):
    import torch

    from trainables import trial
    monkeypatch.setattr(trial, "get_device", lambda: torch.device("cpu"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _recipe(tasks, **over):
    base = {"tasks": list(tasks), "model": "tiny", "precision": "fp32", "evals": 3, "seed": 0,
            "teacher": {"use": False}, "optim": {"steps": 6, "batch_size": 8, "lr": 1e-3},
            "data": {"max_train_examples": 48, "max_dev_examples": 60, "max_length": 32}}
    return {**base, **over}


def test_teachers_and_trials_store_the_predictions_the_report_tests(tmp_path, _cpu):
    """In-process: teachers store their best weights' dev predictions, a student trial each evaluation's; the
    report pairs them and the bootstrap's difference is exactly the table's (the predictions are the scores)."""
    from trainables import teachers, trial
    from trainables.loop import run_training
    from trainables.teacher_store import BaselineRegistry, TeacherStore
    storage, tasks = tmp_path / "storage", ("syn_noisy", "syn_similarity")
    for seed in (0, 1):
        for t in tasks:
            run = trial.setup_run({"recipe": _recipe([t], seed=seed), "job": "teacher", "storage": str(storage),
                                   "artifacts_dir": str(tmp_path / "art"), "cache_dir": CACHE})
            run_training(run, report=lambda m, r: None)
            rec = teachers.finish_teacher(run, storage=str(storage))
            dev = dev_predictions.decode(TeacherStore(storage).read_file(rec["key"], dev_predictions.TEACHER_FILE))
            split = dev[t]["splits"]["dev"]
            assert len(split["ids"]) == 60
            assert compute_metrics(metrics=tuple(dev[t]["metrics"]), predictions=split["pred"],
                                   labels=split["gold"])["score"] == pytest.approx(rec["score"], abs=1e-6)
    assert len(BaselineRegistry(storage).records()) == 4

    exp = storage / "experiments" / "sw"
    (exp / "trial_1").mkdir(parents=True)
    recipe = _recipe(tasks)
    cfg = trial.TrialConfig.of({"recipe": recipe, "storage": str(storage), "experiment": "sw", "run_id": "t1",
                                "cache_dir": CACHE, "artifacts_dir": str(exp / "artifacts" / "t1")})
    run = trial.setup_run(cfg)
    rows = []

    def report_row(metrics, r):
        trial.save_dev_predictions(cfg, r)
        rows.append({**metrics, "trial_id": "t1"})
    run_training(run, report=report_row)
    saved = sorted(p.name for p in (exp / "artifacts" / "t1" / dev_predictions.DIR).iterdir())
    assert saved == [dev_predictions.eval_file(s) for s in sorted(run.eval_steps)]
    before = {p: p.stat().st_mtime_ns for p in (exp / "artifacts" / "t1" / dev_predictions.DIR).iterdir()}
    run.last_dev = None
    trial.save_dev_predictions(cfg, run)                   # a re-reported row (resumed): nothing evaluated, no write
    assert {p: p.stat().st_mtime_ns for p in before} == before
    (exp / "trial_1" / "params.json").write_text(json.dumps({"params": {}, "loop": {"recipe": recipe}}))
    (exp / "trial_1" / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))

    records, _ = report.report_records(str(storage), "sw")
    assert [r["group"] for r in records] == ["teachers", "teachers", "student"]
    assert all(set(r["dev_predictions"]) == set(tasks) for r in records)
    top = max(rows, key=lambda r: r["glue_avg"])
    assert records[-1]["scores"] == {t: top[f"{t}/score"] for t in tasks}
    res = report.compare(runs=records, n_resamples=300)
    for row in res["tasks"]:
        assert row["test"] == "bootstrap" and row["bootstrap"]["n"] == 60
        assert row["bootstrap"]["delta"] == pytest.approx(row["delta"], abs=1e-4)
