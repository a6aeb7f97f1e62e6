"""Content-addressed teacher predictions and the baseline registry, under one storage root.

    <storage>/teachers/<key>/  predictions.npy  ids.npy  meta.json (sha256 of each file)
    <storage>/baselines.jsonl  one line per teacher run, each line carrying its own sha256

key = hash(task, data fingerprint, model, teacher recipe, seed): every trial of every sweep finds the
predictions, and a changed data file changes the key, so stale predictions are never read by mistake.
All writes are atomic (temporary file or folder + rename).

The root is a local path or a URI (``s3://``, ``gs://``, ...; see ``storage.py``). A local root keeps the
plain-file layout above. On a URI root a folder rename does not exist and an object cannot be appended to,
so: a teacher's ``meta.json`` is written last (it is what ``has`` and ``load`` look for, so a half-written
folder is never read), and each registry record is its own object, ``baselines/<time>-<id>.json``, holding
the same checksummed line (listing them in name order gives the append order).
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from .errors import UserError
from .storage import Storage, atomic_write, sha256_bytes, sha256_file


class StoreError(UserError):
    """A missing, corrupt or mismatched stored file."""


def teacher_key(*, task: str, fingerprint: str, model: str, teacher_config: dict, seed: int) -> str:
    blob = json.dumps({"task": task, "data": fingerprint, "model": model, "config": teacher_config,
                       "seed": seed}, sort_keys=True)
    return f"{task}-s{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def atomic_save_npy(path: Path, array: np.ndarray) -> str:
    """Write an array atomically; return its sha256."""
    return atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))[1]


def load_checked_npy(path: Path, sha256: str) -> np.ndarray:
    if not path.is_file():
        raise StoreError(f"{path}: missing")
    if sha256_file(path) != sha256:
        raise StoreError(f"{path}: checksum mismatch (truncated or corrupt file)")
    return np.load(path, allow_pickle=False)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _checked_npy_bytes(data: bytes, sha256: str, *, where: str) -> np.ndarray:
    if sha256_bytes(data) != sha256:
        raise StoreError(f"{where}: checksum mismatch (truncated or corrupt file)")
    return np.load(io.BytesIO(data), allow_pickle=False)


class TeacherStore:
    def __init__(self, root: str | Path | Storage):
        self.storage = Storage.resolve(root)
        self.root = self.storage.local if self.storage.is_local else self.storage.uri

    def dir(self, key: str) -> Path | str:
        """The key's folder: a Path on a local root, a URI otherwise."""
        if self.storage.is_local:
            return self.root / "teachers" / key
        return self.storage.join("teachers", key)

    def has(self, key: str) -> bool:
        if not self.storage.is_local:
            return self.storage.is_file("teachers", key, "meta.json")
        return (self.dir(key) / "meta.json").is_file()

    def save(self, *, key: str, predictions: np.ndarray, ids: np.ndarray, meta: dict) -> Path | str:
        """Write a teacher's train-set predictions as one atomic folder rename (on a URI: meta.json last)."""
        if not self.storage.is_local:
            if not self.has(key):                 # same key = same content: keep the first
                sums = {}
                for name, arr in (("predictions.npy", np.asarray(predictions, np.float32)),
                                  ("ids.npy", np.asarray(ids, np.int64))):
                    data = _npy_bytes(arr)
                    self.storage.write_bytes("teachers", key, name, data=data)
                    sums[name] = sha256_bytes(data)
                self.storage.write_bytes("teachers", key, "meta.json",
                                         data=json.dumps({**meta, "key": key, "sha256": sums}, indent=1).encode())
            return self.dir(key)
        final = self.dir(key)
        tmp = final.with_name(f".{key}.{uuid.uuid4().hex}")
        tmp.mkdir(parents=True)
        sums = {"predictions.npy": atomic_save_npy(tmp / "predictions.npy", np.asarray(predictions, np.float32)),
                "ids.npy": atomic_save_npy(tmp / "ids.npy", np.asarray(ids, np.int64))}
        atomic_write(tmp / "meta.json", json.dumps({**meta, "key": key, "sha256": sums}, indent=1).encode())
        if final.exists():                       # same key = same content: keep the first
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            try:
                os.rename(tmp, final)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def has_file(self, key: str, name: str) -> bool:
        return self.storage.is_file("teachers", key, name)

    def write_file(self, key: str, name: str, data: bytes) -> None:
        """Add a file (e.g. the teacher's weights, model.pt) to a saved key, atomically, unless it is there."""
        if not self.has_file(key, name):
            self.storage.write_bytes("teachers", key, name, data=data)

    def read_file(self, key: str, name: str) -> bytes:
        try:
            return self.storage.read_bytes("teachers", key, name)
        except FileNotFoundError:
            raise StoreError(f"{self.storage.join('teachers', key, name)}: missing") from None

    def meta(self, key: str) -> dict:
        if self.storage.is_local:
            path = self.dir(key) / "meta.json"
            if not path.is_file():
                raise StoreError(f"{path}: no teacher predictions under this key")
            text = path.read_text()
        else:
            path = self.storage.join("teachers", key, "meta.json")
            try:
                text = self.storage.read_bytes("teachers", key, "meta.json").decode()
            except FileNotFoundError:
                raise StoreError(f"{path}: no teacher predictions under this key") from None
        try:
            meta = json.loads(text)
        except json.JSONDecodeError:
            raise StoreError(f"{path}: corrupt teacher store: corrupt meta.json (not JSON); delete its folder and "
                             "re-run bam-search teachers") from None
        sums = meta.get("sha256") if isinstance(meta, dict) else None
        sums = sums if isinstance(sums, dict) else {}
        lost = [n for n in ("predictions.npy", "ids.npy") if not isinstance(sums.get(n), str)]
        if lost:                                 # every file of a key is checked against meta.json's sha256
            raise StoreError(f"{path}: corrupt teacher store: meta.json has no sha256 of {' and '.join(lost)}; "
                             "delete its folder and re-run bam-search teachers")
        return meta

    def load(self, key: str, *, task: str, expect_ids: np.ndarray, fingerprint: str) -> np.ndarray:
        """Predictions aligned with the current data, or a clear error naming the task."""
        meta = self.meta(key)
        d = self.dir(key)
        if self.storage.is_local:
            preds = load_checked_npy(d / "predictions.npy", meta["sha256"]["predictions.npy"])
            ids = load_checked_npy(d / "ids.npy", meta["sha256"]["ids.npy"])
        else:
            preds, ids = (_checked_npy_bytes(self.read_file(key, name), meta["sha256"][name],
                                             where=self.storage.join("teachers", key, name))
                          for name in ("predictions.npy", "ids.npy"))
        check_alignment(task=task, stored_ids=ids, stored_fingerprint=meta.get("fingerprint"),
                        expect_ids=expect_ids, fingerprint=fingerprint, where=str(d))
        return preds


def check_alignment(*, task: str, stored_ids: np.ndarray, stored_fingerprint: str | None,
                    expect_ids: np.ndarray, fingerprint: str, where: str) -> None:
    if len(stored_ids) != len(expect_ids):
        raise StoreError(f"teacher predictions for task {task} ({where}) have {len(stored_ids)} rows, "
                         f"the training data has {len(expect_ids)}: re-run bam-search teachers")
    if not np.array_equal(stored_ids, expect_ids):
        raise StoreError(f"teacher predictions for task {task} ({where}) are for other example ids: "
                         "re-run bam-search teachers")
    if stored_fingerprint is not None and stored_fingerprint != fingerprint:
        raise StoreError(f"teacher predictions for task {task} ({where}) were made on other data "
                         "(fingerprint differs): re-run bam-search teachers")


class AmbiguousTeachers(StoreError):
    """Several stored teacher configs match one (task, seed, data, model): the student must name one."""


def pick_teacher(records: list[dict], *, task: str, seed: int, fingerprint: str, model: str,
                 experiments: tuple = ()) -> dict | None:
    """THE registry lookup of the teacher a student distils from for ``(task, seed)`` on this data and model,
    taken only from the ``bam-search teachers`` experiments named in ``experiments`` (``teacher.experiment``)
    when given. Records of one key are one teacher (the same config: the same stored predictions); its newest
    record is returned. None: no teacher. Several keys (e.g. two teacher learning rates): ``AmbiguousTeachers``,
    one line naming each candidate's experiment and differing settings, never a silent pick."""
    newest: dict[str, dict] = {}
    for r in records:                                # registry order is append order
        if (r["task"] == task and r["seed"] == seed and r["fingerprint"] == fingerprint and r["model"] == model
                and (not experiments or r.get("experiment") in experiments)):
            newest.pop(r["key"], None)
            newest[r["key"]] = r
    if len(newest) > 1:
        raise AmbiguousTeachers(_ambiguity(list(newest.values()), task=task, seed=seed, experiments=experiments))
    return next(iter(newest.values()), None)


def flat_settings(config: dict, prefix: str = "") -> dict:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``."""
    out = {}
    for k, v in config.items():
        out.update(flat_settings(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _ambiguity(cands: list[dict], *, task: str, seed: int, experiments: tuple) -> str:
    """One line: each candidate's experiment and the settings in which the candidates differ; how to pick."""
    flat = {r["key"]: flat_settings(r["config"]) for r in cands if isinstance(r.get("config"), dict)}
    names = sorted({k for f in flat.values() for k in f})
    differ = [k for k in names if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]

    def shown(r: dict) -> str:
        f = flat.get(r["key"])
        what = ", ".join(f"{k}={f.get(k)}" for k in differ) if f is not None and differ else f"key {r['key']}"
        return f"{r.get('experiment') or '(no experiment recorded)'} ({what})"
    exps = [r.get("experiment") for r in cands]
    if all(exps) and len(set(exps)) == len(exps):
        how = "name one with " + " or ".join(f"--set teacher.experiment={e}" for e in exps)
    else:
        how = ("they are not told apart by experiment name: re-train the one you want with `bam-search teachers "
               "--name NAME` and pick it with --set teacher.experiment=NAME")
    within = f" within teacher.experiment {','.join(experiments)}" if experiments else ""
    return (f"teacher.experiment: {len(cands)} stored teachers match task {task} seed {seed} (this model and "
            f"data){within}: {'; '.join(shown(r) for r in cands)}; {how}")


class BaselineRegistry:
    """Append-only JSONL of teacher runs; each line holds a sha256 of its own content.

    On a URI root each record is its own object under ``baselines/`` (no append, no lock on object stores).
    """

    def __init__(self, root: str | Path | Storage):
        self.storage = Storage.resolve(root)
        self.path = self.storage.local / "baselines.jsonl" if self.storage.is_local else None
        self.location = str(self.path) if self.path is not None else self.storage.join("baselines")

    @staticmethod
    def _line(record: dict) -> str:
        body = json.dumps(record, sort_keys=True)
        return json.dumps({"sha256": hashlib.sha256(body.encode()).hexdigest(), "record": record},
                          sort_keys=True) + "\n"

    @staticmethod
    def _parse(line: str) -> dict | None:
        try:
            obj = json.loads(line)
            body = json.dumps(obj["record"], sort_keys=True)
            ok = hashlib.sha256(body.encode()).hexdigest() == obj["sha256"]
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        return obj["record"] if ok else None

    def append(self, record: dict) -> None:
        line = self._line(record)
        if self.path is None:
            name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.json"
            self.storage.write_bytes("baselines", name, data=line.encode())
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(f.tell() - 1)
                if f.read(1) != "\n":                  # a crash tore the last line: start a new one
                    line = "\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
            fcntl.flock(f, fcntl.LOCK_UN)

    def records(self, *, strict: bool = False) -> list[dict]:
        """Every intact record; a corrupt line is skipped (or, strict, an error naming the line)."""
        if self.path is None:
            out = []
            for name in self.storage.listdir("baselines"):
                if name.startswith(".") or not name.endswith(".json"):
                    continue                              # a temporary file of a write in progress
                try:
                    rec = self._parse(self.storage.read_bytes("baselines", name).decode())
                except (FileNotFoundError, UnicodeDecodeError):
                    rec = None
                if rec is None:
                    if strict:
                        raise StoreError(f"{self.storage.join('baselines', name)}: corrupt registry record")
                    continue
                out.append(rec)
            return out
        if not self.path.is_file():
            return []
        out = []
        for lineno, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            rec = self._parse(line)
            if rec is None:
                if strict:
                    raise StoreError(f"{self.path}:{lineno}: corrupt registry line")
                continue
            out.append(rec)
        return out
