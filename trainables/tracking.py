"""W&B from rank 0 of each trial: one run per trial, offline unless the user is set up for online.

The API key is read by wandb itself from the environment or netrc; nothing here copies it anywhere.
"""
from __future__ import annotations

import os
import re

SECRET_KEYS = re.compile(r"(api[_-]?key|token|secret|password)", re.I)


def scrub(config: dict) -> dict:
    """Drop anything that looks like a secret from a config before it is logged."""
    out = {}
    for k, v in config.items():
        if SECRET_KEYS.search(str(k)):
            continue
        out[k] = scrub(v) if isinstance(v, dict) else v
    return out


class Tracker:
    def __init__(self, *, settings: dict | None, run_id: str, job_type: str, config: dict, tags: list[str]):
        self.run = None
        if not settings or not settings.get("enabled", True):
            return
        import wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        mode = os.environ.get("WANDB_MODE") or settings.get("mode") or "offline"
        os.makedirs(settings["dir"], exist_ok=True)
        self.run = wandb.init(project=settings.get("project", "bam-search"), group=settings.get("group"),
                              job_type=job_type, tags=tags, config=scrub(config), dir=settings["dir"],
                              id=run_id, name=run_id, resume="allow", mode=mode, reinit="finish_previous",
                              settings=wandb.Settings(console="off", x_disable_stats=True))

    def log(self, metrics: dict, *, step: int) -> None:
        if self.run is None:
            return
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
        if metrics.get("switched_now"):
            self.run.log({"kd_switch_event": metrics["switched_now"]}, step=step)

    def finish(self, summary: dict | None = None) -> None:
        if self.run is None:
            return
        for k, v in (summary or {}).items():
            self.run.summary[k] = v
        self.run.finish()
