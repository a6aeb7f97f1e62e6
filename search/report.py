"""Turn run results into a comparison report (candidate recipe vs. single-task teachers).

Pure numpy / scipy / matplotlib (+ pyyaml for the recipe block): this module must not depend
on ray, torch or wandb, so that it stays fast to import and to test.

A *run record* is a plain dict::

    {"group": "student",                  # any name: "teachers", "multitask", "student", ...
     "seed": 3,
     "scores": {"rte": 71.2, ...},        # dev score per task of ONE evaluation (one checkpoint), GLUE x100
     "selected": "the evaluation with the highest glue_avg",   # optional: how that evaluation was chosen
     "best_of_run": {"rte": 72.0},        # optional: each task's best over the run (different checkpoints)
     "curves": {"rte": [[step, score], ...]},          # optional validation curve per task
     "switch_steps": {"rte": 1200},                    # optional KD-switch step per task
     "dev_predictions": {"rte": {"metrics": ["accuracy"],               # optional, for the bootstrap:
                                 "splits": {"dev": {"ids": [...], "gold": [...], "pred": [...]}}}}}

(``dev_predictions``: the format of ``trainables/dev_predictions.py``: the evaluated model's predicted class,
or value, of every dev example.)

Tests (``search/stats.py``): teachers and students are independent runs, so per task a Welch t-test over
seeds, and, when every run of both groups stored its dev predictions, a paired bootstrap over dev examples
that recomputes the task's own metric; significance uses the bootstrap when it ran (it has power with 3
seeds), else Welch; Holm over the tasks. The report says which test ran for each task and why.

Public API
----------
- :func:`load_runs` -- read a JSONL file of run records.
- :func:`holm`, :func:`welch`, :func:`paired_bootstrap` -- the tests (from ``search.stats``).
- :func:`compare` -- per-task statistics of every group, candidate vs. baseline tests.
- :func:`write_report` -- ``report.html``, ``report.md``, ``comparison.json``, ``bars.png``
  and ``curves.png`` into a directory (every file written atomically).
- :func:`report_records` / :func:`publish_report` -- ``bam-search report``: the run records of an
  experiment (teachers from the baseline registry, its students, plain multi-task runs) and the report
  written under ``<storage>/reports/<name>/`` (the records are read with lazy imports of ``search.results``).
"""

from __future__ import annotations

import html
import io
import json
import math
import numbers
import os
from pathlib import Path
from typing import Any

import numpy as np

from trainables.storage import atomic_write

from .stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, holm, paired_bootstrap, welch, welch_interval

__all__ = [
    "ALPHA",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "compare",
    "holm",
    "load_runs",
    "paired_bootstrap",
    "publish_report",
    "report_records",
    "welch",
    "write_report",
]

#: Family-wise significance level applied to the Holm-adjusted p-values.
ALPHA = 0.05
_DPI = 100


# --------------------------------------------------------------------------- validation


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def _validate_run(run: Any, where: str) -> None:
    """Raise ``ValueError`` (prefixed with ``where``) unless ``run`` is a well-formed record."""
    if not isinstance(run, dict):
        raise ValueError(f"{where}: run record must be a JSON object/dict, got {type(run).__name__}")
    group = run.get("group")
    if not isinstance(group, str) or not group:
        raise ValueError(f"{where}: 'group' must be a non-empty string, got {group!r}")
    if not _is_int(run.get("seed")):
        raise ValueError(f"{where}: 'seed' must be an integer, got {run.get('seed')!r}")
    scores = run.get("scores")
    if not isinstance(scores, dict) or not scores:
        raise ValueError(f"{where}: 'scores' must be a non-empty {{task: score}} mapping")
    for task, score in scores.items():
        if not isinstance(task, str):
            raise ValueError(f"{where}: task names must be strings, got {task!r}")
        if not _is_real(score):
            raise ValueError(f"{where}: score of task {task!r} must be a finite number, got {score!r}")
    _validate_curves(run.get("curves"), where)
    switch_steps = run.get("switch_steps")
    if switch_steps is not None:
        if not isinstance(switch_steps, dict):
            raise ValueError(f"{where}: 'switch_steps' must be a {{task: step}} mapping")
        for task, step in switch_steps.items():
            if step is not None and not _is_real(step):
                raise ValueError(f"{where}: switch step of task {task!r} must be a number, got {step!r}")
    best = run.get("best_of_run")
    if best is not None and (not isinstance(best, dict) or not all(_is_real(v) for v in best.values())):
        raise ValueError(f"{where}: 'best_of_run' must be a {{task: score}} mapping of finite numbers")
    if run.get("selected") is not None and not isinstance(run["selected"], str):
        raise ValueError(f"{where}: 'selected' must be a string saying how the scored evaluation was chosen")
    _validate_predictions(run.get("dev_predictions"), where)


def _validate_curves(curves: Any, where: str) -> None:
    if curves is None:
        return
    if not isinstance(curves, dict):
        raise ValueError(f"{where}: 'curves' must be a {{task: [[step, score], ...]}} mapping")
    for task, points in curves.items():
        if not isinstance(points, (list, tuple)):
            raise ValueError(f"{where}: curve of task {task!r} must be a list of [step, score]")
        for point in points:
            if not isinstance(point, (list, tuple)) or len(point) != 2 or not all(_is_real(v) for v in point):
                raise ValueError(f"{where}: curve of task {task!r} has a bad point {point!r} "
                                 "(expected [step, score] with finite numbers)")


def _validate_predictions(preds: Any, where: str) -> None:
    """``dev_predictions``: ``{task: {"metrics": [...], "splits": {name: {"ids", "gold", "pred"}}}}``."""
    if preds is None:
        return
    shape = "{task: {'metrics': [...], 'splits': {name: {'ids': [...], 'gold': [...], 'pred': [...]}}}}"
    if not isinstance(preds, dict):
        raise ValueError(f"{where}: 'dev_predictions' must be a {shape} mapping")
    for task, entry in preds.items():
        metrics = entry.get("metrics") if isinstance(entry, dict) else None
        splits = entry.get("splits") if isinstance(entry, dict) else None
        if not isinstance(metrics, (list, tuple)) or not metrics or not isinstance(splits, dict) or not splits:
            raise ValueError(f"{where}: dev_predictions[{task!r}] must be {shape[8:-1]}")
        for name, split in splits.items():
            parts = [np.asarray(split.get(k, ())) if isinstance(split, dict) else np.empty(0)
                     for k in ("ids", "gold", "pred")]
            if parts[0].size == 0 or any(p.ndim != 1 or p.shape != parts[0].shape for p in parts):
                raise ValueError(f"{where}: dev_predictions[{task!r}] split {name!r} needs non-empty, equally "
                                 "long 'ids', 'gold' and 'pred' lists")


def load_runs(path: str | os.PathLike[str]) -> list[dict]:
    """Read run records from a JSONL file (one JSON object per line; blank lines are skipped).

    Raises ``ValueError`` naming the file and the 1-based line number of a bad line.
    """
    path = Path(path)
    runs: list[dict] = []
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            _validate_run(record, f"{path}:{lineno}")
            runs.append(record)
    return runs


# --------------------------------------------------------------------------- statistics


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    sd = float(arr.std(ddof=1)) if arr.size >= 2 else 0.0
    return mean, sd


def _group_order(runs: list[dict], baseline: str, candidate: str) -> list[str]:
    seen: list[str] = []
    for run in runs:
        if run["group"] not in seen:
            seen.append(run["group"])
    others = [g for g in seen if g not in (baseline, candidate)]
    return [baseline, *others, candidate]


def _aligned(entries: list[dict]) -> tuple[list, list[str]] | str:
    """``([(gold, [pred of each model]) per dev split], metrics)`` with every model's arrays ordered by example
    id, or why the models cannot be paired (other dev examples or metrics)."""
    names, metrics = list(entries[0]["splits"]), list(entries[0]["metrics"])
    if any(list(e["splits"]) != names or list(e["metrics"]) != metrics for e in entries):
        return "the runs' dev predictions name other dev splits or metrics"
    splits = []
    for name in names:
        ref, preds = None, []
        for e in entries:
            part = e["splits"][name]
            ids = np.asarray(part["ids"])
            order = np.argsort(ids, kind="stable")
            ids, gold = ids[order], np.asarray(part["gold"])[order]
            if ref is None:
                ref = (ids, gold)
            elif not (np.array_equal(ids, ref[0]) and np.array_equal(gold, ref[1])):
                return (f"the runs were evaluated on different {name} examples (another max_dev_examples or "
                        "data seed), so no example can be paired")
            preds.append(np.asarray(part["pred"])[order])
        splits.append((ref[1], preds))
    return splits, metrics


def _bootstrap(task: str, base_runs: list[dict], cand_runs: list[dict], baseline: str, candidate: str,
               n_resamples: int) -> dict:
    """The paired bootstrap of ``task`` (``stats.paired_bootstrap``), or ``{"p": None, "why": ...}``."""
    for g, runs in ((candidate, cand_runs), (baseline, base_runs)):
        lacking = sum((r.get("dev_predictions") or {}).get(task) is None for r in runs)
        if lacking:
            return {"p": None, "why": f"{lacking} of {len(runs)} {g} run(s) stored no dev predictions"}
    aligned = _aligned([r["dev_predictions"][task] for r in cand_runs + base_runs])
    if isinstance(aligned, str):
        return {"p": None, "why": aligned}
    splits, metrics = aligned
    res = paired_bootstrap(splits, metrics=metrics, n_candidate=len(cand_runs), n_resamples=n_resamples)
    return {**res, "metrics": metrics, "models": [len(cand_runs), len(base_runs)], "why": None}


def _test(task: str, base_runs: list[dict], cand_runs: list[dict], baseline: str, candidate: str,
          n_resamples: int) -> dict:
    """Both tests of one task and the one significance uses: the bootstrap when it ran, else Welch."""
    w = welch([float(r["scores"][task]) for r in cand_runs], [float(r["scores"][task]) for r in base_runs])
    w["why"] = None if w["p"] is not None else (
        f"Welch needs 2+ runs in each group ({len(cand_runs)} {candidate}, {len(base_runs)} {baseline})"
        if min(len(cand_runs), len(base_runs)) < 2 else "each group's runs all scored the same (no variance) and the means differ")
    boot = _bootstrap(task, base_runs, cand_runs, baseline, candidate, n_resamples)
    w["p_adj"] = boot["p_adj"] = None                        # set by _compare: Holm over the tasks
    out: dict[str, Any] = {"welch": w, "bootstrap": boot, "test": None, "test_n": None, "statistic": None, "p": None}
    if boot["p"] is not None:
        out.update(test="bootstrap", test_n=boot["n"], statistic=boot["delta"], p=boot["p"])
    elif w["p"] is not None:
        out.update(test="welch_t", test_n=w["n"], statistic=w["statistic"], p=w["p"])
    return out


def _check_groups(
    runs: list[dict], *, baseline: str, candidate: str, groups: list[str] | None
) -> tuple[list[str], dict[str, list[dict]]]:
    """(the groups in order, their runs); ValueError for bad records, groups or seeds."""
    if not isinstance(runs, (list, tuple)) or not runs:
        raise ValueError("compare: 'runs' must be a non-empty list of run records")
    for i, run in enumerate(runs):
        _validate_run(run, f"runs[{i}]")
    if baseline == candidate:
        raise ValueError(f"compare: baseline and candidate are the same group {baseline!r}")
    present = {r["group"] for r in runs}
    if groups is None:
        groups = _group_order(list(runs), baseline, candidate)
    else:
        groups = list(groups)
        if len(set(groups)) != len(groups):
            raise ValueError(f"groups contain duplicates: {groups}")
        for g in (baseline, candidate):
            if g not in groups:
                raise ValueError(f"groups {groups} must include the {'baseline' if g == baseline else 'candidate'} {g!r}")
    missing = [g for g in groups if g not in present]
    if missing:
        raise ValueError(
            f"group(s) {missing} missing from the runs; groups present: {sorted(present)}"
        )
    by_group: dict[str, list[dict]] = {g: [r for r in runs if r["group"] == g] for g in groups}
    for g, members in by_group.items():
        seeds = [r["seed"] for r in members]
        dupes = sorted({s for s in seeds if seeds.count(s) > 1})
        if dupes:
            raise ValueError(f"group {g!r} has several runs with seed(s) {dupes}; seeds must be unique per group")
    return groups, by_group


def _check_tasks(tasks: list[str] | None, groups: list[str], by_group: dict[str, list[dict]]) -> list[str]:
    """The tasks to compare (default: every scored task, in order of appearance); each run must score them."""
    if tasks is None:
        tasks = []
        for g in groups:
            for r in by_group[g]:
                for t in r["scores"]:
                    if t not in tasks:
                        tasks.append(t)
    else:
        tasks = list(tasks)
        if not tasks:
            raise ValueError("compare: 'tasks' is empty")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"compare: 'tasks' contains duplicates: {tasks}")
    for g in groups:
        for r in by_group[g]:
            lacking = [t for t in tasks if t not in r["scores"]]
            if lacking:
                raise ValueError(
                    f"task(s) {lacking} have no score in group {g!r} (run with seed {r['seed']})"
                )
    return tasks


def _task_row(task: str, by_group: dict[str, list[dict]], *, baseline: str, candidate: str,
              n_resamples: int) -> dict:
    """One task: every group's mean / sd / n / scores, deltas to the baseline, the candidate's test."""
    stats_by_group = {}
    for g, runs in by_group.items():
        members = sorted(runs, key=lambda r: r["seed"])
        scores = [float(r["scores"][task]) for r in members]
        mean, sd = _mean_sd(scores)
        stats_by_group[g] = {
            "mean": mean,
            "sd": sd,
            "n": len(scores),
            "seeds": [int(r["seed"]) for r in members],
            "scores": scores,
        }
    base_mean = stats_by_group[baseline]["mean"]
    best = [(r.get("best_of_run") or {}).get(task) for r in by_group[candidate]]
    row: dict[str, Any] = {
        "task": task,
        "groups": stats_by_group,
        "deltas": {g: stats_by_group[g]["mean"] - base_mean for g in by_group},
        # 95% interval of each group's difference to the baseline (Welch: the runs are independent), for the chart
        "intervals": {g: welch_interval(stats_by_group[g]["scores"], stats_by_group[baseline]["scores"])
                      for g in by_group if g != baseline},
        "delta": stats_by_group[candidate]["mean"] - base_mean,
        # each task's best evaluation over the run, mean over the candidate's runs: several checkpoints, shown
        # for reference only (never tested)
        "candidate_best_of_run": float(np.mean(best)) if all(b is not None for b in best) else None,
    }
    row.update(_test(task, by_group[baseline], by_group[candidate], baseline, candidate, n_resamples))
    row["p_adj"] = None
    row["significant"] = False
    return row


def _compare(
    runs: list[dict],
    *,
    baseline: str,
    candidate: str,
    tasks: list[str] | None,
    groups: list[str] | None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict:
    groups, by_group = _check_groups(runs, baseline=baseline, candidate=candidate, groups=groups)
    tasks = _check_tasks(tasks, groups, by_group)
    rows = [_task_row(task, by_group, baseline=baseline, candidate=candidate, n_resamples=n_resamples)
            for task in tasks]

    for family in ("welch", "bootstrap"):      # each test's own Holm over the tasks it ran on
        ran = [row[family] for row in rows if row[family]["p"] is not None]
        for res, p_adj in zip(ran, holm([res["p"] for res in ran])):
            res["p_adj"] = p_adj
    tested = [row for row in rows if row["p"] is not None]      # significance: the test each task used
    for row, p_adj in zip(tested, holm([row["p"] for row in tested])):
        row["p_adj"] = p_adj
        row["significant"] = bool(p_adj < ALPHA)

    averages = {g: float(np.mean([row["groups"][g]["mean"] for row in rows])) for g in groups}
    return {
        "baseline": baseline,
        "candidate": candidate,
        "groups": groups,
        "task_names": tasks,
        "alpha": ALPHA,
        "selected": {g: sorted({r["selected"] for r in by_group[g] if r.get("selected")}) for g in groups},
        # a group that is one sweep's best trial: {"trials": N, "experiment": ..., "metric": ...}
        "picked": {g: by_group[g][0]["picked"] for g in groups if by_group[g][0].get("picked")},
        "tasks": rows,
        "glue_average": {
            "means": averages,
            "deltas": {g: averages[g] - averages[baseline] for g in groups},
            "delta": averages[candidate] - averages[baseline],
        },
    }


def compare(
    *,
    runs: list[dict],
    baseline: str = "teachers",
    candidate: str = "student",
    tasks: list[str] | None = None,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> dict:
    """Compare every group's per-task dev scores; test ``candidate`` against ``baseline``.

    Per task: mean / sd (ddof=1, 0 for one seed) / n of every group, ``delta`` =
    mean(candidate) - mean(baseline), and two tests (``search.stats``): ``welch`` (Welch's t over the
    groups' per-seed scores, >= 2 runs each; the runs are independent, never paired by seed) and
    ``bootstrap`` (paired over dev examples, recomputing the task's metric, when every run of both groups
    has ``dev_predictions`` of the same examples; ``n_resamples`` resamples). Each holds ``p``, ``p_adj``
    (Holm over the tasks that test ran on) or ``why`` it did not run. ``test`` / ``p`` / ``p_adj`` /
    ``significant`` (adjusted p < 0.05, Holm over the tested tasks) are those of the test significance uses:
    the bootstrap when it ran, else Welch, else none. ``glue_average`` holds the mean over tasks of each
    group's mean and the candidate's delta. Groups are ordered baseline, others (first appearance),
    candidate. The result is plain JSON-serialisable data.

    Raises ``ValueError`` for a missing group, a task without a score in some run of a
    compared group, duplicate seeds within a group, or a malformed record.
    """
    return _compare(list(runs), baseline=baseline, candidate=candidate, tasks=tasks, groups=None,
                    n_resamples=n_resamples)


# --------------------------------------------------------------------------- rendering


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _fmt_delta(x: float) -> str:
    return f"{x:+.2f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    if p == 0.0:
        return "0"  # degenerate: identical nonzero paired differences (zero variance)
    if p < 1e-4:
        return f"{p:.1e}"
    return f"{p:.4f}"


def _sig_marker(row: dict) -> str:
    if row["p"] is None:
        return "n/a"
    return "*" if row["significant"] else ""


_TEST_NAMES = {"welch_t": "Welch t", "bootstrap": "bootstrap", None: "none"}


def _test_label(row: dict) -> str:
    name = _TEST_NAMES.get(row["test"], str(row["test"]))
    if row["test"] == "welch_t":
        return f"{name} ({row['test_n']} runs)"
    if row["test"] == "bootstrap":
        return f"{name} ({row['test_n']} examples)"
    return name


def _summary(comparison: dict) -> str:
    avg = comparison["glue_average"]
    parts = ", ".join(f"{g} {avg['means'][g]:.2f}" for g in comparison["groups"])
    n_sig = sum(row["significant"] for row in comparison["tasks"])
    n_tested = sum(row["p"] is not None for row in comparison["tasks"])
    return (
        f"GLUE average over {len(comparison['tasks'])} task(s): {parts}. "
        f"{comparison['candidate']} vs {comparison['baseline']}: {_fmt_delta(avg['delta'])} points; "
        f"{n_sig} of {n_tested} tested task(s) significant after Holm correction "
        f"(adjusted p < {comparison['alpha']:g})."
        + "".join(f" {g} is the best of {p['trials']} trials, picked on these dev examples: optimistic (see Selection)."
                  for g, p in comparison.get("picked", {}).items())
    )


def _has_best_of_run(comparison: dict) -> bool:
    return any(row.get("candidate_best_of_run") is not None for row in comparison["tasks"])


def _table_header(comparison: dict) -> list[str]:
    c, b = comparison["candidate"], comparison["baseline"]
    best = [f"{c}: best of each task (different checkpoints)"] if _has_best_of_run(comparison) else []
    return ["Task", *[f"{g} (mean ± sd)" for g in comparison["groups"]], *best, f"Δ {c} − {b}",
            "Welch t: p (Holm)", "bootstrap: p (Holm)", "Sig. (test)"]


def _p_cell(res: dict) -> str:
    return "n/a" if res["p"] is None else f"{_fmt_p(res['p'])} ({_fmt_p(res.get('p_adj'))})"


def _table_rows(comparison: dict) -> list[list[str]]:
    out = []
    for row in comparison["tasks"]:
        cells = [row["task"]]
        for g in comparison["groups"]:
            s = row["groups"][g]
            cells.append(f"{s['mean']:.2f} ± {s['sd']:.2f} (n={s['n']})")
        if _has_best_of_run(comparison):
            cells.append(_fmt(row.get("candidate_best_of_run")))
        sig = "n/a" if row["p"] is None else f"{'* ' if row['significant'] else ''}{_TEST_NAMES[row['test']]}"
        cells += [_fmt_delta(row["delta"]), _p_cell(row["welch"]), _p_cell(row["bootstrap"]), sig]
        out.append(cells)
    return out


def _task_note(row: dict, comparison: dict) -> str:
    """Which test ran for one task, and why the other did not."""
    c, b = comparison["candidate"], comparison["baseline"]
    w, boot = row["welch"], row["bootstrap"]
    parts = []
    if boot["p"] is not None:
        lo, hi = boot["ci"]
        parts.append(f"paired bootstrap over {boot['n']} dev examples ({', '.join(boot['metrics'])}; "
                     f"{boot['models'][0]} {c} vs {boot['models'][1]} {b} models), Δ {_fmt_delta(boot['delta'])} "
                     f"(95% interval {lo:+.2f} to {hi:+.2f})")
    else:
        parts.append(f"no bootstrap: {boot['why']}")
    parts.append(f"Welch t over {w['n']} runs" if w["p"] is not None else f"no Welch t: {w['why']}")
    used = {"bootstrap": "significance from the bootstrap", "welch_t": "significance from Welch t"}
    parts.append(used.get(row["test"], "no test possible"))
    return f"{row['task']}: " + "; ".join(parts) + "."


def _methods(comparison: dict) -> list[str]:
    """The report's words on how scores were chosen and which test ran for each task, and why."""
    chosen = "; ".join(f"{g}: {', '.join(sel)}" for g, sel in comparison.get("selected", {}).items() if sel)
    out = ["Scores: each run's task scores are those of ONE evaluation (one checkpoint), never each task's best "
           "of the run." + (f" The evaluation scored: {chosen}." if chosen else "")]
    for g, p in comparison.get("picked", {}).items():
        out.append(f"Selection: {g} is the best of {p['trials']} trials of {p['experiment']} (by {p['metric']}), "
                   "picked on the dev examples it is scored on here, so its score is optimistic: the luck of that "
                   "one run is in it. For a comparison without that selection, retrain the recipe on new seeds "
                   "(the command on the first line of best_recipe.yaml) and report with --student.")
    if _has_best_of_run(comparison):
        out.append(f"'{comparison['candidate']}: best of each task' is each task's best evaluation over the run, "
                   "from different checkpoints (not one model), shown for reference only and never tested.")
    out.append(
        f"Tests: {comparison['baseline']} and {comparison['candidate']} are independent training runs, so no run "
        "is paired with another by seed. Welch's t-test compares the groups' per-seed scores (2+ runs per group; "
        "with 3 seeds it has little power). The paired bootstrap compares the two groups' predictions of the "
        "SAME dev examples: each resample draws the dev examples with replacement (each dev split on its own), "
        "recomputes every model's score with the task's own metric, averages the scores within each group "
        "(seeds averaged) and takes the difference; p is two-sided. It measures the uncertainty from the choice "
        "of dev examples with these models fixed, not the randomness of training (which only more seeds "
        "measure). Significance (*) uses the bootstrap where it ran, else Welch's t; p-values are "
        f"Holm-adjusted over the tasks (family-wise α = {comparison['alpha']:g}).")
    return out + [_task_note(row, comparison) for row in comparison["tasks"]]


def _to_plain(obj: Any) -> Any:
    """Make a recipe YAML/JSON-safe (numpy scalars, tuples, paths, ...)."""
    if isinstance(obj, dict):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_to_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return _to_plain(obj.tolist())
    return str(obj)


def _recipe_yaml(recipe: dict) -> str:
    import yaml  # pyyaml; imported lazily, only when a recipe is given

    return yaml.safe_dump(_to_plain(recipe), sort_keys=False, default_flow_style=False, allow_unicode=True)


_BARS_ALT = ("Grouped bar chart: each group's difference in mean dev score to the baseline per task; error bars "
             "show the 95% Welch interval over seeds; * marks a significant difference after Holm")


def _curves_alt(candidate: str, baseline: str) -> str:
    return (
        f"Validation curves of the {candidate} runs, one panel per task; a dotted horizontal line marks the "
        f"mean dev score of the {baseline} on that task; dashed vertical lines and markers show where each task's KD "
        "switch fired"
    )


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
tr.sig td{background:#eef8ee}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.8em;overflow:auto}
img{max-width:100%;height:auto;display:block;margin:1em 0}
.note{color:#666;font-size:13px}
"""


def _render_html(comparison: dict, *, title: str, recipe_yaml: str | None, images: dict[str, str],
                 compute: dict | None = None, pareto: dict | None = None) -> str:
    e = html.escape
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="summary">{e(_summary(comparison))}</p>',
        "<h2>Per-task comparison</h2>",
        "<table>",
        "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in _table_header(comparison)) + "</tr></thead>",
        "<tbody>",
    ]
    for row, cells in zip(comparison["tasks"], _table_rows(comparison)):
        cls = ' class="sig"' if row["significant"] else ""
        lines.append(f"<tr{cls}>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    lines += [
        "</tbody>",
        "</table>",
        '<p class="note">'
        + e(
            f"Scores are dev-set scores (GLUE convention, ×100), mean ± sd (ddof=1) over seeds. "
            f"Δ = mean({comparison['candidate']}) − mean({comparison['baseline']}). "
            f"* = Holm-adjusted p < {comparison['alpha']:g}; n/a = no test possible."
        )
        + "</p>",
        "<h2>How the scores were chosen and tested</h2>",
        *[f'<p class="methods">{e(text)}</p>' for text in _methods(comparison)],
    ]
    if recipe_yaml is not None:
        lines += ["<h2>Best recipe</h2>", f'<pre class="recipe">{e(recipe_yaml)}</pre>']
    if compute is not None:
        lines += _compute_html(compute)
    if pareto is not None:
        lines += _pareto_html(pareto)
    if images:
        lines.append("<h2>Figures</h2>")
        for src, alt in images.items():
            lines.append(f'<img src="{e(src, quote=True)}" alt="{e(alt, quote=True)}">')
    lines += ["</body>", "</html>", ""]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _render_markdown(comparison: dict, *, title: str, recipe_yaml: str | None, images: dict[str, str],
                     compute: dict | None = None, pareto: dict | None = None) -> str:
    header = _table_header(comparison)
    lines = [
        f"# {_md_cell(title)}",
        "",
        _summary(comparison),
        "",
        "| " + " | ".join(_md_cell(h) for h in header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for cells in _table_rows(comparison):
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    lines += [
        "",
        f"\\* = Holm-adjusted p < {comparison['alpha']:g}; n/a = no test possible.",
        "",
        "## How the scores were chosen and tested",
        "",
    ]
    for text in _methods(comparison):
        lines += [text.replace("*", "\\*"), ""]
    if recipe_yaml is not None:
        lines += ["## Best recipe", "", "```yaml", recipe_yaml.rstrip("\n"), "```", ""]
    if compute is not None:
        lines += _compute_markdown(compute)
    if pareto is not None:
        lines += _pareto_markdown(pareto)
    for src, alt in images.items():
        lines += [f"![{_md_cell(alt)}]({src})", ""]
    return "\n".join(lines)


def _compute_html(compute: dict) -> list[str]:
    """The "Compute" section (``search/accounting.py``): each trial's cost, the totals, what early stopping
    saved, compute per GLUE point over the teachers."""
    from .accounting import notes, table
    e = html.escape
    header, rows = table(compute)
    return (["<h2>Compute</h2>", "<table>", "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header)
             + "</tr></thead>", "<tbody>"]
            + ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>" for cells in rows]
            + ["</tbody>", "</table>"] + [f'<p class="note">{e(text)}</p>' for text in notes(compute)])


def _compute_markdown(compute: dict) -> list[str]:
    from .accounting import notes, table
    header, rows = table(compute)
    return (["## Compute", "", "| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            + ["| " + " | ".join(_md_cell(c) for c in cells) + " |" for cells in rows]
            + [""] + [x for text in notes(compute) for x in (_md_cell(text).replace("*", "\\*"), "")])


_PARETO_ALT = "GLUE average vs latency per example (batch 1): every trial, the Pareto front marked and connected"


def _pareto_note(pareto: dict) -> str:
    return (f"The Pareto front: trials no other trial beats on {pareto['metric']} (at its selected evaluation), "
            f"latency per example at batch 1 and parameters at once; {len(pareto['front'])} of "
            f"{len(pareto['trials'])} trials, {pareto['architectures']} architectures. Latency: measured on "
            f"{pareto.get('machine', 'the machine that wrote this report')}, one architecture at a time (median of "
            "timed passes over dev "
            "examples after a warm-up), cached in the experiment's latency.json.")


def _pareto_html(pareto: dict) -> list[str]:
    """The "Quality vs size and latency" section: the front as a table (``search/pareto.py``)."""
    from .pareto import front_table
    e = html.escape
    header, rows = front_table(pareto)
    return (["<h2>Quality vs size and latency</h2>", "<table>",
             "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead>", "<tbody>"]
            + ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>" for cells in rows]
            + ["</tbody>", "</table>", f'<p class="note">{e(_pareto_note(pareto))}</p>'])


def _pareto_markdown(pareto: dict) -> list[str]:
    from .pareto import front_table
    header, rows = front_table(pareto)
    return (["## Quality vs size and latency", "", "| " + " | ".join(_md_cell(h) for h in header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            + ["| " + " | ".join(_md_cell(c) for c in cells) + " |" for cells in rows]
            + ["", _md_cell(_pareto_note(pareto)), ""])


def _pareto_png(pareto: dict) -> bytes:
    """Every trial's score vs its latency per example at batch 1; the front marked and connected (fastest
    first), each front point labelled with its depth."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=_DPI)
    ax = fig.add_subplot(1, 1, 1)
    rest = [r for r in pareto["trials"] if not r["on_front"]]
    front = pareto["front"]
    ax.scatter([r["ms_1"] for r in rest], [r["score"] for r in rest], color="0.6", label="trial")
    ax.plot([r["ms_1"] for r in front], [r["score"] for r in front], "-o", color="C3", label="Pareto front")
    for r in front:
        ax.annotate(f"{r['num_layers']}L, {r['params'] / 1e6:.1f}M", (r["ms_1"], r["score"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("latency per example, batch 1 (ms, this machine)")
    ax.set_ylabel(f"{pareto['metric']} (selected evaluation)")
    ax.set_title("GLUE average vs latency per example (batch 1)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def delta_bars(comparison: dict) -> list[dict]:
    """What the bar chart draws: per task and group other than the baseline, the difference of means to the
    baseline, its 95% Welch interval (None with fewer than 2 runs a side), and the Holm mark (the candidate's
    test only: the one the report runs)."""
    base, cand = comparison["baseline"], comparison["candidate"]
    out = []
    for row in comparison["tasks"]:
        for g in comparison["groups"]:
            if g != base:
                out.append({"task": row["task"], "group": g, "delta": row["deltas"][g],
                            "interval": (row.get("intervals") or {}).get(g),
                            "significant": g == cand and bool(row["significant"])})
    return out


def _bars_png(comparison: dict) -> bytes:
    """Each group's difference to the baseline per task, with its interval and the Holm marks: a 2-point
    difference is visible, where bars of absolute scores starting at 0 hid it (the absolute table is beside)."""
    from matplotlib.figure import Figure  # Agg-rendered, no global backend state touched

    bars = delta_bars(comparison)
    tasks = comparison["task_names"]
    groups = [g for g in comparison["groups"] if g != comparison["baseline"]]
    n_tasks, n_groups = len(tasks), max(1, len(groups))
    fig = Figure(figsize=(max(6.0, 1.2 * n_tasks * n_groups / 2 + 2), 4.5), dpi=_DPI)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n_tasks)
    width = 0.8 / n_groups
    for i, g in enumerate(groups):
        mine = [b for b in bars if b["group"] == g]
        pos = x + (i - (n_groups - 1) / 2) * width
        deltas = np.array([b["delta"] for b in mine])
        lo = np.array([b["delta"] - b["interval"][0] if b["interval"] else 0.0 for b in mine])
        hi = np.array([b["interval"][1] - b["delta"] if b["interval"] else 0.0 for b in mine])
        ax.bar(pos, deltas, width, yerr=np.vstack([lo, hi]), capsize=3, label=g)
        for p, b, top in zip(pos, mine, deltas + hi):
            if b["significant"]:
                ax.annotate("*", (p, max(top, b["delta"])), ha="center", va="bottom", fontsize=14)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.margins(y=0.15)
    ax.set_xticks(x)
    ax.set_xticklabels(tasks, rotation=30 if n_tasks > 6 else 0)
    ax.set_ylabel(f"difference to {comparison['baseline']} (dev score points)")
    ax.set_title(f"Difference to {comparison['baseline']} per task\n(95% Welch interval over seeds; "
                 f"* = {comparison['candidate']} significant after Holm)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _curves_png(runs: list[dict], comparison: dict) -> bytes | None:
    fig = _curves_figure(runs, comparison)
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _curves_figure(runs: list[dict], comparison: dict):
    """One panel per task: each candidate run's dev curve, its KD switches, and the baseline's mean dev score
    of the task as a dotted horizontal reference line. None when no candidate run has a curve."""
    candidate, baseline = comparison["candidate"], comparison["baseline"]
    cand_runs = sorted((r for r in runs if r["group"] == candidate), key=lambda r: r["seed"])
    tasks = [t for t in comparison["task_names"] if any((r.get("curves") or {}).get(t) for r in cand_runs)]
    if not tasks:
        return None
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ncols = min(3, len(tasks))
    nrows = math.ceil(len(tasks) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.6), dpi=_DPI)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(cand_runs))]
    any_switch = False
    for ax, task in zip(axes.flat, tasks):
        for color, run in zip(colors, cand_runs):
            points = (run.get("curves") or {}).get(task)
            if not points:
                continue
            arr = np.asarray(sorted(points, key=lambda p: p[0]), dtype=float)
            ax.plot(arr[:, 0], arr[:, 1], color=color, lw=1.4)
            step = (run.get("switch_steps") or {}).get(task)
            if step is not None:
                any_switch = True
                ax.axvline(float(step), color=color, ls="--", lw=1.0, alpha=0.8)
                ax.plot([float(step)], [float(np.interp(step, arr[:, 0], arr[:, 1]))],
                        marker="v", color=color, ms=8, mec="black", mew=0.6, zorder=5)
        reference = next(row for row in comparison["tasks"] if row["task"] == task)["groups"][baseline]["mean"]
        ax.axhline(reference, color="black", ls=":", lw=1.3, zorder=1)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("dev score")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=color, lw=1.4, label=f"seed {run['seed']}")
        for color, run in zip(colors, cand_runs)
        if any((run.get("curves") or {}).get(t) for t in tasks)
    ]
    handles.append(Line2D([], [], color="black", ls=":", lw=1.3, label=f"{baseline} (mean dev score)"))
    if any_switch:
        handles.append(Line2D([], [], color="gray", ls="--", marker="v", mec="black", label="KD switch"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(f"Validation curves of {candidate} ({baseline} mean dev score dotted, KD switches marked)")
    fig.tight_layout(rect=(0, 0.6 / (3.2 * nrows + 0.6) + 0.02, 1, 0.97))
    return fig


def write_report(
    *,
    runs: list[dict],
    out_dir: str | os.PathLike[str],
    title: str,
    recipe: dict | None = None,
    groups: list[str] | None = None,
    baseline: str = "teachers",
    candidate: str = "student",
    compute: dict | None = None,
    pareto: dict | None = None,
) -> dict:
    """Write ``report.html``, ``report.md``, ``comparison.json``, ``bars.png`` and (when the
    candidate's runs carry validation curves) ``curves.png`` into ``out_dir``.

    ``groups`` selects and orders the groups to show (must include baseline and candidate);
    default: every group, baseline first and candidate last. Every file is written atomically.
    Returns ``{"html", "markdown", "json", "bars"[, "curves"]}`` -> path (str) of each file written.
    ``compute``: the experiment's account (``accounting.for_experiment``): a "Compute" section, and
    ``comparison.json``'s ``compute``, its compute per GLUE point taken over this comparison's teachers.
    ``pareto`` (``pareto.pareto_data``): ``pareto.png``, a "Quality vs size and latency" section, and its JSON.
    """
    comparison = _compare(list(runs), baseline=baseline, candidate=candidate, tasks=None, groups=groups)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    recipe_yaml = _recipe_yaml(recipe) if recipe is not None else None
    if compute is not None:
        from .accounting import with_teachers
        compute = with_teachers(compute, comparison)
        comparison = {**comparison, "compute": compute}

    written: dict[str, str] = {}
    images: dict[str, str] = {}

    pngs = {"bars": (_bars_png(comparison), _BARS_ALT),
            "curves": (_curves_png([r for r in runs if r["group"] == candidate], comparison),
                       _curves_alt(candidate, baseline)),
            "pareto": (_pareto_png(pareto) if pareto is not None else None, _PARETO_ALT)}
    for key, (png, alt) in pngs.items():               # curves: when the runs carry them; pareto: when given
        if png is not None:
            atomic_write(out / f"{key}.png", png)
            written[key] = str(out / f"{key}.png")
            images[f"{key}.png"] = alt
    if pareto is not None:
        comparison = {**comparison, "pareto": pareto}

    json_path = out / "comparison.json"
    atomic_write(json_path, json.dumps(comparison, indent=2, allow_nan=False) + "\n")
    written["json"] = str(json_path)

    md_path = out / "report.md"
    atomic_write(md_path, _render_markdown(comparison, title=title, recipe_yaml=recipe_yaml, images=images,
                                           compute=compute, pareto=pareto))
    written["markdown"] = str(md_path)

    html_path = out / "report.html"
    atomic_write(html_path, _render_html(comparison, title=title, recipe_yaml=recipe_yaml, images=images,
                                         compute=compute, pareto=pareto))
    written["html"] = str(html_path)
    return written


# --------------------------------------------------------------------------- bam-search report


def _teacher_records(storage: str, recipe: dict) -> list[dict]:
    """One record per teacher seed that covers every task of ``recipe`` (the baseline registry's scores, and the
    dev predictions of the teacher's best weights where its store folder has them): the teachers of this data
    and model (and of ``teacher.experiment`` when set), found as a student finds them
    (``teacher_store.pick_teacher``; several teacher configs for one task and seed: one line, no silent pick)."""
    from trainables.model import model_identity
    from trainables.recipe import recipe_from_dict
    from trainables.teacher_store import BaselineRegistry, pick_teacher
    from trainables.teachers import train_examples

    r = recipe_from_dict(recipe, source="the best trial's recipe")
    fingerprints = {t: ex.fingerprint() for t, ex in train_examples(r).items()}
    model = model_identity(r.teacher.model or r.model)
    records = BaselineRegistry(storage).records()
    teachers: dict[int, dict] = {}
    for seed in sorted({x["seed"] for x in records if x["task"] in r.tasks}):
        for t in r.tasks:
            rec = pick_teacher(records, task=t, seed=seed, fingerprint=fingerprints[t], model=model,
                               experiments=r.teacher.experiment)
            if rec is not None:
                teachers.setdefault(seed, {})[t] = rec
    out = []
    for s, recs in teachers.items():
        if set(recs) >= set(r.tasks):
            preds = _teacher_dev_predictions(storage, recs)
            out.append({"group": "teachers", "seed": s, "scores": {t: rec["score"] for t, rec in recs.items()},
                        "selected": "each teacher's best dev evaluation (the weights it keeps)",
                        # the experiments that trained them: their W&B group (search/wandb_report.py)
                        "experiments": sorted({rec["experiment"] for rec in recs.values() if rec.get("experiment")}),
                        **({"dev_predictions": preds} if preds else {})})
    return out


def _teacher_dev_predictions(storage: str, recs: dict[str, dict]) -> dict:
    """``{task: dev predictions}`` of the teachers in ``recs`` (task -> registry record) that stored them."""
    from trainables import dev_predictions
    from trainables.teacher_store import TeacherStore
    store, out = TeacherStore(storage), {}
    for t, rec in recs.items():
        if store.has_file(rec["key"], dev_predictions.TEACHER_FILE):
            found = dev_predictions.decode(store.read_file(rec["key"], dev_predictions.TEACHER_FILE))
            if t in found:
                out[t] = found[t]
    return out


def report_records(storage: str, name: str, *, students=(), multitask=()) -> tuple[list[dict], dict]:
    """(run records, the best recipe) of experiment ``name``: the teachers, the students (the retrains of the
    best recipe in ``students`` when given, since they reproduce it over seeds, else the sweep's best trial)
    and the plain multi-task experiments in ``multitask``. Every student and multi-task run is scored at its
    selected evaluation (``results.run_record``). No teacher baselines: a UserError."""
    from trainables.errors import UserError
    from trainables.teacher_store import BaselineRegistry

    from .results import best_recipe, experiment_metric, run_record, summarize, trial_results

    def trials(n: str) -> list[tuple[str, dict]]:
        return [(n, t) for t in summarize(trial_results(storage, n), metric=experiment_metric(storage, n))]

    recipe, top = best_recipe(storage, name)
    tasks = recipe["tasks"]
    records = _teacher_records(storage, recipe)
    runs = [x for n in students for x in trials(n)]
    picked = None
    if not runs:                   # the sweep's best trial itself: picked on the dev examples it is scored on
        runs, n_trials = [(name, top)], len(trials(name))
        if n_trials > 1:
            picked = {"trials": n_trials, "experiment": name, "metric": experiment_metric(storage, name)}
    for seed, (n, t) in enumerate(runs):
        rec = run_record(storage, n, t, tasks, group="student", seed=seed)
        if picked:
            rec["picked"] = picked
        records.append(rec)
    for n in multitask:
        for i, (_, t) in enumerate(trials(n)):
            records.append(run_record(storage, n, t, tasks, group="multitask", seed=i))
    if not any(r["group"] == "teachers" for r in records):
        raise UserError(f"no teacher baselines for tasks {','.join(tasks)} in {BaselineRegistry(storage).location}")
    return records, recipe


def _pareto_of(storage: str, name: str) -> dict | None:
    """The experiment's Pareto data (latency measured here, ``search/pareto.py``) when its trials have more
    than one architecture, else None (one architecture: nothing to trade)."""
    from .pareto import architecture_count, pareto_data
    return pareto_data(storage, name) if architecture_count(storage, name) > 1 else None


def publish_report(storage: str, name: str, *, records: list[dict], recipe: dict) -> str:
    """Write the report under ``<storage>/reports/<name>/`` (on a URI: here first, then copied up); returns
    where its ``report.html`` is."""
    import tempfile

    from trainables.errors import UserError
    from trainables.storage import Storage

    from .accounting import for_experiment
    st = Storage.resolve(storage)
    with tempfile.TemporaryDirectory() as tmp:
        out = st.local / "reports" / name if st.is_local else Path(tmp)
        try:
            paths = write_report(runs=records, out_dir=out, title=f"bam-search report: {name}", recipe=recipe,
                                 baseline="teachers", candidate="student", compute=for_experiment(storage, name),
                                 pareto=_pareto_of(storage, name))
        except ValueError as e:
            raise UserError(f"report {name}: {e}") from None
        if not st.is_local:
            st.upload(out, "reports", name)
    return paths["html"] if st.is_local else st.join("reports", name, Path(paths["html"]).name)
