"""``bam-search report NAME --wandb``: a W&B Report of a sweep, built from the experiment's own records.

``report_spec`` is pure: a plain JSON document (title, description, project, entity, the runsets as W&B filters
on ``group`` / ``job_type`` / run id as ``tracking.run_labels`` sets them, the panels and their metric keys),
made without any network, so it is tested offline and kept under the storage. ``to_report`` turns it into
``wandb_workspaces`` objects (imported only there: the CLI works without the package) and ``publish`` saves it
when W&B is online and a key is found (by wandb itself; never read or printed here), else says in one line why
not and how to.
"""
from __future__ import annotations

import json
import os
import threading

from trainables.errors import UserError

SPEC_FILE = "wandb_report.json"
INSTALL = "pip install 'bam-search[wandb-report]'"


def swept_keys(meta: dict, trials: list[dict]) -> list[str]:
    """The W&B config keys of the space's parameters: ``params.KEY`` (``tracking`` logs each trial's sampled
    params under ``config.params``); the space's own order (``bam_experiment.json``), else the trials'."""
    found: dict[str, None] = {}
    for key in (meta.get("params") or {}):
        found[f"params.{key}"] = None
    if not found:
        for t in trials:
            for key, value in (t.get("params") or {}).items():
                for k in ([f"{key}.{sub}" for sub in value] if isinstance(value, dict) else [key]):
                    found[f"params.{k}"] = None
    return list(found)


def filter_expr(filters: dict) -> str:
    """A runset's filters as ``wandb_workspaces``' filter string: Group, JobType and ID (the run id: the trial
    id) each ``in`` its list."""
    names = {"group": "Group", "job_type": "JobType", "id": "ID"}
    return " and ".join(f"Metric('{names[k]}') in {json.dumps(list(v))}" for k, v in filters.items() if v)


def _runset(name: str, **filters) -> dict:
    filters = {k: sorted(v) for k, v in filters.items() if v}
    return {"name": name, "filters": filters, "expr": filter_expr(filters)}


def _tests_markdown(comparison: dict | None) -> list[str]:
    """One line per task: the test the local report ran for it and its Holm-adjusted p (``comparison.json``)."""
    if not comparison:
        return ["- tests: see the local report (`report.md`)"]
    names = {"welch_t": "Welch's t over seeds", "bootstrap": "paired bootstrap over dev examples"}
    out = []
    for row in comparison.get("tasks", []):
        test = names.get(row.get("test"), "no test (too few runs)")
        p = row.get("p_adj")
        out.append(f"- {row['task']}: {test}; delta {row['delta']:+.2f}"
                   + (f", Holm-adjusted p {p:.3g}{' (significant)' if row.get('significant') else ''}"
                      if p is not None else ""))
    return out


def _markdown(name: str, metric: str, best: str, comparison: dict | None) -> str:
    """The report's text block: which one checkpoint the scores come from, and the test behind each delta."""
    return "\n".join([
        f"**Scores are one checkpoint per run**: the evaluation with the highest `{metric}` (the run's summary "
        "`selected/TASK`, `selected/step`), the checkpoint Ray Train keeps as the trial's best; a teacher's is "
        "its best dev evaluation. `TASK/best` (each task's best over the run, several checkpoints) is never a "
        f"score. `delta/TASK` is the student minus its teachers at that same evaluation. Best trial: {best}.",
        "",
        f"**Test** (the local report `reports/{name}/`): per task, the paired bootstrap over dev examples when "
        "every run stored its predictions, else Welch's t over seeds; Holm-Bonferroni across tasks, alpha 0.05.",
        *_tests_markdown(comparison), *_picked_markdown(comparison)])


def _picked_markdown(comparison: dict | None) -> list[str]:
    """The local report's selection caveat: a student that is the sweep's best trial was picked on the dev
    examples it is scored on."""
    picked = (comparison or {}).get("picked") or {}
    return [s for g, p in picked.items() for s in (
        "", f"**Selection**: {g} is the best of {p['trials']} trials (by `{p['metric']}`), picked on the dev examples "
            "it is scored on, so its delta is optimistic; retrain the recipe on new seeds (the first line of "
            "`best_recipe.yaml`) and report with `--student` for one without that selection.")]


def destination(meta: dict, *, project: str | None = None, entity: str | None = None) -> tuple[str, str | None]:
    """(project, entity) of the experiment's runs: the flag, else what the experiment logged to
    (``bam_experiment.json``), else $WANDB_PROJECT / $WANDB_ENTITY, else bam-search and the key's default entity
    (None), as ``tracking.project`` chooses."""
    logged = (meta.get("loop") or {}).get("wandb") or {}
    return (project or logged.get("project") or os.environ.get("WANDB_PROJECT") or "bam-search",
            entity or logged.get("entity") or os.environ.get("WANDB_ENTITY") or None)


def report_spec(*, name: str, meta: dict, trials: list[dict], best: dict, tasks: list[str], teachers: list[str],
                students=(), multitask=(), comparison: dict | None = None, project: str = "bam-search",
                entity: str | None = None) -> dict:
    """The W&B Report of sweep ``name`` as plain data: (1) the GLUE average (``selected/glue_avg``, one
    checkpoint) of every trial vs its swept parameters, (2) each task's dev curve of the best trial (or its
    retrains, ``students``) vs its teachers (experiments ``teachers``, job_type ``teacher``), (3) the student's
    ``delta/TASK`` bars. ``best``: the best trial's summary (``results.summarize``)."""
    metric = meta.get("metric") or best.get("metric") or "glue_avg"
    scores = ["selected/glue_avg"] + ([f"selected/{metric}"] if metric != "glue_avg" else [])
    best_runs = (_runset("retrains of the best recipe", group=students) if students
                 else _runset("best trial", group=[name], id=[best["trial_id"]]))
    runsets = {"trials": _runset(f"trials of {name}", group=[name]), "best": best_runs,
               # tracking.run_labels: job_type teacher; a plain multi-task run is baseline-multitask
               "teachers": _runset("teachers", group=teachers, job_type=["teacher"])}
    if multitask:
        runsets["multitask"] = _runset("plain multi-task", group=multitask, job_type=["baseline-multitask"])
    curves_of = ["best", "teachers", *(["multitask"] if multitask else [])]
    panels = [{"kind": "parallel_coordinates", "title": f"GLUE average per trial vs its hyperparameters ({name})",
               "runsets": ["trials"], "config_keys": swept_keys(meta, trials), "summary_keys": scores}]
    panels += [{"kind": "line", "title": f"{t}: best trial vs its teachers (dev score)", "runsets": curves_of,
                "x": "Step", "y": [f"{t}/score"]} for t in tasks]
    panels.append({"kind": "bar", "title": "student minus its teachers per task (metric points)",
                   "runsets": ["best"], "metrics": [f"delta/{t}" for t in tasks] + ["delta/mean"]})
    return {"version": 1, "experiment": name, "title": f"bam-search sweep {name}: best recipe vs teachers",
            "description": f"{len(trials)} trials of {name}; tasks {', '.join(tasks)}; scored by {metric}",
            "project": project, "entity": entity, "metric": metric, "tasks": list(tasks),
            "best_trial": best["trial_id"], "selected_step": best.get("selected_step"),
            "markdown": _markdown(name, metric, best["trial_id"], comparison), "runsets": runsets, "panels": panels}


def spec_for(storage: str, name: str, *, records: list[dict], students=(), multitask=(), project: str | None = None,
             entity: str | None = None) -> dict:
    """``report_spec`` from the experiment's files: ``bam_experiment.json``, its trials, the report records
    (their teachers' experiments) and the local report's ``comparison.json`` (its tests), when written."""
    from trainables.storage import Storage

    from .results import experiment_metric, summarize, trial_results
    st = Storage.resolve(storage)

    def read(*parts: str) -> dict:
        try:
            return json.loads(st.read_bytes(*parts))
        except (OSError, ValueError):
            return {}
    meta = read("experiments", name, "bam_experiment.json")
    trials = summarize(trial_results(storage, name), metric=experiment_metric(storage, name))
    ranked = [t for t in trials if t["best"] is not None]
    if not ranked:
        raise UserError(f"experiment {name!r} has no finished evaluation yet")
    best = max(ranked, key=lambda t: t["best"])
    student = next((r for r in records if r["group"] == "student"), {})
    teachers = sorted({e for r in records if r["group"] == "teachers" for e in r.get("experiments") or ()})
    project, entity = destination(meta, project=project, entity=entity)
    return report_spec(name=name, meta=meta, trials=trials, best=best, tasks=list(student.get("scores") or ()),
                       teachers=teachers, students=students, multitask=multitask,
                       comparison=read("reports", name, "comparison.json") or None, project=project, entity=entity)


def to_report(spec: dict):
    """The spec as a ``wandb_workspaces`` Report: a heading, the markdown block and one panel grid per set of
    runsets (the panels' runsets shown together). Builds objects only; ``save()`` is ``publish``'s."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError:
        raise UserError(f"report --wandb needs the wandb-workspaces package: {INSTALL}") from None
    where = {"project": spec["project"], **({"entity": spec["entity"]} if spec.get("entity") else {})}

    def panel(p: dict):
        if p["kind"] == "parallel_coordinates":
            columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in p["config_keys"]]
            columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(k)) for k in p["summary_keys"]]
            return wr.ParallelCoordinatesPlot(title=p["title"], columns=columns)
        if p["kind"] == "line":
            return wr.LinePlot(title=p["title"], x=p["x"], y=list(p["y"]))
        return wr.BarPlot(title=p["title"], metrics=list(p["metrics"]))

    grids: dict[tuple, list] = {}
    for p in spec["panels"]:
        grids.setdefault(tuple(p["runsets"]), []).append(panel(p))
    blocks = [wr.H1(spec["title"]), wr.MarkdownBlock(text=spec["markdown"])]
    for names, panels in grids.items():
        runsets = [wr.Runset(name=spec["runsets"][n]["name"], filters=spec["runsets"][n]["expr"], **where)
                   for n in names]
        blocks.append(wr.PanelGrid(runsets=runsets, panels=panels))
    return wr.Report(title=spec["title"], description=spec["description"], blocks=blocks, width="fluid", **where)


def skip_reason() -> str | None:
    """Why the report is not saved to W&B (None: save it): WANDB_MODE not online (as for the runs), or no API key where
    wandb looks (WANDB_API_KEY, an identity token, netrc); the key itself is never read into anything kept."""
    mode = (os.environ.get("WANDB_MODE") or "").strip().lower()
    if mode != "online":                 # bam-search's runs are offline unless WANDB_MODE=online: the report too
        return f"WANDB_MODE={mode}" if mode else "WANDB_MODE is not online (bam-search's default is offline)"
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None
    try:
        from wandb.sdk.lib import urls
        from wandb.sdk.lib.wbauth import wbnetrc
        host = os.environ.get("WANDB_BASE_URL") or urls.DEFAULT_BASE_URL
        found = wbnetrc.read_netrc_auth(host=host) is not None
    except Exception:  # noqa: BLE001 - another wandb, or a netrc wandb refuses: no key found
        found = False
    return None if found else "no W&B API key found (WANDB_API_KEY or netrc)"


def write_spec(storage: str, name: str, spec: dict) -> str:
    """The spec at ``experiments/NAME/report/wandb_report.json`` under the storage (atomic); where it is."""
    from trainables.storage import Storage
    st = Storage.resolve(storage)
    st.write_bytes("experiments", name, "report", SPEC_FILE, data=(json.dumps(spec, indent=1) + "\n").encode())
    return st.join("experiments", name, "report", SPEC_FILE)


def _save(report, timeout: float):
    """``report.save()`` in a daemon thread bounded by ``timeout`` s (a W&B that does not answer never holds the
    command); the report's URL, or the exception, or TimeoutError."""
    os.environ.setdefault("WANDB_HTTP_TIMEOUT", str(max(1, int(timeout))))    # each request, read by wandb.Api
    out: dict = {}

    def run():
        try:
            out["url"] = report.save().url
        except BaseException as e:  # noqa: BLE001 - reported by the caller in one line
            out["error"] = e
    worker = threading.Thread(target=run, daemon=True, name="wandb-report-save")
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in out:
        raise out["error"]
    return out["url"]


def publish(storage: str, name: str, spec: dict, *, command: str, timeout: float | None = None) -> int:
    """Write the spec under the storage; save it as a W&B Report when online with a key, else one line saying
    why not and how to. A failed save is one line on stderr and exit code 1 (the spec stays written)."""
    import sys
    where = write_spec(storage, name, spec)
    reason = skip_reason()
    if reason is not None:
        print(f"wandb report: not saved ({reason}); its spec is in {where}; to save it: `wandb login`, then "
              f"WANDB_MODE=online {command}")
        return 0
    report = to_report(spec)
    if timeout is None:                  # wandb.init's bound (WANDB_INIT_TIMEOUT, default 30 s) for the save too
        from .tracking import init_timeout
        timeout = init_timeout()
    try:
        url = _save(report, timeout)
    except Exception as e:  # noqa: BLE001 - network, auth, W&B's own errors: one line, no traceback
        text = (str(e).strip().splitlines() or [type(e).__name__])[0]
        key = os.environ.get("WANDB_API_KEY")
        text = text.replace(key, "***") if key else text                  # never echo a key
        print(f"bam-search: error: W&B report not saved ({type(e).__name__}: {text}; timeout {timeout:g} s); "
              f"its spec is in {where}", file=sys.stderr)
        return 1
    print(f"wandb report: {url}")
    return 0
