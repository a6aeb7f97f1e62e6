"""Checkpoints kept per trial (best and latest) and the disk budget, on hand-made experiment folders (no Ray)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from search import budget as B
from trainables.errors import UserError
from trainables.recipe import recipe_from_dict


def ckpt(folder: Path, *, step: int, metrics: dict, refs: dict | None = None, soft: dict | None = None,
         complete: bool = True, size: int = 4096) -> Path:
    """A checkpoint folder as the loop writes it: model.pt, state.json (last_metrics, references), checksums."""
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(os.urandom(size))
    state = {"step": step, "last_metrics": metrics, "snapshot_files": {str(k): str(v) for k, v in (refs or {}).items()},
             "soft_labels": {t: {"path": str(p), "sha256": "x", "step": step} for t, p in (soft or {}).items()}}
    (folder / "state.json").write_text(json.dumps(state))
    if complete:
        (folder / "checksums.json").write_text(json.dumps({"model.pt": "-", "state.json": "-"}))
    return folder


def artifact(exp: Path, trial: str, kind: str, name: str, size: int = 8192) -> Path:
    p = exp / "artifacts" / trial / kind / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(os.urandom(size))
    return p


@pytest.mark.parametrize("text, want", [("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("1.5GiB", int(1.5 * 2**30)),
                                        ("4096", 4096), ("10 kb", 10_000), ("none", None), ("0", None)])
def test_parse_size(text, want):
    assert B.parse_size(text) == want


@pytest.mark.parametrize("text", ["lots", "2 parsecs", "-1GB", "GB"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(UserError, match="--disk-budget"):
        B.parse_size(text)


def test_disk_bytes_counts_hard_links_once(tmp_path):
    (tmp_path / "a").write_bytes(os.urandom(100_000))
    one = B.disk_bytes(tmp_path)
    os.link(tmp_path / "a", tmp_path / "b")
    assert B.disk_bytes(tmp_path) == one >= 100_000
    (tmp_path / "c").write_bytes(os.urandom(100_000))
    assert B.disk_bytes(tmp_path) >= one + 100_000


def test_an_ended_trial_keeps_its_best_checkpoint_across_runs_and_inherited_copies(tmp_path):
    exp = tmp_path / "exp"
    run = exp / "train" / "train-T1"
    a = ckpt(run / "checkpoint-step0000010", step=10, metrics={"glue_avg": 50.0})
    b = ckpt(run / "checkpoint-step0000020", step=20, metrics={"glue_avg": 70.0})
    c = ckpt(exp / "train" / "train-T1-from-001-T2-step0000030" / "checkpoint-step0000040", step=40,
             metrics={"glue_avg": 60.0})
    d = ckpt(exp / "artifacts" / "T1" / "inherited" / "001-T2-step0000030", step=30, metrics={"glue_avg": 65.0})
    e = ckpt(run / "checkpoint-step0000050", step=50, metrics={"glue_avg": float("nan")})
    f = ckpt(run / "checkpoint-step0000060", step=60, metrics={"glue_avg": 99.0}, complete=False)   # cut short
    other = ckpt(exp / "train" / "train-T10" / "checkpoint-step0000010", step=10, metrics={"glue_avg": 1.0})
    assert set(B.trial_checkpoints(exp, "T1")) == {a, b, c, d, e, f}        # not T10's (a longer id)
    gone = B.prune_trial(exp, "T1", metric="glue_avg")
    assert set(gone) == {a, c, d, e, f} and b.is_dir() and other.is_dir()
    assert B.trial_checkpoints(exp, "T1") == [b]
    assert B.prune_trial(exp, "T1", metric="glue_avg") == []
    # by another metric, another checkpoint is the best
    g = ckpt(run / "checkpoint-step0000070", step=70, metrics={"glue_avg": 10.0, "delta_vs_teachers": 3.0})
    assert B.prune_trial(exp, "T1", metric="delta_vs_teachers") == [b] and g.is_dir()


def test_referenced_files_survive_and_the_rest_is_collected(tmp_path):
    exp = tmp_path / "exp"
    s_old = artifact(exp, "T1", "snapshots", "step10-aaaa.pt")
    s_kept = artifact(exp, "T1", "snapshots", "step20-bbbb.pt")
    soft_kept = artifact(exp, "T1", "soft_labels", "syn_noisy-step20.npy")
    soft_old = artifact(exp, "T1", "soft_labels", "syn_noisy-step10.npy")
    soft_pbt = artifact(exp, "T1", "soft_labels", "syn_pairmatch-step10.npy")   # a receiver refers to it
    tmp = artifact(exp, "T1", "snapshots", ".step30.pt.123.tmp")                # being written
    ckpt(exp / "train" / "train-T1" / "checkpoint-step0000020", step=20, metrics={}, refs={20: s_kept},
         soft={"syn_noisy": soft_kept})
    ckpt(exp / "artifacts" / "T2" / "inherited" / "001-T1-step0000010", step=10, metrics={},
         soft={"syn_pairmatch": soft_pbt})
    refs = B.References().collect(exp)
    freed = B.collect_garbage(exp, "T1", refs=refs)
    assert freed >= 2 * 8192
    assert not s_old.exists() and not soft_old.exists()
    assert s_kept.exists() and soft_kept.exists() and soft_pbt.exists() and tmp.exists()


def test_a_running_trials_newer_files_are_never_collected(tmp_path):
    exp = tmp_path / "exp"
    c = ckpt(exp / "train" / "train-T1" / "checkpoint-step0000020", step=20, metrics={})
    old = artifact(exp, "T1", "snapshots", "step10.pt")
    os.utime(old, ns=(1, 1))
    guard = (c / "state.json").stat().st_mtime_ns
    new = artifact(exp, "T1", "soft_labels", "syn_noisy-step10.npy")      # written for the next checkpoint
    os.utime(new, ns=(guard + 10**9, guard + 10**9))
    B.collect_garbage(exp, "T1", refs=B.References().collect(exp), newer_than_ns=guard)
    assert not old.exists() and new.exists()


def _trial(tid):
    return types.SimpleNamespace(trial_id=tid, status="TERMINATED")


def test_the_callback_prunes_ended_trials_and_records_the_bytes(tmp_path):
    exp = tmp_path / "exp"
    warnings = []
    cb = B.DiskBudget(experiment_dir=exp, metric="glue_avg", budget=10**12, grace_s=0, sample_every_s=0,
                      warn=warnings.append)
    cb.setup()
    for tid in ("T1", "T2"):
        snap = artifact(exp, tid, "snapshots", "step10.pt", size=200_000)
        ckpt(exp / "train" / f"train-{tid}" / "checkpoint-step0000010", step=10, metrics={"glue_avg": 9.0},
             refs={10: snap}, size=200_000)
        last = ckpt(exp / "train" / f"train-{tid}" / "checkpoint-step0000020", step=20,
                    metrics={"glue_avg": 5.0}, size=200_000)
        cb.on_trial_result(0, [], _trial(tid), {"checkpoint_path": str(last)})
    before = B.disk_bytes(exp)
    cb.on_trial_complete(0, [], _trial("T1"))
    cb.on_step_end(0, [])
    after = B.disk_bytes(exp)
    assert after <= before - 200_000                                                         # one model.pt
    assert [p.name for p in B.trial_checkpoints(exp, "T1")] == ["checkpoint-step0000010"]    # the best
    assert (exp / "artifacts" / "T1" / "snapshots" / "step10.pt").exists()                   # it refers to it
    assert len(B.trial_checkpoints(exp, "T2")) == 2                                          # still running
    rec = json.loads((exp / B.RECORD).read_text())
    assert rec["peak_bytes"] >= after + 200_000 and rec["last_bytes"] == after and rec["pruned_checkpoints"] == 1
    assert len(rec["samples"]) >= 3 and not warnings
    # over the budget: one warning line naming the flag
    cb.budget = 1000
    cb.on_trial_complete(0, [], _trial("T2"))
    cb.on_experiment_end([_trial("T1"), _trial("T2")])
    assert len(B.trial_checkpoints(exp, "T2")) == 1
    assert len(warnings) == 1 and "--disk-budget" in warnings[0] and "\n" not in warnings[0]
    assert json.loads((exp / B.RECORD).read_text())["warnings"]


def test_budget_refused_before_compute_when_best_checkpoints_cannot_fit():
    recipe = recipe_from_dict({"tasks": ["syn_noisy"], "model": "tiny", "switch": {"criterion": "patience"}})
    est = B.check_budget(10**10, recipe=recipe, trials=24, concurrent=2)
    ckpt_bytes, snap = est["checkpoint_bytes"], est["snapshot_bytes"]
    assert 12 * 40_000 < ckpt_bytes < 12 * 60_000 + 128 * 1024 and 4 * 40_000 < snap < 4 * 60_000   # tiny: ~45k params
    assert est["minimum"] == 24 * (ckpt_bytes + snap + B.TRIAL_OVERHEAD) + 2 * ckpt_bytes
    with pytest.raises(UserError, match=r"--disk-budget .* 24 trials"):
        B.check_budget(est["minimum"] - 1, recipe=recipe, trials=24, concurrent=2)
    assert B.check_budget(None, recipe=recipe, trials=24, concurrent=2) is None


@pytest.mark.parametrize("args, needle", [
    (["--disk-budget", "1KB"], "--disk-budget"),
    (["--disk-budget", "lots"], "--disk-budget 'lots'"),
    (["--metric", "delta_vs_teachers"], "no teacher dev score"),
    (["--scheduler", "pbt", "--searcher", "optuna"], "--searcher random"),
])
def test_sweep_flag_mistakes_are_one_line_before_ray(tmp_path, args, needle):
    r = subprocess.run([sys.executable, "-m", "search.cli", "sweep", "smoke", "--tasks", "syn_noisy", "--model", "tiny",
                        "--set", "teacher.use=false", "--storage", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip() and "Warning" not in l and "warn(" not in l]
    assert len(lines) == 1 and lines[0].startswith("bam-search: error:") and needle in lines[0], r.stderr
    assert not (tmp_path / "experiments").exists()                  # nothing ran


def test_a_grid_sweeps_disk_budget_counts_every_combination(tmp_path):
    """--searcher grid runs --num-samples x every combination of the categorical values: the budget check
    counts them all (it counted --num-samples alone: a 4-point grid passed a budget for one trial)."""
    from search.cli import build_parser
    from search.preflight import plan_sweep
    space = tmp_path / "grid.yaml"
    space.write_text("parameters:\n  anneal.schedule: {values: [linear, cosine, sigmoid, none]}\n")
    recipe = recipe_from_dict({"tasks": ["syn_noisy"], "model": "tiny", "teacher": {"use": False}})
    one = B.check_budget(10**12, recipe=recipe, trials=1, concurrent=1)["minimum"]
    argv = ["sweep", str(space), "--tasks", "syn_noisy", "--model", "tiny", "--set", "teacher.use=false",
            "--searcher", "grid", "--num-samples", "1", "--max-concurrent", "1", "--storage", str(tmp_path / "s")]
    with pytest.raises(UserError, match=r"--disk-budget .* 4 trials"):
        plan_sweep(build_parser().parse_args([*argv, "--disk-budget", str(one + 1)]))
    plan_sweep(build_parser().parse_args([*argv, "--disk-budget", str(10 * one)]))       # room for all four


def _two_checkpoints(exp: Path, tid: str) -> list[Path]:
    """A trial as Train leaves it with num_to_keep=1: its best checkpoint and a worse latest one (named by Train's
    checkpoint_manager_snapshot.json, which a resumed Train run restores from)."""
    run = exp / "train" / f"train-{tid}"
    out = [ckpt(run / "checkpoint-step0000010", step=10, metrics={"glue_avg": 9.0}),
           ckpt(run / "checkpoint-step0000020", step=20, metrics={"glue_avg": 5.0})]
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"checkpoint_results": [{"checkpoint_dir_name": c.name} for c in out],
         "latest_checkpoint_result": {"checkpoint_dir_name": out[-1].name}}))
    return out


def test_an_interrupted_sweep_leaves_its_cut_off_trials_resumable(tmp_path):
    """Ctrl-C: Tune saves the experiment with the running trial unfinished, then stops it, marking it TERMINATED
    without on_trial_complete, and calls on_experiment_end. Its latest checkpoint must survive: resume continues
    from it (stop 28 lost one, and the resumed trial failed with CheckpointManagerInitializationError)."""
    exp = tmp_path / "exp"
    cb = B.DiskBudget(experiment_dir=exp, metric="glue_avg", budget=None, grace_s=0, sample_every_s=0)
    cb.setup()
    want = _two_checkpoints(exp, "CUT")
    cb.on_step_begin(0, [types.SimpleNamespace(trial_id="CUT", status="RUNNING")])
    cb.on_step_end(0, [])
    cb.on_experiment_end([_trial("CUT")])                       # status TERMINATED, as Tune's cleanup sets it
    assert B.trial_checkpoints(exp, "CUT") == want


def test_a_failed_trial_keeps_what_train_recorded_for_retry_errored(tmp_path):
    exp = tmp_path / "exp"
    cb = B.DiskBudget(experiment_dir=exp, metric="glue_avg", budget=None, grace_s=0, sample_every_s=0)
    cb.setup()
    want = _two_checkpoints(exp, "BAD")
    orphan = artifact(exp, "BAD", "snapshots", "step5.pt")                # referred to by no checkpoint
    cb.on_trial_error(0, [], types.SimpleNamespace(trial_id="BAD", status="ERROR"))
    cb.on_step_end(0, [])
    cb.on_experiment_end([types.SimpleNamespace(trial_id="BAD", status="ERROR")])
    assert B.trial_checkpoints(exp, "BAD") == want and not orphan.exists()


def test_a_resumed_sweep_prunes_trials_that_had_finished_before_it(tmp_path):
    """A driver killed before it pruned a finished trial: the resumed sweep prunes it at its first step, and
    leaves the trials Tune restored as unfinished alone."""
    exp = tmp_path / "exp"
    done = _two_checkpoints(exp, "DONE")
    cut = _two_checkpoints(exp, "CUT")
    cb = B.DiskBudget(experiment_dir=exp, metric="glue_avg", budget=None, grace_s=0, sample_every_s=0)
    cb = __import__("pickle").loads(__import__("pickle").dumps(cb))         # as Tune restores it
    cb.setup()
    trials = [_trial("DONE"), types.SimpleNamespace(trial_id="CUT", status="PENDING")]
    cb.on_step_begin(0, trials)
    cb.on_step_end(0, trials)
    assert B.trial_checkpoints(exp, "DONE") == done[:1] and B.trial_checkpoints(exp, "CUT") == cut
    cb.on_experiment_end(trials)
    assert B.trial_checkpoints(exp, "CUT") == cut
