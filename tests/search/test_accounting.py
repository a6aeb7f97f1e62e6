"""Issue 20 item 5: compute accounting (search/accounting.py) with synthetic rows of known answers, shown by
``status`` after its table and by the report's "Compute" section; and a trial retried after an error that then
finished is not ERROR in ``status`` (Tune's own state decides, as for the exit code). No Ray."""
import json
import re
from pathlib import Path

import pytest

from search import accounting, results
from search.report import write_report

RES = {"workers": 2, "cpus_per_worker": 0.5, "use_gpu": False}     # 2 x 0.5 + 0.25 driver = 1.25 CPUs


def rows(tid: str, progress: float, *, secs: float = 100.0, stopped_early: int = 0, score: float = 70.0) -> list:
    """Two evaluations of a trial that ran ``progress`` of its budget in ``secs`` (Tune's time_total_s)."""
    return [{"trial_id": tid, "step": 10, "progress": progress / 2, "glue_avg": score - 1, "a/score": score - 1,
             "time_total_s": secs / 2, "a/examples_seen": 300, "b/examples_seen": 200},
            {"trial_id": tid, "step": 20, "progress": progress, "glue_avg": score, "a/score": score,
             "time_total_s": secs, "a/examples_seen": 600, "b/examples_seen": 400, "stopped_early": stopped_early}]


def trial(tid, progress, *, state=None, tune_status=None, resources=RES, **kw):
    return {"trial_id": tid, "rows": rows(tid, progress, **kw), "state": state, "tune_status": tune_status,
            "resources": resources}


def test_trial_seconds_examples_and_cpus_held():
    r = rows("t", 1.0, secs=80.0)
    assert accounting.trial_seconds(r) == 80.0
    assert accounting.trial_seconds([{"timestamp": 1000}, {"timestamp": 1042}]) == 42.0     # first to last result
    assert accounting.trial_seconds([{"timestamp": 1000}]) is None and accounting.trial_seconds([]) is None
    assert accounting.examples_seen(r) == 1000                                              # sum of TASK/...
    assert accounting.examples_seen([{"examples_seen": 64, "a/examples_seen": 1}]) == 64
    assert accounting.held(RES) == (1.25, 0.0)
    assert accounting.held({"workers": 2, "cpus_per_worker": 1, "use_gpu": True}) == (2.25, 2.0)
    assert accounting.held({"workers": 4, "cpus_per_worker": 1, "use_gpu": True, "gpus_per_worker": 0.25}) \
        == (4.25, 1.0)
    assert accounting.held(None) == (None, 0.0)


def test_experiment_totals_and_what_early_stopping_saved():
    account = accounting.experiment_compute([
        trial("full", 1.0, state="DONE"),
        trial("cut", 0.5, state="STOPPED", tune_status="TERMINATED"),        # ASHA cut it at half its budget
        trial("patience", 0.75, state="DONE", stopped_early=1),               # its own patience ran out
        trial("running", 0.25, state="STOPPED", tune_status="RUNNING"),       # not ended: saved nothing
        trial("failed", 0.5, state="ERROR", tune_status="ERROR", resources=None)])
    by_id = {a["trial_id"]: a for a in account["trials"]}
    assert by_id["full"]["cpu_s"] == pytest.approx(125.0) and by_id["full"]["examples"] == 1000
    assert by_id["failed"]["cpu_s"] is None                           # no resources recorded: not guessed
    assert [a["trial_id"] for a in account["trials"] if a["stopped_early"]] == ["cut", "patience"]
    assert account["trial_s"] == pytest.approx(500.0) and account["cpu_s"] == pytest.approx(4 * 125.0)
    assert account["examples"] == 5000 and account["gpu_s"] == 0.0
    assert account["saved_budgets"] == pytest.approx(0.75) and account["saved_share"] == pytest.approx(0.15)
    assert account["saved_cpu_s"] == pytest.approx(125.0 * 0.5 / 0.5 + 125.0 * 0.25 / 0.75)


def test_compute_per_glue_point_over_the_teachers():
    assert accounting.per_glue_point(1000.0, 80.0, 76.0)[0] == pytest.approx(250.0)
    value, why = accounting.per_glue_point(1000.0, 75.0, 76.0)
    assert value is None and "does not beat the teachers" in why
    value, why = accounting.per_glue_point(1000.0, 80.0, None)
    assert value is None and "teachers' GLUE average is not known" in why
    comparison = {"baseline": "teachers", "glue_average": {"means": {"teachers": 76.0, "student": 80.0}}}
    assert accounting.teachers_average(comparison) == 76.0
    assert accounting.teachers_average({**comparison, "baseline": "multitask"}) is None


def fake_sweep(storage: Path, name: str = "sw") -> Path:
    """Tune's layout: three finished trials (one cut at half, one stopped by its patience) and one that errored
    once and was retried to the end (its error.txt stays; Tune's experiment_state says TERMINATED)."""
    exp = storage / "experiments" / name
    spec = [(1.0, 0, 70.0), (0.5, 0, 71.0), (0.75, 1, 72.0), (1.0, 0, 73.0)]
    state = []
    for i, (progress, early, score) in enumerate(spec):
        d = exp / f"train_driver_fn_ab12c_{i:05d}_{i}_2026-12-03_07-20-47"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"params": {"seed": i}}))
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in
                                               rows(f"ab12c_{i:05d}", progress, stopped_early=early, score=score)))
        state.append([json.dumps({"relative_logdir": d.name, "status": "TERMINATED"}), "{}"])
    (d / "error.txt").write_text("Failure # 1\nRuntimeError: worker died\n")           # the retried one
    (exp / "experiment_state-2026-12-03_07-20-47.json").write_text(json.dumps({"trial_data": state}))
    (exp / "bam_experiment.json").write_text(json.dumps({"name": name, "metric": "glue_avg", "resources": RES}))
    return exp


def test_status_keeps_its_table_and_adds_the_compute_block(tmp_path):
    fake_sweep(tmp_path)
    lines = results.status_lines(str(tmp_path), "sw")
    assert lines[0].split() == ["trial", "state", "evals", "best", "glue_avg", "params"]
    assert [line.split()[:2] for line in lines[1:5]] == [[f"ab12c_{i:05d}", s] for i, s in
                                                         enumerate(["DONE", "STOPPED", "DONE", "DONE"])]
    assert lines[5] == "best trial ab12c_00003:"
    block = lines[lines.index("compute:"):]
    assert lines[lines.index("compute:") - 1] == ""                   # after the existing lines, set apart
    assert re.fullmatch(r"ab12c_00000\s+100\.0\s+1\.25\s+125\.0\s+1,000\s+100%", block[2])
    assert re.fullmatch(r"total\s+400\.0\s+500\.0\s+4,000", block[6])
    assert "2 of 4 trials ended before their last evaluation; 0.75 of 4 trial budgets not run (19%)" in block[8]
    assert "teachers' GLUE average is not known" in block[9]
    text = "\n".join(block)
    assert "DONE" not in text and "STOPPED" not in text and "ERROR" not in text   # state counts stay the table's
    report = tmp_path / "reports" / "sw"
    report.mkdir(parents=True)
    (report / "comparison.json").write_text(json.dumps(
        {"baseline": "teachers", "glue_average": {"means": {"teachers": 71.0}}}))
    last = results.status_lines(str(tmp_path), "sw")[-1]
    assert last.startswith("compute per GLUE point over the teachers: 250 CPU-s of the sweep per point") \
        and "(best glue_avg 73.00 vs the teachers' 71.00: +2.00)" in last


def test_a_trial_retried_after_an_error_to_the_end_is_not_error_in_status(tmp_path):
    exp = fake_sweep(tmp_path)
    assert results.errored_trials(str(tmp_path), "sw") == []
    assert [s["state"] for s in results.summarize(results.trial_results(str(tmp_path), "sw"))][-1] == "DONE"
    retried = sorted(d.name for d in exp.iterdir() if d.is_dir())[-1]
    state = json.loads(next(exp.glob("experiment_state-*.json")).read_text())
    state["trial_data"][-1][0] = json.dumps({"relative_logdir": retried, "status": "ERROR"})   # its retry failed
    next(exp.glob("experiment_state-*.json")).write_text(json.dumps(state))
    assert results.status_lines(str(tmp_path), "sw")[4].split()[:2] == ["ab12c_00003", "ERROR"]
    assert [t for t, _ in results.errored_trials(str(tmp_path), "sw")] == ["ab12c_00003"]
    next(exp.glob("experiment_state-*.json")).unlink()                 # no Tune state: the error file says
    assert results.status_lines(str(tmp_path), "sw")[4].split()[:2] == ["ab12c_00003", "ERROR"]


def test_the_report_has_a_compute_section_per_point_over_its_own_teachers(tmp_path):
    fake_sweep(tmp_path)
    runs = [{"group": g, "seed": s, "scores": {"a": v + s}} for g, v in (("teachers", 70.0), ("student", 73.0))
            for s in (0, 1)]                                                    # teachers' average 70.5
    out = write_report(runs=runs, out_dir=tmp_path / "rep", title="t",
                       compute=accounting.for_experiment(str(tmp_path), "sw"))
    md = Path(out["markdown"]).read_text()
    assert "## Compute" in md and re.search(r"\| total \| 400\.0 \|  \| 500\.0 \| 4,000 \|", md)
    assert "compute per GLUE point over the teachers: 200 CPU-s of the sweep per point" in md
    page = Path(out["html"]).read_text()
    assert "<h2>Compute</h2>" in page and "0.75 of 4 trial budgets not run" in page
    assert json.loads(Path(out["json"]).read_text())["compute"]["per_point_cpu_s"] == pytest.approx(200.0)
    plain = write_report(runs=runs, out_dir=tmp_path / "plain", title="t")               # without: as before
    assert "Compute" not in Path(plain["markdown"]).read_text()
