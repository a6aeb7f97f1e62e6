"""Population-based training (``--scheduler pbt``) over the function trainable.

Each trial's driver function hands Tune a small checkpoint with every report: ``bam_checkpoint.json``, which
names the trial's Ray Train checkpoint folder (``trainables/tune_bridge.py``). When PBT exploits, ``BamPBT``
copies the donor's Train checkpoint for the receiving trial (hard links: no extra bytes; they survive the
donor deleting its own) into ``artifacts/<receiver>/inherited/`` and points the receiver's restart there. The
receiver then starts a new Train run (``train-<receiver>-from-<donor>...``) whose loop resumes from that
copy with the mutated hyperparameters: model, optimiser moments, data streams, KD-switch state and the soft
labels and best-weights snapshots it refers to (by path, under the donor's artifacts folder; the disk budget
never deletes a file that a remaining checkpoint refers to).

What PBT mutates comes from the search space: only the parameters that can change in the middle of a run
(``mutable`` in the recipe schema: the loop reads them at every step; not the model and data, which shape the
checkpoint, nor the step count, batch size, layer-wise decay or switch criteria), and only if they are
continuous or categorical. Everything else stays as sampled (and, on an exploit, is the donor's, so it always
matches the checkpoint). Continuous values perturbed past the space's bounds are clipped to them.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from ray.tune.schedulers import PopulationBasedTraining

from trainables.errors import UserError
from trainables.recipe import is_mutable, mutable_keys

CONTINUOUS = ("uniform", "log_uniform_values", "q_uniform", "q_log_uniform_values")


def pbt_mutations(space: dict) -> tuple[dict, dict]:
    """(hyperparam_mutations for the ``params`` part of a trial's config, bounds of the continuous ones)."""
    from ray import tune
    mutations, bounds = {}, {}
    for name, spec in space["parameters"].items():
        kind = space["kinds"][name]
        if not is_mutable(name):
            continue
        if kind == "categorical":
            mutations[name] = list(spec["values"])
        elif kind in CONTINUOUS:
            lo, hi = float(spec["min"]), float(spec["max"])
            mutations[name] = tune.loguniform(lo, hi) if "log" in kind else tune.uniform(lo, hi)
            bounds[name] = (lo, hi)
    if not mutations:
        raise UserError(f"{space['path']}: --scheduler pbt needs a parameter it can change during a run "
                        f"(continuous or categorical: {', '.join(mutable_keys())})")
    return mutations, bounds


class ClipToSpace:
    """PBT's custom explore step: a perturbed value (x0.8 / x1.2) stays inside the space's bounds."""

    def __init__(self, bounds: dict[str, tuple[float, float]]):
        self.bounds = bounds

    def __call__(self, config: dict) -> dict:
        params = config.get("params") or {}
        for name, (lo, hi) in self.bounds.items():
            if isinstance(params.get(name), (int, float)) and not isinstance(params[name], bool):
                params[name] = min(max(float(params[name]), lo), hi)
        return config


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a folder with hard links (a plain copy across file systems)."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        target = dst / item.name
        if item.is_dir():
            _link_tree(item, target)
            continue
        try:
            os.link(item, target)
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                raise
            shutil.copy2(item, target)


def inherit_checkpoint(*, experiment_dir: Path, receiver: str, donor_pointer_dir: str) -> Path | None:
    """Give ``receiver`` its own copy of the donor's Train checkpoint named by the donor's Tune checkpoint.

    The donor's Train run may have deleted that checkpoint meanwhile (it keeps its best and latest only):
    then its newest complete one is taken. Returns the copy (with its own pointer file), or None."""
    from trainables.tune_bridge import POINTER, read_pointer, write_pointer
    pointer = read_pointer(Path(donor_pointer_dir))
    if not pointer or not pointer.get("checkpoint"):
        return None
    wanted = Path(pointer["checkpoint"])
    candidates = [wanted]
    if wanted.parent.is_dir():
        candidates += sorted((c for c in wanted.parent.glob("checkpoint-*") if c != wanted and c.is_dir()),
                             key=lambda c: c.name, reverse=True)
    root = experiment_dir / "artifacts" / receiver / "inherited"
    n = len([d for d in root.iterdir() if not d.name.startswith(".")]) if root.is_dir() else 0
    for src in candidates:
        if not (src / "checksums.json").is_file():
            continue
        name = f"{n + 1:03d}-{pointer['trial_id']}-{src.name.replace('checkpoint-', '')}"
        tmp = root / f".{name}.{uuid.uuid4().hex}"
        try:
            _link_tree(src, tmp)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)      # deleted while being linked: try an older one
            continue
        try:
            listed = [n for f in tmp.glob("checksums*.json") for n in json.loads(f.read_text())]
            step = json.loads((tmp / "state.json").read_text()).get("step")
        except (OSError, ValueError):
            listed, step = None, None
        if listed is None or not all((tmp / n).is_file() for n in listed):
            shutil.rmtree(tmp, ignore_errors=True)      # half deleted before it was linked
            continue
        final = root / name
        write_pointer(tmp, {**pointer, "checkpoint": str(final), "step": step, "lineage": name,
                            "inherited_by": receiver, "inherited_from": str(src)})
        os.replace(tmp, final)
        assert (final / POINTER).is_file()
        return final
    return None


class BamPBT(PopulationBasedTraining):
    """PBT whose exploit hands the receiving trial a stable copy of the donor's Train checkpoint."""

    def __init__(self, *, experiment_dir: str | Path, **kwargs):
        super().__init__(**kwargs)
        self.experiment_dir = Path(experiment_dir)
        self.inherited: list[dict] = []

    def _exploit(self, tune_controller, trial, trial_to_clone):
        super()._exploit(tune_controller, trial, trial_to_clone)
        from ray.train._internal.session import _TrainingResult
        from ray.tune import Checkpoint
        manager = trial.run_metadata.checkpoint_manager
        latest = manager._latest_checkpoint_result
        if latest is None or latest.checkpoint is None:
            return
        copy = inherit_checkpoint(experiment_dir=self.experiment_dir, receiver=trial.trial_id,
                                  donor_pointer_dir=latest.checkpoint.path)
        if copy is None:                                  # the receiver resumes from the donor's folder itself
            return
        manager._latest_checkpoint_result = _TrainingResult(checkpoint=Checkpoint.from_directory(str(copy)),
                                                            metrics=latest.metrics)
        self.inherited.append({"receiver": trial.trial_id, "donor": trial_to_clone.trial_id, "copy": str(copy)})
