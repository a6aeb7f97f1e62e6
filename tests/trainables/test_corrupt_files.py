"""Corrupt and half-written files: every checkpoint file, best-weights snapshot and soft-label file carries a
checksum, a damaged one is named in a one-line error (or skipped for the previous good checkpoint), and a
crash while writing leaves no half-written file under its final name. In-process, tiny model, no Ray.

Teacher predictions, their meta.json and registry lines: tests/trainables/test_store.py.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables import trial
from trainables.errors import UserError
from trainables.checkpoint import (checkpoint_siblings, load_checkpoint, restore_latest_good, save_checkpoint,
                                   save_rng, save_snapshots, verify_checkpoint)
from trainables.loop import run_training
from trainables.storage import sha256_file
from trainables.teacher_store import StoreError, atomic_save_npy

CACHE = os.environ.get("BAM_CACHE_DIR") or "/tmp/utcache"
TASKS = ["syn_noisy", "syn_similarity"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setattr(trial, "get_device", lambda: torch.device("cpu"))


def recipe(**over) -> dict:
    base = {"tasks": TASKS, "model": "tiny", "precision": "fp32", "evals": 4, "seed": 0,
            "teacher": {"use": False}, "optim": {"steps": 8, "batch_size": 8, "lr": 1e-3},
            "data": {"max_train_examples": 48, "max_dev_examples": 48, "max_length": 32},
            # syn_similarity switches at the 2nd evaluation: a snapshot file and a soft-label file exist
            "switch": {"per_task": {"syn_similarity": {"criterion": "fixed_step", "at_step": 4}}}}
    base.update(copy.deepcopy(over))
    return base


def make_run(tmp: Path, rec: dict | None = None):
    return trial.setup_run({"recipe": rec or recipe(), "job": "student", "storage": str(tmp / "storage"),
                             "artifacts_dir": str(tmp / "art"), "cache_dir": CACHE})


def params(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.model.named_parameters()}


@pytest.fixture
def checkpoints(tmp_path):
    """One run of 8 steps; a checkpoint folder per evaluation, named as Ray Train names them."""
    torch.manual_seed(0)
    run = make_run(tmp_path)
    root = tmp_path / "train-x"
    run_training(run, report=lambda m, r: save_checkpoint(r, root / f"checkpoint-step{r.step:07d}"))
    dirs = sorted(root.iterdir())
    assert [d.name for d in dirs] == [f"checkpoint-step{s:07d}" for s in (2, 4, 6, 8)]
    return tmp_path, run, dirs


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("name", ["model.pt", "state.json", "rng-rank0.pt"])
def test_truncated_checkpoint_file_is_named(checkpoints, name):
    tmp, _, dirs = checkpoints
    truncate(dirs[-1] / name)
    with pytest.raises(UserError) as e:
        verify_checkpoint(dirs[-1])
    assert str(dirs[-1] / name) in str(e.value) and "truncated or corrupt" in str(e.value)
    fresh = make_run(tmp)
    before = params(fresh)
    with pytest.raises(UserError, match=name):
        load_checkpoint(fresh, dirs[-1])
    assert fresh.step == 0 and all(torch.equal(before[k], v) for k, v in params(fresh).items())


def test_truncated_checksum_file_is_named(checkpoints):
    _, _, dirs = checkpoints
    truncate(dirs[-1] / "checksums.json")
    with pytest.raises(UserError) as e:
        verify_checkpoint(dirs[-1])
    assert str(dirs[-1] / "checksums.json") in str(e.value) and "truncated or corrupt" in str(e.value)


def test_other_ranks_rng_is_checksummed_too(tmp_path):
    """A rank > 0 adds its RNG file and its own checksum file to the same folder (Ray merges the ranks')."""
    run = make_run(tmp_path)
    d = tmp_path / "ck"
    save_checkpoint(run, d)
    run.world.rank = 1                                          # what rank 1 writes into its folder
    save_rng(run, d)
    run.world.rank = 0
    assert json.loads((d / "checksums-rank1.json").read_text()).keys() == {"rng-rank1.pt"}
    verify_checkpoint(d)
    truncate(d / "rng-rank1.pt")
    with pytest.raises(UserError, match="rng-rank1.pt"):
        verify_checkpoint(d)


def test_checkpoint_refers_to_snapshot_and_soft_labels_by_checksum(checkpoints):
    tmp, run, dirs = checkpoints
    st = json.loads((dirs[1] / "state.json").read_text())           # step 4: syn_similarity has just switched
    assert st["soft_labels"]["syn_similarity"]["sha256"]
    assert st["snapshot_files"] and st["snapshot_sha256"].keys() == st["snapshot_files"].keys()
    for step, path in st["snapshot_files"].items():             # a snapshot's name carries its checksum
        assert Path(path).name.startswith(f"step{step}-") and st["snapshot_sha256"][step][:12] in Path(path).name


def test_truncated_snapshot_is_named_and_nothing_is_loaded(checkpoints):
    tmp, _, dirs = checkpoints
    st = json.loads((dirs[0] / "state.json").read_text())           # step 2: the best weights so far
    snap = Path(next(iter(st["snapshot_files"].values())))
    truncate(snap)
    fresh = make_run(tmp)
    with pytest.raises(UserError) as e:
        load_checkpoint(fresh, dirs[0])
    assert str(snap) in str(e.value) and "snapshot" in str(e.value)
    assert fresh.step == 0 and fresh.snapshots == {}


def test_truncated_soft_labels_are_named(checkpoints):
    tmp, run, dirs = checkpoints
    soft = Path(run.soft_labels["syn_similarity"]["path"])
    truncate(soft)
    fresh = make_run(tmp)
    with pytest.raises(UserError) as e:                          # on resume, before anything is loaded
        load_checkpoint(fresh, dirs[-1])
    assert str(soft) in str(e.value) and "syn_similarity" in str(e.value)
    assert fresh.step == 0
    # and in a running trial (the file went bad after the switch): the read names it too
    run._soft_cache.clear()
    with pytest.raises(StoreError, match="checksum"):
        run.target_source("syn_similarity", np.arange(4))


# ---------------------------------------------------------------------------------------------- fallback

def test_corrupt_latest_checkpoint_falls_back_to_the_previous_good_one(checkpoints):
    tmp, full, dirs = checkpoints
    truncate(dirs[-1] / "model.pt")                              # step 8 is bad, step 6 is good
    warnings = []
    torch.manual_seed(7)
    run = make_run(tmp)
    got = restore_latest_good(run, checkpoint_siblings(dirs[-1]), warn=warnings.append)
    assert got == dirs[-2] and run.step == 6
    assert len(warnings) == 1 and str(dirs[-1] / "model.pt") in warnings[0] and str(dirs[-2]) in warnings[0]
    run_training(run, report=lambda m, r: None)                  # the last two steps again: same end state
    a, b = params(full), params(run)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-7) for k in a)


def test_fallback_skips_every_bad_one_and_fails_naming_the_newest(checkpoints):
    tmp, _, dirs = checkpoints
    for d in dirs[1:]:
        (d / "checksums.json").unlink()                          # a copy cut short: incomplete
    run = make_run(tmp)
    assert restore_latest_good(run, checkpoint_siblings(dirs[-1]), warn=lambda m: None) == dirs[0]
    truncate(dirs[0] / "state.json")
    run = make_run(tmp)
    with pytest.raises(UserError) as e:
        restore_latest_good(run, checkpoint_siblings(dirs[-1]), warn=lambda m: None)
    assert str(dirs[-1]) in str(e.value) and "no earlier intact checkpoint" in str(e.value)
    assert run.step == 0


def test_siblings_are_newest_first_and_never_newer(tmp_path):
    for s in (2, 10, 4, 12):
        (tmp_path / f"checkpoint-step{s:07d}").mkdir()
    (tmp_path / "other").mkdir()
    got = checkpoint_siblings(tmp_path / "checkpoint-step0000010")
    assert [p.name for p in got] == ["checkpoint-step0000010", "checkpoint-step0000004", "checkpoint-step0000002"]
    assert checkpoint_siblings(tmp_path / "other") == [tmp_path / "other"]     # a downloaded copy: itself only


# ---------------------------------------------------------------------------------------------- atomic writes

class Crash(RuntimeError):
    pass


def _crash_after_partial_write(real):
    def save(obj, f, *a, **k):
        f.write(b"PK\x03\x04partial")                            # some bytes reach the temporary file
        raise Crash("killed mid-write")
    return save


def test_crash_mid_checkpoint_leaves_no_file_under_a_final_name(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    d = tmp_path / "ck"
    calls = {"n": 0}
    real = torch.save

    def save(obj, f, *a, **k):                                   # the RNG file is written, then model.pt dies
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"PK\x03\x04partial")
            raise Crash("killed mid-write")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(Crash):
        save_checkpoint(run, d)
    assert sorted(p.name for p in d.iterdir()) == ["rng-rank0.pt"]   # no model.pt, no temporary file left
    with pytest.raises(UserError, match="incomplete"):
        verify_checkpoint(d)


def test_crash_mid_snapshot_write_leaves_nothing(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    run.step = 2
    run.after_eval({"syn_noisy": 50.0, "syn_similarity": 50.0})  # a new best: a snapshot to write
    assert run.snapshots
    monkeypatch.setattr(torch, "save", _crash_after_partial_write(torch.save))
    with pytest.raises(Crash):
        save_snapshots(run)
    snaps = tmp_path / "art" / "snapshots"
    assert not snaps.exists() or list(snaps.iterdir()) == []


def test_crash_mid_npy_write_keeps_the_previous_file(tmp_path, monkeypatch):
    """Teacher predictions and soft labels: the file under its final name is the old one or the new one."""
    path = tmp_path / "soft_labels" / "t-step2.npy"
    old = np.arange(6, dtype=np.float32)
    sha = atomic_save_npy(path, old)

    def bad_save(f, arr, **k):
        f.write(b"\x93NUMPY partial")
        raise Crash("killed mid-write")

    monkeypatch.setattr(np, "save", bad_save)
    with pytest.raises(Crash):
        atomic_save_npy(path, np.zeros(6, dtype=np.float32))
    monkeypatch.undo()
    from trainables.teacher_store import load_checked_npy
    assert np.array_equal(load_checked_npy(path, sha), old)
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith(".")] == ["t-step2.npy"]


def test_old_format_checkpoint_without_snapshot_sums_still_loads(checkpoints):
    """Checkpoints written before snapshot checksums existed: the snapshot must exist, and it loads."""
    tmp, _, dirs = checkpoints
    d = dirs[0]
    st = json.loads((d / "state.json").read_text())
    st.pop("snapshot_sha256")
    data = json.dumps(st).encode()
    (d / "state.json").write_bytes(data)
    sums = json.loads((d / "checksums.json").read_text())
    import hashlib
    sums["state.json"] = hashlib.sha256(data).hexdigest()
    (d / "checksums.json").write_text(json.dumps(sums))
    run = make_run(tmp)
    load_checkpoint(run, d)
    assert run.step == 2 and run.snapshots


# ---------------------------------------------------------------------------------------------- loading is safe

class _Planted:
    """Unpickling this would run code: it creates the file named by ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_checkpoint_whose_pickle_would_run_code_is_refused(tmp_path):
    """Someone with write access replaces model.pt and fixes checksums.json: loading refuses the file with an
    error naming it (weights_only unpickling), runs nothing and changes nothing in the run."""
    torch.manual_seed(0)
    run = make_run(tmp_path)
    d = tmp_path / "checkpoint-step0000000"
    save_checkpoint(run, d)
    marker = tmp_path / "code-ran"
    torch.save({"model": _Planted(marker)}, d / "model.pt")
    sums = json.loads((d / "checksums.json").read_text())
    sums["model.pt"] = sha256_file(d / "model.pt")
    (d / "checksums.json").write_text(json.dumps(sums))
    before = params(run)
    with pytest.raises(UserError, match=r"model\.pt: refused: not a plain tensor file"):
        load_checkpoint(run, d)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in params(run).items())


def test_a_recipe_with_a_python_tag_is_refused(tmp_path):
    from trainables.recipe import load_recipe
    marker = tmp_path / "code-ran"
    path = tmp_path / "recipe.yaml"
    path.write_text(f"tasks: [syn_noisy]\nmodel: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError, match=rf"{path}:2"):
        load_recipe(path)
    assert not marker.exists()
