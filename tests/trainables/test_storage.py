"""--storage as a local path or a URI: resolution, errors, and the teacher store / baseline registry /
experiment files on a filesystem that is not this machine's disk (pyarrow over an fsspec memory filesystem,
and a pyarrow SubTreeFileSystem, which have object-store semantics: no folder rename, no append)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pyarrow.fs as pafs

from trainables.storage import SCHEMES, Storage, StorageError, storage_uri
from trainables.teacher_store import BaselineRegistry, StoreError, TeacherStore

FP = "f" * 64


def memory_storage(root: str = "/bucket/bam") -> Storage:
    import fsspec
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem("memory", skip_instance_cache=True)))
    fs.delete_dir_contents("/", accept_root_dir=True, missing_dir_ok=True)      # the memory store is global
    return Storage(uri=f"memory:/{root}", local=None, filesystem=fs, root=root)


def subtree_storage(tmp_path: Path) -> Storage:
    (tmp_path / "remote").mkdir()
    fs = pafs.SubTreeFileSystem(str(tmp_path / "remote"), pafs.LocalFileSystem())
    return Storage(uri="subtree://bam", local=None, filesystem=fs, root="bam")


@pytest.fixture(params=["memory", "subtree"])
def remote(request, tmp_path) -> Storage:
    return memory_storage() if request.param == "memory" else subtree_storage(tmp_path)


# ------------------------------------------------------------------------------------------- resolving

def test_local_path_and_file_uri_are_the_same_local_storage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    st = Storage.resolve("runs")
    assert st.is_local and st.local == tmp_path / "runs" and st.uri == str(tmp_path / "runs")
    as_uri = Storage.resolve(f"file://{tmp_path}/runs/")
    assert as_uri.is_local and as_uri.local == st.local and as_uri.uri == st.uri
    assert st.join("experiments", "x") == str(tmp_path / "runs" / "experiments" / "x")
    assert storage_uri(Path("runs")) == st.uri


@pytest.mark.parametrize("uri, joined", [
    ("s3://bucket/bam/", "s3://bucket/bam/experiments/x"),
    ("gs://bucket/a/b", "gs://bucket/a/b/experiments/x"),
    ("s3://bucket/bam?region=eu-west-1", "s3://bucket/bam/experiments/x?region=eu-west-1"),
])
def test_uris_are_kept_and_joined_without_network(uri, joined):
    st = Storage.resolve(uri)                      # lazy: no filesystem (no AWS region lookup) yet
    assert not st.is_local and st._fs is None
    assert st.join("experiments", "x") == joined
    assert "://" in st.uri and not st.uri.split("?")[0].endswith("/")


@pytest.mark.parametrize("spec, needle", [("ftp://host/x", "'ftp'"), ("   ", "empty")])
def test_bad_storage_is_a_one_line_error(spec, needle):
    with pytest.raises(StorageError) as e:
        Storage.resolve(spec)
    assert needle in str(e.value) and "\n" not in str(e.value)
    if "://" in spec:
        assert all(f"{s}://" in str(e.value) for s in ("s3", "gs"))


def test_every_listed_scheme_is_one_pyarrow_knows():
    for scheme in SCHEMES:
        try:
            pafs.FileSystem.from_uri(f"{scheme}://bucket/x?region=us-east-1")
        except Exception as e:  # noqa: BLE001 - a missing JVM/credentials is fine; an unknown scheme is not
            assert "Unrecognized filesystem type" not in str(e), scheme


def test_unreachable_s3_fails_when_checked_with_one_line():
    # a closed port on this machine stands in for S3 (the error path, no network); one attempt, not AWS's 10
    fs = pafs.S3FileSystem(region="us-east-1", endpoint_override="127.0.0.1:9", scheme="http", connect_timeout=1,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    st = Storage(uri="s3://bucket/bam", local=None, filesystem=fs, root="bucket/bam")
    with pytest.raises(StorageError) as e:
        st.check_writable()
    msg = str(e.value)
    assert msg.startswith("--storage s3://bucket/bam: not writable: ") and "\n" not in msg


def test_an_s3_uri_that_cannot_be_opened_is_a_storage_error(monkeypatch):
    class Refusing:                                # what pyarrow raises offline for an s3:// URI without ?region=
        @staticmethod
        def from_uri(uri):
            raise OSError("When resolving region for bucket 'b': AWS Error NETWORK_CONNECTION\nmore detail")
    monkeypatch.setattr(pafs, "FileSystem", Refusing)
    with pytest.raises(StorageError) as e:
        Storage.resolve("s3://b/bam").check_writable()
    assert str(e.value) == "--storage s3://b/bam: cannot open it: When resolving region for bucket 'b': AWS Error NETWORK_CONNECTION"


class _Hanging:
    """A filesystem whose every call blocks until released: a store behind a network that drops packets."""
    def __init__(self):
        import threading
        self.release = threading.Event()

    def _block(self, *a, **k):
        self.release.wait(30)
        raise OSError("released")
    get_file_info = create_dir = open_output_stream = _block


def _hang_on_open(monkeypatch) -> _Hanging:
    fs = _Hanging()

    class Opening:
        @staticmethod
        def from_uri(uri):
            return fs, uri.split("://", 1)[1]
    monkeypatch.setattr(pafs, "FileSystem", Opening)
    monkeypatch.setenv("BAM_STORAGE_TIMEOUT", "0.2")
    return fs


def test_a_store_that_does_not_answer_times_out_in_one_line(monkeypatch):
    import time
    fs = _hang_on_open(monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as e:
        Storage.resolve("gs://hanging-bucket/bam").exists("teachers")
    fs.release.set()
    assert time.monotonic() - t0 < 5
    assert str(e.value) == ("--storage gs://hanging-bucket/bam: not reachable within 0.2 s (opening it; check the "
                            "network and credentials, or set BAM_STORAGE_TIMEOUT to wait longer)")


def test_a_probe_write_that_never_returns_times_out(monkeypatch):
    monkeypatch.setenv("BAM_STORAGE_TIMEOUT", "0.2")
    fs = _Hanging()
    with pytest.raises(StorageError, match=r"^--storage s3://b/bam: not reachable within 0.2 s \(writing a probe"):
        Storage(uri="s3://b/bam", local=None, filesystem=fs, root="b/bam").check_writable()
    fs.release.set()


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf"])
def test_a_bad_storage_timeout_is_named(monkeypatch, value):
    from trainables.errors import UserError
    from trainables.storage import storage_timeout
    monkeypatch.setenv("BAM_STORAGE_TIMEOUT", value)
    with pytest.raises(UserError, match=f"^BAM_STORAGE_TIMEOUT={value}: "):
        storage_timeout()


def test_cli_on_a_store_that_does_not_answer_exit_2_one_line(monkeypatch, capsys, tmp_path):
    from search.cli import main
    fs = _hang_on_open(monkeypatch)
    monkeypatch.chdir(tmp_path)
    rc = main(["status", "x", "--storage", "gs://hanging-cli/bam"])
    fs.release.set()
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not reachable within 0.2 s" in err[0]
    assert err[0].startswith("bam-search: error: --storage gs://hanging-cli/bam: ")


def test_unwritable_local_storage_fails_when_checked(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        Storage.resolve(blocker / "runs").check_writable()


def test_cli_names_a_bad_storage_scheme_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "search.cli", "status", "x", "--storage", "ftp://h/x"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "ftp://h/x" in lines[0] and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------- operations

@pytest.mark.parametrize("kind", ["local", "memory", "subtree"])
def test_bytes_round_trip_list_exists(tmp_path, kind):
    st = {"local": lambda: Storage.resolve(tmp_path / "s"), "memory": memory_storage,
          "subtree": lambda: subtree_storage(tmp_path)}[kind]()
    assert st.listdir("a") == [] and not st.exists("a", "x.bin") and not st.is_dir("a")
    st.write_bytes("a", "x.bin", data=b"one")
    st.write_bytes("a", "x.bin", data=b"two")                     # replaced whole
    st.write_bytes("a", "b", "y.bin", data=b"\x00" * 10)
    assert st.read_bytes("a", "x.bin") == b"two" and st.is_file("a", "x.bin") and st.is_dir("a", "b")
    assert st.listdir("a") == ["b", "x.bin"]                       # no temporary files left behind
    with pytest.raises(FileNotFoundError):
        st.read_bytes("a", "missing")
    st.check_writable()
    assert st.listdir() == ["a"]                                   # the probe is gone


# ------------------------------------------------------------------------------------------- teacher store

def _save(store: TeacherStore, *, key="k", n=12, seed=0):
    rng = np.random.default_rng(seed)
    preds = rng.normal(size=(n, 3)).astype(np.float32)
    ids = np.arange(50, 50 + n, dtype=np.int64)
    store.save(key=key, predictions=preds, ids=ids, meta={"task": "mrpc", "fingerprint": FP, "n": n})
    return preds, ids


def test_teacher_store_round_trip_on_a_uri_root(remote):
    store = TeacherStore(remote)
    assert not store.has("k")
    preds, ids = _save(store)
    assert store.has("k") and store.dir("k") == remote.join("teachers", "k")
    assert remote.listdir("teachers", "k") == ["ids.npy", "meta.json", "predictions.npy"]
    out = store.load("k", task="mrpc", expect_ids=ids, fingerprint=FP)
    assert out.dtype == np.float32 and np.array_equal(out, preds)
    assert set(store.meta("k")["sha256"]) == {"predictions.npy", "ids.npy"}
    _save(store, seed=1)                                           # same key = same content: the first is kept
    assert np.array_equal(store.load("k", task="mrpc", expect_ids=ids, fingerprint=FP), preds)
    store.write_file("k", "model.pt", b"weights")
    store.write_file("k", "model.pt", b"other")                    # kept too
    assert store.read_file("k", "model.pt") == b"weights"


def test_a_teacher_folder_without_meta_is_not_there(remote):
    """meta.json is written last: a writer that died before it leaves nothing that can be read."""
    remote.write_bytes("teachers", "k", "predictions.npy", data=b"partial")
    store = TeacherStore(remote)
    assert not store.has("k")
    with pytest.raises(StoreError, match="no teacher predictions under this key") as e:
        store.meta("k")
    assert remote.join("teachers", "k", "meta.json") in str(e.value)


def test_corrupt_or_misaligned_predictions_on_a_uri_root(remote):
    store = TeacherStore(remote)
    preds, ids = _save(store)
    with pytest.raises(StoreError, match="task mrpc .* re-run"):
        store.load("k", task="mrpc", expect_ids=ids[:-1], fingerprint=FP)
    data = remote.read_bytes("teachers", "k", "predictions.npy")
    remote.write_bytes("teachers", "k", "predictions.npy", data=data[:-4])
    with pytest.raises(StoreError, match="checksum mismatch") as e:
        store.load("k", task="mrpc", expect_ids=ids, fingerprint=FP)
    assert remote.join("teachers", "k", "predictions.npy") in str(e.value)
    with pytest.raises(StoreError, match="missing"):
        store.read_file("k", "model.pt")


# ------------------------------------------------------------------------------------------- registry

def test_registry_on_a_uri_root_keeps_order_and_checksums(remote):
    reg = BaselineRegistry(remote)
    assert reg.records() == [] and reg.path is None and reg.location == remote.join("baselines")
    for i in range(3):
        reg.append({"task": "rte", "seed": i, "score": 50.0 + i})
    assert [r["seed"] for r in BaselineRegistry(remote).records(strict=True)] == [0, 1, 2]
    names = remote.listdir("baselines")
    assert len(names) == 3 and all(n.endswith(".json") for n in names)
    # a tampered record is skipped, or named when strict; a leftover temporary file is ignored
    line = json.loads(remote.read_bytes("baselines", names[1]))
    line["record"]["score"] = 99.0
    remote.write_bytes("baselines", names[1], data=json.dumps(line).encode())
    remote.write_bytes("baselines", ".00-x.json.1234.tmp", data=b"{")
    assert [r["seed"] for r in reg.records()] == [0, 2]
    with pytest.raises(StoreError, match="corrupt registry record") as e:
        reg.records(strict=True)
    assert names[1] in str(e.value)


def test_local_registry_layout_is_unchanged(tmp_path):
    reg = BaselineRegistry(tmp_path)
    reg.append({"task": "rte", "seed": 0})
    assert reg.path == tmp_path / "baselines.jsonl" and reg.location == str(tmp_path / "baselines.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baselines.jsonl"]


# ------------------------------------------------------------------------------------------- experiments

def _fake_experiment(st: Storage) -> None:
    base = ("experiments", "exp")
    st.write_bytes(*base, "bam_experiment.json", data=b"{}")
    rows = [{"trial_id": "a1", "glue_avg": 50.0}, {"trial_id": "a1", "glue_avg": 60.0}]
    st.write_bytes(*base, "trial_a", "params.json", data=json.dumps({"params": {"optim.lr": 1e-3}}).encode())
    st.write_bytes(*base, "trial_a", "result.json",
                   data=("\n".join(json.dumps(r) for r in rows) + '\n{"trial_id": "a1", "glue').encode())
    st.write_bytes(*base, "trial_b", "params.json", data=b'{"params": {}}')
    st.write_bytes(*base, "trial_b", "error.txt", data=b"boom")
    st.write_bytes(*base, "train", "x.json", data=b"{}")          # not a trial folder


def test_trial_results_read_the_same_from_a_uri_root(tmp_path):
    from search.experiment import experiment_dir
    from search.results import trial_results
    local, mem = Storage.resolve(tmp_path), memory_storage()
    for st in (local, mem):
        _fake_experiment(st)
    a, b = trial_results(str(tmp_path), "exp"), trial_results(mem, "exp")
    strip = lambda ts: [{k: v for k, v in t.items() if k != "dir"} for t in ts]   # noqa: E731
    assert strip(a) == strip(b)
    assert [(t["trial_id"], len(t["rows"]), t["error"]) for t in a] == [("a1", 2, False), ("trial_b", 0, True)]
    assert a[0]["dir"] == str(tmp_path / "experiments" / "exp" / "trial_a")
    assert b[0]["dir"] == mem.join("experiments", "exp", "trial_a")
    assert experiment_dir(str(tmp_path), "exp") == tmp_path / "experiments" / "exp"
    assert experiment_dir("s3://b/x?region=r", "exp") == "s3://b/x/experiments/exp?region=r"
    with pytest.raises(Exception, match="no experiment 'nope'"):
        trial_results(mem, "nope")


def test_wandb_dir_is_local_for_a_uri_storage(tmp_path, monkeypatch):
    from search.experiment import wandb_settings
    monkeypatch.chdir(tmp_path)
    assert wandb_settings(str(tmp_path / "s"))["dir"] == str(tmp_path / "s" / "wandb")
    assert wandb_settings("s3://b/bam")["dir"] == str(tmp_path / "bam-wandb")


# ------------------------------------------------------------------------------------------- a whole teacher

def test_teacher_then_student_through_a_uri_root(tmp_path, monkeypatch):
    """finish_teacher writes predictions, weights and the registry record through the filesystem; a student's
    setup finds and loads them from there (and the teacher weights for hidden-state distillation)."""
    import torch

    from trainables import teachers, trial
    from trainables.loop import run_training
    monkeypatch.setattr(trial, "get_device", lambda: torch.device("cpu"))
    st = memory_storage()
    base = {"tasks": ["syn_noisy"], "model": "tiny", "precision": "fp32", "evals": 1, "seed": 0,
            "teacher": {"use": False}, "optim": {"steps": 3, "batch_size": 8, "lr": 1e-3},
            "data": {"max_train_examples": 32, "max_dev_examples": 32, "max_length": 32}}
    cfg = {"job": "teacher", "storage": st, "artifacts_dir": str(tmp_path / "art"), "cache_dir": str(tmp_path / "c")}
    trun = trial.setup_run({**cfg, "recipe": base})
    run_training(trun, report=lambda m, r: None)
    record = teachers.finish_teacher(trun, storage=cfg["storage"])
    assert [r["key"] for r in BaselineRegistry(st).records(strict=True)] == [record["key"]]
    assert st.listdir("teachers", record["key"]) == ["dev_predictions.npz", "ids.npy", "meta.json", "model.pt", "predictions.npy"]
    assert not (tmp_path / "teachers").exists()

    student = {**base, "teacher": {"use": True}, "anneal": {"schedule": "linear"}}
    run = trial.setup_run({**cfg, "job": "student", "recipe": student})
    np.testing.assert_allclose(run.data["syn_noisy"].teacher, trun.predict("syn_noisy", trun.data["syn_noisy"].train),
                               atol=1e-6)
    recipe = trial.recipe_from_dict(student)
    encoders = teachers.load_teacher_encoders(recipe, {"syn_noisy": [record]}, storage=st, tokenizer=trun.tokenizer
                                            if hasattr(trun, "tokenizer") else trial.load_tokenizer("tiny"))
    sd = trun.model.state_dict()
    assert all(torch.equal(encoders["syn_noisy"].state_dict()[k], sd[k]) for k in sd)
