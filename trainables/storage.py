"""Where ``--storage`` points: a local path (an NFS mount is one too) or a URI (``s3://``, ``gs://``, ...).

``Storage.resolve(spec)`` gives one object for both, with the few operations the teacher store, the baseline
registry, the experiment files and the reports need: read and write bytes (writes are atomic: a reader
sees the old file or the whole new one, never a torn one), exists, list. A local path (or ``file://``
URI) keeps the plain-file behaviour (``Path``, ``os.replace``, ``flock``); anything else goes through the
pyarrow filesystem that Ray Tune and Ray Train use for the same URI, so the string handed to Ray and the
files read here are the same place. The filesystem is opened lazily: an ``s3://`` URI without
``?region=`` asks AWS for the bucket's region, and that should happen where the storage is first used.
"""
from __future__ import annotations

import hashlib
import math
import os
import threading
import uuid
from pathlib import Path
from typing import IO, Callable

from .errors import UserError

# URI schemes pyarrow.fs.FileSystem.from_uri understands (the ones Ray Tune/Train accept as storage_path)
SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "file")
# object stores: a PUT is atomic (the object appears whole when the stream closes); elsewhere tmp + move
_ATOMIC_PUT = ("s3", "gcs")
# seconds a remote store may take to answer its first request: pyarrow's clients retry for minutes without a network
DEFAULT_TIMEOUT_S = 20.0


class StorageError(UserError):
    """A --storage location that cannot be used (unknown scheme, unreachable, no permission)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], object], *,
                 content_name: bool = False) -> tuple[Path, str]:
    """The one atomic writer of local files: a temporary file in the same folder, fsync, rename; a reader sees
    the old file or the whole new one. ``data``: bytes, text (UTF-8) or a function that writes to the open
    file (``np.save``, ``torch.save``). Returns (final path, sha256 of the content).

    ``content_name``: the final name carries the first 12 hex digits of the checksum (``step4-<sha>.pt``), so a
    rewrite never replaces a file that something older refers to."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        sha = sha256_file(tmp) if callable(data) else sha256_bytes(
            data.encode("utf-8") if isinstance(data, str) else data)
        if content_name:
            path = path.with_name(f"{path.stem}-{sha[:12]}{path.suffix}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path, sha


def is_uri(spec: str | os.PathLike) -> bool:
    return "://" in str(spec)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def storage_timeout() -> float:
    """Seconds a remote --storage may take to answer (``BAM_STORAGE_TIMEOUT``, default 20)."""
    raw = os.environ.get("BAM_STORAGE_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"BAM_STORAGE_TIMEOUT={raw}: give the seconds a remote --storage may take to answer (> 0)")
    return value


def within_timeout(uri: str, what: str, fn: Callable[[], object], *, timeout_s: float | None = None):
    """``fn()``, or one line when it has not returned within the timeout: an unreachable store (no network, a
    firewall) makes pyarrow retry for minutes in silence. ``fn`` runs in a daemon thread, left behind on a
    timeout (it cannot be interrupted; it holds no lock of ours and ends with the process)."""
    timeout = storage_timeout() if timeout_s is None else timeout_s
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = e
    worker = threading.Thread(target=run, name="bam-storage-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise StorageError(f"--storage {uri}: not reachable within {timeout:g} s ({what}; check the network and "
                           "credentials, or set BAM_STORAGE_TIMEOUT to wait longer)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class Storage:
    """One storage root. ``uri`` is what configs and Ray get: an absolute local path, or the URI as given."""

    def __init__(self, *, uri: str, local: Path | None, filesystem=None, root: str | None = None):
        self.uri, self.local = uri, local
        self._fs, self._root = filesystem, root

    # --------------------------------------------------------------------------------------- resolving

    @classmethod
    def resolve(cls, spec: str | os.PathLike | Storage) -> Storage:
        if isinstance(spec, Storage):
            return spec
        text = str(spec).strip()
        if not text:
            raise StorageError("--storage is empty: give a local path or a URI such as s3://BUCKET/PATH")
        if not is_uri(text):
            path = Path(text).expanduser().resolve()
            return cls(uri=str(path), local=path)
        scheme = text.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise StorageError(f"--storage {text}: unknown scheme {scheme!r}; use a local path or one of "
                               + ", ".join(f"{s}://" for s in SCHEMES))
        if scheme == "file":
            import pyarrow.fs
            try:
                _, path = pyarrow.fs.FileSystem.from_uri(text)
            except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError
                raise StorageError(f"--storage {text}: {_first_line(e)}") from None
            path = Path(path).resolve()
            return cls(uri=str(path), local=path)
        base, sep, query = text.partition("?")
        return cls(uri=base.rstrip("/") + (sep + query if sep else ""), local=None)

    @property
    def is_local(self) -> bool:
        """On this machine's filesystem (a plain path, ``file://``, or an NFS mount, which looks the same)."""
        return self.local is not None

    _reached: set = set()                    # URIs that answered once in this process: not probed again

    def _open(self) -> None:
        """Open the filesystem; the first time a URI is opened in a process, ask it about the root too, within
        ``storage_timeout()`` seconds: the first request to an unreachable store fails in one line, not after
        minutes of retries."""
        if self._fs is not None:
            return
        import pyarrow.fs
        first = self.uri not in Storage._reached

        def connect():
            try:
                fs, root = pyarrow.fs.FileSystem.from_uri(self.uri)
                if first:
                    fs.get_file_info(root.rstrip("/") or "/")
            except Exception as e:  # noqa: BLE001 - ArrowInvalid, OSError (network, credentials, region)
                raise StorageError(f"--storage {self.uri}: cannot open it: {_first_line(e)}") from None
            return fs, root
        fs, root = within_timeout(self.uri, "opening it", connect) if first else connect()
        Storage._reached.add(self.uri)
        self._fs, self._root = fs, root.rstrip("/")

    @property
    def filesystem(self):
        self._open()
        return self._fs

    # --------------------------------------------------------------------------------------- naming

    def join(self, *parts: str) -> str:
        """The location of ``parts`` under the root as a path or URI (for Ray's storage_path, for messages)."""
        if self.local is not None:
            return str(self.local.joinpath(*parts))
        base, sep, query = self.uri.partition("?")
        return "/".join([base.rstrip("/"), *parts]) + (sep + query if sep else "")

    def _path(self, *parts: str) -> str:
        self._open()
        return "/".join([self._root, *parts])

    def _error(self, parts: tuple[str, ...], e: Exception) -> StorageError:
        return StorageError(f"{self.join(*parts)}: {_first_line(e)}")

    # --------------------------------------------------------------------------------------- operations

    def exists(self, *parts: str) -> bool:
        if self.local is not None:
            return self.local.joinpath(*parts).exists()
        import pyarrow.fs
        try:
            return self.filesystem.get_file_info(self._path(*parts)).type != pyarrow.fs.FileType.NotFound
        except OSError as e:
            raise self._error(parts, e) from None

    def is_file(self, *parts: str) -> bool:
        if self.local is not None:
            return self.local.joinpath(*parts).is_file()
        import pyarrow.fs
        try:
            return self.filesystem.get_file_info(self._path(*parts)).type == pyarrow.fs.FileType.File
        except OSError as e:
            raise self._error(parts, e) from None

    def read_bytes(self, *parts: str) -> bytes:
        """The file's bytes; FileNotFoundError (naming the location) when it is not there."""
        if self.local is not None:
            return self.local.joinpath(*parts).read_bytes()
        try:
            with self.filesystem.open_input_stream(self._path(*parts)) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(self.join(*parts)) from None
        except OSError as e:
            if not self.exists(*parts):
                raise FileNotFoundError(self.join(*parts)) from None
            raise self._error(parts, e) from None

    def write_bytes(self, *parts: str, data: bytes) -> None:
        """Atomic: readers see no file, the previous one, or all of ``data``."""
        if self.local is not None:
            atomic_write(self.local.joinpath(*parts), data)
            return
        fs = self.filesystem
        final = self._path(*parts)
        try:
            if fs.type_name not in _ATOMIC_PUT:
                fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
                tmp = final.rsplit("/", 1)
                tmp = f"{tmp[0]}/.{tmp[1]}.{uuid.uuid4().hex}.tmp"
                with fs.open_output_stream(tmp) as f:
                    f.write(data)
                fs.move(tmp, final)
            else:
                with fs.open_output_stream(final) as f:
                    f.write(data)
        except OSError as e:
            raise self._error(parts, e) from None

    def listdir(self, *parts: str) -> list[str]:
        """Names directly under ``parts`` (files and folders), sorted; [] when it does not exist."""
        if self.local is not None:
            d = self.local.joinpath(*parts)
            return sorted(p.name for p in d.iterdir()) if d.is_dir() else []
        import pyarrow.fs
        try:
            infos = self.filesystem.get_file_info(pyarrow.fs.FileSelector(self._path(*parts), allow_not_found=True))
        except OSError as e:
            raise self._error(parts, e) from None
        return sorted(i.base_name for i in infos)

    def is_dir(self, *parts: str) -> bool:
        if self.local is not None:
            return self.local.joinpath(*parts).is_dir()
        import pyarrow.fs
        try:
            return self.filesystem.get_file_info(self._path(*parts)).type == pyarrow.fs.FileType.Directory
        except OSError as e:
            raise self._error(parts, e) from None

    def upload(self, local_dir: Path, *parts: str) -> None:
        """Copy the files of a local folder (not recursive) to ``parts``: for reports written locally first."""
        for p in sorted(local_dir.iterdir()):
            if p.is_file():
                self.write_bytes(*parts, p.name, data=p.read_bytes())

    def check_writable(self) -> None:
        """Create the root and write, read back and delete a probe file: a bad location fails here, early."""
        probe = f".bam-probe-{uuid.uuid4().hex}"
        if self.local is not None:
            try:
                self.local.mkdir(parents=True, exist_ok=True)
                atomic_write(self.local / probe, b"ok")
                (self.local / probe).unlink()
            except OSError as e:
                raise StorageError(f"--storage {self.uri}: not writable: {_first_line(e)}") from None
            return
        fs, path = self.filesystem, self._path(probe)          # an unreachable store fails in here already

        def write_read_delete() -> bool:
            try:
                fs.create_dir(self._root, recursive=True)
                with fs.open_output_stream(path) as f:
                    f.write(b"ok")
                with fs.open_input_stream(path) as f:
                    same = f.read() == b"ok"
                fs.delete_file(path)
            except OSError as e:
                raise StorageError(f"--storage {self.uri}: not writable: {_first_line(e)}") from None
            return same
        ok = within_timeout(self.uri, "writing a probe file", write_read_delete)
        if not ok:
            raise StorageError(f"--storage {self.uri}: a probe file read back different bytes")

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"


def storage_uri(spec: str | os.PathLike) -> str:
    """The canonical form of a --storage value: an absolute local path, or the URI."""
    return Storage.resolve(spec).uri
