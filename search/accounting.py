"""Compute accounting: what each trial and the whole experiment cost, and what early stopping saved.

Pure functions over ``results.trial_results`` / ``results.summarize`` rows (one dict per trial with ``rows``,
the trial's reported results), so ``status`` and the report print the same numbers. The units:

- trial-seconds: Tune's ``time_total_s`` of the trial's last result (it counts from the trial's start and
  across restores); without it, the wall time from its first to its last result.
- CPU-seconds: trial-seconds x the CPUs the trial held: its Train workers (workers x cpus_per_worker) plus
  the 0.25 CPU of its driver (``ray_env.DRIVER_CPU``). GPU-seconds likewise (workers x gpus_per_worker, 1 per
  worker with ``use_gpu``). Held, not used: what the trial kept others from using.
- examples seen: the rows' ``examples_seen``, else the sum of ``TASK/examples_seen`` (global batch).
- early stopping saved: a trial that ended before its last evaluation (the scheduler cut it, or its own
  patience ran out) did not run ``1 - progress`` of its budget; in CPU-seconds, estimated at its own rate.
"""
from __future__ import annotations

import json

DRIVER_CPU = 0.25   # search.ray_env.DRIVER_CPU, repeated so this module imports nothing that starts Ray


def trial_seconds(rows: list[dict]) -> float | None:
    """A trial's wall time: Tune's ``time_total_s`` of its last result, else first to last ``timestamp``."""
    if not rows:
        return None
    last = rows[-1]
    if isinstance(last.get("time_total_s"), (int, float)):
        return float(last["time_total_s"])
    stamps = [r["timestamp"] for r in rows if isinstance(r.get("timestamp"), (int, float))]
    return float(stamps[-1] - stamps[0]) if len(stamps) >= 2 else None


def examples_seen(rows: list[dict]) -> int | None:
    """Training examples a trial's model saw by its last result (None: not reported)."""
    for r in reversed(rows):
        if isinstance(r.get("examples_seen"), (int, float)):
            return int(r["examples_seen"])
        per_task = [v for k, v in r.items() if k.endswith("/examples_seen") and k.count("/") == 1]
        if per_task:
            return int(sum(per_task))
    return None


def held(resources: dict | None) -> tuple[float | None, float]:
    """(CPUs, GPUs) a trial with ``resources`` (``Resources.as_dict()``) held; CPUs None when not recorded."""
    if not resources or "workers" not in resources:
        return None, 0.0
    workers = resources["workers"]
    cpus = workers * resources.get("cpus_per_worker", 1) + DRIVER_CPU
    gpus = workers * resources.get("gpus_per_worker", 1.0) if resources.get("use_gpu") else 0.0
    return cpus, gpus


def trial_compute(trial: dict, resources: dict | None = None) -> dict:
    """One trial's account. ``trial``: a trial_results or summarize row; ``resources``: what it held when its
    params.json does not say (the experiment's ``bam_experiment.json``)."""
    rows = trial["rows"]
    own = trial.get("resources") or (trial.get("params") or {}).get("resources")   # summarize / trial_results
    cpus, gpus = held(own if isinstance(own, dict) else resources)
    secs = trial_seconds(rows)
    progress = rows[-1].get("progress") if rows else None
    ended = trial.get("tune_status") in (None, "TERMINATED") and trial.get("state") != "ERROR"
    stopped = bool(rows) and ended and isinstance(progress, (int, float)) and progress < 1.0
    return {"trial_id": trial["trial_id"], "trial_s": secs,
            "cpus": cpus, "cpu_s": None if secs is None or cpus is None else secs * cpus,
            "gpus": gpus, "gpu_s": None if secs is None else secs * gpus,
            "examples": examples_seen(rows), "progress": progress, "stopped_early": stopped,
            "unrun": (1.0 - progress) if stopped else 0.0}


def _total(accounts: list[dict], key: str) -> float | None:
    values = [a[key] for a in accounts if a[key] is not None]
    return sum(values) if values else None


def experiment_compute(trials: list[dict], resources: dict | None = None) -> dict:
    """Every trial's account and the experiment's totals: trial-, CPU-, GPU-seconds, examples, and what early
    stopping saved: ``saved_budgets`` (trial budgets not run), ``saved_share`` (of all trials' full budgets)
    and ``saved_cpu_s`` (each stopped trial's CPU-seconds x unrun / run: its own rate, an estimate)."""
    accounts = [trial_compute(t, resources) for t in trials]
    stopped = [a for a in accounts if a["stopped_early"]]
    saved_cpu = [a["cpu_s"] * a["unrun"] / a["progress"] for a in stopped
                 if a["cpu_s"] is not None and a["progress"] and a["progress"] > 0]
    saved = sum(a["unrun"] for a in stopped)
    return {"trials": accounts, "trial_s": _total(accounts, "trial_s"), "cpu_s": _total(accounts, "cpu_s"),
            "gpu_s": _total(accounts, "gpu_s") or 0.0, "examples": _total(accounts, "examples"),
            "stopped_early": len(stopped), "saved_budgets": saved,
            "saved_share": saved / len(accounts) if accounts else 0.0,
            "saved_cpu_s": sum(saved_cpu) if saved_cpu else None}


def per_glue_point(cpu_s: float | None, best: float | None, teachers: float | None) -> tuple[float | None, str]:
    """(CPU-seconds per GLUE point the best recipe gains over the teachers' average, the line saying so) or
    (None, why it is omitted)."""
    if teachers is None:
        return None, "omitted: the teachers' GLUE average is not known (run `bam-search report` first)"
    if best is None or cpu_s is None:
        return None, "omitted: no scored evaluation or no recorded resources yet"
    gain = best - teachers
    if gain <= 0:
        return None, f"omitted: the best recipe ({best:.2f}) does not beat the teachers ({teachers:.2f})"
    return cpu_s / gain, (f"{_num(cpu_s / gain)} CPU-s of the sweep per point (best glue_avg {best:.2f} vs the "
                          f"teachers' {teachers:.2f}: {gain:+.2f})")


def teachers_average(comparison: dict | None) -> float | None:
    """The teachers' GLUE average from a report's ``comparison.json`` (None: no report, or another baseline)."""
    try:
        avg = comparison["glue_average"]
        return float(avg["means"][comparison["baseline"]]) if comparison["baseline"] == "teachers" else None
    except (TypeError, KeyError, ValueError):
        return None


def _num(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def table(account: dict) -> tuple[list[str], list[list[str]]]:
    """(header, one row per trial and a total row) of an experiment's account, as text cells."""
    gpu = account["gpu_s"] > 0
    header = ["trial", "trial-s", "CPUs", "CPU-s"] + (["GPU-s"] if gpu else []) + ["examples", "budget run"]
    rows = []
    for a in account["trials"]:
        run = "-" if a["progress"] is None else f"{a['progress']:.0%}"
        rows.append([a["trial_id"], _num(a["trial_s"], 1), _num(a["cpus"], 2), _num(a["cpu_s"], 1)]
                    + ([_num(a["gpu_s"], 1)] if gpu else []) + [_num(a["examples"]), run])
    rows.append(["total", _num(account["trial_s"], 1), "", _num(account["cpu_s"], 1)]
                + ([_num(account["gpu_s"], 1)] if gpu else []) + [_num(account["examples"]), ""])
    return header, rows


def saved_line(account: dict) -> str:
    """What early stopping saved, in one line."""
    n = len(account["trials"])
    if not account["stopped_early"]:
        return f"early stopping: none of the {n} trials ended before its last evaluation"
    cpu = ("" if account["saved_cpu_s"] is None
           else f", ~{_num(account['saved_cpu_s'])} CPU-s saved (at each trial's own rate)")
    return (f"early stopping: {account['stopped_early']} of {n} trials ended before their last evaluation; "
            f"{account['saved_budgets']:.2f} of {n} trial budgets not run ({account['saved_share']:.0%}){cpu}")


def compute_lines(account: dict) -> list[str]:
    """``status``' compute block: the table, what early stopping saved, compute per GLUE point."""
    header, rows = table(account)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:                  # the trial id left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return ["compute:", fmt(header), *[fmt(r) for r in rows], *notes(account)]


def for_experiment(storage: str, name: str, trials: list[dict] | None = None) -> dict:
    """An experiment's account read from its files (``trials``: its summarize rows when already read), with
    ``per_point`` (the line) and ``per_point_cpu_s`` for its best trial by glue_avg over the teachers' average
    in its report's ``comparison.json``."""
    from trainables.storage import Storage

    from .results import summarize, trial_results
    st = Storage.resolve(storage)
    resources = _read_json(st, "experiments", name, "bam_experiment.json").get("resources")
    trials = summarize(trial_results(storage, name)) if trials is None else trials
    account = experiment_compute(trials, resources)
    account["best_glue_avg"] = max((t["best_row"]["glue_avg"] for t in trials
                                    if "glue_avg" in (t.get("best_row") or {})), default=None)
    return with_teachers(account, _read_json(st, "reports", name, "comparison.json") or None)


def with_teachers(account: dict, comparison: dict | None) -> dict:
    """``account`` with ``per_point_cpu_s`` and ``per_point`` (its line) against the teachers' GLUE average of
    ``comparison`` (a report's; None: not known)."""
    value, line = per_glue_point(account["cpu_s"], account.get("best_glue_avg"), teachers_average(comparison))
    return {**account, "per_point_cpu_s": value, "per_point": line}


def notes(account: dict) -> list[str]:
    """The lines under the compute table: what the units are, what early stopping saved, compute per point."""
    return ["trial-s: Tune's time_total_s of the trial's last result; CPU-s: trial-s x the CPUs it held "
            "(workers x cpus_per_worker + 0.25 for its driver)",
            saved_line(account), f"compute per GLUE point over the teachers: {account['per_point']}"]


def _read_json(st, *parts: str) -> dict:
    try:
        return json.loads(st.read_bytes(*parts)) if st.is_file(*parts) else {}
    except (ValueError, OSError):
        return {}
