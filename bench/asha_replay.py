"""Replay Ray's ASHA on the curves of a full-budget arm: what other grace periods and reduction factors would
have kept and cost, without running them (issue 19, the ASHA target).

`bench/asha.py` runs the same configurations twice, under ASHA and to their full budget; trials are
deterministic per seed, so the full arm's per-evaluation metric is what any ASHA trial of that configuration
would report. This script feeds those curves to Ray's own ``ASHAScheduler`` (the one ``bam-search sweep``
builds) in simulated time: trials start in the sweep's order as slots free (``at_once`` of them), each pays
its measured start-up, then one evaluation interval per report; a trial ends when the scheduler says STOP or
at its last evaluation. Reported per setting: the best metric kept, its gap to the full arm's best, and the
trial-seconds against the full arm's.

    python bench/asha_replay.py bench/asha-2026-12-06-draw1.json bench/asha-2026-12-06-draw2.json
    python bench/asha_replay.py RUN.json --grace 1,2,4 --rf 2,4 --startup 8      # as if trials started in 8 s

The replay's decisions are Ray's; what it approximates is the order in which reports arrive (real trials
drift with load), so a setting that the real ASHA arm also ran is printed beside that arm's counts.
"""
from __future__ import annotations

import argparse
import collections
import heapq
import json
import sys
import types
from pathlib import Path


def replay(curves: list[list[float]], *, startup_s: list[float], eval_s: list[float], at_once: int,
           grace: int, rf: float, max_t: int | None = None) -> dict:
    """Ray's ASHAScheduler on fixed curves (curves[i][k] = metric after evaluation k+1 of configuration i).

    Returns evaluations each trial reached, the best metric seen, and the trial-seconds spent."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler
    max_t = max_t or max(len(c) for c in curves)
    sched = ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=grace, reduction_factor=rf)
    sched.set_search_properties("m", "max")
    trials = [types.SimpleNamespace(trial_id=f"t{i:05d}") for i in range(len(curves))]
    evals = [0] * len(curves)
    events: list[tuple[float, int, int]] = []          # (time of the report, trial, evaluation number)
    queue = list(range(len(curves)))
    clock = 0.0

    def start(now: float) -> None:
        i = queue.pop(0)
        sched.on_trial_add(None, trials[i])
        heapq.heappush(events, (now + startup_s[i] + eval_s[i], i, 1))

    for _ in range(min(at_once, len(queue))):
        start(0.0)
    while events:
        clock, i, k = heapq.heappop(events)
        evals[i] = k
        action = sched.on_trial_result(None, trials[i], {"training_iteration": k, "m": curves[i][k - 1]})
        if action == TrialScheduler.STOP or k >= len(curves[i]):
            sched.on_trial_complete(None, trials[i], {"training_iteration": k, "m": curves[i][k - 1]})
            if queue:
                start(clock)
        else:
            heapq.heappush(events, (clock + eval_s[i], i, k + 1))
    trial_s = sum(startup_s[i] + evals[i] * eval_s[i] for i in range(len(curves)))
    return {"evals": evals, "best": max(max(c[:e]) for c, e in zip(curves, evals)), "trial_s": trial_s,
            "wall_s": clock}


def from_run(run: dict, *, startup: float | None = None) -> dict:
    """Curves, start-ups and evaluation intervals of a bench/asha.py JSON's full arm."""
    full = sorted(run["full"]["trials"], key=lambda t: t["seed"])
    if not all(t.get("curve") for t in full):
        raise SystemExit("asha_replay: this JSON has no per-evaluation curves (bench/asha.py writes them since 2026-12-06)")
    curves = [t["curve"] for t in full]
    starts = [startup if startup is not None else t["startup_s"] for t in full]
    evals = [(t["trial_s"] - t["startup_s"]) / len(t["curve"]) for t in full]
    return {"curves": curves, "startup_s": starts, "eval_s": evals, "at_once": run.get("at_once") or 2}


def table(run: dict, *, graces: list[int], rfs: list[float], startup: float | None = None) -> list[dict]:
    src = from_run(run, startup=startup)
    full_best = max(max(c) for c in src["curves"])
    full_s = sum(s + len(c) * e for s, c, e in zip(src["startup_s"], src["curves"], src["eval_s"]))
    train_s = sum(len(c) * e for c, e in zip(src["curves"], src["eval_s"]))
    rows = []
    for g in graces:
        for rf in rfs:
            r = replay(src["curves"], startup_s=src["startup_s"], eval_s=src["eval_s"], at_once=src["at_once"],
                       grace=g, rf=rf)
            n = len(src["curves"])
            kept = sum(1 for e, c in zip(r["evals"], src["curves"]) if e == len(c))
            trained = sum(e * ev for e, ev in zip(r["evals"], src["eval_s"]))
            rows.append({"grace": g, "rf": rf, "gap": full_best - r["best"], "ratio": r["trial_s"] / full_s,
                         "ratio_after_startup": trained / train_s, "kept_to_end": kept, "stopped": n - kept,
                         "stopped_at": {str(k): r["evals"].count(k) for k in sorted(set(r["evals"]))}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="bench/asha.py JSON files (with per-evaluation curves)")
    ap.add_argument("--grace", default="1,2,3,4", help="grace periods (evaluations), comma-separated")
    ap.add_argument("--rf", default="2,3,4", help="reduction factors, comma-separated")
    ap.add_argument("--startup", type=float, help="replace every trial's measured start-up (s)")
    ap.add_argument("--out", help="write the rows as JSON here too")
    args = ap.parse_args()
    graces = [int(x) for x in args.grace.split(",")]
    rfs = [float(x) for x in args.rf.split(",")]
    out = {}
    for path in args.runs:
        run = json.loads(Path(path).read_text())
        rows = table(run, graces=graces, rfs=rfs, startup=args.startup)
        out[path] = rows
        real = run.get("early_stopping") or {}
        print(f"{path}: full best {run['full']['best']:.2f}; the real ASHA arm (grace {real.get('grace_period')}, "
              f"rf {real.get('reduction_factor')}): gap {run['gap_best']:.2f}, ratio {run['ratio_trial_s']:.3f}, "
              f"stopped at {dict(sorted(collections.Counter(t['evals'] for t in run['asha']['trials']).items()))}")
        print("  grace  rf   gap   ratio  (no start-up)  kept  stopped at evaluation")
        for r in rows:
            print(f"  {r['grace']:>5} {r['rf']:>3g} {r['gap']:>5.2f}  {r['ratio']:.3f}  ({r['ratio_after_startup']:.3f})"
                  f"      {r['kept_to_end']:>3}   {r['stopped_at']}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    sys.exit(main())
