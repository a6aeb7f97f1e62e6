"""``TrialConfig``: the one typed object that crosses from the driver (``search/``) to a trial.

Built once on the driver side; travels through Ray Tune's param space and Ray Train's ``train_loop_config``
as the plain dict of ``to_dict()`` (the keys experiments already on disk hold: ``bam_experiment.json``'s
``loop``, each trial's ``params.json``), and is rebuilt with ``from_dict`` inside the trial. Unknown keys are
refused, so nothing private rides along. No torch import: the driver builds it before Ray starts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .recipe import Recipe, recipe_from_dict

JOBS = ("teacher", "student")


@dataclass(frozen=True)
class TrialConfig:
    recipe: Recipe
    job: str = "student"                 # teacher: one task, gold only, stores its predictions | student
    storage: str = ""                    # the storage root: an absolute local path or a URI
    cache_dir: str | None = None         # tokenised-data cache (None: each node's default)
    wandb: dict | None = None            # W&B settings for the driver-side callback (None: off)
    # set inside the trial by ``train_driver_fn``:
    experiment: str | None = None
    run_id: str | None = None            # the Tune trial id
    artifacts_dir: str | None = None     # soft labels and best-weights snapshots of this trial
    resume_from: str | None = None       # another run's checkpoint folder to start from (a PBT exploit)

    def __post_init__(self):
        if self.job not in JOBS:
            raise ValueError(f"TrialConfig.job: {self.job!r} is not one of {', '.join(JOBS)}")

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["recipe"] = self.recipe.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "trial config") -> TrialConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        recipe = data["recipe"]
        return cls(**{**data, "recipe": recipe if isinstance(recipe, Recipe) else recipe_from_dict(recipe, source=source)})

    @classmethod
    def of(cls, config: TrialConfig | dict) -> TrialConfig:
        """``config`` itself, or read from its plain dict (Ray Train's ``train_loop_config``, tests, benches)."""
        return config if isinstance(config, cls) else cls.from_dict(config)

    def replace(self, **changes) -> TrialConfig:
        return dataclasses.replace(self, **changes)
