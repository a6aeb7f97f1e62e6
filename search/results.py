"""Finished (or running) experiments, read from Tune's own files: trials, status, the best trial, export."""
from __future__ import annotations

import json
from pathlib import Path

from trainables.errors import UserError
from trainables.storage import Storage


def trial_results(storage: str, name: str) -> list[dict]:
    """Every trial of an experiment from Tune's own files: params, every reported row, state."""
    st = Storage.resolve(storage)
    if not st.is_dir("experiments", name):
        raise UserError(f"no experiment {name!r} under {st.join('experiments')}")
    trials = []
    for d in st.listdir("experiments", name):
        if not st.is_file("experiments", name, d, "params.json"):
            continue
        try:
            params = json.loads(st.read_bytes("experiments", name, d, "params.json"))
        except json.JSONDecodeError:
            continue
        rows = []
        files = set(st.listdir("experiments", name, d))
        if "result.json" in files:
            for line in st.read_bytes("experiments", name, d, "result.json").decode().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break                                 # a torn last line after a crash
        trials.append({"dir": st.join("experiments", name, d), "trial_id": rows[-1]["trial_id"] if rows else d,
                       "params": params, "rows": rows, "error": bool({"error.txt", "error.pkl"} & files)})
    return trials


def experiment_metric(storage: str, name: str) -> str:
    """The metric an experiment was run with (glue_avg for older ones)."""
    st = Storage.resolve(storage)
    try:
        return json.loads(st.read_bytes("experiments", name, "bam_experiment.json")).get("metric") or "glue_avg"
    except Exception:  # noqa: BLE001 - no or unreadable metadata: the default
        return "glue_avg"


def summarize(trials: list[dict], *, metric: str = "glue_avg") -> list[dict]:
    """Per trial: its sampled params, state, evaluations, and its best row by ``metric``."""
    out = []
    for t in trials:
        rows = t["rows"]
        best = max(rows, key=lambda r: r.get(metric, float("-inf"))) if rows else {}
        done = bool(rows) and rows[-1].get("progress", 0) >= 1.0
        out.append({"trial_id": t["trial_id"], "params": t["params"].get("params", {}), "rows": rows,
                    "state": "ERROR" if t["error"] else ("DONE" if done else ("STOPPED" if rows else "PENDING")),
                    "iterations": len(rows), "best": best.get(metric), "best_row": best, "dir": t["dir"]})
    return out


def status_lines(storage: str, name: str) -> list[str]:
    """``bam-search status``: one line per trial, then the best trial's score per task."""
    metric = experiment_metric(storage, name)
    rows = summarize(trial_results(storage, name), metric=metric)
    lines = [f"{'trial':<14}{'state':<9}{'evals':>6}{'best ' + metric:>15}  params"]
    for r in rows:
        best = f"{r['best']:.2f}" if r["best"] is not None else "-"
        lines.append(f"{r['trial_id']:<14}{r['state']:<9}{r['iterations']:>6}{best:>15}  "
                     f"{json.dumps(r['params'], default=str)}")
    if rows and any(r["best"] is not None for r in rows):
        top = max((r for r in rows if r["best"] is not None), key=lambda r: r["best"])
        tasks = sorted({k.split("/")[0] for k in top["best_row"] if k.endswith("/best")})
        lines.append("best trial per task: " + ", ".join(f"{t} {top['best_row'][t + '/best']:.2f}" for t in tasks))
    return lines


def best_recipe(storage: str, name: str) -> tuple[dict, dict]:
    """(the best trial's recipe: the base with its sampled params, its summary) by the experiment's metric."""
    from trainables.recipe import with_params
    trials = trial_results(storage, name)
    ranked = [s for s in summarize(trials, metric=experiment_metric(storage, name)) if s["best"] is not None]
    if not ranked:
        raise UserError(f"experiment {name!r} has no finished evaluation yet")
    top = max(ranked, key=lambda s: s["best"])
    trial = next(t for t in trials if t["trial_id"] == top["trial_id"])
    return with_params(trial["params"]["loop"]["recipe"], trial["params"].get("params") or {}), top


def export_recipe(recipe: dict, path: str | Path, *, command: str, source: str) -> None:
    """Write ``recipe`` as a runnable YAML file whose first line is ``command`` (atomically)."""
    from trainables.recipe import dump_recipe, recipe_from_dict
    from trainables.storage import atomic_write
    atomic_write(Path(path), dump_recipe(recipe_from_dict(recipe, source=source), command=command).encode())


def baseline_lines(storage: str, tasks) -> list[str]:
    """``bam-search teachers``' table: the latest teacher runs of ``tasks`` in the baseline registry."""
    from trainables.teacher_store import BaselineRegistry
    registry = BaselineRegistry(storage)
    recs = [r for r in registry.records() if r["task"] in tasks]
    lines = [f"{'task':<16}{'seed':>5}{'dev score':>11}  key"]
    lines += [f"{r['task']:<16}{r['seed']:>5}{r['score']:>11.2f}  {r['key']}" for r in recs[-len(tasks) * 20:]]
    return lines + [f"baseline registry: {registry.location}"]


def curves(trial_summary: dict, tasks) -> dict:
    """A trial's dev score per task over steps: ``{task: [[step, score], ...]}``."""
    rows = trial_summary["rows"]
    return {t: [[r["step"], r[f"{t}/score"]] for r in rows if f"{t}/score" in r] for t in tasks}


def switches(trial_summary: dict) -> dict:
    """The step at which each task of a trial switched to its own best snapshot (KD switch)."""
    out = {}
    for r in trial_summary["rows"]:
        for t in filter(None, (r.get("switched_now") or "").split(",")):
            out.setdefault(t, r["step"])
    return out


def best_scores(trial: dict, tasks) -> dict[str, float]:
    """A summarized trial's best dev score per task (``TASK/best`` of its best row). A task the trial never
    reported (``switch.mode: sequential`` that never reached it) is one UserError naming it."""
    row = trial["best_row"]
    missing = [t for t in tasks if f"{t}/best" not in row]
    if missing:
        raise UserError(f"trial {trial['trial_id']} has no score for {', '.join(missing)}: it never reached "
                        f"{'that task' if len(missing) == 1 else 'those tasks'} (switch.mode sequential joins a "
                        f"task only after the previous ones switched); give it a longer run or another order")
    return {t: row[f"{t}/best"] for t in tasks}
