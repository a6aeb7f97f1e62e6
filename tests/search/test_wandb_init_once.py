"""The driver reads its environment for W&B once per sweep, not once per trial (issue 19): every run still gets
the installed packages and the first run's git commit, but wandb lists the packages and runs git only once.
No network, no Ray: ``wandb.init`` is a fake that does what the real one does with these two settings."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

import wandb
import wandb.util

from search.tracking import WandbTrials


class Trial:
    config = {"metric": "glue_avg", "params": {}, "loop": {"job": "student", "recipe": {"tasks": ["a"]}}}

    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_packages_listed_and_git_read_by_the_first_run_only(monkeypatch, tmp_path):
    listed, inits = [], []

    def working_set():                                  # wandb reads every package's metadata here
        listed.append(1)
        yield from ("numpy==2.0", "ray==2.60.0")

    def fake_init(*, mode, settings, **kwargs):
        packages = list(wandb.util.working_set()) if settings.x_save_requirements else []
        git = None if settings.disable_git else "c0ffee"    # the real one runs git unless disable_git
        inits.append({"packages": packages, "commit": settings.git_commit or git, "git_ran": git is not None})
        return SimpleNamespace(settings=SimpleNamespace(git_commit=git or settings.git_commit, git_remote_url=None),
                               summary={}, log=lambda *a, **k: None)

    monkeypatch.setattr(wandb.util, "working_set", working_set)
    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cb = WandbTrials(settings={"dir": str(tmp_path / "w")}, experiment="sw")
    for i in range(3):
        cb.on_trial_start(0, [], Trial(f"t{i}"))
    assert [i["packages"] for i in inits] == [["numpy==2.0", "ray==2.60.0"]] * 3   # every run keeps its list
    assert len(listed) == 1                             # ... read once
    assert [i["commit"] for i in inits] == ["c0ffee"] * 3 and [i["git_ran"] for i in inits] == [True, False, False]
    assert wandb.util.working_set is working_set        # wandb's own function is back after each init
    cb.runs.clear()
    again = pickle.loads(pickle.dumps(cb))              # a resumed driver reads its environment afresh
    assert not hasattr(again, "_git") and not hasattr(again, "_packages")
