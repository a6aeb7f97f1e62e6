"""``bam-search sync NAME``: ``wandb sync`` of exactly one experiment's offline W&B runs.

Every experiment of a storage writes its offline runs into the same folder (``bam_experiment.json``'s
``loop.wandb.dir``, then ``wandb/offline-run-DATE-ID``); a run belongs to the experiment whose name is its
W&B ``group`` (``tracking.run_labels``), read from the run record at the head of its ``run-*.wandb`` file.
No ray, torch or network here: the command is built and printed, ``cli.cmd_sync`` runs it.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from trainables.errors import UserError
from trainables.storage import Storage

from .wandb_file import _payloads


def run_group(path: str | Path) -> str | None:
    """The W&B group of a ``run-*.wandb`` file (its first run record), None when the file holds none."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        return None
    for payload in _payloads(data):
        rec = pb.Record()
        try:
            rec.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - a torn record (the run was killed): not this file's group
            return None
        if rec.WhichOneof("record_type") == "run":
            return rec.run.run_group
    return None


def wandb_dir(storage: str, name: str) -> Path:
    """The folder an experiment's W&B runs were written to (one line, a UserError, when it logged none)."""
    st = Storage.resolve(storage)
    if not st.is_file("experiments", name, "bam_experiment.json"):
        raise UserError(f"no experiment {name!r} under {st.join('experiments')}")
    settings = json.loads(st.read_bytes("experiments", name, "bam_experiment.json")).get("loop", {}).get("wandb")
    if not settings:
        raise UserError(f"{name}: ran with --no-wandb, so it has no W&B runs to sync")
    return Path(settings["dir"])


def offline_runs(storage: str, name: str) -> list[Path]:
    """The offline run folders of experiment ``name``, oldest first (a resumed trial may have several)."""
    runs = []
    for folder in sorted((wandb_dir(storage, name) / "wandb").glob("offline-run-*")):
        files = sorted(folder.glob("run-*.wandb"))
        if files and run_group(files[0]) == name:
            runs.append(folder)
    return runs


def sync_command(storage: str, name: str) -> list[str]:
    """``wandb sync FOLDER...`` for exactly this experiment's offline runs; none: one line (exit 2)."""
    runs = offline_runs(storage, name)
    if not runs:
        raise UserError(f"{name}: no offline W&B runs under {wandb_dir(storage, name) / 'wandb'} (runs logged "
                        "online were uploaded as they ran)")
    exe = shutil.which("wandb")
    return [exe or sys.executable, *([] if exe else ["-m", "wandb"]), "sync", *map(str, runs)]
