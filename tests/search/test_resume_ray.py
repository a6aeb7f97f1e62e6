"""A sweep whose driver is SIGKILLed part-way resumes to exactly --num-samples trials without rerunning
finished ones (real Ray, tiny model)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
TASKS = "syn_noisy,syn_pairmatch"


def rows(trial_dir: Path) -> list[dict]:
    f = trial_dir / "result.json"
    out = []
    for line in (f.read_text().splitlines() if f.exists() else []):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def trials(exp: Path) -> list[Path]:
    return sorted(d for d in exp.iterdir() if d.is_dir() and (d / "params.json").exists()) if exp.exists() else []


def test_killed_sweep_resumes_to_num_samples(tmp_path, cache_dir):
    base = [sys.executable, "-m", "search.cli"]
    args = ["sweep", "smoke", "--tasks", TASKS, "--model", "tiny", "--num-samples", "5", "--scheduler", "none",
            "--searcher", "optuna", "--max-concurrent", "1", "--storage", str(tmp_path), "--name", "killed",
            "--set", "teacher.use=false", "--quiet", "--no-wandb"]          # no teachers: resuming is the point
    proc = subprocess.Popen(base + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    exp = tmp_path / "experiments" / "killed"
    deadline = time.time() + 600
    while time.time() < deadline:                      # wait until two trials have finished
        done = [d for d in trials(exp) if len(rows(d)) == 4]
        if len(done) >= 2:
            break
        time.sleep(1)
    assert len(done) >= 2, "the sweep did not get going"
    os.killpg(proc.pid, signal.SIGKILL)                # the driver and its local Ray, without warning
    proc.wait()
    before = {d.name: (d / "result.json").read_text() for d in done}
    assert len(trials(exp)) < 5

    r = subprocess.run(base + ["resume", "killed", "--storage", str(tmp_path), "--quiet"], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    final = trials(exp)
    assert len(final) == 5                             # exactly --num-samples, no more, no fewer
    # every trial ends complete; the one cut off part-way continued from its own last checkpoint
    assert all(rows(d) and rows(d)[-1]["progress"] == 1.0 for d in final), {d.name: len(rows(d)) for d in final}
    for name, text in before.items():                  # finished trials were not run again
        assert (exp / name / "result.json").read_text() == text
    ids = [rows(d)[0]["trial_id"] for d in final]
    assert len(set(ids)) == 5
