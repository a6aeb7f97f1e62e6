"""The result-quality protocol (issue 7): does the searched BAM recipe beat its single-task teachers?

One command, resumable, with progress (phase, ETA). It drives the product in-process (one Ray for the
whole run) through the functions behind ``bam-search teachers / train / sweep / best / report``:

  1. single-task teachers, ``--seeds`` seeds per task                    (experiment ``q-teachers``)
  2. plain multi-task, no KD (``recipes/multitask.yaml``)                (``q-multitask``)
  3. BAM, linear teacher annealing (``recipes/bam_linear.yaml``)         (``q-bam_linear``)
  4. BAM + per-task KD switch, joint (``recipes/kd_switch.yaml``)        (``q-kd_switch``)
  5. a sweep of ``spaces/bam_full.yaml`` (Optuna TPE + ASHA, ``--trials``) (``q-sweep``), whose best
     recipe is retrained with ``--seeds`` seeds                          (``q-searched``)
  6. the product's report over all of them (``search.report``: mean +- sd per task, delta vs teachers,
     Holm-corrected tests, GLUE average, bars and validation curves), ``quality.json`` and ``quality.md``
     (one row per group, one column per task plus the GLUE average).

    python bench/quality.py                            # the full protocol, about 3 hours on 2 cores
    python bench/quality.py --update-results bench/RESULTS.md   # ... and write its table into RESULTS.md
    python bench/quality.py --quick                    # tiny model, 200 examples: a smoke test in minutes

Every recipe shares one budget: the tasks, ``--model``, at most ``--max-train-examples`` training
examples per task (fixed-seed subsample, ``data.data_seed`` 0), full dev sets, max length 128 with dynamic
padding, ``--epochs``, ``--lr``, ``--pooling``, ``--evals`` evaluations per run; the recipe files and the
sweep space set the rest. Students distil from teacher seed 0 (the recipe default ``teacher.seeds: [0]``).

Resuming: the storage root (``--storage``, default ``bench-runs/quality``; ``bench-runs/quality-quick``
with ``--quick``) keeps ``quality-budget.json``; a second run with the same budget skips every phase whose
outputs are complete (teacher records in the baseline registry; every trial of an experiment
TERMINATED), and continues an interrupted experiment through ``run_experiment``'s restore path (the one
``bam-search resume`` uses). A different budget in the same storage is refused (use another --storage).

Budget arithmetic (defaults; the script prints the same estimate for the flags it is given)
-----------------------------------------------------------------------------------------
Measured on this machine (bench/RESULTS.md sections 9 and 10): a MiniLM trial on one core with bf16
autocast trains at R = 55 examples/s over the five-task mix (CoLA/SST-2 are short and faster, RTE/MRPC
are long and slower; it was 25 in fp32 before issue 9's changes), evaluates at about 3R, and pays S = 40 s
of Ray start-up per trial. Two trials run at once (one core each). With N = 2,000 examples per task, T = 5
tasks, E = 1.5 epochs, 6 evaluations, 3 seeds, 16 sweep trials:

  teachers   15 trials, each E*N = 3,000 examples, 6 evals of its dev set and one
             prediction pass over its training set, 2 at once                                 ~ 17 min
  students   one run = E*T*N = 15,000 examples / R = 270 s + 6 evals of the 4,100 dev
             examples / 3R = 150 s; 3 seeds at 2 at once = 2 rounds of (S + 420 s)            ~ 15 min
             per recipe, 3 recipes                                                            ~ 46 min
  sweep      16 trials, ASHA (grace 1 eval, reduction 2) runs ~55% of the full budget:
             16 * (S + 0.55 * 420 s) / 2                                                      ~ 36 min
  retrain    the best recipe, 3 seeds: as one student recipe                                  ~ 15 min

About 2 hours in all (the one full run took 2 h 41 min, RESULTS.md section 13: trials ran at ~37-41
examples/s two at a time, and the third seed of each group runs alone). ``plan`` below reproduces these figures for any flags (``--epochs``,
``--max-train-examples``, ``--trials``, ``--seeds``, ``--examples-per-s``); the script prints its
estimate before it starts and recalibrates the ETA on the phases it has finished.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from search.spaces import _merge  # noqa: E402  (b over a, recursively)
from trainables.errors import UserError  # noqa: E402

GLUE5 = ["cola", "sst2", "mrpc", "stsb", "rte"]
SYNTHETIC = ["syn_sentiment", "syn_pairmatch", "syn_similarity", "syn_noisy"]
GROUPS = {"teachers": "single-task teachers", "multitask": "plain multi-task (no KD)",
          "bam_linear": "BAM, linear annealing", "kd_switch": "BAM + per-task KD switch (joint)",
          "searched": "searched recipe (bam_full sweep, retrained)"}
RECIPES = {"multitask": "recipes/multitask.yaml", "bam_linear": "recipes/bam_linear.yaml",
           "kd_switch": "recipes/kd_switch.yaml"}
SPACE = "spaces/bam_full.yaml"
TARGET_GAIN = 1.0          # searched GLUE average >= teachers' + 1.0 point
TARGET_SIGNIFICANT = 2     # tasks significantly better than the teachers after Holm


# ------------------------------------------------------------------------------------------------ budget

@dataclass(frozen=True)
class Budget:
    """Everything that decides the results; stored in the storage root so a resume cannot mix budgets."""
    tasks: tuple
    model: str
    seeds: int
    trials: int
    epochs: float
    max_train_examples: int | None
    max_dev_examples: int | None
    max_length: int
    lr: float
    pooling: str
    evals: int
    searcher_seed: int = 0

    def base_recipe(self, *, glue_dir: str | None) -> dict:
        r = {"tasks": list(self.tasks), "model": self.model, "evals": self.evals,
             "optim": {"epochs": self.epochs, "lr": self.lr},
             "student": {"pooling": self.pooling},
             "data": {"max_train_examples": self.max_train_examples, "max_dev_examples": self.max_dev_examples,
                      "max_length": self.max_length}}
        if glue_dir:
            r["data"]["glue_dir"] = glue_dir
        return r


@dataclass(frozen=True)
class Rates:
    """The cost model behind the ETA: per-trial throughput on one core, inference speed-up, start-up."""
    train_examples_per_s: float
    infer_speedup: float = 3.0
    startup_s: float = 40.0


DEFAULT_RATES = {"minilm": Rates(train_examples_per_s=55.0), "tiny": Rates(train_examples_per_s=1500.0,
                                                                             startup_s=40.0)}
ASHA_FRACTION = 0.55       # share of the full budget an ASHA sweep (grace 1 eval, reduction 2) runs


def concurrency() -> int:
    """Trials at once on the embedded Ray (search.ray_env: N+1 logical CPUs, 0.25 per driver, 1 per worker)."""
    cpus = (os.cpu_count() or 1) + 1
    return max(1, int(cpus // 1.25))


def plan(budget: Budget, *, sizes: dict[str, tuple[int, int]], rates: Rates) -> dict[str, float]:
    """Estimated seconds per phase. ``sizes``: task -> (train examples used, dev examples)."""
    c = concurrency()
    r, k, s = rates.train_examples_per_s, rates.infer_speedup, rates.startup_s
    rounds = lambda n: math.ceil(n / c)                                     # noqa: E731
    teacher = [budget.epochs * n / r + (budget.evals * d + n) / (k * r) for n, d in sizes.values()]
    n_teachers = len(sizes) * budget.seeds
    t_teachers = sum(teacher) * budget.seeds / c + rounds(n_teachers) * s
    n_all = sum(n for n, _ in sizes.values())
    d_all = sum(d for _, d in sizes.values())
    student = budget.epochs * n_all / r + budget.evals * d_all / (k * r)
    one_recipe = rounds(budget.seeds) * (s + student)
    sweep = budget.trials * (s + ASHA_FRACTION * student) / c
    return {"teachers": t_teachers, "multitask": one_recipe, "bam_linear": one_recipe, "kd_switch": one_recipe,
            "sweep": sweep, "searched": one_recipe, "report": 15.0}


def _hms(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ------------------------------------------------------------------------------------------------ state

class State:
    """``quality-budget.json`` (the budget) and ``quality-state.json`` (seconds spent per phase), atomic."""

    def __init__(self, storage: Path):
        self.storage = storage
        self.budget_path = storage / "quality-budget.json"
        self.path = storage / "quality-state.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"phases": {}}

    def check_budget(self, budget: Budget) -> None:
        from trainables.storage import atomic_write
        mine = json.loads(json.dumps(asdict(budget)))
        if self.budget_path.is_file():
            stored = json.loads(self.budget_path.read_text())
            diff = [k for k in sorted(set(stored) | set(mine)) if stored.get(k) != mine.get(k)]
            if diff:
                k = diff[0]
                raise UserError(f"{self.budget_path}: this storage holds a run with {k}={stored.get(k)!r}, "
                                f"not {mine.get(k)!r}; use another --storage (or the same flags to resume)")
        else:
            atomic_write(self.budget_path, (json.dumps(mine, indent=1) + "\n").encode())

    def spent(self, phase: str, seconds: float) -> None:
        from trainables.storage import atomic_write
        p = self.data["phases"].setdefault(phase, {"seconds": 0.0, "runs": 0})
        p["seconds"] += seconds
        p["runs"] += 1
        atomic_write(self.path, (json.dumps(self.data, indent=1) + "\n").encode())

    def seconds(self) -> float:
        return sum(p["seconds"] for p in self.data["phases"].values())


# ------------------------------------------------------------------------------------------------ the runner

@dataclass
class Protocol:
    budget: Budget
    storage: Path
    glue_dir: str | None
    rates: Rates
    wandb: bool = True
    address: str | None = None
    console: object = None
    ray_started: bool = False
    estimates: dict = field(default_factory=dict)
    done_s: float = 0.0            # time spent in phases that ran in this session
    done_est: float = 0.0          # their estimates (calibrates the ETA)

    # -------------------------------------------------------------------- names and helpers

    @staticmethod
    def experiment(group: str) -> str:
        return f"q-{group}"

    @property
    def storage_root(self) -> str:
        from trainables.storage import storage_uri
        return storage_uri(str(self.storage))

    def _trial(self, recipe: dict, *, job: str, source: str = "recipe"):
        from search.preflight import trial_config
        from trainables.recipe import recipe_from_dict
        return trial_config(self.storage_root, recipe_from_dict(recipe, source=source), job=job, wandb=self.wandb)

    def _resources(self, trials: int):
        from search.ray_env import choose_resources, init_ray
        self.ray_started = True                        # ray.shutdown() at the end, even after a failed start
        cluster = init_ray(address=self.address)
        return choose_resources(cluster, workers=1, trials=trials)

    def say(self, text: str) -> None:
        self.console.print(text)

    # -------------------------------------------------------------------- completeness

    def trial_states(self, name: str) -> dict[str, str]:
        """Tune's own record of each trial's status (ExperimentAnalysis reads experiment_state-*.json)."""
        from search.experiment import experiment_dir
        exp = experiment_dir(str(self.storage), name)
        if not exp.is_dir() or not any(exp.glob("experiment_state-*.json")):
            return {}
        from ray.tune import ExperimentAnalysis
        try:
            return {t.trial_id: t.status for t in ExperimentAnalysis(str(exp)).trials}
        except (ValueError, OSError, json.JSONDecodeError):
            return {}

    def experiment_done(self, name: str, expected: int) -> bool:
        from search.experiment import experiment_dir
        states = self.trial_states(name)
        errored = [t for t, s in states.items() if s == "ERROR"]
        if errored:
            raise UserError(f"{experiment_dir(str(self.storage), name)}: trial(s) {', '.join(errored)} failed "
                            "(see error.txt in their folders); remove that folder to run the phase again")
        return len(states) >= expected and all(s == "TERMINATED" for s in states.values())

    def teacher_records(self) -> dict[tuple[str, int], dict]:
        from trainables.teacher_store import BaselineRegistry
        name = self.experiment("teachers")
        out = {}
        for rec in BaselineRegistry(str(self.storage)).records():
            if rec.get("experiment") == name and rec["task"] in self.budget.tasks:
                out[(rec["task"], rec["seed"])] = rec          # the latest line wins
        return out

    def teachers_done(self) -> bool:
        have = self.teacher_records()
        return all((t, s) in have for t in self.budget.tasks for s in range(self.budget.seeds))

    # -------------------------------------------------------------------- phases

    def phase(self, n: int, key: str, title: str, *, done: bool, run) -> None:
        from search.progress import phase
        total = len(self.estimates)
        phase(self.console, n, total, title)
        left = sum(v for k, v in self.estimates.items() if k in self._pending)
        scale = self.done_s / self.done_est if self.done_est > 0 else 1.0
        self._pending.discard(key)
        if done:
            self.say(f"[green]phase {n}/{total} {key}: complete in {self.storage}, skipped[/]")
            return
        self.say(f"estimate for this phase {_hms(self.estimates[key] * scale)}; "
                 f"elapsed {_hms(time.time() - self.t0)}, protocol ETA {_hms(left * scale)}"
                 + ("" if scale == 1.0 else f" (estimates x{scale:.2f}, calibrated on this session's phases)"))
        t = time.time()
        run()
        spent = time.time() - t
        self.state.spent(key, spent)
        self.done_s += spent
        self.done_est += self.estimates[key]
        self.say(f"phase {n}/{total} {key}: done in {_hms(spent)}")

    def run_teachers(self) -> None:
        from ray import tune

        from search.experiment import run_experiment
        from search.preflight import teacher_recipe
        base = teacher_recipe(self.budget.base_recipe(glue_dir=self.glue_dir))
        n = len(self.budget.tasks) * self.budget.seeds
        run_experiment(name=self.experiment("teachers"), trial=self._trial(base, job="teacher"),
                       params={"tasks": tune.grid_search([[t] for t in self.budget.tasks]),
                               "seed": tune.grid_search(list(range(self.budget.seeds)))},
                       resources=self._resources(n), num_samples=1, live_title="teachers", total_trials=n)
        self._check_finished("teachers", n)

    def student_recipe(self, group: str) -> dict:
        from trainables.recipe import load_yaml, recipe_from_dict
        r = _merge(load_yaml(REPO / RECIPES[group]), self.budget.base_recipe(glue_dir=self.glue_dir))
        recipe_from_dict(r, source=RECIPES[group])
        return r

    def run_train(self, group: str, recipe: dict) -> None:
        from ray import tune

        from search.experiment import run_experiment
        from search.preflight import check_teachers
        trial = self._trial(recipe, job="student")
        check_teachers(self.storage_root, trial.recipe)
        seeds = list(range(self.budget.seeds))
        run_experiment(name=self.experiment(group), trial=trial,
                       params={"seed": tune.grid_search(seeds)} if len(seeds) > 1 else {"seed": seeds[0]},
                       resources=self._resources(len(seeds)), num_samples=1, live_title=group,
                       total_trials=len(seeds))
        self._check_finished(group, len(seeds))

    def run_sweep(self) -> None:
        from search.experiment import run_experiment
        from search.preflight import check_teachers
        from search.spaces import load_space, to_tune
        space = load_space(REPO / SPACE, base_recipe=self.budget.base_recipe(glue_dir=self.glue_dir))
        trial = self._trial(space["base"], job="student", source=space["path"])
        check_teachers(self.storage_root, trial.recipe)
        name = self.experiment("sweep")
        self.say(f"sweep {name}: {self.budget.trials} trials of {SPACE}, Optuna TPE + ASHA "
                 f"(an interrupted sweep continues from here, or: bam-search resume {name} --storage {self.storage})")
        run_experiment(name=name, trial=trial,
                       params=to_tune(space, searcher="optuna"), resources=self._resources(self.budget.trials),
                       num_samples=self.budget.trials, searcher="optuna", scheduler="asha",
                       seed=self.budget.searcher_seed, live_title="sweep", total_trials=self.budget.trials)
        self._check_finished("sweep", self.budget.trials)

    def best(self) -> tuple[dict, Path]:
        """The sweep's best trial as a recipe (``bam-search best --export``), written next to the report."""
        from search.results import best_recipe, export_recipe
        recipe, top = best_recipe(str(self.storage), self.experiment("sweep"))
        path = self.report_dir / "best_recipe.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        export_recipe(recipe, path, command=f"bam-search train {path.name} --seeds {self.budget.seeds}",
                      source=f"best trial of {self.experiment('sweep')}")
        self.say(f"best sweep trial {top['trial_id']}: glue_avg {top['best']:.2f}  "
                 f"{json.dumps(top['params'], default=str)}")
        return recipe, path

    def _check_finished(self, group: str, expected: int) -> None:
        if not self.experiment_done(self.experiment(group), expected):
            raise RuntimeError(f"experiment {self.experiment(group)} ended with unfinished trials: "
                               f"{self.trial_states(self.experiment(group))}")

    @property
    def report_dir(self) -> Path:
        return self.storage / "reports" / "quality"

    # -------------------------------------------------------------------- the whole protocol

    def run(self) -> dict:
        self.t0 = time.time()
        self.state = State(self.storage)
        self.state.check_budget(self.budget)
        self._pending = set(self.estimates)
        b = self.budget
        self.phase(1, "teachers", f"single-task teachers ({len(b.tasks)} tasks x {b.seeds} seeds)",
                   done=self.teachers_done(), run=self.run_teachers)
        for n, group in ((2, "multitask"), (3, "bam_linear"), (4, "kd_switch")):
            self.phase(n, group, f"{GROUPS[group]} ({RECIPES[group]}, {b.seeds} seeds)",
                       done=self.experiment_done(self.experiment(group), b.seeds),
                       run=lambda g=group: self.run_train(g, self.student_recipe(g)))
        self.phase(5, "sweep", f"sweep of {SPACE} ({b.trials} trials, ASHA)",
                   done=self.experiment_done(self.experiment("sweep"), b.trials), run=self.run_sweep)
        done = self.experiment_done(self.experiment("searched"), b.seeds)
        recipe, _ = self.best() if not done else (None, None)
        self.phase(6, "searched", f"the sweep's best recipe retrained ({b.seeds} seeds)", done=done,
                   run=lambda: self.run_train("searched", recipe))
        out: dict = {}
        self.phase(7, "report", "report: every group against the teachers", done=False,
                   run=lambda: out.update(self.report()))
        return out

    # -------------------------------------------------------------------- the report

    def records(self) -> list[dict]:
        """Run records for ``search.report``: teachers from the baseline registry, students from Tune's files."""
        from search.results import run_record, summarize, trial_results
        tasks = list(self.budget.tasks)
        per_seed: dict[int, dict] = {}
        for (task, seed), rec in self.teacher_records().items():
            per_seed.setdefault(seed, {})[task] = rec["score"]
        runs = [{"group": "teachers", "seed": s, "scores": sc} for s, sc in sorted(per_seed.items())
                if set(sc) >= set(tasks)]
        for group in ("multitask", "bam_linear", "kd_switch", "searched"):
            name = self.experiment(group)
            for i, t in enumerate(summarize(trial_results(str(self.storage), name))):
                seed = (t["params"] or {}).get("seed", i)
                # one checkpoint's scores (the run's selected evaluation) and its dev predictions
                runs.append(run_record(str(self.storage), name, t, tasks, group=group, seed=int(seed)))
        return runs

    def report(self) -> dict:
        import numpy as np

        from search.report import compare, write_report
        from trainables.metrics import glue_average
        from trainables.recipe import load_recipe
        runs = self.records()
        groups = [g for g in GROUPS if any(r["group"] == g for r in runs)]
        missing = [g for g in GROUPS if g not in groups]
        if missing:
            raise UserError(f"no runs of group(s) {', '.join(missing)} in {self.storage}")
        best = load_recipe(self.report_dir / "best_recipe.yaml").to_dict() \
            if (self.report_dir / "best_recipe.yaml").is_file() else self.best()[0]
        title = f"bam-search quality protocol: {len(self.budget.tasks)} tasks, {self.budget.model}"
        try:
            paths = write_report(runs=runs, out_dir=self.report_dir, title=title, recipe=best, groups=groups,
                                 baseline="teachers", candidate="searched")
            per_group_paths = {}
            comparisons = {}
            for g in groups[1:]:
                sub = [r for r in runs if r["group"] in ("teachers", g)]
                comparisons[g] = compare(runs=sub, baseline="teachers", candidate=g, tasks=list(self.budget.tasks))
                if g != "searched":   # each student group's own validation curves (KD switch points marked)
                    per_group_paths[g] = write_report(
                        runs=sub, out_dir=self.storage / "reports" / f"quality-{g}", title=f"{title}: {GROUPS[g]}",
                        groups=["teachers", g], baseline="teachers", candidate=g)
        except ValueError as e:
            raise UserError(f"report: {e}") from None
        table: dict = {}
        for g in groups:
            seeds = [r for r in runs if r["group"] == g]
            avgs = [glue_average({t: r["scores"][t] for t in self.budget.tasks}) for r in seeds]
            entry = {"label": GROUPS[g], "n": len(seeds), "seeds": sorted(r["seed"] for r in seeds), "tasks": {},
                     "glue_avg": {"mean": float(np.mean(avgs)), "sd": float(np.std(avgs, ddof=1)) if len(avgs) > 1 else 0.0,
                                  "per_seed": avgs}}
            for t in self.budget.tasks:
                if g == "teachers":
                    row = next(x for x in next(iter(comparisons.values()))["tasks"] if x["task"] == t)
                    s = row["groups"]["teachers"]
                    entry["tasks"][t] = {"mean": s["mean"], "sd": s["sd"], "scores": s["scores"]}
                else:
                    row = next(x for x in comparisons[g]["tasks"] if x["task"] == t)
                    s = row["groups"][g]
                    entry["tasks"][t] = {"mean": s["mean"], "sd": s["sd"], "scores": s["scores"], "delta": row["delta"],
                                         "test": row["test"], "p": row["p"], "p_holm": row["p_adj"],
                                         "significant": row["significant"]}
            if g != "teachers":
                entry["glue_avg"]["delta"] = comparisons[g]["glue_average"]["delta"]
            table[g] = entry
        teach = table["teachers"]["glue_avg"]["mean"]
        sig_up = [t for t, c in table["searched"]["tasks"].items() if c["significant"] and c["delta"] > 0]
        targets = {
            "searched_gain": {"value": table["searched"]["glue_avg"]["mean"] - teach, "target": TARGET_GAIN,
                              "met": table["searched"]["glue_avg"]["mean"] - teach >= TARGET_GAIN},
            "searched_significant_tasks": {"value": sig_up, "target": TARGET_SIGNIFICANT,
                                           "met": len(sig_up) >= TARGET_SIGNIFICANT},
            "bam_vs_multitask": {"value": table["bam_linear"]["glue_avg"]["mean"] - table["multitask"]["glue_avg"]["mean"],
                                 "target": 0.0, "met": table["bam_linear"]["glue_avg"]["mean"]
                                 >= table["multitask"]["glue_avg"]["mean"]},
        }
        return {"table": table, "targets": targets, "report": paths, "group_reports": per_group_paths}




# ------------------------------------------------------------------------------------------------ output

def _cell(c: dict, *, teachers: bool) -> str:
    text = f"{c['mean']:.2f} ± {c['sd']:.2f}"
    if teachers:
        return text
    p = "n/a" if c.get("p_holm") is None else f"{c['p_holm']:.3f}"
    return f"{text} ({c['delta']:+.2f}; p {p}{'*' if c.get('significant') else ''})"


def markdown_table(result: dict, tasks) -> str:
    from trainables.tasks import get_task
    head = ["group", "n", *[get_task(t).dir_name for t in tasks], "GLUE avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---:"] + ["---:"] * (len(tasks) + 1)) + "|"]
    for g, e in result["table"].items():
        teachers = g == "teachers"
        avg = f"{e['glue_avg']['mean']:.2f} ± {e['glue_avg']['sd']:.2f}"
        if not teachers:
            avg += f" ({e['glue_avg']['delta']:+.2f})"
        lines.append("| " + " | ".join([e["label"], str(e["n"]), *[_cell(e["tasks"][t], teachers=teachers) for t in tasks],
                                        avg]) + " |")
    return "\n".join(lines)


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(REPO))
    except ValueError:
        return str(p)


def markdown_section(result: dict, *, budget: Budget, meta: dict) -> str:
    t = result["targets"]
    tick = lambda ok: "met" if ok else "**not met**"                       # noqa: E731
    figs = [_rel(result["report"][k]) for k in ("bars", "curves") if k in result["report"]]
    figs += [_rel(p["curves"]) for p in result["group_reports"].values() if "curves" in p]
    return "\n".join([
        f"Run: {meta['date']}, {meta['machine']}; the protocol's phases took {meta['compute']} in all "
        f"(summed over every invocation that ran them; this invocation: {meta['wall']}). "
        f"Budget: model {budget.model}, tasks {', '.join(budget.tasks)}, "
        f"at most {budget.max_train_examples} training examples per task (seed 0), "
        f"{'full dev sets' if budget.max_dev_examples is None else f'{budget.max_dev_examples} dev examples'}, "
        f"max length {budget.max_length} (dynamic padding), {budget.epochs:g} epochs, lr {budget.lr:g}, "
        f"{budget.pooling} pooling, {budget.evals} evaluations per run, {budget.seeds} seeds, "
        f"{budget.trials} sweep trials.",
        "",
        "Cells: dev score mean ± sd over seeds (GLUE ×100); for students (Δ vs teachers; Holm-adjusted p of "
        "the test the report names per task: the paired bootstrap over dev examples when every run stored its dev "
        "predictions, else Welch's t over seeds; * = p < 0.05), from `search.report.compare`. Each student's "
        "scores are one checkpoint's: its evaluation with the best GLUE average.",
        "",
        markdown_table(result, budget.tasks),
        "",
        f"- searched recipe vs teachers, GLUE average: {t['searched_gain']['value']:+.2f} "
        f"(target ≥ +{TARGET_GAIN:g}): {tick(t['searched_gain']['met'])}",
        f"- tasks significantly better than the teachers after Holm: "
        f"{', '.join(t['searched_significant_tasks']['value']) or 'none'} (target ≥ {TARGET_SIGNIFICANT}): "
        f"{tick(t['searched_significant_tasks']['met'])}",
        f"- BAM (linear) vs plain multi-task, GLUE average: {t['bam_vs_multitask']['value']:+.2f} (target ≥ 0): "
        f"{tick(t['bam_vs_multitask']['met'])}",
        f"- report: `{_rel(result['report']['html'])}`; figures: " + ", ".join(f"`{f}`" for f in figs),
    ])


BEGIN, END = "<!-- quality-protocol:begin -->", "<!-- quality-protocol:end -->"


def publish_figures(result: dict, dest: Path) -> dict:
    """Copy the report's figures to ``dest`` (next to RESULTS.md, in the repository: the storage root is not)
    and return ``result`` with its figure paths pointing at the copies; the HTML report stays where it is."""
    import shutil
    dest.mkdir(parents=True, exist_ok=True)

    def copy(path: str, name: str) -> str:
        target = dest / name
        shutil.copyfile(path, target)
        return str(target)

    report = dict(result["report"])
    for key in ("bars", "curves"):
        if key in report:
            report[key] = copy(report[key], f"{key}.png")
    groups = {g: {**p, "curves": copy(p["curves"], f"curves-{g}.png")} if "curves" in p else p
              for g, p in result["group_reports"].items()}
    return {**result, "report": report, "group_reports": groups}


def check_results_file(path: Path) -> None:
    """Before any compute: the file --update-results names must exist and hold the markers."""
    if not path.is_file():
        raise UserError(f"--update-results {path}: no such file")
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise UserError(f"{path}: no {BEGIN} ... {END} block to write the table into")


def update_results(path: Path, section: str) -> None:
    """Replace the text between the markers in ``path`` (bench/RESULTS.md) with ``section``."""
    from trainables.storage import atomic_write
    check_results_file(path)
    head, rest = path.read_text().split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write(path, f"{head}{BEGIN}\n{section}\n{END}{tail}".encode())


# ------------------------------------------------------------------------------------------------ main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/quality.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  python bench/quality.py\n  python bench/quality.py --quick\n"
                                       "  python bench/quality.py --epochs 2 --trials 24 --storage bench-runs/q2")
    p.add_argument("--quick", action="store_true",
                   help="tiny model, 200 examples per task, 1 epoch, 2 seeds, 2 sweep trials (a smoke test)")
    p.add_argument("--model", help="minilm (default) | tiny (--quick) | a local HF folder")
    p.add_argument("--glue-dir", help="GLUE folder (default $BAM_GLUE_DIR, else ../shared/data/glue; "
                                      "--quick without one uses the synthetic tasks)")
    p.add_argument("--tasks", help=f"comma-separated (default {','.join(GLUE5)})")
    p.add_argument("--storage", help="storage root (default bench-runs/quality, bench-runs/quality-quick with --quick)")
    p.add_argument("--seeds", type=int, help="seeds per group (default 3; 2 with --quick)")
    p.add_argument("--trials", type=int, help="sweep trials (default 16; 2 with --quick)")
    p.add_argument("--epochs", type=float, help="epochs of every run (default 1.5; 1 with --quick)")
    p.add_argument("--max-train-examples", type=int, help="training examples per task (default 2000; 200 with --quick)")
    p.add_argument("--max-dev-examples", type=int, help="dev examples per task (default: all; 200 with --quick)")
    p.add_argument("--lr", type=float, help="learning rate of teachers and students (default 1e-4; 2e-3 with --quick); "
                                            "the sweep samples its own")
    p.add_argument("--pooling", choices=["cls", "mean"], help="sentence pooling of every model (default mean)")
    p.add_argument("--evals", type=int, help="evaluations per run (default 6; 2 with --quick)")
    p.add_argument("--examples-per-s", type=float, help="training examples/s of one trial on one core, for the ETA")
    p.add_argument("--no-wandb", action="store_true", help="do not log the runs to W&B (offline by default)")
    p.add_argument("--address", help="a running Ray cluster (default: a local Ray started here)")
    p.add_argument("--update-results", metavar="RESULTS_MD",
                   help=f"write the table into this file between {BEGIN} and {END}")
    return p.parse_args(argv)


def configure(args) -> tuple[Budget, Path, str | None]:
    from trainables.tasks import UnknownTaskError, parse_tasks
    q = args.quick
    glue = args.glue_dir or os.environ.get("BAM_GLUE_DIR")
    if glue is None and (REPO.parent / "shared" / "data" / "glue").is_dir() and not q:
        glue = str(REPO.parent / "shared" / "data" / "glue")
    if glue is not None:
        if not Path(glue).is_dir():
            raise UserError(f"--glue-dir {glue}: no such directory")
        glue = str(Path(glue).resolve())
    try:
        tasks = parse_tasks(args.tasks) if args.tasks else tuple(GLUE5 if glue or not q else SYNTHETIC)
    except UnknownTaskError as e:
        raise UserError(f"--tasks: {e}") from None
    if glue is None and not all(t.startswith("syn_") for t in tasks):
        raise UserError("GLUE tasks need --glue-dir (or $BAM_GLUE_DIR)")
    pick = lambda value, full, quick: value if value is not None else (quick if q else full)   # noqa: E731
    budget = Budget(tasks=tasks, model=pick(args.model, "minilm", "tiny"), seeds=pick(args.seeds, 3, 2),
                    trials=pick(args.trials, 16, 2), epochs=pick(args.epochs, 1.5, 1.0),
                    max_train_examples=pick(args.max_train_examples, 2000, 200),
                    max_dev_examples=pick(args.max_dev_examples, None, 200), max_length=128,
                    lr=pick(args.lr, 1e-4, 2e-3), pooling=pick(args.pooling, "mean", "cls"),
                    evals=pick(args.evals, 6, 2))
    for name in ("seeds", "trials", "evals"):
        if getattr(budget, name) < 1:
            raise UserError(f"--{name}: must be >= 1")
    if budget.epochs <= 0 or budget.lr <= 0:
        raise UserError("--epochs and --lr: must be > 0")
    storage = Path(args.storage or ("bench-runs/quality-quick" if q else "bench-runs/quality")).resolve()
    return budget, storage, glue


def data_sizes(budget: Budget, glue: str | None) -> dict[str, tuple[int, int]]:
    """(train examples used, dev examples) per task; reading every file also checks the data before Ray."""
    from trainables.data import load_examples
    from trainables.tasks import get_task
    out = {}
    for t in budget.tasks:
        n = len(load_examples(task=t, split="train", glue_dir=glue))
        d = sum(len(load_examples(task=t, split=s, glue_dir=glue)) for s in get_task(t).dev_splits)
        out[t] = (min(n, budget.max_train_examples or n), min(d, budget.max_dev_examples or d))
    return out


def main(argv=None) -> int:
    from rich.console import Console
    console = Console(highlight=False)
    args = parse_args(argv)
    t0 = time.time()
    proto = None
    try:
        budget, storage, glue = configure(args)
        if args.update_results:
            check_results_file(Path(args.update_results))
        from trainables.model import load_tokenizer
        load_tokenizer(budget.model)                       # a missing model package fails here, before Ray
        sizes = data_sizes(budget, glue)
        rates = DEFAULT_RATES.get(budget.model, DEFAULT_RATES["minilm"])
        if args.examples_per_s:
            rates = Rates(train_examples_per_s=args.examples_per_s, infer_speedup=rates.infer_speedup,
                          startup_s=rates.startup_s)
        estimates = plan(budget, sizes=sizes, rates=rates)
        console.print(f"[bold]quality protocol[/]: {budget.model}, tasks {', '.join(budget.tasks)} "
                      f"({', '.join(f'{t} {n}/{d}' for t, (n, d) in sizes.items())} train/dev examples), "
                      f"{budget.epochs:g} epochs, {budget.seeds} seeds, {budget.trials} sweep trials; storage {storage}")
        console.print("estimate (" + f"{rates.train_examples_per_s:g} examples/s per trial and core, "
                      f"{concurrency()} trials at once, {rates.startup_s:g} s start-up per trial): "
                      + ", ".join(f"{k} {_hms(v)}" for k, v in estimates.items())
                      + f"; total {_hms(sum(estimates.values()))}")
        proto = Protocol(budget=budget, storage=storage, glue_dir=glue, rates=rates, wandb=not args.no_wandb,
                         address=args.address, console=console, estimates=estimates)
        result = proto.run()
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "wall": _hms(time.time() - t0),
                "compute": _hms(proto.state.seconds()),
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                           f"Python {platform.python_version()}"}
        try:
            import torch
            meta["machine"] += f", torch {torch.__version__}"
        except ImportError:
            pass
        shown = (publish_figures(result, Path(args.update_results).resolve().parent / "figures" / "quality")
                 if args.update_results else result)
        section = markdown_section(shown, budget=budget, meta=meta)
        from trainables.storage import atomic_write
        out = {"budget": asdict(budget), "glue_dir": glue, "sizes": sizes, "meta": meta, "estimates_s": estimates,
               "phases": proto.state.data["phases"], **result}
        atomic_write(storage / "quality.json", (json.dumps(out, indent=1, allow_nan=False) + "\n").encode())
        atomic_write(storage / "quality.md", (section + "\n").encode())
        if args.update_results:
            update_results(Path(args.update_results), section)
        console.print(markdown_table(result, budget.tasks))
        console.print(f"\ntable: {storage / 'quality.md'}\nresults: {storage / 'quality.json'}\n"
                      f"report: {result['report']['html']}\nwall time {meta['wall']}")
        return 0
    except UserError as e:
        print(f"bench/quality.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/quality.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if proto is not None and proto.ray_started:
            import ray
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
