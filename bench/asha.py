"""ASHA against the same configurations run to their full budget (issue 4).

N configurations are drawn once from a search space (fixed RNG seed); configuration i trains with seed i.
The same N run twice through the product's ``run_experiment`` on the embedded Ray: once under ASHA (as
``bam-search sweep`` runs it), once with no early stopping. Reported: the best metric of each arm and their
gap, and the ratio of trial-seconds (Tune's ``time_total_s`` summed over trials, start-up included; also
without each trial's start-up, i.e. from its first training step).

    python bench/asha.py --trials 24                         # tiny model, the 4 synthetic tasks, spaces/demo.yaml
    python bench/asha.py --trials 24 --model minilm --max-train-examples 400 --max-length 64

Teachers for the tasks are trained first (``bam-search teachers``) into the bench's storage. Each trial's
per-evaluation metric is in the JSON (``curve``): `bench/asha_replay.py` replays other ASHA settings on the full
arm's curves.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from host import describe  # bench/host.py (bench scripts run with bench/ on sys.path)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def draw(space: dict, *, n: int, seed: int) -> list[dict]:
    """N configurations from a loaded space (W&B syntax), drawn with one RNG; configuration i gets seed i."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        cfg = {}
        for name, spec in space["parameters"].items():
            kind = space["kinds"][name]
            if kind == "constant":
                cfg[name] = spec["value"]
            elif kind == "categorical":
                cfg[name] = spec["values"][int(rng.integers(len(spec["values"])))]
            elif kind == "uniform":
                cfg[name] = float(rng.uniform(spec["min"], spec["max"]))
            elif kind == "log_uniform_values":
                cfg[name] = float(math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"]))))
            elif kind == "int_uniform":
                cfg[name] = int(rng.integers(spec["min"], spec["max"] + 1))
            else:
                raise SystemExit(f"bench/asha.py: parameter {name}: distribution {kind} not drawn here")
        cfg["seed"] = i
        out.append(cfg)
    return out


def pick(configs: list[dict], key: str, config: dict) -> object:
    return configs[config["params"]["seed"]][key]


def tune_params(configs: list[dict]) -> dict:
    from ray import tune
    params = {"seed": tune.grid_search(list(range(len(configs))))}
    for key in configs[0]:
        if key != "seed":
            params[key] = tune.sample_from(functools.partial(pick, configs, key))
    return params


def summarize(trials: list[dict], *, metric: str) -> dict:
    """Best metric, trial-seconds, and trial-seconds from the first training step on (start-up removed).

    A trial's start-up = its first report's ``time_total_s`` - its training seconds then - one evaluation; an
    evaluation's seconds are the median over trials of (time between reports 1 and 2 - training between them).
    """
    rows_of = [t for t in trials if t["rows"]]
    evals = [(t["rows"][1]["time_total_s"] - t["rows"][0]["time_total_s"]) - (t["rows"][1]["train_s"] - t["rows"][0]["train_s"])
             for t in rows_of if len(t["rows"]) >= 2]
    eval_s = float(np.median(evals)) if evals else 0.0
    per = []
    for t in rows_of:
        rows = t["rows"]
        startup = rows[0]["time_total_s"] - rows[0]["train_s"] - eval_s
        per.append({"seed": t["params"]["params"]["seed"], "evals": len(rows),
                    "best": max(r[metric] for r in rows if isinstance(r.get(metric), (int, float))),
                    "trial_s": rows[-1]["time_total_s"], "startup_s": max(0.0, startup),
                    "curve": [r.get(metric) for r in rows]})         # bench/asha_replay.py replays these
    per.sort(key=lambda r: r["seed"])
    return {"trials": per, "best": max(r["best"] for r in per), "trial_s": sum(r["trial_s"] for r in per),
            "trial_s_after_startup": sum(r["trial_s"] - r["startup_s"] for r in per), "eval_s": eval_s,
            "stopped_early": sum(1 for r in per if r["evals"] < max(x["evals"] for x in per))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--space", default="demo")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--tasks", default="syn_sentiment,syn_pairmatch,syn_similarity,syn_noisy")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--evals", type=int, default=4)
    ap.add_argument("--max-train-examples", type=int)
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--draw-seed", type=int, default=0)
    ap.add_argument("--storage", help="default: a temporary folder")
    ap.add_argument("--grace-period", type=int, help="ASHA arm: as `bam-search sweep --grace-period`")
    ap.add_argument("--reduction-factor", type=float, help="ASHA arm: as `bam-search sweep --reduction-factor`")
    ap.add_argument("--out", help="write the JSON summary here too")
    args = ap.parse_args()

    from search.ray_env import choose_resources, init_ray
    from search.spaces import load_space
    from search.experiment import run_experiment
    from search.preflight import trial_config
    from search.results import trial_results
    from trainables.recipe import recipe_from_dict

    storage = args.storage or tempfile.mkdtemp(prefix="bam-asha-")
    data = {k: v for k, v in (("max_train_examples", args.max_train_examples), ("max_length", args.max_length)) if v}
    base = {"tasks": args.tasks.split(","), "model": args.model, "evals": args.evals,
            "optim": {"epochs": args.epochs}, **({"data": data} if data else {})}
    teach = [sys.executable, "-m", "search.cli", "teachers", "--tasks", args.tasks, "--model", args.model,
             "--patience", "0", "--epochs", str(args.epochs), "--evals", str(args.evals), "--storage", storage,
             "--no-wandb", "--quiet", "--name", "asha-teachers"]               # the fixed budget it measured with
    if args.max_train_examples:
        teach += ["--max-train-examples", str(args.max_train_examples)]
    if args.max_length:
        teach += ["--max-length", str(args.max_length)]
    t0 = time.time()
    subprocess.run(teach, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    print(f"teachers: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    space = load_space(args.space, base_recipe=base)
    configs = draw(space, n=args.trials, seed=args.draw_seed)
    resources = choose_resources(init_ray(address=None), trials=args.trials)
    trial = trial_config(storage, recipe_from_dict(space["base"], source=space["path"]), job="student", wandb=False)
    out = {"date": time.strftime("%Y-%m-%d %H:%M"), **describe(),
           "trials": args.trials, "space": args.space, "base": base, "at_once": resources.max_concurrent,
           "configs": configs}
    early = {k: v for k, v in (("grace_period", args.grace_period), ("reduction_factor", args.reduction_factor))
             if v is not None} or None
    out["early_stopping"] = early
    for arm, scheduler in (("asha", "asha"), ("full", "none")):
        t = time.time()
        run_experiment(name=f"asha-{arm}", trial=trial, params=tune_params(configs),
                       resources=resources, num_samples=1, searcher="random", scheduler=scheduler,
                       progress=False, disk_budget=None, early_stopping=early if scheduler == "asha" else None)
        out[arm] = {"wall_s": round(time.time() - t, 1), **summarize(trial_results(storage, f"asha-{arm}"),
                                                                     metric="glue_avg")}
        print(f"{arm}: {out[arm]['wall_s']} s wall, best {out[arm]['best']:.2f}", file=sys.stderr, flush=True)
    a, f = out["asha"], out["full"]
    out["gap_best"] = f["best"] - a["best"]
    out["ratio_trial_s"] = a["trial_s"] / f["trial_s"]
    out["ratio_trial_s_after_startup"] = a["trial_s_after_startup"] / f["trial_s_after_startup"]
    out["ratio_wall"] = a["wall_s"] / f["wall_s"]
    text = json.dumps(out, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    print(f"\nbest: ASHA {a['best']:.2f}, full {f['best']:.2f}, gap {out['gap_best']:.2f} pt (target <= 0.3); "
          f"trial-seconds ratio {out['ratio_trial_s']:.3f} (target <= 0.30), without start-up "
          f"{out['ratio_trial_s_after_startup']:.3f}; wall ratio {out['ratio_wall']:.3f}; "
          f"{a['stopped_early']} of {args.trials} stopped early")


if __name__ == "__main__":
    main()
