"""The disk-budget callback's cost per result does not grow with the sweep (issue 19): a running trial whose
files are all referenced by its own checkpoints is not checked against every other trial's; one that holds an
unreferenced file still is, and a file another trial refers to (a PBT receiver) still survives. No Ray."""
from __future__ import annotations

import os
import types

from test_budget import artifact, ckpt      # rootdir-relative, as procs.py is imported

from search import budget as B


def test_a_result_reads_other_trials_checkpoints_only_when_it_may_free_a_file(tmp_path, monkeypatch):
    exp = tmp_path / "exp"
    for i in range(20):                                 # other trials, each with its checkpoint
        ckpt(exp / "train" / f"train-O{i}" / "checkpoint-step0000010", step=10, metrics={})
    snap = artifact(exp, "T1", "snapshots", "step10.pt")
    ckpt(exp / "train" / "train-T1" / "checkpoint-step0000010", step=10, metrics={}, refs={10: snap})
    last = ckpt(exp / "train" / "train-T1" / "checkpoint-step0000020", step=20, metrics={}, refs={10: snap})
    cb = B.DiskBudget(experiment_dir=exp, metric="glue_avg", budget=None, sample_every_s=3600)
    scans = []
    collect = B.References.collect
    monkeypatch.setattr(B.References, "collect", lambda self, e: scans.append(e) or collect(self, e))
    trial = types.SimpleNamespace(trial_id="T1")
    cb.on_trial_result(0, [], trial, {"checkpoint_path": str(last)})
    assert scans == [] and snap.exists()                # nothing to free: no experiment-wide scan

    old = artifact(exp, "T1", "snapshots", "step5.pt")             # unreferenced: freed
    pbt = artifact(exp, "T1", "soft_labels", "syn_noisy-step5.npy")  # a receiver's inherited copy refers to it
    ckpt(exp / "artifacts" / "O3" / "inherited" / "001-T1-step0000005", step=5, metrics={}, soft={"syn_noisy": pbt})
    for f in (old, pbt):
        os.utime(f, ns=(1, 1))                          # older than the checkpoint reported next
    newer = ckpt(exp / "train" / "train-T1" / "checkpoint-step0000030", step=30, metrics={}, refs={10: snap})
    cb.on_trial_result(0, [], trial, {"checkpoint_path": str(newer)})
    assert len(scans) == 1 and not old.exists() and pbt.exists() and snap.exists()
    assert cb.record["freed_files_bytes"] >= 8192


def test_without_pbt_a_result_never_reads_other_trials_checkpoints(tmp_path, monkeypatch):
    """``shared=False`` (every scheduler but PBT): no trial's checkpoint can refer to another trial's files, so
    freeing a trial's unreferenced snapshot, while it runs or when it ends, reads only its own checkpoints."""
    exp = tmp_path / "exp"
    for i in range(20):
        ckpt(exp / "train" / f"train-O{i}" / "checkpoint-step0000010", step=10, metrics={})
    snap = artifact(exp, "T1", "snapshots", "step10.pt")
    old = artifact(exp, "T1", "snapshots", "step5.pt")
    os.utime(old, ns=(1, 1))
    first = ckpt(exp / "train" / "train-T1" / "checkpoint-step0000010", step=10, metrics={"glue_avg": 60.0},
                 refs={10: snap})
    last = ckpt(exp / "train" / "train-T1" / "checkpoint-step0000020", step=20, metrics={"glue_avg": 50.0},
                refs={10: snap})
    cb = B.DiskBudget(experiment_dir=exp, metric="glue_avg", budget=None, grace_s=0, sample_every_s=3600,
                      shared=False)
    scans, reads = [], []
    collect, state = B.References.collect, B.read_state
    monkeypatch.setattr(B.References, "collect", lambda self, e: scans.append(e) or collect(self, e))
    monkeypatch.setattr(B, "read_state", lambda c: reads.append(c) or state(c))
    trial = types.SimpleNamespace(trial_id="T1", status="RUNNING")
    cb.on_trial_result(0, [trial], trial, {"checkpoint_path": str(last)})
    assert scans == [] and not old.exists() and snap.exists()           # freed without the experiment-wide scan
    assert all("train-T1" in str(c) for c in reads)

    late = artifact(exp, "T1", "snapshots", "step20.pt")                # written after the last report: unreferenced
    os.utime(late, ns=(2, 2))
    cb.on_trial_complete(0, [trial], trial)
    cb.on_step_begin(1, [trial])
    cb.on_step_end(1, [trial])                                          # pruned: keeps its best checkpoint
    assert scans == [] and first.exists() and not last.exists()
    assert not late.exists() and snap.exists()                          # the best checkpoint's snapshot stays
    assert all("train-T1" in str(c) for c in reads)
