"""A run's checkpoint on disk: saving and loading it (every file atomic, with sha256), verification (of the
checkpoint and of the files it refers to), restoring the latest intact checkpoint, and the fallback chain of
older ones beside it. The run's state itself (``Run.state``, ``Run.load_state``) lives in ``loop.py``.

A checkpoint folder: ``model.pt`` (model, optimiser, gradient scaler, torch RNG), ``state.json``,
``rng-rank<r>.pt`` per rank, ``checksums.json`` (rank 0's files) and ``checksums-rank<r>.json`` (other ranks).
Best-weights snapshots and KD-switch soft labels live in the run's artifacts folder, referred to by path and
sha256 from ``state.json``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from .artifacts import ensure_local, publish
from .errors import UserError
from .storage import atomic_write, sha256_file
from .teacher_store import StoreError, load_checked_npy


def load_tensors(path, *, map_location=None, name: str | None = None):
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only. A file whose pickle would
    build anything else (run code) is refused with an error naming it, before anything is built."""
    import pickle
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{name or path}: refused: not a plain tensor file (torch.load weights_only: "
                        f"{str(e).splitlines()[0][:160]})") from None


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: {what} is truncated or corrupt (not valid JSON)") from None


def verify_checkpoint(directory: Path, *, references: bool = False, store=None) -> None:
    """Raise UserError naming the file if a checkpoint is incomplete or corrupt (checksums).

    ``references``: also check the files the checkpoint refers to outside its folder (best-weights snapshots,
    KD-switch soft labels) against the checksums recorded in its ``state.json``, fetching them from the URI
    storage ``store`` first where this node lacks them (``artifacts.ensure_local``)."""
    sums_path = directory / "checksums.json"
    if not sums_path.is_file():
        raise UserError(f"{directory}: checkpoint has no checksums.json (incomplete)")
    for sums_file in [sums_path, *sorted(directory.glob("checksums-rank*.json"))]:
        sums = _read_json(sums_file, "checkpoint checksum file")
        for name, sha in sums.items():
            p = directory / name
            if not p.is_file() or sha256_file(p) != sha:
                raise UserError(f"{p}: checkpoint file is truncated or corrupt (checksum mismatch)")
    if not references:
        return
    st = _read_json(directory / "state.json", "checkpoint state")
    snap_sums = st.get("snapshot_sha256") or {}
    for step, path in (st.get("snapshot_files") or {}).items():
        p = ensure_local(path, store, sha256=snap_sums.get(step))
        if not p.is_file():
            raise UserError(f"{p}: best-weights snapshot of checkpoint {directory} is missing")
        if step in snap_sums and sha256_file(p) != snap_sums[step]:
            raise UserError(f"{p}: best-weights snapshot is truncated or corrupt (checksum mismatch)")
    for task, ref in (st.get("soft_labels") or {}).items():
        try:
            load_checked_npy(ensure_local(ref["path"], store, sha256=ref["sha256"]), ref["sha256"])
        except StoreError as e:
            raise UserError(f"{e} (soft labels of task {task}, checkpoint {directory})") from None


def restore_latest_good(run, candidates: list[Path], *, warn: Callable[[str], None] | None = None) -> Path:
    """Load the first intact checkpoint of ``candidates`` (newest first) into ``run``; returns its folder.

    A corrupt or incomplete newer checkpoint is skipped with a warning naming the file; if none is intact,
    the error of the newest one is raised (it names the file)."""
    errors = []
    for d in candidates:
        try:
            load_checkpoint(run, Path(d))
        except UserError as e:
            errors.append(e)
            continue
        if errors:
            (warn or _stderr)(f"bam-search: warning: {errors[0]}; resumed from the previous good checkpoint {d}")
        return Path(d)
    if not errors:
        raise UserError("no checkpoint to resume from")
    raise UserError(f"{errors[0]}; no earlier intact checkpoint to fall back to") from None


def _stderr(msg: str) -> None:
    import sys
    print(msg, file=sys.stderr, flush=True)


def checkpoint_siblings(latest: Path) -> list[Path]:
    """``latest`` and the older ``checkpoint-step*`` folders beside it (newest first): the fallback chain."""
    latest = Path(latest)
    if not latest.name.startswith("checkpoint-step"):     # a downloaded copy (URI storage): no siblings here
        return [latest]
    older = [p for p in latest.parent.glob("checkpoint-step*") if p.is_dir() and p.name < latest.name]
    return [latest, *sorted(older, key=lambda p: p.name, reverse=True)]


def atomic_torch_save(obj, path: Path, *, content_name: bool = False) -> tuple[Path, str]:
    """``torch.save`` through the one atomic writer; returns (final path, sha256)."""
    return atomic_write(path, lambda f: torch.save(obj, f), content_name=content_name)


def save_snapshots(run) -> None:
    """Best-weights snapshots not yet on disk, written by rank 0 (atomic, named by content); then every rank
    holds the same file references. A collective: every rank calls it."""
    if run.world.rank == 0:
        for s, sd in run.snapshots.items():
            if s not in run.snapshot_files:
                path, sha = atomic_torch_save(sd, run.artifacts / "snapshots" / f"step{s}.pt", content_name=True)
                publish(path, getattr(run, "store", None))
                run.snapshot_files[s], run.snapshot_sha[s] = str(path), sha
    run.snapshot_files, run.snapshot_sha = run.world.broadcast((run.snapshot_files, run.snapshot_sha))


def save_rng(run, directory: Path) -> str:
    """This rank's own torch RNG (dropout): resuming is exact on every worker, not only rank 0.

    Ranks other than 0 also write ``checksums-rank<r>.json`` (rank 0's sum is in ``checksums.json``)."""
    rank = run.world.rank
    name = f"rng-rank{rank}.pt"
    _, sha = atomic_torch_save(torch.get_rng_state(), Path(directory) / name)
    if rank != 0:
        atomic_write(Path(directory) / f"checksums-rank{rank}.json", json.dumps({name: sha}).encode())
    return sha


def save_checkpoint(run, directory: Path) -> None:
    """Every rank calls it: rank 0 writes the checkpoint, another rank its own RNG into the same folder (Ray
    Train merges the ranks' folders). ``checksums.json`` is written last, so a checkpoint cut short is either
    complete or detected as incomplete."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if run.world.rank != 0:
        save_snapshots(run)                                # joins rank 0's broadcast
        save_rng(run, directory)
        return
    sums = {"rng-rank0.pt": save_rng(run, directory)}
    _, sums["model.pt"] = atomic_torch_save({**run.tensor_state(), "torch_rng": torch.get_rng_state()},
                                            directory / "model.pt")
    save_snapshots(run)
    _, sums["state.json"] = atomic_write(directory / "state.json", json.dumps(run.state()).encode())
    atomic_write(directory / "checksums.json", json.dumps(sums).encode())


def load_checkpoint(run, directory: Path) -> None:
    """Load a checkpoint into ``run`` after checking it and every file it refers to; every file is read before
    anything is changed, so nothing is changed on error."""
    directory = Path(directory)
    verify_checkpoint(directory, references=True, store=getattr(run, "store", None))
    tensors = load_tensors(directory / "model.pt", map_location=run.device)
    own = directory / f"rng-rank{run.world.rank}.pt"
    rng = load_tensors(own) if own.is_file() else tensors["torch_rng"]
    st = json.loads((directory / "state.json").read_text())
    snapshots = {int(k): load_tensors(v, map_location="cpu") for k, v in st["snapshot_files"].items()}
    run.load_state(st, tensors=tensors, snapshots=snapshots)
    torch.set_rng_state(rng)
