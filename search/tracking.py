"""W&B: one run per trial, written by a Ray Tune callback in the driver process.

The driver sees every result a trial reports (all per-task curves, lambda, sampling weights, switch events)
and is never killed mid-trial, so a trial that ASHA stops early still ends as a complete W&B run (a run
written from inside the Train worker lost everything when Tune killed the worker). Offline unless
WANDB_MODE says otherwise; the API key is read by wandb from the environment or netrc and never copied.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager

from ray.tune import Callback

from trainables.redact import scrub

SKIP = {"config", "trial_id", "experiment_id", "date", "timestamp", "pid", "hostname", "node_ip", "experiment_tag",
        "done", "checkpoint_path", "should_checkpoint"}


def selected_summary(result: dict, *, metric: str) -> dict:
    """The W&B summary keys of a trial's selected evaluation (the one with the highest ``metric``, which status,
    best and the report score the trial by): ``selected/TASK`` (each task's score at that one evaluation),
    ``selected/step``, ``selected/glue_avg``, ``selected/METRIC`` and ``selected/by``. (``TASK/best`` in the
    summary is each task's best over the run, from different checkpoints.)"""
    out = {f"selected/{k[:-len('/score')]}": v for k, v in result.items()
           if k.endswith("/score") and k.count("/") == 1 and isinstance(v, (int, float))}
    out.update({"selected/step": result.get("step"), "selected/glue_avg": result.get("glue_avg"),
                f"selected/{metric}": result.get(metric), "selected/by": metric})
    out.update(delta_summary(result))
    return out


def delta_summary(result: dict) -> dict:
    """``delta/TASK`` (the student's dev score minus its teachers', metric points) and ``delta/mean`` at the
    same evaluation as ``selected/*``: W&B's runs table compares students with their teachers as it is. Empty
    for a run without teachers (a teacher, plain multi-task, or a student whose teachers were not found)."""
    out = {f"delta/{k[:-len('/delta_vs_teachers')]}": v for k, v in result.items()
           if k.endswith("/delta_vs_teachers") and k.count("/") == 1 and isinstance(v, (int, float))}
    if out and isinstance(result.get("delta_vs_teachers"), (int, float)):
        out["delta/mean"] = result["delta_vs_teachers"]
    return out


JOB_TYPES = ("teacher", "baseline-multitask", "student")


def run_labels(*, job: str, recipe: dict, experiment: str, tags=()) -> dict:
    """W&B ``job_type``, ``group`` and ``tags`` of one trial's run, so W&B's UI groups and filters runs with
    no extra code: teachers are ``teacher``; a student without teachers and without a KD switch (plain
    multi-task) is ``baseline-multitask``; any other student is ``student``. ``group`` is the experiment."""
    teacher = recipe.get("teacher") or {}
    switch = recipe.get("switch") or {}
    criteria = {switch.get("criterion", "never")} | {(o or {}).get("criterion", "never")
                                                     for o in (switch.get("per_task") or {}).values()}
    if job == "teacher":
        job_type = "teacher"
    elif teacher.get("use", True) is False and criteria == {"never"}:
        job_type = "baseline-multitask"
    else:
        job_type = "student"
    labels = [job_type, *recipe.get("tasks", []), *tags]
    return {"job_type": job_type, "group": experiment, "tags": list(dict.fromkeys(str(t) for t in labels))}


# seconds wandb.init may take to reach W&B online (wandb's own default is 90; WANDB_INIT_TIMEOUT wins)
INIT_TIMEOUT_S = 30.0


def init_timeout() -> float:
    try:
        return float(os.environ.get("WANDB_INIT_TIMEOUT") or INIT_TIMEOUT_S)
    except ValueError:
        return INIT_TIMEOUT_S


def project(settings: dict) -> str:
    """--wandb-project, else $WANDB_PROJECT (as wandb itself reads it), else bam-search. (No entity given:
    wandb reads $WANDB_ENTITY, else the API key's default entity.)"""
    return settings.get("project") or os.environ.get("WANDB_PROJECT") or "bam-search"


@contextmanager
def packages_once(cache: list):
    """While ``wandb.init`` runs: wandb's list of the installed packages (each run's requirements.txt, read from
    every package's metadata) from ``cache``, filled on first use; the driver's packages do not change mid-sweep."""
    import wandb.util
    original = getattr(wandb.util, "working_set", None)
    if original is None:                           # another wandb: reads them itself
        yield
        return

    def working_set():
        if not cache:
            cache.extend(original())
        return iter(cache)
    wandb.util.working_set = working_set
    try:
        yield
    finally:
        wandb.util.working_set = original


class WandbTrials(Callback):
    def __init__(self, *, settings: dict, experiment: str):
        self.settings, self.experiment = settings, experiment
        self.runs: dict[str, object] = {}
        self.selected: dict[str, float] = {}          # trial id -> its selected evaluation's metric value
        self.offline = False                           # online W&B failed once: every later run is offline

    def __getstate__(self):                            # a resumed driver reads its own environment again
        return {k: v for k, v in self.__dict__.items() if k not in ("_packages", "_git")}

    def _mode(self) -> str:
        if getattr(self, "offline", False):            # (a callback unpickled by resume may predate the attribute)
            return "offline"
        return os.environ.get("WANDB_MODE") or self.settings.get("mode") or "offline"

    def _start(self, **kwargs):
        """``wandb.init`` with a timeout; online W&B that fails or does not answer (no network, no API key) falls
        back to offline for this and every later run, with one warning line: a sweep never waits on W&B."""
        import wandb
        mode = self._mode()
        settings = wandb.Settings(console="off", x_disable_stats=True, init_timeout=init_timeout(),
                                  **(getattr(self, "_git", None) or {}))
        try:
            return self._wandb_init(mode=mode, settings=settings, **kwargs)
        except Exception as e:  # noqa: BLE001 - CommError (timeout), UsageError/AuthenticationError (no key), ...
            if mode == "offline":
                raise
            self.offline = True
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            key = os.environ.get("WANDB_API_KEY")
            reason = reason.replace(key, "***") if key else reason        # never echo a key
            print(f"bam-search: warning: W&B {mode} did not start ({type(e).__name__}: {reason}; timeout "
                  f"{init_timeout():g} s): logging offline to {self.settings['dir']} instead (upload later with "
                  "`wandb sync`)", file=sys.stderr)
            return self._wandb_init(mode="offline", settings=settings, **kwargs)

    def _wandb_init(self, **kwargs):
        """``wandb.init``; what W&B records of the driver's environment with every run (its installed packages, the
        git commit and remote) is read by the first run only and given to the later ones (``packages_once``,
        ``disable_git`` with the first run's values): the same record, without ~0.2 s CPU and 4 git processes of
        the driver per trial."""
        import wandb
        with packages_once(self.__dict__.setdefault("_packages", [])):
            run = wandb.init(**kwargs)
        if getattr(self, "_git", None) is None:
            found = getattr(run, "settings", None)
            self._git = {"disable_git": True, **{k: v for k in ("git_commit", "git_remote_url")
                                                 if (v := getattr(found, k, None))}}
        return run

    def _init(self, trial):
        os.environ.setdefault("WANDB_SILENT", "true")
        from trainables.recipe import with_params
        cfg = trial.config
        loop = cfg.get("loop", {})
        recipe = with_params(loop.get("recipe", {}), cfg.get("params") or {})
        labels = run_labels(job=loop.get("job", "student"), recipe=recipe, experiment=self.experiment,
                            tags=self.settings.get("tags") or ())
        os.makedirs(self.settings["dir"], exist_ok=True)
        run = self._start(project=project(self.settings), entity=self.settings.get("entity") or None, **labels,
                          id=trial.trial_id, name=f"{self.experiment}-{trial.trial_id}", dir=self.settings["dir"],
                          resume="allow",
                          config=scrub({"recipe": recipe, "params": cfg.get("params") or {},
                                        "experiment": self.experiment, "resources": cfg.get("resources")}),
                          reinit="create_new")
        self.runs[trial.trial_id] = run
        return run

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id not in self.runs:
            self._init(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run = self.runs.get(trial.trial_id) or self._init(trial)
        metrics = {k: v for k, v in result.items() if k not in SKIP and isinstance(v, (int, float))}
        step = int(result.get("step", result.get("training_iteration", 0)))
        if result.get("switched_now"):
            metrics["kd_switch_events"] = len(str(result["switched_now"]).split(","))
            run.summary[f"switch_step/{result['switched_now']}"] = step
        run.log(metrics, step=step)
        metric = trial.config.get("metric") or "glue_avg"
        value = result.get(metric)
        if trial.trial_id not in self.selected:       # a resumed W&B run (online) remembers its selection
            previous = run.summary.get(f"selected/{metric}")
            self.selected[trial.trial_id] = previous if isinstance(previous, (int, float)) else float("-inf")
        if isinstance(value, (int, float)) and value > self.selected[trial.trial_id]:
            self.selected[trial.trial_id] = value
            run.summary.update(selected_summary(result, metric=metric))

    def _finish(self, trial, *, failed: bool):
        run = self.runs.pop(trial.trial_id, None)
        if run is not None:
            run.summary["state"] = "ERROR" if failed else "DONE"
            run.finish(exit_code=1 if failed else 0)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, failed=True)

    def on_experiment_end(self, trials, **info):
        for tid in list(self.runs):
            self.runs.pop(tid).finish()
