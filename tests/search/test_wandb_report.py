"""Issue 20 item 4: ``bam-search report NAME --wandb``. The W&B Report's spec is built from a fake experiment's own
files with no network (three panels and their metric keys, the swept parameters, runsets naming this experiment's
runs and its teachers), turned into ``wandb_workspaces`` objects offline (built, never saved), and the command with
W&B offline writes the spec under the storage with one skip line. No Ray, no network."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from search import report as report_mod
from search import wandb_report
from search.cli import main

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"       # a planted WANDB_API_KEY: never in the spec
SPACE = {"optim.lr": "loguniform", "anneal.schedule": "choice", "switch.criterion": "choice"}


def _rows(tid: str, a: float, b: float) -> list[dict]:
    """Two evaluations; the second has the higher glue_avg (the selected one)."""
    return [{"trial_id": tid, "step": 10, "progress": 0.5, "a/score": a - 5, "b/score": b - 5,
             "glue_avg": (a + b) / 2 - 5},
            {"trial_id": tid, "step": 20, "progress": 1.0, "a/score": a, "b/score": b, "glue_avg": (a + b) / 2,
             "a/delta_vs_teachers": a - 80, "b/delta_vs_teachers": b - 60, "delta_vs_teachers": (a + b) / 2 - 70}]


def fake_sweep(storage: Path, name: str = "sw") -> Path:
    """Tune's layout of a 3-trial sweep over SPACE (the best: ab12c_00002), logged to W&B project ``proj``."""
    exp = storage / "experiments" / name
    for i, (lr, a, b) in enumerate([(1e-3, 80.0, 60.0), (3e-4, 82.0, 61.0), (2e-3, 85.0, 64.0)]):
        d = exp / f"train_driver_fn_ab12c_{i:05d}_{i}_2026-12-03_07-20-47"
        d.mkdir(parents=True)
        params = {"optim.lr": lr, "anneal.schedule": "linear", "switch.criterion": "never"}
        (d / "params.json").write_text(json.dumps({"params": params, "loop": {"job": "student",
                                                                               "recipe": {"tasks": ["a", "b"]}}}))
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in _rows(f"ab12c_{i:05d}", a, b)))
    (exp / "bam_experiment.json").write_text(json.dumps(
        {"name": name, "metric": "glue_avg", "params": SPACE,
         "loop": {"job": "student", "wandb": {"dir": str(storage / "wandb"), "project": "proj", "entity": None}}}))
    return exp


RECORDS = [  # report_records' output: two teacher seeds (trained by experiment "teach"), the best trial
    {"group": "teachers", "seed": 0, "scores": {"a": 80.0, "b": 60.0}, "experiments": ["teach"]},
    {"group": "teachers", "seed": 1, "scores": {"a": 81.0, "b": 61.0}, "experiments": ["teach"]},
    {"group": "student", "seed": 0, "scores": {"a": 85.0, "b": 64.0}, "selected": "the evaluation with the highest "
     "glue_avg", "curves": {"a": [[10, 80.0], [20, 85.0]], "b": [[10, 59.0], [20, 64.0]]}},
]


def _spec(tmp_path, **kw) -> dict:
    fake_sweep(tmp_path)
    return wandb_report.spec_for(str(tmp_path), "sw", records=RECORDS, **kw)


def test_spec_holds_the_three_panels_swept_keys_and_runsets_of_this_experiment(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    spec = _spec(tmp_path)
    json.dumps(spec, allow_nan=False)                                        # plain JSON
    assert (spec["project"], spec["entity"], spec["best_trial"]) == ("proj", None, "ab12c_00002")
    assert "sw" in spec["title"] and spec["tasks"] == ["a", "b"]
    kinds = [p["kind"] for p in spec["panels"]]
    assert kinds == ["parallel_coordinates", "line", "line", "bar"]
    par, line_a, line_b, bar = spec["panels"]
    # (1) every trial's GLUE average (its one selected checkpoint) vs the space's parameters, as tracking logs them
    assert par["config_keys"] == ["params.optim.lr", "params.anneal.schedule", "params.switch.criterion"]
    assert par["summary_keys"] == ["selected/glue_avg"] and par["runsets"] == ["trials"]
    # (2) per-task curves: the best trial vs its teachers; (3) the student's delta summary keys
    assert (line_a["y"], line_b["y"], line_a["x"]) == (["a/score"], ["b/score"], "Step")
    assert line_a["runsets"] == ["best", "teachers"]
    assert bar["metrics"] == ["delta/a", "delta/b", "delta/mean"] and bar["runsets"] == ["best"]
    rs = spec["runsets"]
    assert rs["trials"]["filters"] == {"group": ["sw"]}
    assert rs["best"]["filters"] == {"group": ["sw"], "id": ["ab12c_00002"]}
    assert rs["teachers"]["filters"] == {"group": ["teach"], "job_type": ["teacher"]}
    assert rs["teachers"]["expr"] == "Metric('Group') in [\"teach\"] and Metric('JobType') in [\"teacher\"]"
    assert "highest `glue_avg`" in spec["markdown"] and "Holm" in spec["markdown"]


def test_flags_win_and_retrains_and_multitask_get_their_own_runsets(tmp_path):
    spec = _spec(tmp_path, students=["sw-retrain"], multitask=["mt"], project="other", entity="team")
    assert (spec["project"], spec["entity"]) == ("other", "team")
    assert spec["runsets"]["best"]["filters"] == {"group": ["sw-retrain"]}
    assert spec["runsets"]["multitask"]["filters"] == {"group": ["mt"], "job_type": ["baseline-multitask"]}
    assert spec["panels"][1]["runsets"] == ["best", "teachers", "multitask"]


def test_the_spec_becomes_wandb_workspaces_objects_offline(tmp_path):
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    spec = _spec(tmp_path, entity="team")
    report = wandb_report.to_report(spec)
    assert isinstance(report, wr.Report) and report.title == spec["title"] and report.project == "proj"
    heading, markdown, *grids = report.blocks
    assert isinstance(markdown, wr.MarkdownBlock) and markdown.text == spec["markdown"]
    assert [[type(p).__name__ for p in g.panels] for g in grids] == [
        ["ParallelCoordinatesPlot"], ["LinePlot", "LinePlot"], ["BarPlot"]]
    assert [r.name for r in grids[1].runsets] == ["best trial", "teachers"]
    assert grids[1].runsets[1].filters == spec["runsets"]["teachers"]["expr"]
    # each panel's W&B model, as save() sends it (no network: a runset's model looks its project up, so the
    # whole Report's model is not built here)
    par = grids[0].panels[0]._to_model().model_dump(by_alias=True, exclude_none=True)
    assert [c["accessor"] for c in par["config"]["columns"]] == [
        "config:params.value.optim.lr", "config:params.value.anneal.schedule",
        "config:params.value.switch.criterion", "summary:selected/glue_avg"]
    assert grids[2].panels[0]._to_model().config.metrics == ["delta/a", "delta/b", "delta/mean"]


def test_report_wandb_offline_writes_the_spec_and_one_skip_line(tmp_path, monkeypatch, capsys):
    fake_sweep(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    # the teachers' records need their data and store: the fake experiment's records are given as they are
    monkeypatch.setattr(report_mod, "report_records", lambda storage, name, **kw: (RECORDS, {"tasks": ["a", "b"]}))
    code = main(["report", "sw", "--wandb", "--storage", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    path = tmp_path / "experiments" / "sw" / "report" / "wandb_report.json"
    skipped = [line for line in out.out.splitlines() if line.startswith("wandb report:")]
    assert len(skipped) == 1 and "not saved (WANDB_MODE=offline)" in skipped[0]
    assert str(path) in skipped[0] and "`wandb login`" in skipped[0]
    assert f"WANDB_MODE=online bam-search report sw --wandb --storage {tmp_path}" in skipped[0]
    text = path.read_text()
    spec = json.loads(text)
    assert spec["experiment"] == "sw"                   # the local report's test per task (1 student run: none)
    assert "- a: no test (too few runs); delta +4.50" in spec["markdown"]
    assert "- b: no test (too few runs); delta +3.50" in spec["markdown"]
    assert FAKE_KEY not in text and FAKE_KEY not in out.out + out.err
    assert (tmp_path / "reports" / "sw" / "report.html").exists()             # the local report as before


def test_online_without_a_key_is_skipped_too_and_a_failed_save_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_report.skip_reason() == "no W&B API key found (WANDB_API_KEY or netrc)"
    netrc = tmp_path / "netrc"                                   # wandb's own netrc lookup finds a key
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("WANDB_BASE_URL", "https://api.wandb.ai")
    assert wandb_report.skip_reason() is None
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert wandb_report.skip_reason() is None
    monkeypatch.delenv("WANDB_MODE")                         # a key alone is not consent: runs are offline by default
    assert wandb_report.skip_reason() == "WANDB_MODE is not online (bam-search's default is offline)"
    monkeypatch.setenv("WANDB_MODE", "online")

    class Hangs:
        def save(self):
            import time
            time.sleep(5)
    monkeypatch.setattr(wandb_report, "to_report", lambda spec: Hangs())
    monkeypatch.setenv("WANDB_HTTP_TIMEOUT", "1")                # _save's setdefault: left as the test found it
    spec = _spec(tmp_path)
    assert wandb_report.publish(str(tmp_path), "sw", spec, command="x", timeout=0.2) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TimeoutError: no answer within 0.2 s" in err[0] and FAKE_KEY not in err[0]
