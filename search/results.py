"""Finished (or running) experiments, read from Tune's own files: trials, status, the best trial, export."""
from __future__ import annotations

import json
import re
from pathlib import Path

from trainables.errors import UserError
from trainables.storage import Storage


def trial_results(storage: str, name: str) -> list[dict]:
    """Every trial of an experiment from Tune's own files: params, every reported row, state."""
    st = Storage.resolve(storage)
    if not st.is_dir("experiments", name):
        raise UserError(f"no experiment {name!r} under {st.join('experiments')}")
    trials, states = [], _trial_states(st, name)
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
                       "params": params, "rows": rows, "error": _ended_errored(states, d, files),
                       "tune_status": (states or {}).get(d)})
    return trials


def _ended_errored(states: dict[str, str] | None, d: str, files: set[str]) -> bool:
    """Did trial folder ``d`` end errored? Tune's own state says (a trial retried after an error that then
    finished keeps its error.txt but is TERMINATED); without it (or without ``d`` in it), an error file."""
    if states is not None and d in states:
        return states[d] == "ERROR"
    return bool({"error.txt", "error.pkl"} & files)


_TRIAL_DIR = re.compile(r"^train_driver_fn_([0-9a-f]+_\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def errored_trials(storage: str, name: str) -> list[tuple[str, str]]:
    """(trial id, the last line of its ``error.txt``: the exception and its reason) of every trial of an
    experiment that ended errored, for a command's exit code; the full traceback stays in the file. Tune's own
    state says which ended so (a trial retried after an error that then finished keeps its error.txt); without
    it, a trial with an error file. [] when there is no experiment."""
    st = Storage.resolve(storage)
    if not st.is_dir("experiments", name):
        return []
    states = _trial_states(st, name)
    out = []
    for d in sorted(st.listdir("experiments", name)):
        if not st.is_file("experiments", name, d, "params.json"):
            continue
        files = set(st.listdir("experiments", name, d))
        if not _ended_errored(states, d, files):
            continue
        text = (st.read_bytes("experiments", name, d, "error.txt").decode(errors="replace")
                if "error.txt" in files else "")
        lines = [_ANSI.sub("", line).strip() for line in text.splitlines() if line.strip()]
        m = _TRIAL_DIR.match(d)
        out.append((m.group(1) if m else d, lines[-1] if lines else "no error.txt (see error.pkl)"))
    return out


def _trial_states(st: Storage, name: str) -> dict[str, str] | None:
    """Each trial folder's status (TERMINATED, ERROR, ...) in Tune's newest ``experiment_state-*.json``; None
    without a readable one."""
    found = sorted(f for f in st.listdir("experiments", name)
                   if f.startswith("experiment_state-") and f.endswith(".json"))
    if not found:
        return None
    try:
        trials = [json.loads(t[0]) for t in json.loads(st.read_bytes("experiments", name, found[-1]))["trial_data"]]
        return {t["relative_logdir"]: t["status"] for t in trials}
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def experiment_metric(storage: str, name: str) -> str:
    """The metric an experiment was run with (glue_avg for older ones)."""
    st = Storage.resolve(storage)
    try:
        return json.loads(st.read_bytes("experiments", name, "bam_experiment.json")).get("metric") or "glue_avg"
    except Exception:  # noqa: BLE001 - no or unreadable metadata: the default
        return "glue_avg"


def summarize(trials: list[dict], *, metric: str = "glue_avg") -> list[dict]:
    """Per trial: its sampled params, state, evaluations, and its selected evaluation ``best_row``: the row with
    the highest ``metric`` (the first of equal ones), the same one Ray Train keeps as the trial's best
    checkpoint. That one evaluation (one checkpoint) is the trial's score everywhere: ``status``, ``best``,
    the report (``best_scores``); ``best`` is its ``metric`` value and ``selected_step`` its step. Only an
    evaluation that scored every task the trial reports is eligible when there is one: a sequential run
    (``switch.mode: sequential``) averages only the tasks joined so far, and a model that never trained on a
    task has no score for it (Ray Train may keep another checkpoint as best by its raw metric then). A trial
    whose selected evaluation lacks a task of its recipe (a sequential run that has not reached it, or never
    did) names them in ``unreached``; ranked by an average (``glue_avg``, not a ``TASK/...`` metric), it has
    ``best`` None: its average covers fewer tasks than the others', so it is not ranked (status, best, the
    Pareto front) until it has reached them all."""
    out = []
    for t in trials:
        rows = t["rows"]
        best = max(_complete(rows), key=lambda r: r.get(metric, float("-inf"))) if rows else {}
        done = bool(rows) and (rows[-1].get("progress", 0) >= 1.0 or bool(rows[-1].get("stopped_early")))
        tasks = (((t["params"] or {}).get("loop") or {}).get("recipe") or {}).get("tasks") or []
        missing = [x for x in tasks if f"{x}/score" not in best] if best else []
        out.append({"trial_id": t["trial_id"], "params": t["params"].get("params", {}), "rows": rows,
                    "state": "ERROR" if t["error"] else ("DONE" if done else ("STOPPED" if rows else "PENDING")),
                    "iterations": len(rows), "best": None if missing and "/" not in metric else best.get(metric),
                    "best_row": best,
                    "unreached": missing,
                    "selected_step": best.get("step"), "metric": metric, "dir": t["dir"],
                    "tune_status": t.get("tune_status"), "resources": (t["params"] or {}).get("resources")})
    return out


def _complete(rows: list[dict]) -> list[dict]:
    """The rows that hold a score for every task any row scores (all rows when none does)."""
    tasks = {k[:-len("/score")] for r in rows for k in r if k.endswith("/score") and k.count("/") == 1}
    full = [r for r in rows if all(f"{t}/score" in r for t in tasks)]
    return full or rows


def selection(metric: str) -> str:
    """How a trial's scored evaluation is chosen, in words (status, best, the report)."""
    return f"the evaluation with the highest {metric}"


def selected_lines(trial: dict) -> list[str]:
    """A summarized trial's task scores at its selected evaluation, and (labelled as such) each task's best over
    the run, which come from different checkpoints."""
    row = trial["best_row"]
    tasks = sorted(k[:-len("/score")] for k in row if k.endswith("/score") and k.count("/") == 1)
    lines = [f"  task scores at its selected evaluation (step {trial['selected_step']}, "
             f"{selection(trial['metric'])}): " + ", ".join(f"{t} {row[t + '/score']:.2f}" for t in tasks)]
    best = best_of_run(trial, tasks)
    if best:
        lines.append("  best of each task over the run (different checkpoints, not one model): "
                     + ", ".join(f"{t} {v:.2f}" for t, v in best.items()))
    return lines


def status_lines(storage: str, name: str) -> list[str]:
    """``bam-search status``: one line per trial, then the best trial's task scores at its selected evaluation,
    then what the trials cost (``search/accounting.py``)."""
    metric = experiment_metric(storage, name)
    rows = summarize(trial_results(storage, name), metric=metric)
    lines = [f"{'trial':<14}{'state':<9}{'evals':>6}{'best ' + metric:>15}  params"]
    for r in rows:
        best = f"{r['best']:.2f}" if r["best"] is not None else ("not all tasks" if r["unreached"] else "-")
        lines.append(f"{r['trial_id']:<14}{r['state']:<9}{r['iterations']:>6}{best:>15}  "
                     f"{json.dumps(r['params'], default=str)}")
    if rows and any(r["best"] is not None for r in rows):
        top = max((r for r in rows if r["best"] is not None), key=lambda r: r["best"])
        lines += [f"best trial {top['trial_id']}:", *selected_lines(top)]
    if rows:                                                     # after the table: its lines stay as they are
        from .accounting import compute_lines, for_experiment
        account = for_experiment(storage, name, rows)
        lines += ["", *compute_lines(account)]
    return lines


def best_recipe(storage: str, name: str) -> tuple[dict, dict]:
    """(the best trial's recipe: the base with its sampled params, its summary) by the experiment's metric."""
    from trainables.recipe import with_params
    trials = trial_results(storage, name)
    ranked = [s for s in summarize(trials, metric=experiment_metric(storage, name)) if s["best"] is not None]
    if not ranked:
        short = sorted({x for s in summarize(trials) for x in s["unreached"]})
        raise UserError(f"experiment {name!r} has no finished evaluation yet" + (
            f" of every task (no trial has reached {', '.join(short)}: switch.mode sequential joins a task only "
            f"after the previous ones switched)" if short else ""))
    top = max(ranked, key=lambda s: s["best"])
    trial = next(t for t in trials if t["trial_id"] == top["trial_id"])
    return with_params(trial["params"]["loop"]["recipe"], trial["params"].get("params") or {}), top


def check_export(path: str) -> None:
    """``best --export PATH`` names a file that can be written: checked before the experiment is read."""
    import os
    if not path.strip():
        raise UserError(f"--export {path!r}: empty; give a file name such as best.yaml")
    p = Path(path)
    if p.is_dir() or path.endswith(("/", os.sep)):
        raise UserError(f"--export {path}: is a folder; give a file name such as {p / 'best.yaml'}")
    parent = p.absolute().parent
    while not parent.exists():                   # atomic_write creates the missing folders
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--export {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--export {path}: cannot write in {parent} (permission denied)")


def export_recipe(recipe: dict, path: str | Path, *, command: str, source: str) -> None:
    """Write ``recipe`` as a runnable YAML file whose first line is ``command`` (atomically)."""
    from trainables.recipe import dump_recipe, recipe_from_dict
    from trainables.storage import atomic_write
    text = dump_recipe(recipe_from_dict(recipe, source=source), command=command).encode()
    try:
        atomic_write(Path(path), text)
    except OSError as e:                         # a race with check_export, a full disk, a read-only mount
        raise UserError(f"{path}: cannot write the recipe ({e.strerror or type(e).__name__})") from None


def retrain_command(recipe_path: str | Path, recipe: dict, storage: str, *, seeds: int = 3) -> list[str]:
    """``bam-search train`` of an exported best recipe on ``seeds`` new seeds, from the best trial's seed + 1.
    The best trial was picked on the dev set the retrain is scored on: its own seed again would reproduce that
    run, luck included, and lift the retrain's mean (one seed of three, deterministic loops)."""
    return ["bam-search", "train", str(recipe_path), "--seeds", str(seeds),
            "--first-seed", str(int(recipe.get("seed") or 0) + 1), "--storage", str(storage)]


def baseline_lines(storage: str, tasks) -> list[str]:
    """``bam-search teachers``' table: the latest teacher runs of ``tasks`` in the baseline registry: the dev
    score of the best evaluation (whose weights predicted the train set), its step, the step the run stopped
    at (``early`` when early stopping ended it) and the epochs it trained. Older records: ``-``."""
    from trainables.teacher_store import BaselineRegistry
    registry = BaselineRegistry(storage)
    recs = [r for r in registry.records() if r["task"] in tasks]

    def stop(r: dict) -> str:
        return "-" if "stopped_at_step" not in r else f"{r['stopped_at_step']}{' early' if r['stopped_early'] else ''}"
    lines = [f"{'task':<16}{'seed':>5}{'dev score':>11}{'best step':>11}{'stopped at':>12}{'epochs':>8}  key"]
    lines += [f"{r['task']:<16}{r['seed']:>5}{r['score']:>11.2f}{r.get('best_step', '-')!s:>11}{stop(r):>12}"
              f"{r.get('epochs_run', '-')!s:>8}  {r['key']}" for r in recs[-len(tasks) * 20:]]
    return lines + [f"baseline registry: {registry.location}"]


def teacher_stops(storage: str, tasks, *, experiment: str) -> str:
    """How the newest teachers of ``experiment`` (one per task and seed) ended, for a headline: ``early-stopped
    at epochs 3-6 of at most 10, patience 2``; a fixed budget: ``trained 3 epochs``."""
    from trainables.teacher_store import BaselineRegistry
    newest = {(r["task"], r["seed"]): r for r in BaselineRegistry(storage).records()
              if r.get("experiment") == experiment and r["task"] in tasks}
    recs = list(newest.values())
    epochs = sorted(r["epochs_run"] for r in recs if "epochs_run" in r)
    if not epochs:
        return "stopping not recorded"
    span = f"{epochs[0]:g}" if epochs[0] == epochs[-1] else f"{epochs[0]:g}-{epochs[-1]:g}"
    patience = {(r.get("config") or {}).get("early_stop", {}).get("patience") for r in recs} - {None}
    if not patience:
        return f"trained {span} epochs, no early stopping"
    most = max((r.get("config") or {}).get("optim", {}).get("epochs", 0) for r in recs)
    early = sum(bool(r.get("stopped_early")) for r in recs)
    who = "" if early == len(recs) else f"{early} of {len(recs)} "
    return (f"{who}early-stopped at epochs {span} of at most {most:g}, patience "
            f"{','.join(str(p) for p in sorted(patience))}")


def demo_headline(storage: str, name: str, *, teachers: str) -> str:
    """The demo's headline from its report (``reports/NAME/comparison.json``): the student's GLUE average vs the
    teachers', with how the teachers of experiment ``teachers`` stopped (``teacher_stops``)."""
    comp = json.loads((Path(Storage.resolve(storage).local) / "reports" / name / "comparison.json").read_text())
    avg, cand, base = comp["glue_average"], comp["candidate"], comp["baseline"]
    stops = teacher_stops(storage, [row["task"] for row in comp["tasks"]], experiment=teachers)
    picked = (comp.get("picked") or {}).get(cand)
    how = f" (best of {picked['trials']} trials, picked on these dev examples)" if picked else ""
    return (f"{cand}{how} {avg['means'][cand]:.2f} vs {base} ({stops}) {avg['means'][base]:.2f} "
            f"({avg['delta']:+.2f})")


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
    """A summarized trial's dev score per task at its selected evaluation (``TASK/score`` of ``best_row``): one
    checkpoint's scores, never each task's best of the run. A task the trial never reported
    (``switch.mode: sequential`` that never reached it) is one UserError naming it."""
    row = trial["best_row"]
    missing = unreached(trial, tasks)
    if missing:
        raise UserError(f"trial {trial['trial_id']} has no score for {', '.join(missing)} at its selected evaluation"
                        f" (step {row.get('step')}): it never reached "
                        f"{'that task' if len(missing) == 1 else 'those tasks'} (switch.mode sequential joins a "
                        f"task only after the previous ones switched); give it a longer run or another order")
    return {t: row[f"{t}/score"] for t in tasks}


def unreached(trial: dict, tasks) -> list[str]:
    """The tasks of ``tasks`` a summarized trial has no score for at its selected evaluation: those a
    ``switch.mode: sequential`` run never reached (they join only after the previous ones switched)."""
    return [t for t in tasks if f"{t}/score" not in trial["best_row"]]


def best_of_run(trial: dict, tasks) -> dict[str, float]:
    """Each task's best dev score over the whole run (``TASK/best`` of its last report): from different
    checkpoints, so an extra, labelled as such, never a run's score. Tasks without one are left out."""
    out = {}
    for t in tasks:
        last = next((r for r in reversed(trial["rows"]) if f"{t}/best" in r), None)
        if last is not None:
            out[t] = last[f"{t}/best"]
    return out


def selected_dev_predictions(storage: str, experiment: str, trial: dict, tasks) -> dict:
    """The dev predictions of a trial's selected evaluation (``trainables/dev_predictions.py``), for ``tasks``;
    empty when the trial stored none (trained before they were stored)."""
    from trainables import dev_predictions
    st = Storage.resolve(storage)
    parts = ("experiments", experiment, "artifacts", trial["trial_id"], dev_predictions.DIR,
             dev_predictions.eval_file(trial["selected_step"] or 0))
    if trial["selected_step"] is None or not st.is_file(*parts):
        return {}
    found = dev_predictions.decode(st.read_bytes(*parts))
    return {t: found[t] for t in tasks if t in found}


def run_record(storage: str, experiment: str, trial: dict, tasks, *, group: str, seed: int) -> dict:
    """A summarized trial of ``experiment`` as a run record of ``search.report``: the task scores of its selected
    evaluation and how it was selected, each task's best of the run (an extra), its dev curves, KD switches and
    the selected evaluation's dev predictions (for the paired bootstrap; absent when not stored)."""
    record = {"group": group, "seed": seed, "scores": best_scores(trial, tasks),
              "selected": selection(trial["metric"]), "best_of_run": best_of_run(trial, tasks),
              "curves": curves(trial, tasks), "switch_steps": switches(trial)}
    preds = selected_dev_predictions(storage, experiment, trial, tasks)
    if preds:
        record["dev_predictions"] = preds
    return record


# ------------------------------------------------------------------------------------------------ scripts

def status_data(storage: str, name: str) -> dict:
    """``status --json``: the table of ``status_lines`` as data; each trial's task scores are those of its
    selected evaluation (one checkpoint). ``best``: the best trial's id, or None."""
    metric = experiment_metric(storage, name)
    rows = summarize(trial_results(storage, name), metric=metric)
    trials = [{"trial_id": r["trial_id"], "state": r["state"], "evals": r["iterations"], "best": r["best"],
               "selected_step": r["selected_step"], "scores": _scores(r["best_row"]), "params": r["params"]}
              for r in rows]
    ranked = [r for r in rows if r["best"] is not None]
    top = max(ranked, key=lambda r: r["best"]) if ranked else None
    out = {"experiment": name, "metric": metric, "selection": selection(metric), "trials": trials,
           "best": top["trial_id"] if top else None}
    if rows:                                          # status' compute lines, as data
        from .accounting import for_experiment
        out["compute"] = for_experiment(storage, name, rows)
    return out


def best_data(name: str, top: dict, *, export: str | None = None) -> dict:
    """``best --json``: the best trial (``best_recipe``'s summary) as data: its selected evaluation's scores,
    each task's best of the run (different checkpoints: an extra) and the recipe file written, if any."""
    scores = _scores(top["best_row"])
    return {"experiment": name, "metric": top["metric"], "selection": selection(top["metric"]),
            "trial_id": top["trial_id"], "best": top["best"], "selected_step": top["selected_step"],
            "params": top["params"], "scores": scores, "best_of_run": best_of_run(top, sorted(scores)),
            "export": export}


def _scores(row: dict) -> dict[str, float]:
    return {k[:-len("/score")]: v for k, v in sorted(row.items()) if k.endswith("/score") and k.count("/") == 1}


def experiment_kind(name: str, meta: dict | None, params: dict | None = None) -> str:
    """teachers, train, sweep or demo: the ``kind`` bam_experiment.json records, else read off it (or off a
    trial's params.json): a teacher job is teachers; a student whose only parameter is the seed, train."""
    if name.startswith("demo-"):
        return "demo"
    if (meta or {}).get("kind"):
        return meta["kind"]
    loop = (meta or {}).get("loop") or (params or {}).get("loop") or {}
    searched = (meta or {}).get("params") or (params or {}).get("params")
    if not loop and searched is None:
        return "?"
    if loop.get("job") == "teacher":
        return "teachers"
    return "train" if set(searched or {}) <= {"seed"} else "sweep"


_STARTED = re.compile(r"^(?:experiment_state|basic-variant-state)-(\d{4}-\d\d-\d\d)_(\d\d)-(\d\d)-(\d\d)\.json$")


def experiment_started(files: list[str]) -> str | None:
    """When an experiment first started, ``YYYY-MM-DD HH:MM:SS`` (local time): Tune names its state files
    after the start of each run of it (a resume adds one), so the earliest of them."""
    found = sorted(m.groups() for m in map(_STARTED.match, files) if m)
    return f"{found[0][0]} {':'.join(found[0][1:])}" if found else None


def list_experiments(storage: str) -> list[dict]:
    """``bam-search list``: every experiment under ``<storage>/experiments``, sorted by start: its kind, metric,
    trials by state (as ``status`` counts them), the best trial and its value, when it started, and its bytes
    on disk (local storage; None on a URI)."""
    from .budget import disk_bytes
    st = Storage.resolve(storage)
    out = []
    for name in experiment_names(storage):
        files = st.listdir("experiments", name)
        meta = None
        if "bam_experiment.json" in files:
            try:
                meta = json.loads(st.read_bytes("experiments", name, "bam_experiment.json"))
            except (ValueError, UserError):
                meta = None
        metric = experiment_metric(storage, name)
        trials = trial_results(storage, name)
        rows = summarize(trials, metric=metric)
        states: dict[str, int] = {}
        for r in rows:
            states[r["state"]] = states.get(r["state"], 0) + 1
        ranked = [r for r in rows if r["best"] is not None]
        top = max(ranked, key=lambda r: r["best"]) if ranked else None
        out.append({"name": name, "kind": experiment_kind(name, meta, trials[0]["params"] if trials else None),
                    "metric": metric, "trials": len(rows), "states": states,
                    "best": {"trial_id": top["trial_id"], "value": top["best"]} if top else None,
                    "started": experiment_started(files),
                    "size_bytes": disk_bytes(st.local / "experiments" / name) if st.is_local else None})
    return sorted(out, key=lambda e: (e["started"] or "", e["name"]))


def list_lines(storage: str, experiments: list[dict]) -> list[str]:
    """``bam-search list``'s table: one line per experiment, each column as wide as its widest cell."""
    from .budget import format_size
    if not experiments:
        return [f"no experiments under {Storage.resolve(storage).join('experiments')}"]
    table = [["experiment", "kind", "trials", "best", "started", "size"]]
    for e in experiments:
        states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(e["states"].items())) or "none"
        table.append([e["name"], e["kind"], states,
                      f"{e['metric']} {e['best']['value']:.2f}" if e["best"] else "-", e["started"] or "-",
                      format_size(e["size_bytes"]) if e["size_bytes"] is not None else "-"])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(c.rjust(w) if i == len(row) - 1 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
            for row in table]


def measured_rates(storage: str, model: str) -> list[dict]:
    """Step rates measured by the finished trials under ``storage`` that trained ``model``: per trial, its
    last report's ``examples_per_s`` (training only, all workers) and ``train_s``, and Tune's wall time
    ``time_total_s`` (start-up and evaluations too). For ``sweep --dry-run``'s estimate of wall time."""
    out = []
    for e in experiment_names(storage):
        for t in trial_results(storage, e):
            rows = t["rows"]
            if not rows or (t["params"].get("loop") or {}).get("recipe", {}).get("model") != model:
                continue
            last = rows[-1]
            if t["error"] or not (last.get("progress", 0) >= 1.0 or last.get("stopped_early")):
                continue
            if last.get("examples_per_s") and last.get("train_s"):
                out.append({"experiment": e, "trial_id": t["trial_id"], "examples_per_s": last["examples_per_s"],
                            "train_s": last["train_s"], "wall_s": last.get("time_total_s") or last["train_s"]})
    return out


def experiment_names(storage: str) -> list[str]:
    """The experiment folders under ``<storage>/experiments`` ([] when there is none)."""
    st = Storage.resolve(storage)
    if not st.is_dir("experiments"):
        return []
    return [n for n in sorted(st.listdir("experiments")) if st.is_dir("experiments", n)]


def to_json(doc) -> str:
    """One JSON document for ``--json``: strict JSON (a NaN or infinite score is null), other values as text."""
    import math

    def finite(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): finite(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [finite(v) for v in x]
        return x
    return json.dumps(finite(doc), default=str, allow_nan=False)
