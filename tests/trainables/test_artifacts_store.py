"""With URI storage a trial's soft labels and best-weights snapshots are copied under the storage as they are
written, and a trial restarted on another node (whose disk lacks them) fetches what its checkpoint refers to
(trainables/artifacts.py; issue 21, "every artifact a trial needs to resume under the storage").

In-process, tiny model, no Ray. The "storage" is a pyarrow filesystem that is not a local path (a SubTree
filesystem, as tests/trainables/test_storage.py uses); "another node" is the same run folder with the first
node's artifacts folder deleted.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch

from trainables import trial
from trainables.artifacts import artifacts_dir, remote_store, stored_parts
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.errors import UserError
from trainables.loop import run_training
from trainables.storage import Storage

CACHE = os.environ.get("BAM_CACHE_DIR") or "/tmp/utcache"
RECIPE = {"tasks": ["syn_noisy", "syn_similarity"], "model": "tiny", "precision": "fp32", "evals": 4, "seed": 0,
          "teacher": {"use": False}, "optim": {"steps": 8, "batch_size": 8, "lr": 1e-3},
          "data": {"max_train_examples": 48, "max_dev_examples": 48, "max_length": 32},
          "switch": {"per_task": {"syn_similarity": {"criterion": "fixed_step", "at_step": 4}}}}


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setattr(trial, "get_device", lambda: torch.device("cpu"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def uri_storage(tmp_path: Path) -> Storage:
    (tmp_path / "remote").mkdir()
    return Storage(uri="subtree://bam", local=None,
                   filesystem=pafs.SubTreeFileSystem(str(tmp_path / "remote"), pafs.LocalFileSystem()), root="bam")


def make_run(tmp: Path, node: Path, store: Storage | None):
    run = trial.setup_run({"recipe": copy.deepcopy(RECIPE), "job": "student", "storage": str(tmp / "storage"),
                           "artifacts_dir": str(node), "cache_dir": CACHE})
    run.store = store                 # what setup_run gives a run whose --storage is a URI (remote_store)
    return run


def test_where_artifacts_live(tmp_path):
    local = tmp_path / "st"
    assert artifacts_dir(str(local), experiment="e", trial_id="t") == str(local / "experiments" / "e" / "artifacts" / "t")
    assert remote_store(str(local)) is None                       # local artifacts are in the storage already
    assert remote_store("s3://bucket/bam").uri == "s3://bucket/bam"
    node = artifacts_dir("s3://bucket/bam", experiment="e", trial_id="t")
    assert stored_parts(Path(node) / "soft_labels" / "x.npy") == ("experiments", "e", "artifacts", "t", "soft_labels",
                                                                  "x.npy")
    assert stored_parts(local / "experiments" / "e" / "artifacts" / "t" / "x.npy") is None


def test_a_trial_restarted_on_another_node_fetches_its_artifacts(tmp_path):
    store = uri_storage(tmp_path)
    node = tmp_path / "node-a" / "bam-artifacts" / "exp" / "T1"
    torch.manual_seed(0)
    run = make_run(tmp_path, node, store)
    root = tmp_path / "train-x"
    run_training(run, report=lambda m, r: save_checkpoint(r, root / f"checkpoint-step{r.step:07d}"))
    ckpt = root / "checkpoint-step0000004"                          # syn_similarity has just switched
    st = json.loads((ckpt / "state.json").read_text())
    refs = [Path(st["soft_labels"]["syn_similarity"]["path"]), *map(Path, st["snapshot_files"].values())]
    for p in refs:                                                  # every file is in the storage, byte for byte
        assert store.read_bytes(*stored_parts(p)) == p.read_bytes()
    labels = np.load(refs[0])

    shutil.rmtree(tmp_path / "node-a")                              # the node is gone with its disk
    with pytest.raises(UserError, match="missing"):                 # without the storage's copies: cannot resume
        load_checkpoint(make_run(tmp_path, node, None), ckpt)
    fresh = make_run(tmp_path, node, store)
    load_checkpoint(fresh, ckpt)
    assert fresh.step == 4 and fresh.soft_labels.keys() == {"syn_similarity"}
    assert np.array_equal(fresh._soft("syn_similarity"), labels)
    assert all(p.is_file() for p in refs)

    refs[0].write_bytes(b"damaged on this node")                    # a bad local copy: the storage's wins
    load_checkpoint(make_run(tmp_path, node, store), ckpt)
    assert np.array_equal(np.load(refs[0]), labels)
