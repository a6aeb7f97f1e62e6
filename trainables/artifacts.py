"""Where a trial's artifacts live: KD-switch soft labels and best-weights snapshots (checkpoints refer to them
by path and sha256, ``checkpoint.py``).

Local storage (a path, ``file://``, NFS): under the experiment, ``experiments/<name>/artifacts/<trial>/``.
URI storage (``s3://``, ``gs://``...): written on the node's disk under ``<tmp>/bam-artifacts/<name>/<trial>/``
and copied at once to the same place under the storage (``experiments/<name>/artifacts/<trial>/...``), so a
trial that Ray restarts on another node (node lost, PBT) fetches what its checkpoint refers to: the node's
copy is a cache of the storage's. The storage location follows from the node path alone, so checkpoints
written before this change keep their format.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from .storage import Storage, atomic_write

LOCAL = "bam-artifacts"             # the node-disk folder of URI storage, under the temporary folder


def artifacts_dir(storage_root: str, *, experiment: str, trial_id: str) -> str:
    """The trial's artifacts folder on this node (see the module docstring)."""
    storage = Storage.resolve(storage_root)
    if storage.is_local:
        return storage.join("experiments", experiment, "artifacts", trial_id)
    return str(Path(tempfile.gettempdir()) / LOCAL / experiment / trial_id)


def remote_store(storage_root: str | None) -> Storage | None:
    """The storage to copy artifacts to: a URI storage, else None (local artifacts are in the storage already)."""
    if not storage_root:
        return None
    storage = Storage.resolve(storage_root)
    return None if storage.is_local else storage


def stored_parts(path: str | Path) -> tuple[str, ...] | None:
    """``<tmp>/bam-artifacts/<name>/<trial>/<rest>`` -> ``("experiments", name, "artifacts", trial, *rest)``;
    None for a path outside a node's artifacts folder."""
    parts = Path(path).parts
    if LOCAL not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index(LOCAL)
    rest = parts[i + 1:]
    if len(rest) < 3:
        return None
    return ("experiments", rest[0], "artifacts", rest[1], *rest[2:])


def publish(path: str | Path, store: Storage | None) -> None:
    """Copy a file just written on this node to its place under ``store`` (no-op without a URI storage)."""
    parts = stored_parts(path) if store is not None else None
    if parts:
        store.write_bytes(*parts, data=Path(path).read_bytes())


def ensure_local(path: str | Path, store: Storage | None, *, sha256: str | None = None) -> Path:
    """``path``, fetched from ``store`` first when this node does not have it (a trial restarted elsewhere) or
    has it with another checksum. A file in neither place is left as it is: the caller's check names it."""
    from .storage import sha256_file
    p = Path(path)
    parts = stored_parts(p) if store is not None else None
    if parts and (not p.is_file() or (sha256 is not None and sha256_file(p) != sha256)):
        try:
            data = store.read_bytes(*parts)
        except FileNotFoundError:
            return p
        atomic_write(p, data)
    return p
