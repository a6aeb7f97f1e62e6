"""Faults injected into real runs (Ray Tune + Train V2, tiny model):

* a Ray Train worker process SIGKILLed mid-trial: Train restarts it from the trial's last checkpoint
  (FailureConfig), the trial finishes with the KD-switch state it had, and ends where an uninterrupted run ends;
* a trial whose loss turns non-finite: it ends as errored with the reason, and the sweep's other trial finishes.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from procs import descendants

pytestmark = pytest.mark.slow
TASKS = ["syn_noisy", "syn_pairmatch"]
# 1,500 examples x 12 epochs / batch 32 = 563 steps, 8 evaluations (~7 s of training); syn_noisy switches to KD
# at step 60, before the first evaluation; syn_pairmatch keeps learning from gold labels. The worker is killed as
# soon as the first checkpoint is complete on disk, 7 evaluations before the end (not when Tune shows the first
# result: that came after the whole run had ended once training got faster).
RECIPE = {"tasks": TASKS, "model": "tiny", "evals": 8, "teacher": {"use": False}, "precision": "fp32",
          "optim": {"epochs": 12, "lr": 2e-3},
          "switch": {"criterion": "never", "per_task": {"syn_noisy": {"criterion": "fixed_step", "at_step": 60}}}}
SWITCHED = "syn_noisy"


def result_rows(exp: Path) -> list[dict]:
    files = list(exp.glob("train_driver_fn_*/result.json"))
    if not files:
        return []
    rows = []
    for line in files[0].read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def first_complete_checkpoint(exp: Path) -> dict | None:
    """state.json of the first checkpoint of the experiment's Train run whose checksums.json is written."""
    for d in sorted((exp / "train").glob("*/checkpoint-*")) if (exp / "train").is_dir() else []:
        if (d / "checksums.json").is_file():
            try:
                return json.loads((d / "state.json").read_text())
            except (OSError, ValueError):
                return None
    return None


def train_workers(proc: subprocess.Popen) -> list[int]:
    return [pid for pid, cmd in descendants(proc.pid).items() if cmd.startswith("ray::RayTrainWorker")]


def train(tmp_path: Path, name: str) -> subprocess.Popen:
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(f"# bam-search train {recipe}\n" + yaml.safe_dump(RECIPE))
    return subprocess.Popen([sys.executable, "-m", "search.cli", "train", str(recipe), "--storage", str(tmp_path / "s"),
                             "--name", name, "--no-wandb", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_killed_train_worker_restarts_from_its_checkpoint(tmp_path, cache_dir):
    exp = tmp_path / "s" / "experiments" / "killed"
    proc = train(tmp_path, "killed")
    killed, at = None, None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        state = first_complete_checkpoint(exp)
        if state and state["switch"][SWITCHED]["switched_at"] is not None:   # a checkpoint with syn_noisy switched
            workers = train_workers(proc)
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed, at = workers[0], state["step"]
                break
        time.sleep(0.05)
    restarted = None                                     # Train starts a new worker process for the run
    while killed and restarted is None and proc.poll() is None and time.time() < deadline:
        restarted = next((w for w in train_workers(proc) if w != killed), None)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=600)
    assert killed, f"the run ended before a worker could be killed:\n{err[-2000:]}"
    assert restarted, "no new Train worker process after the kill"
    assert proc.returncode == 0, out[-2000:] + err[-2000:]

    rows = result_rows(exp)
    assert rows[-1]["progress"] == pytest.approx(1.0)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and len(steps) == RECIPE["evals"]     # no evaluation lost or repeated
    assert at == steps[0] < steps[-1]                                         # killed after the first of 8
    assert all(r["switched"] == SWITCHED for r in rows)
    # the KD-switch state survived: syn_noisy still switched at the first evaluation, as before the kill
    train_run = next(d for d in (exp / "train").iterdir() if d.is_dir())
    state = json.loads(sorted(train_run.glob("checkpoint-*"))[-1].joinpath("state.json").read_text())
    assert {t: s["switched_at"] for t, s in state["switch"].items()} == {"syn_noisy": rows[0]["step"], "syn_pairmatch": None}
    assert set(state["soft_labels"]) == {SWITCHED} and Path(state["soft_labels"][SWITCHED]["path"]).is_file()

    # and it ends where the same run without the fault ends (exact resume: same data order, same RNG)
    clean = train(tmp_path, "clean")
    out, err = clean.communicate(timeout=600)
    assert clean.returncode == 0, err[-2000:]
    ref = result_rows(tmp_path / "s" / "experiments" / "clean")
    assert [r["step"] for r in ref] == steps
    assert rows[-1]["glue_avg"] == pytest.approx(ref[-1]["glue_avg"], abs=1.0)


def test_nan_trial_errors_with_its_reason_and_the_sweep_goes_on(tmp_path, cache_dir):
    space = tmp_path / "nan.yaml"
    space.write_text("# bam-search sweep nan.yaml --searcher grid\n" + yaml.safe_dump({
        "description": "one sane learning rate, one that blows the loss up",
        "base": {"evals": 2, "teacher": {"use": False}, "optim": {"epochs": 1}},
        "parameters": {"optim.lr": {"values": [1.0e-3, 1.0e+12]}}}))
    r = subprocess.run([sys.executable, "-m", "search.cli", "sweep", str(space), "--tasks", ",".join(TASKS),
                        "--model", "tiny", "--searcher", "grid", "--scheduler", "none", "--num-samples", "1",
                        "--storage", str(tmp_path / "s"), "--name", "nan", "--no-wandb", "--quiet"],
                       capture_output=True, text=True, timeout=900)
    exp = tmp_path / "s" / "experiments" / "nan"
    trials = {json.loads((d / "params.json").read_text())["params"]["optim.lr"]: d
              for d in exp.iterdir() if (d / "params.json").exists()}
    assert set(trials) == {1.0e-3, 1.0e+12}, r.stderr[-2000:]
    good, bad = trials[1.0e-3], trials[1.0e+12]
    assert result_rows_of(good)[-1]["progress"] == pytest.approx(1.0)
    assert result_rows_of(bad) == []                                    # nothing recorded as a result
    reason = (bad / "error.txt").read_text()
    assert "non-finite loss" in reason and "at step" in reason                # the loop's NonFiniteLoss
    assert len(list((exp / "reports").glob("*.diverged.txt"))) == 1        # retries fail at once, no retraining
    assert "ERROR" in r.stdout and "DONE" in r.stdout                     # bam-search status at the end
    assert r.returncode == 1, r.stderr[-2000:]                          # a trial errored: scripts and CI see it
    said = [line for line in r.stderr.splitlines() if line.startswith("bam-search: trial ")]
    assert len(said) == 1 and "of nan errored:" in said[0] and "non-finite loss" in said[0], r.stderr[-2000:]


def result_rows_of(trial: Path) -> list[dict]:
    f = trial / "result.json"
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()] if f.exists() else []
