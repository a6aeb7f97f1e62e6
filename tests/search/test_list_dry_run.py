"""Issue 20 item 2, without Ray: ``bam-search list``, ``--json`` on status / best / list (one parsable document on
stdout holding the table's values) and ``sweep --dry-run`` (every check, then the plan and its cost; no Ray
started, nothing written under --storage)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.cli import main
from search.results import status_lines

DIR = "train_driver_fn_ab12c_{i:05d}_{i}_2026-12-03_07-20-47"


def _row(i: int, step: int, score: float, progress: float, **extra) -> dict:
    return {"trial_id": f"ab12c_{i:05d}", "step": step, "syn_noisy/score": score, "syn_noisy/best": score,
            "glue_avg": score, "progress": progress, "examples_per_s": 100.0, "train_s": 2.0 * step,
            "time_total_s": 3.0 * step, **extra}


def fake_experiment(storage: Path, name: str, *, job: str, params: list[dict], rows: list[list[dict]],
                    errored=(), meta: bool = True, started: str = "2026-12-03_07-20-47") -> Path:
    """Tune's layout: one folder per trial (params.json, result.json rows), Tune's state file, and (``meta``)
    the bam_experiment.json ``run_experiment`` writes."""
    exp = storage / "experiments" / name
    loop = {"job": job, "recipe": {"model": "tiny", "tasks": ["syn_noisy"]}}
    for i, (p, rs) in enumerate(zip(params, rows)):
        d = exp / DIR.format(i=i)
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"loop": loop, "params": p}))
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rs))
        if i in errored:
            (d / "error.txt").write_text("Failure # 1\nValueError: boom\n")
    (exp / f"experiment_state-{started}.json").write_text("{}")           # unreadable as state: file rule
    if meta:
        (exp / "bam_experiment.json").write_text(json.dumps(
            {"name": name, "loop": loop, "params": {k: "..." for k in params[0]}, "metric": "glue_avg"}))
    return exp


@pytest.fixture
def storage(tmp_path, monkeypatch):
    monkeypatch.delenv("BAM_STORAGE", raising=False)
    st = tmp_path / "st"
    fake_experiment(st, "sw", job="student", params=[{"optim.lr": 0.001}, {"optim.lr": 0.002}, {"optim.lr": 0.003}],
                    rows=[[_row(0, 5, 60.0, 0.5), _row(0, 10, 70.0, 1.0)],
                          [_row(1, 5, 80.0, 0.5), _row(1, 10, 75.0, 1.0)],     # selected: step 5 (80)
                          [_row(2, 5, 90.0, 0.5)]], errored=(2,))
    fake_experiment(st, "tea", job="teacher", params=[{"tasks": ["syn_noisy"], "seed": 0}],
                    rows=[[_row(0, 10, 55.0, 1.0)]], meta=False, started="2026-12-02_09-00-00")
    fake_experiment(st, "tr", job="student", params=[{"seed": 0}], rows=[[_row(0, 5, 65.0, 0.5)]],
                    started="2026-12-04_10-00-00")
    return st


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    return json.loads(out)                     # one document: anything else on stdout fails here


def test_list_json_holds_each_experiments_kind_states_best_start_and_size(storage, capsys):
    doc = _json(capsys, ["list", "--storage", str(storage), "--json"])
    assert doc["storage"] == str(storage)
    found = {e["name"]: e for e in doc["experiments"]}
    assert [e["name"] for e in doc["experiments"]] == ["tea", "sw", "tr"]                # by start
    assert {n: e["kind"] for n, e in found.items()} == {"tea": "teachers", "sw": "sweep", "tr": "train"}
    assert found["sw"]["states"] == {"DONE": 2, "ERROR": 1} and found["sw"]["trials"] == 3
    assert found["tr"]["states"] == {"STOPPED": 1}
    # the errored trial's 90 is not its best: status' best is the highest of the trials (errored ones too)
    assert found["sw"]["best"] == {"trial_id": "ab12c_00002", "value": 90.0}
    assert found["tea"]["started"] == "2026-12-02 09:00:00"
    assert all(e["size_bytes"] > 0 for e in doc["experiments"])


def test_list_prints_a_table_and_an_empty_storage_says_so(storage, tmp_path, capsys):
    assert main(["list", "--storage", str(storage)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["experiment", "kind", "trials", "best", "started", "size"]
    sw = next(line for line in lines if line.startswith("sw "))
    assert "sweep" in sw and "2 done, 1 error" in sw and "glue_avg 90.00" in sw
    assert main(["list", "--storage", str(tmp_path / "empty")]) == 0
    assert "no experiments under" in capsys.readouterr().out
    assert _json(capsys, ["list", "--storage", str(tmp_path / "empty"), "--json"])["experiments"] == []


def test_status_json_is_the_tables_data(storage, capsys):
    doc = _json(capsys, ["status", "sw", "--storage", str(storage), "--json"])
    assert doc["experiment"] == "sw" and doc["metric"] == "glue_avg" and doc["best"] == "ab12c_00002"
    trials = {t["trial_id"]: t for t in doc["trials"]}
    assert trials["ab12c_00001"] == {"trial_id": "ab12c_00001", "state": "DONE", "evals": 2, "best": 80.0,
                                     "selected_step": 5, "scores": {"syn_noisy": 80.0},
                                     "params": {"optim.lr": 0.002}}
    assert trials["ab12c_00002"]["state"] == "ERROR"
    table = "\n".join(status_lines(str(storage), "sw"))   # the plain table is unchanged by --json
    assert "ab12c_00001   DONE" in table and "80.00" in table


def test_best_json_with_export_writes_the_recipe_and_prints_one_document(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BAM_STORAGE", raising=False)
    st = tmp_path / "st"
    exp = fake_experiment(st, "sw", job="student", params=[{"optim.lr": 0.002}],
                          rows=[[_row(0, 5, 80.0, 0.5), _row(0, 10, 75.0, 1.0)]])
    params = json.loads((next(exp.glob("train_driver_fn_*")) / "params.json").read_text())
    params["loop"]["recipe"] = {"tasks": ["syn_noisy"], "model": "tiny", "teacher": {"use": False}, "seed": 4}
    (next(exp.glob("train_driver_fn_*")) / "params.json").write_text(json.dumps(params))
    out = tmp_path / "best.yaml"
    doc = _json(capsys, ["best", "sw", "--storage", str(st), "--json", "--export", str(out)])
    assert doc["trial_id"] == "ab12c_00000" and doc["best"] == 80.0 and doc["selected_step"] == 5
    assert doc["scores"] == {"syn_noisy": 80.0} and doc["params"] == {"optim.lr": 0.002}
    assert doc["export"] == str(out) and "lr: 0.002" in out.read_text()
    # its first line is the retrain command, runnable as printed: the same storage (issue 20, item 7), and seeds
    # after the best trial's own (4): that run was picked on the dev set the retrain is scored on
    assert out.read_text().splitlines()[0] == f"# bam-search train {out} --seeds 3 --first-seed 5 --storage {st}"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} \
        if root.is_dir() else {}


SMOKE = ["sweep", "smoke", "--tasks", "syn_noisy", "--model", "tiny", "--set", "teacher.use=false",
         "--num-samples", "4", "--no-wandb", "--dry-run"]


@pytest.fixture
def no_ray(monkeypatch, tmp_path):
    import ray

    def refuse(*a, **k):
        raise AssertionError("--dry-run started Ray")
    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.delenv("BAM_STORAGE", raising=False)
    monkeypatch.delenv("BAM_GLUE_DIR", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.chdir(tmp_path)


def test_dry_run_prints_the_plan_and_leaves_a_new_storage_absent(tmp_path, capsys, no_ray):
    import ray
    st = tmp_path / "new" / "st"
    assert main([*SMOKE, "--storage", str(st), "--name", "dry"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and not (tmp_path / "new").exists() and not ray.is_initialized()
    for needle in ("dry run of sweep dry", "spaces/smoke.yaml (4 parameters)", "anneal.schedule",
                   "one of linear, cosine, none", "log_uniform_values 0.0003 .. 0.003", "switch.patience", "fixed 1",
                   "trials: 4 (--num-samples 4)", "scheduler asha (grace period 1 evaluations, reduction factor 2)",
                   "trials at once: ", "resources per trial: 1 worker x (", "disk budget: 20.00 GB: ok",
                   "wall time: no measured rate yet"):
        assert needle in out, (needle, out)


def test_dry_run_estimates_wall_time_from_measured_rates_and_writes_nothing(storage, capsys, no_ray):
    before = _files(storage)
    assert main([*SMOKE, "--storage", str(storage), "--name", "sw", "--max-concurrent", "1"]) == 0
    out = capsys.readouterr().out
    assert _files(storage) == before
    wall = next(line for line in out.splitlines() if line.startswith("wall time:"))
    # 3 finished tiny trials (sw, tea) measured 100 examples/s, wall 1.5 x training; 4 trials one at a time
    assert "at 100.0 examples/s x 1.50" in wall and "the median of 3 finished trials of model tiny" in wall
    assert "for 4 trials, 1 at once; less when trials stop early" in wall
    assert "note: experiment sw exists" in out


def test_dry_run_refuses_bad_input_in_one_line_before_anything(tmp_path, capsys, no_ray):
    (tmp_path / "afile").write_text("x")
    assert main([*SMOKE, "--storage", str(tmp_path / "afile" / "st")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--storage" in err and "not writable" in err
    assert main([*SMOKE, "--storage", str(tmp_path / "st"), "--num-samples", "0"]) == 2
    assert "--num-samples 0" in capsys.readouterr().err and not (tmp_path / "st").exists()
