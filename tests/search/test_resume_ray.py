"""A sweep whose driver is SIGKILLed part-way resumes to exactly --num-samples trials without rerunning
finished ones or losing any trial's result rows (real Ray, tiny model)."""
import json
import os
import shutil
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


TUNE_KEYS = {"timestamp", "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "done",
             "time_since_restore", "iterations_since_restore", "checkpoint_dir_name"}


def ours(row: dict) -> dict:
    """A result row without the keys Tune fills in when it logs it (times, process, restore counters)."""
    return {k: v for k, v in row.items() if k not in TUNE_KEYS}


def recorded(exp: Path) -> dict[str, list[dict]]:
    """Each trial's report history (trainables/tune_bridge.py), without the run name: written as reports happen,
    while Tune copies a trial's result.json to the experiment folder only now and then."""
    out = {}
    for f in sorted((exp / "reports").glob("*.jsonl")):
        lines = [json.loads(line) for line in f.read_text().splitlines()]
        out[f.stem] = [{k: v for k, v in r.items() if k != "_run"} for r in lines]
    return out


def trials(exp: Path) -> list[Path]:
    return sorted(d for d in exp.iterdir() if d.is_dir() and (d / "params.json").exists()) if exp.exists() else []


def test_killed_sweep_resumes_to_num_samples(tmp_path, cache_dir):
    base = [sys.executable, "-m", "search.cli"]
    args = ["sweep", "smoke", "--tasks", TASKS, "--model", "tiny", "--num-samples", "5", "--scheduler", "none",
            "--searcher", "optuna", "--max-concurrent", "1", "--storage", str(tmp_path), "--name", "killed",
            "--set", "teacher.use=false", "--quiet", "--no-wandb"]          # no teachers: resuming is the point
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        proc = subprocess.Popen(base + args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    exp = tmp_path / "experiments" / "killed"
    deadline = time.time() + 600
    while time.time() < deadline:    # until two trials have finished and a third has reported part of its run
        done = {row[0]["trial_id"] for d in trials(exp) if len(row := rows(d)) == 4}
        partial = {t: r for t, r in recorded(exp).items() if t not in done and 0 < len(r) < 4}
        if (len(done) >= 2 and partial) or proc.poll() is not None:
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"the sweep ended ({proc.returncode}) before it was killed:\n{log.read_text()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)                # the driver and its local Ray, without warning
    proc.wait()
    before = {d.name: rows(d) for d in trials(exp) if len(rows(d)) == 4}
    partial = {t: r for t, r in recorded(exp).items() if t not in done and 0 < len(r) < 4}
    assert len(trials(exp)) < 5 and len(before) >= 2 and partial, (len(trials(exp)), len(before), partial)

    r = subprocess.run(base + ["resume", "killed", "--storage", str(tmp_path), "--quiet"], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    final = trials(exp)
    assert len(final) == 5                             # exactly --num-samples, no more, no fewer
    # every trial ends complete; the one cut off part-way continued from its own last checkpoint
    assert all(rows(d) and rows(d)[-1]["progress"] == 1.0 for d in final), {d.name: len(rows(d)) for d in final}
    # no trial lost a row: Tune restarted each unfinished one with an empty result.json, and the driver replayed
    # the trial's recorded reports (trainables/tune_bridge.py) before training on; none repeats a step
    for d in final:
        steps = [row["step"] for row in rows(d)]
        assert len(steps) == 4 and steps == sorted(set(steps)), (d.name, steps)
    for name, old in before.items():                   # finished trials: the same rows, so not trained again
        assert [ours(r) for r in rows(exp / name)] == [ours(r) for r in old], name
    by_id = {rows(d)[0]["trial_id"]: rows(d) for d in final}
    for trial_id, reported in partial.items():         # the cut-off one: the rows it had reported, then the rest
        kept = by_id[trial_id][:len(reported)]
        assert [{k: json.dumps(r[k]) for k in rep} for r, rep in zip(kept, reported)] == \
               [{k: json.dumps(v) for k, v in rep.items()} for rep in reported], trial_id
    ids = [rows(d)[0]["trial_id"] for d in final]
    assert len(set(ids)) == 5


def named_by_train(run: Path) -> set[str]:
    """The checkpoint folders a Train run's ``checkpoint_manager_snapshot.json`` names (what a resumed run restores)."""
    snap = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    names = {r["checkpoint_dir_name"] for r in snap["checkpoint_results"]}
    latest = snap.get("latest_checkpoint_result")
    return names | ({latest["checkpoint_dir_name"]} if latest else set())


def test_ctrl_c_mid_trial_resumes_to_the_end(tmp_path, cache_dir):
    """SIGINT (Ctrl-C, ``pkill -INT``) while a trial holds two checkpoints (best and a worse latest): Tune saves the
    experiment, stops the trial and ends the experiment's callbacks. The disk budget must leave the trial's Train
    run as Train recorded it, or ``resume`` fails (stop 28: CheckpointManagerInitializationError)."""
    base = [sys.executable, "-m", "search.cli"]
    args = ["sweep", "smoke", "--tasks", TASKS, "--model", "tiny", "--num-samples", "2", "--scheduler", "none",
            "--searcher", "random", "--max-concurrent", "1", "--storage", str(tmp_path), "--name", "ctrlc",
            "--set", "teacher.use=false", "--quiet", "--no-wandb"]
    exp = tmp_path / "experiments" / "ctrlc"
    for attempt in range(3):                           # the latest checkpoint is worse than the best: usually at once
        log = tmp_path / f"sweep{attempt}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(base + args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        cut, deadline = None, time.time() + 600
        while time.time() < deadline and proc.poll() is None and cut is None:
            reported = recorded(exp) if (exp / "reports").is_dir() else {}
            for run in sorted((exp / "train").glob("train-*")) if (exp / "train").is_dir() else []:
                got = reported.get(run.name[len("train-"):]) or []
                done = bool(got) and got[-1].get("progress") == 1.0
                if not done and len([c for c in run.glob("checkpoint-*") if (c / "checksums.json").is_file()]) >= 2:
                    cut = run
            time.sleep(0.1)
        if cut is not None:
            break
        proc.kill() if proc.poll() is None else None
        proc.wait()
        shutil.rmtree(exp, ignore_errors=True)
    assert cut is not None and proc.poll() is None, log.read_text()[-3000:]
    os.kill(proc.pid, signal.SIGINT)                   # the driver only, as `pkill -INT -f` does
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the sweep did not stop within 300 s of SIGINT:\n" + log.read_text()[-3000:])
    # Tune returns normally after Ctrl-C; the command does not: 130, and how to go on
    assert proc.returncode == 130 and "bam-search resume" in log.read_text(), log.read_text()[-3000:]
    on_disk = {c.name for c in cut.glob("checkpoint-*")}
    assert named_by_train(cut) <= on_disk, (named_by_train(cut), on_disk)
    assert json.loads((exp / "bam_disk.json").read_text())["pruned_checkpoints"] == 0     # no trial had finished

    r = subprocess.run(base + ["resume", "ctrlc", "--storage", str(tmp_path), "--quiet"], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    final = trials(exp)
    assert len(final) == 2 and all(rows(d) and rows(d)[-1]["progress"] == 1.0 for d in final), \
        {d.name: len(rows(d)) for d in final}
