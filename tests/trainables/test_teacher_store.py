"""Content-addressed teacher predictions and the append-only baseline registry."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trainables.errors import UserError
from trainables.teacher_store import BaselineRegistry, StoreError, TeacherStore, teacher_key

FP = "f" * 64


def _save(store: TeacherStore, *, task="rte", n=20, classes=2, seed=0, fingerprint=FP):
    rng = np.random.default_rng(seed)
    preds = rng.normal(size=(n, classes)).astype(np.float32)
    ids = np.arange(100, 100 + n, dtype=np.int64)
    key = teacher_key(task=task, fingerprint=fingerprint, model="tiny-x", teacher_config={"lr": 1e-3}, seed=seed)
    folder = store.save(key=key, predictions=preds, ids=ids, meta={"task": task, "fingerprint": fingerprint, "n": n})
    return key, folder, preds, ids


def test_round_trip(tmp_path):
    store = TeacherStore(tmp_path)
    key, folder, preds, ids = _save(store)
    assert folder == tmp_path / "teachers" / key and store.has(key)
    assert sorted(p.name for p in folder.iterdir()) == ["ids.npy", "meta.json", "predictions.npy"]
    assert not [p for p in (tmp_path / "teachers").iterdir() if p.name.startswith(".")]   # no temp folders left
    out = store.load(key, task="rte", expect_ids=ids, fingerprint=FP)
    assert out.dtype == np.float32 and np.array_equal(out, preds)
    meta = store.meta(key)
    assert meta["key"] == key and meta["task"] == "rte" and set(meta["sha256"]) == {"predictions.npy", "ids.npy"}


def test_regression_predictions_round_trip(tmp_path):
    store = TeacherStore(tmp_path)
    preds = np.linspace(0, 5, 7).astype(np.float64)
    ids = np.arange(7)
    store.save(key="stsb-k", predictions=preds, ids=ids, meta={"fingerprint": FP})
    out = store.load("stsb-k", task="stsb", expect_ids=ids, fingerprint=FP)
    assert out.shape == (7,) and out.dtype == np.float32
    np.testing.assert_allclose(out, preds, rtol=1e-6)


def test_same_key_keeps_the_first(tmp_path):
    store = TeacherStore(tmp_path)
    ids = np.arange(3)
    store.save(key="k", predictions=np.zeros((3, 2)), ids=ids, meta={})
    store.save(key="k", predictions=np.ones((3, 2)), ids=ids, meta={})
    assert np.array_equal(store.load("k", task="rte", expect_ids=ids, fingerprint=FP), np.zeros((3, 2)))
    assert [p.name for p in (tmp_path / "teachers").iterdir()] == ["k"]


def test_teacher_key_depends_on_every_input():
    base = dict(task="rte", fingerprint=FP, model="tiny", teacher_config={"lr": 1e-3, "evals": 3}, seed=0)
    k = teacher_key(**base)
    assert k.startswith("rte-s0-") and teacher_key(**base) == k
    assert teacher_key(**{**base, "teacher_config": {"evals": 3, "lr": 1e-3}}) == k      # key order irrelevant
    for change in ({"task": "mrpc"}, {"fingerprint": "e" * 64}, {"model": "minilm"}, {"seed": 1},
                   {"teacher_config": {"lr": 2e-3, "evals": 3}}):
        assert teacher_key(**{**base, **change}) != k, change


@pytest.mark.parametrize("case", ["ids", "count", "fingerprint"])
def test_mismatch_errors_name_the_task(tmp_path, case):
    store = TeacherStore(tmp_path)
    key, folder, preds, ids = _save(store, task="mrpc")
    expect, fp = ids, FP
    if case == "ids":
        expect = ids.copy()
        expect[5] += 1000
    elif case == "count":
        expect = ids[:-1]
    else:
        fp = "0" * 64
    with pytest.raises(StoreError) as e:
        store.load(key, task="mrpc", expect_ids=expect, fingerprint=fp)
    msg = str(e.value)
    assert "task mrpc" in msg and str(folder) in msg and "re-run" in msg
    assert {"ids": "other example ids", "count": f"{len(ids)} rows", "fingerprint": "fingerprint"}[case] in msg
    assert isinstance(e.value, UserError)


@pytest.mark.parametrize("name", ["predictions.npy", "ids.npy"])
def test_truncated_file_is_a_checksum_error(tmp_path, name):
    store = TeacherStore(tmp_path)
    key, folder, preds, ids = _save(store, n=200)
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) - 16])
    with pytest.raises(StoreError) as e:
        store.load(key, task="rte", expect_ids=ids, fingerprint=FP)
    assert "checksum" in str(e.value) and name in str(e.value)


def test_flipped_byte_is_a_checksum_error(tmp_path):
    store = TeacherStore(tmp_path)
    key, folder, preds, ids = _save(store)
    data = bytearray((folder / "predictions.npy").read_bytes())
    data[-1] ^= 0xFF                                              # same size, different content
    (folder / "predictions.npy").write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        store.load(key, task="rte", expect_ids=ids, fingerprint=FP)


def test_missing_and_corrupt_meta(tmp_path):
    store = TeacherStore(tmp_path)
    assert not store.has("nope")
    with pytest.raises(StoreError, match="no teacher predictions"):
        store.load("nope", task="rte", expect_ids=np.arange(3), fingerprint=FP)
    key, folder, preds, ids = _save(store)
    (folder / "meta.json").write_text('{"truncated": ')
    with pytest.raises(StoreError, match="corrupt meta.json"):
        store.meta(key)
    key2, folder2, _, ids2 = _save(store, seed=1)
    (folder2 / "predictions.npy").unlink()
    with pytest.raises(StoreError, match="missing"):
        store.load(key2, task="rte", expect_ids=ids2, fingerprint=FP)


# ---------------------------------------------------------------------------------------------- registry

def test_registry_append_and_records(tmp_path):
    reg = BaselineRegistry(tmp_path / "storage")
    assert reg.records() == []
    recs = [{"task": "rte", "seed": s, "score": 60.0 + s, "history": [[1, 2.5]], "dev": {"rte/accuracy": 61.0}}
            for s in range(3)]
    for r in recs:
        reg.append(r)
    assert reg.records() == recs and reg.records(strict=True) == recs
    assert len(reg.path.read_text().splitlines()) == 3


@pytest.mark.parametrize("corruption", ["truncate", "edit", "garbage", "no_sha"])
def test_corrupt_line_is_skipped_or_named(tmp_path, corruption):
    reg = BaselineRegistry(tmp_path)
    recs = [{"task": t, "seed": 0, "score": s} for t, s in (("rte", 61.0), ("mrpc", 80.0), ("stsb", 85.0))]
    for r in recs:
        reg.append(r)
    lines = reg.path.read_text().splitlines()
    if corruption == "truncate":
        lines[1] = lines[1][:-10]
    elif corruption == "edit":                                   # valid JSON, but the checksum no longer matches
        obj = json.loads(lines[1])
        obj["record"]["score"] = 99.0
        lines[1] = json.dumps(obj)
    elif corruption == "garbage":
        lines[1] = "\x00\x00not json"
    else:
        lines[1] = json.dumps({"record": recs[1]})
    reg.path.write_text("\n".join(lines) + "\n\n")
    assert reg.records() == [recs[0], recs[2]]
    with pytest.raises(StoreError) as e:
        reg.records(strict=True)
    assert f"{reg.path}:2:" in str(e.value)


def test_append_after_a_torn_last_line(tmp_path):
    """A crash mid-append leaves a torn line; the next record must survive it."""
    reg = BaselineRegistry(tmp_path)
    reg.append({"task": "rte", "seed": 0})
    with open(reg.path, "a") as f:
        f.write('{"sha256": "abc", "rec')                          # torn write, no newline
    reg.append({"task": "rte", "seed": 1})
    got = reg.records()
    assert {"task": "rte", "seed": 0} in got
    assert {"task": "rte", "seed": 1} in got


def test_teacher_keys_survive_options_added_later():
    """optim.decay came after teacher stores existed: at its default it stays out of the key (teachers already
    trained keep their keys); set to something else it changes the key."""
    from trainables.teachers import teacher_config
    from trainables.recipe import recipe_from_dict
    base = teacher_config(recipe_from_dict({"tasks": ["rte"], "model": "tiny"}))
    assert base == {"optim": {"lr": 5e-5, "weight_decay": 0.01, "layer_decay": 0.9, "warmup": 0.1, "clip": 1.0,
                              "batch_size": 32, "epochs": 3.0, "steps": None},
                    "max_length": 128, "precision": "auto", "evals": 10, "pooling": "cls",
                    "layer_depths": "bam"}
    const = teacher_config(recipe_from_dict({"tasks": ["rte"], "model": "tiny", "optim": {"decay": "constant"}}))
    assert const["optim"]["decay"] == "constant"
    key = lambda cfg: teacher_key(task="rte", fingerprint=FP, model="tiny", teacher_config=cfg, seed=0)  # noqa: E731
    assert key(base) != key(const)
