"""The result-quality protocol, v2 (issue 18): where does distillation win, scored honestly?

One command, resumable, with progress (phase, ETA). It drives the product in-process (one Ray for the
whole run) through the functions behind ``bam-search teachers / train / sweep / best / report``. Arms:

  reference      the plain fine-tuning loop of bench/reference.py, one task at a time, --reference-epochs
                 epochs at lr 1e-4 (is a teacher as good as a plain fine-tune?)                (in-process)
  teachers       single-task, early-stopped on the dev metric (up to --teacher-max-epochs, patience
                 --teacher-patience), the best weights kept and predicting the train set  (``q-teachers``)
  multitask      plain multi-task, no KD (recipes/multitask.yaml)                          (``q-multitask``)
  bam_linear     BAM: linear teacher annealing, mixed batches, size^0.75 (recipes/bam_linear.yaml)
  lu_joint       Lu et al. as published: gold labels until each task's switch, no teachers, joint
  lu_sequential  ... sequential (tasks join one after another, in the recipe's task order)
  kd_switch      BAM + per-task KD switch, joint (recipes/kd_switch.yaml)
  *_l3           compact (XtremeDistil's setting): an --compact-layers student extracted from the same
                 model, distilled from the full-size teachers: multitask_l3, bam_l3, kd_switch_l3
  searched       a sweep of spaces/bam_full.yaml (Optuna TPE + ASHA whose first rung is half the run, not
                 one early evaluation; ``q-sweep``), its best recipe retrained with --seeds seeds, the first
                 after the best trial's own (``bam-search best --export``'s retrain command does the same)

Phases run in this order: teachers, multitask, bam_linear, reference, multitask_l3, kd_switch_l3, kd_switch,
bam_l3, lu_joint, lu_sequential, the sweep, searched (the pairs behind the target lines first; the reference,
15 in-process runs, after the first pair). Then the product's report over all arms (one checkpoint's
scores per run; Welch over seeds and a paired bootstrap over dev examples; Holm over tasks), ``quality.json``
and ``quality.md``: one row per arm, one column per task, the GLUE average, and what each arm's encoder saw
(steps, passes over each task's examples), then the target lines.

    python bench/quality.py --update-results bench/RESULTS.md    # the full protocol (many hours on 2 cores)
    python bench/quality.py --partial --update-results bench/RESULTS.md   # the table of the arms done so far
    python bench/quality.py --quick                    # tiny model, 200 examples: a smoke test in minutes

Every student arm shares one budget: the tasks, ``--model``, at most ``--max-train-examples`` training
examples per task (fixed-seed subsample, ``data.data_seed`` 0), full dev sets, max length 128 with dynamic
padding, ``--epochs`` over the union of the tasks, ``--lr``, ``--pooling``, ``--evals`` evaluations (the
sequential arm 3x as many: its tasks join one by one); the recipe files and the sweep space set the rest.
A run's scores are those of its evaluation with the best GLUE average (teachers: their best evaluation; the
reference: its last step). Students distil from teacher seed 0 (the recipe default ``teacher.seeds: [0]``).

Resuming: the storage root (``--storage``, default ``~/.cache/bam-bench/quality-v2``, outside the work tree)
keeps ``quality-budget.json``; a second run with the same budget skips every phase whose outputs are
complete (teacher records in the baseline registry; reference runs in ``reference/``; every trial of an
experiment TERMINATED), and continues an interrupted experiment through ``run_experiment``'s restore path
(the one ``bam-search resume`` uses). A different budget in the same storage is refused.

Budget arithmetic: ``plan`` estimates each phase from a cost model (R training examples/s of one trial on
one core, evaluation 3R, S s of start-up per trial, 2 trials at once); the script prints the estimate for
the flags it is given and recalibrates the ETA on the phases it has finished. With the defaults (2,000
examples per task, 5 tasks, students 3 epochs, 3 seeds, 16 sweep trials) it is about 8 hours on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "bench"):                  # the package, and bench/reference.py's plain loop
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from search.spaces import _merge  # noqa: E402  (b over a, recursively)
from trainables.errors import UserError  # noqa: E402
from host import host_line  # noqa: E402  (bench/host.py)

GLUE5 = ["cola", "sst2", "mrpc", "stsb", "rte"]
SYNTHETIC = ["syn_sentiment", "syn_pairmatch", "syn_similarity", "syn_noisy"]
SPACE = "spaces/bam_full.yaml"
PROTOCOL = 2


@dataclass(frozen=True)
class Arm:
    """One arm of the protocol: ``kind`` reference | teachers | student | searched; a student arm is a recipe
    file on top of the budget, at full size or compact (the --compact-layers student)."""
    label: str
    kind: str = "student"
    recipe: str | None = None
    compact: bool = False


ARMS = {
    "reference": Arm("reference fine-tune (plain loop)", kind="reference"),
    "teachers": Arm("single-task teachers (early-stopped)", kind="teachers"),
    "multitask": Arm("plain multi-task (no KD)", recipe="recipes/multitask.yaml"),
    "bam_linear": Arm("BAM, linear annealing", recipe="recipes/bam_linear.yaml"),
    "lu_joint": Arm("Lu et al., joint (gold until each switch)", recipe="recipes/lu_joint.yaml"),
    "lu_sequential": Arm("Lu et al., sequential", recipe="recipes/lu_sequential.yaml"),
    "kd_switch": Arm("BAM + per-task KD switch (joint)", recipe="recipes/kd_switch.yaml"),
    "multitask_l3": Arm("compact: plain multi-task", recipe="recipes/multitask.yaml", compact=True),
    "bam_l3": Arm("compact: BAM, linear annealing", recipe="recipes/bam_linear.yaml", compact=True),
    "kd_switch_l3": Arm("compact: BAM + per-task KD switch", recipe="recipes/kd_switch.yaml", compact=True),
    "searched": Arm("searched recipe (bam_full sweep, retrained)", kind="searched"),
}
FIXED = ("multitask", "bam_linear", "lu_joint", "lu_sequential", "kd_switch")   # same-size fixed recipes

# the target lines (keep their wording: runs compare line by line)
TARGETS = {
    "teachers_vs_reference": ("teachers vs reference fine-tune, GLUE average", -0.5, None),
    "bam_vs_multitask": ("BAM (linear) vs plain multi-task, GLUE average", 0.0, None),
    "compact_switch_vs_multitask": ("compact BAM+switch vs compact plain multi-task, GLUE average", 1.5, 2),
    "searched_vs_best_fixed": ("searched recipe vs best fixed recipe, GLUE average", 0.0, None),
    "searched_vs_teachers": ("searched recipe vs teachers, GLUE average", 1.0, 2),
}
TARGET_PAIRS = {"teachers_vs_reference": ("reference", "teachers"), "bam_vs_multitask": ("multitask", "bam_linear"),
                "compact_switch_vs_multitask": ("multitask_l3", "kd_switch_l3"),
                "searched_vs_best_fixed": (None, "searched"), "searched_vs_teachers": ("teachers", "searched")}


class Interrupted(Exception):
    """An experiment returned with trials still pending or running (Ctrl-C / SIGINT reached Tune)."""


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
    teacher_max_epochs: float = 10.0
    teacher_patience: int = 2
    reference_epochs: int = 3
    reference_lr: float = 1e-4
    compact_layers: int = 3
    compact_epochs: float = 10.0      # compact students train longer (XtremeDistil's small students train for many
    compact_evals: int = 10           # more steps); 3 epochs left all three compact arms unconverged (stop 28)
    sequential_epochs: float = 6.0    # Lu et al. sequential: tasks join one by one; at 3 epochs and 18 evaluations
    sequential_evals: int = 36        # RTE never joined in 2 of 3 runs (stop 28). Same evaluations per epoch as 6x3
    searcher_seed: int = 0
    protocol: int = PROTOCOL

    def data(self, *, glue_dir: str | None) -> dict:
        d = {"max_train_examples": self.max_train_examples, "max_dev_examples": self.max_dev_examples,
             "max_length": self.max_length}
        return {**d, "glue_dir": glue_dir} if glue_dir else d

    def base_recipe(self, *, glue_dir: str | None) -> dict:
        return {"tasks": list(self.tasks), "model": self.model, "evals": self.evals,
                "optim": {"epochs": self.epochs, "lr": self.lr}, "student": {"pooling": self.pooling},
                "data": self.data(glue_dir=glue_dir)}

    def compact_student(self) -> dict:
        """The compact student: evenly spaced layers extracted from the model (the tiny test model cannot be
        extracted: a random one of that depth)."""
        if self.model == "tiny":
            return {"init": "random", "num_layers": self.compact_layers}
        return {"init": "extract", "num_layers": self.compact_layers}


@dataclass(frozen=True)
class Rates:
    """The cost model behind the ETA: per-trial throughput on one core, inference speed-up, start-up."""
    train_examples_per_s: float
    infer_speedup: float = 3.0
    startup_s: float = 40.0
    reference_factor: float = 0.5      # the plain fp32 loop, in-process, against a trial's rate


DEFAULT_RATES = {"minilm": Rates(train_examples_per_s=40.0), "tiny": Rates(train_examples_per_s=1500.0)}
ASHA_FRACTION = 0.75       # share of the full budget an ASHA sweep (grace half the evaluations, reduction 2) runs
TEACHER_FRACTION = 0.5     # share of --teacher-max-epochs an early-stopped teacher runs (a guess; recalibrated)
COMPACT_FRACTION = 0.55    # a 3-of-6-layer student's cost against the full-size one


def concurrency() -> int:
    """Trials at once on the embedded Ray (search.ray_env: N+1 logical CPUs, 0.25 per driver, 1 per worker)."""
    cpus = (os.cpu_count() or 1) + 1
    return max(1, int(cpus // 1.25))


def plan(budget: Budget, *, sizes: dict[str, tuple[int, int]], rates: Rates) -> dict[str, float]:
    """Estimated seconds per phase. ``sizes``: task -> (train examples used, dev examples)."""
    c = concurrency()
    r, k, s = rates.train_examples_per_s, rates.infer_speedup, rates.startup_s
    rounds = lambda n: math.ceil(n / c)                                     # noqa: E731
    te = TEACHER_FRACTION * budget.teacher_max_epochs
    teacher = [te * n / r + (math.ceil(te) * d + n) / (k * r) for n, d in sizes.values()]
    n_teachers = len(sizes) * budget.seeds
    out = {"teachers": sum(teacher) * budget.seeds / c + rounds(n_teachers) * s}
    rr = r * rates.reference_factor
    out["reference"] = budget.seeds * sum(budget.reference_epochs * n / rr + d / (k * rr) for n, d in sizes.values())
    n_all = sum(n for n, _ in sizes.values())
    d_all = sum(d for _, d in sizes.values())
    run = lambda epochs, evals, dev=1.0: epochs * n_all / r + dev * evals * d_all / (k * r)   # noqa: E731
    student = run(budget.epochs, budget.evals)
    for key, arm in ARMS.items():
        if arm.kind == "student":
            if arm.compact:
                cost = COMPACT_FRACTION * run(budget.compact_epochs, budget.compact_evals)
            elif key == "lu_sequential":       # a task not joined yet is not evaluated: about half the dev sets
                cost = run(budget.sequential_epochs, budget.sequential_evals, dev=0.5)
            else:
                cost = student
            out[key] = rounds(budget.seeds) * (s + cost)
    out["sweep"] = budget.trials * (s + ASHA_FRACTION * student) / c
    out["searched"] = rounds(budget.seeds) * (s + student)
    out["report"] = 30.0
    return out


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
    sizes: dict = field(default_factory=dict)      # task -> (train examples used, dev examples)
    wandb: bool = True
    address: str | None = None
    console: object = None
    partial: bool = False          # --partial: run nothing, report the arms that are complete
    arms: tuple | None = None      # --arms: run only these phases (teachers always), in this order
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

    def reference_path(self, task: str, seed: int) -> Path:
        return self.storage / "reference" / f"{task}-seed{seed}.json"

    def reference_done(self) -> bool:
        return all(self.reference_path(t, s).is_file() for t in self.budget.tasks for s in range(self.budget.seeds))

    def done(self, key: str) -> bool:
        """Whether the phase ``key`` (an arm, or ``sweep``) has all its outputs in the storage."""
        if key == "teachers":
            return self.teachers_done()
        if key == "reference":
            return self.reference_done()
        expected = self.budget.trials if key == "sweep" else self.budget.seeds
        return self.experiment_done(self.experiment(key), expected)

    def left_share(self, key: str) -> float:
        """The share of the phase ``key``'s runs not in the storage yet (1.0: nothing stored): a resumed phase
        is estimated, and calibrates the ETA, by the part that runs."""
        if key == "teachers":
            total = len(self.budget.tasks) * self.budget.seeds
            return 1.0 - min(len(self.teacher_records()), total) / total
        if key == "reference":
            paths = [self.reference_path(t, s) for t in self.budget.tasks for s in range(self.budget.seeds)]
            return sum(not p.is_file() for p in paths) / len(paths)
        if key == "report":
            return 1.0
        expected = self.budget.trials if key == "sweep" else self.budget.seeds
        finished = sum(s == "TERMINATED" for s in self.trial_states(self.experiment(key)).values())
        return 1.0 - min(finished, expected) / expected

    # -------------------------------------------------------------------- phases

    def phase(self, n: int, key: str, title: str, *, run) -> None:
        from search.progress import phase
        total = self._total
        phase(self.console, n, total, title)
        left = sum(v for k, v in self.estimates.items() if k in self._pending)
        scale = self.done_s / self.done_est if self.done_est > 0 else 1.0
        self._pending.discard(key)
        if key != "report" and self.done(key):
            self.say(f"[green]phase {n}/{total} {key}: complete in {self.storage}, skipped[/]")
            return
        if self.partial and key != "report":
            self.say(f"[yellow]phase {n}/{total} {key}: not complete; --partial: not run[/]")
            return
        share = self.left_share(key)
        estimate = self.estimates[key] * share
        left -= self.estimates[key] - estimate
        self.say(f"estimate for this phase {_hms(estimate * scale)}"
                 + ("" if share == 1.0 else f" ({share:.0%} of it left to run)")
                 + f"; elapsed {_hms(time.time() - self.t0)}, protocol ETA {_hms(left * scale)}"
                 + ("" if scale == 1.0 else f" (estimates x{scale:.2f}, calibrated on this session's phases)"))
        t = time.time()
        try:
            run()
        finally:                   # interrupted or failed too: the total is over every invocation that ran the phase
            spent = time.time() - t
            self.state.spent(key, spent)
        self.done_s += spent
        self.done_est += estimate
        self.say(f"phase {n}/{total} {key}: done in {_hms(spent)}")

    def teacher_base(self) -> dict:
        """The teachers' recipe: ``bam-search teachers``' (gold labels, one task each, full size), trained to
        convergence as it trains them (``converged``: early stopping on the dev metric, up to a maximum)."""
        from search.preflight import converged, teacher_recipe
        from trainables.recipe import set_dotted
        base = teacher_recipe(self.budget.base_recipe(glue_dir=self.glue_dir))
        for key, value in converged(self.budget.teacher_patience, self.budget.teacher_max_epochs).items():
            set_dotted(base, key.split("."), value)
        return base

    def run_teachers(self) -> None:
        from ray import tune

        from search.experiment import run_experiment
        n = len(self.budget.tasks) * self.budget.seeds
        run_experiment(name=self.experiment("teachers"), trial=self._trial(self.teacher_base(), job="teacher"),
                       params={"tasks": tune.grid_search([[t] for t in self.budget.tasks]),
                               "seed": tune.grid_search(list(range(self.budget.seeds)))},
                       resources=self._resources(n), num_samples=1, live_title="teachers", total_trials=n)
        self._check_finished("teachers", n)

    def run_reference(self) -> None:
        """The plain loop (bench/reference.py) on each task and seed, in this process; one JSON and the dev
        predictions per (task, seed) under ``reference/``, so an interrupted phase redoes only what is missing."""
        for task in self.budget.tasks:
            for seed in range(self.budget.seeds):
                if self.reference_path(task, seed).is_file():
                    continue
                self.say(f"reference: {task} seed {seed} ({self.budget.reference_epochs} epochs, "
                         f"lr {self.budget.reference_lr:g})")
                reference_run(self.budget, task=task, seed=seed, glue_dir=self.glue_dir,
                              path=self.reference_path(task, seed))

    def student_recipe(self, key: str) -> dict:
        """An arm's recipe file under the budget; sequential evaluates more often and follows the budget's task
        order; a compact arm's student is the --compact-layers one."""
        from trainables.recipe import load_yaml, recipe_from_dict
        arm = ARMS[key]
        r = _merge(load_yaml(REPO / arm.recipe), self.budget.base_recipe(glue_dir=self.glue_dir))
        if r.get("switch", {}).get("mode") == "sequential":
            r["evals"] = self.budget.sequential_evals
            r["optim"] = {**r["optim"], "epochs": self.budget.sequential_epochs}
            r["switch"] = {**r["switch"], "order": list(self.budget.tasks)}
        if arm.compact:
            r["student"] = {**r.get("student", {}), **self.budget.compact_student()}
            r["evals"] = self.budget.compact_evals
            r["optim"] = {**r["optim"], "epochs": self.budget.compact_epochs}
        recipe_from_dict(r, source=arm.recipe)
        return r

    def run_train(self, group: str, recipe: dict, *, first_seed: int = 0) -> None:
        from ray import tune

        from search.experiment import run_experiment
        from search.preflight import check_teachers
        trial = self._trial(recipe, job="student")
        check_teachers(self.storage_root, trial.recipe)
        seeds = list(range(first_seed, first_seed + self.budget.seeds))
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
        grace = max(1, self.budget.evals // 2)        # the first rung is half the run, not one early evaluation
        self.say(f"sweep {name}: {self.budget.trials} trials of {SPACE}, Optuna TPE + ASHA (first rung at "
                 f"evaluation {grace} of {self.budget.evals}; an interrupted sweep continues from here, or: "
                 f"bam-search resume {name} --storage {self.storage})")
        run_experiment(name=name, trial=trial,
                       params=to_tune(space, searcher="optuna"), resources=self._resources(self.budget.trials),
                       num_samples=self.budget.trials, searcher="optuna", scheduler="asha",
                       seed=self.budget.searcher_seed, live_title="sweep", total_trials=self.budget.trials,
                       early_stopping={"grace_period": grace, "reduction_factor": 2})
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

    def retrain_best(self) -> None:
        """The sweep's best recipe on seeds after the best trial's own (as ``bam-search best --export`` writes its
        retrain command): that trial was picked on the dev set the arms are scored on, and rerunning its seed
        would repeat it exactly, luck included."""
        recipe = self.best()[0]
        self.run_train("searched", recipe, first_seed=int(recipe.get("seed") or 0) + 1)

    def _check_finished(self, group: str, expected: int) -> None:
        """After an experiment returns: every trial TERMINATED; an errored trial is a ``UserError`` (from
        ``experiment_done``); trials left pending or running mean Ctrl-C reached Tune, which returns normally."""
        name = self.experiment(group)
        if not self.experiment_done(name, expected):
            raise Interrupted(f"experiment {name} stopped with unfinished trials: {self.trial_states(name)}")

    @property
    def report_dir(self) -> Path:
        return self.storage / "reports" / "quality"

    # -------------------------------------------------------------------- the whole protocol

    def phases(self) -> list[tuple[str, str, object]]:
        """(key, title, run) of every phase, in order: the arms that answer the targets first. The reference
        (15 plain-loop runs, the costliest fixed arm, a check that the teachers are not weak) comes after the
        first student pair, so a session that ends early still answers BAM vs plain multi-task."""
        b = self.budget

        def student(key: str) -> tuple:
            return (key, f"{ARMS[key].label} ({ARMS[key].recipe}, {b.seeds} seeds)",
                    lambda: self.run_train(key, self.student_recipe(key)))
        out = [("teachers", f"single-task teachers, early-stopped ({len(b.tasks)} tasks x {b.seeds} seeds)",
                self.run_teachers),
               student("multitask"), student("bam_linear"),
               ("reference", f"reference fine-tune, plain loop ({len(b.tasks)} tasks x {b.seeds} seeds)",
                self.run_reference),
               *(student(k) for k in ("multitask_l3", "kd_switch_l3", "kd_switch", "bam_l3", "lu_joint",
                                      "lu_sequential"))]
        out.append(("sweep", f"sweep of {SPACE} ({b.trials} trials, ASHA)", self.run_sweep))
        out.append(("searched", f"the sweep's best recipe retrained ({b.seeds} seeds)",
                    self.retrain_best))
        if self.arms is not None:
            by_key = {p[0]: p for p in out}
            out = [by_key[k] for k in self.arms]
        return out

    def run(self) -> dict:
        self.t0 = time.time()
        self.state = State(self.storage)
        self.state.check_budget(self.budget)
        phases = self.phases()
        self._pending = {k for k, _, _ in phases} | {"report"}
        self._total = len(self._pending)
        for n, (key, title, run) in enumerate(phases, 1):
            self.phase(n, key, title, run=run)
        out: dict = {}
        self.phase(len(phases) + 1, "report", "report: every arm against the teachers",
                   run=lambda: out.update(self.report()))
        return out

    # -------------------------------------------------------------------- the report

    def _teacher_runs(self) -> list[dict]:
        from search.report import _teacher_dev_predictions
        from trainables.recipe import recipe_from_dict
        tasks = list(self.budget.tasks)
        batch = recipe_from_dict(self.teacher_base()).optim.batch_size
        per_seed: dict[int, dict] = {}
        for (task, seed), rec in self.teacher_records().items():
            per_seed.setdefault(seed, {})[task] = rec
        runs = []
        for s, recs in sorted(per_seed.items()):
            if set(recs) >= set(tasks):
                preds = _teacher_dev_predictions(str(self.storage), recs)
                runs.append({"group": "teachers", "seed": s, "scores": {t: recs[t]["score"] for t in tasks},
                             "selected": "each teacher's best dev evaluation (the weights it keeps)",
                             "seen": {"steps": {t: recs[t].get("best_step") for t in tasks},
                                      "passes": {t: (recs[t].get("best_step") or 0) * batch / self.sizes[t][0]
                                                 for t in tasks},
                                      "ran": {t: recs[t].get("epochs_run") for t in tasks}},
                             **({"dev_predictions": preds} if preds else {})})
        return runs

    def _reference_runs(self) -> list[dict]:
        from trainables import dev_predictions
        runs = []
        for seed in range(self.budget.seeds):
            paths = {t: self.reference_path(t, seed) for t in self.budget.tasks}
            if not all(p.is_file() for p in paths.values()):
                continue
            recs = {t: json.loads(p.read_text()) for t, p in paths.items()}
            preds = {t: dev_predictions.decode(p.with_suffix(".npz").read_bytes())[t] for t, p in paths.items()}
            runs.append({"group": "reference", "seed": seed, "scores": {t: r["score"] for t, r in recs.items()},
                         "selected": "the last step (the plain loop selects nothing)", "dev_predictions": preds,
                         "seen": {"steps": {t: r["steps"] for t, r in recs.items()},
                                  "passes": {t: float(r["epochs"]) for t, r in recs.items()}}})
        return runs

    def records(self, unreached: dict | None = None) -> list[dict]:
        """Run records for ``search.report``: the reference from ``reference/``, teachers from the baseline
        registry, students from Tune's files (one checkpoint's scores: the evaluation with the best GLUE
        average), each with ``seen``: the steps and passes over each task's examples behind its scores. An
        arm with a run that never reached a task gives no records: it goes into ``unreached`` (``arm_unreached``)."""
        from search.results import run_record, summarize, trial_results
        tasks = list(self.budget.tasks)
        runs = self._reference_runs() + self._teacher_runs()
        for group, arm in ARMS.items():
            if arm.kind not in ("student", "searched") or not self.done(group):
                continue
            name = self.experiment(group)
            trials = summarize(trial_results(str(self.storage), name))
            short = arm_unreached(trials, tasks)
            if short is not None:
                if unreached is not None:
                    unreached[group] = short
                continue
            for i, t in enumerate(trials):
                seed = (t["params"] or {}).get("seed", i)
                rec = run_record(str(self.storage), name, t, tasks, group=group, seed=int(seed))
                row = t["best_row"]
                rec["seen"] = {"steps": {x: row.get("step") for x in tasks},
                               "passes": {x: row.get(f"{x}/examples_seen", 0) / self.sizes[x][0] for x in tasks}}
                runs.append(rec)
        return runs

    def report(self) -> dict:
        from search.report import compare, write_report
        unreached: dict = {}
        runs = self.records(unreached)
        groups = [g for g in ARMS if any(r["group"] == g for r in runs)]
        tasks = list(self.budget.tasks)
        if "teachers" not in groups or (len(groups) < 2 and not self.partial):
            raise UserError(f"{self.storage}: the report needs the teachers and one more complete arm "
                            f"(complete: {', '.join(groups) or 'none'}; --partial reports the teachers alone)")
        if len(groups) < 2:                 # --partial with the teachers alone: their row, no comparison yet
            table = {"teachers": table_entry("teachers", runs, {}, tasks)}
            return {"table": table, "targets": self.targets(runs, table, tasks), "unreached": unreached,
                    "missing": [g for g in ARMS if g != "teachers" and g not in unreached], "report": {},
                    "not_selected": self.not_selected(),
                    "group_reports": {}}
        title = f"bam-search quality protocol v2: {len(tasks)} tasks, {self.budget.model}"
        candidate = "searched" if "searched" in groups else groups[-1]
        best = None
        if "searched" in groups:
            from trainables.recipe import load_recipe
            path = self.report_dir / "best_recipe.yaml"
            best = load_recipe(path).to_dict() if path.is_file() else self.best()[0]
        try:
            paths = write_report(runs=runs, out_dir=self.report_dir, title=title, recipe=best, groups=groups,
                                 baseline="teachers", candidate=candidate)
            comparisons, group_paths = {}, {}
            for g in groups:
                if g == "teachers":
                    continue
                sub = [r for r in runs if r["group"] in ("teachers", g)]
                comparisons[g] = compare(runs=sub, baseline="teachers", candidate=g, tasks=tasks)
                if ARMS[g].kind == "student":   # each student arm's own validation curves (KD switch points marked)
                    group_paths[g] = write_report(
                        runs=sub, out_dir=self.storage / "reports" / f"quality-{g}", title=f"{title}: {ARMS[g].label}",
                        groups=["teachers", g], baseline="teachers", candidate=g)
            table = {g: table_entry(g, runs, comparisons, tasks) for g in groups}
            targets = self.targets(runs, table, tasks)
        except ValueError as e:
            raise UserError(f"report: {e}") from None
        missing = [g for g in ARMS if g not in groups and g not in unreached]
        return {"table": table, "not_selected": self.not_selected(), "targets": targets, "unreached": unreached,
                "missing": missing, "report": paths,
                "group_reports": group_paths}

    def not_selected(self) -> list[str]:
        """The arms --arms left out of this run (empty: the whole protocol)."""
        if self.arms is None:
            return []
        return [g for g in ARMS if g not in self.arms]

    def targets(self, runs: list[dict], table: dict, tasks: list[str]) -> dict:
        """The target lines: each a GLUE-average difference between two arms (and, where the target asks,
        the tasks significantly better after Holm); ``None`` value where an arm is not complete yet."""
        from search.report import compare
        fixed = [g for g in FIXED if g in table]
        best_fixed = max(fixed, key=lambda g: table[g]["glue_avg"]["mean"]) if fixed else None
        out = {}
        for key, (label, target, min_sig) in TARGETS.items():
            base, cand = TARGET_PAIRS[key]
            base = base or best_fixed
            entry = {"label": label, "target": target, "min_significant": min_sig, "baseline": base,
                     "candidate": cand, "value": None, "significant": None, "met": None}
            if key == "searched_vs_best_fixed":          # which fixed recipes the best was picked from
                entry["fixed_compared"] = fixed
                entry["fixed_missing"] = [g for g in FIXED if g not in table]
            if base in table and cand in table:
                c = compare(runs=[r for r in runs if r["group"] in (base, cand)], baseline=base, candidate=cand,
                            tasks=tasks)
                sig = [row["task"] for row in c["tasks"] if row["significant"] and row["delta"] > 0]
                entry["tasks"] = {row["task"]: {"delta": row["delta"], "test": row.get("test"), "p": row.get("p"),
                                                "p_holm": row.get("p_adj")} for row in c["tasks"]}
                entry.update(value=c["glue_average"]["delta"], significant=sig,
                             met=c["glue_average"]["delta"] >= target and (min_sig is None or len(sig) >= min_sig))
            out[key] = entry
        return out


def arm_unreached(trials: list[dict], tasks) -> dict | None:
    """None when every run of an arm (summarized trials) scored every task at its selected evaluation. Else
    the arm is not compared at all: a GLUE average over the tasks it reached, or over the seeds that got
    further, would flatter it. What it did reach, for the note under the table: its runs, how many runs
    missed each task, and the scores of the tasks every run reached (at each run's selected evaluation)."""
    from search.results import unreached
    gaps = [unreached(t, tasks) for t in trials]
    if not any(gaps):
        return None
    return {"runs": len(trials), "missed": {x: sum(x in g for g in gaps) for x in tasks if any(x in g for g in gaps)},
            "reached": {x: [t["best_row"][f"{x}/score"] for t in trials] for x in tasks if not any(x in g for g in gaps)},
            "selected_steps": [t["selected_step"] for t in trials]}


def unreached_lines(unreached: dict) -> list[str]:
    """One line per arm that never reached a task: not compared, and why; the scores it has."""
    import numpy as np

    from trainables.tasks import get_task
    out = []
    for g, u in unreached.items():
        missed = ", ".join(f"{get_task(t).dir_name} in {n} of {u['runs']} runs" for t, n in u["missed"].items())
        got = "; ".join(f"{get_task(t).dir_name} {np.mean(v):.2f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.2f} "
                        f"({', '.join(f'{x:.2f}' for x in v)})" for t, v in u["reached"].items())
        out.append(f"- {ARMS[g].label} ({g}): **not compared**: never reached {missed}. Its tasks join one at a "
                   f"time, each once the previous ones switched, and at this budget the run ended first. No GLUE "
                   f"average, no target line, not a candidate for the best fixed recipe. Scores of the tasks every "
                   f"run reached, at the selected evaluations (steps "
                   f"{', '.join(str(s) for s in u['selected_steps'])}): {got or 'none'}")
    return out


def table_entry(g: str, runs: list[dict], comparisons: dict, tasks: list[str]) -> dict:
    """One arm's row: per task mean, sd and scores (and against the teachers: delta, the test, Holm p), the
    GLUE average per seed, and what its encoder saw (steps and passes over each task, means over seeds)."""
    import numpy as np

    from trainables.metrics import glue_average
    seeds = [r for r in runs if r["group"] == g]
    avgs = [glue_average({t: r["scores"][t] for t in tasks}) for r in seeds]
    entry = {"label": ARMS[g].label, "n": len(seeds), "seeds": sorted(r["seed"] for r in seeds), "tasks": {},
             "glue_avg": {"mean": float(np.mean(avgs)), "sd": float(np.std(avgs, ddof=1)) if len(avgs) > 1 else 0.0,
                          "per_seed": avgs}}
    for t in tasks:
        scores = [r["scores"][t] for r in seeds]
        cell = {"mean": float(np.mean(scores)), "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
                "scores": scores}
        if g in comparisons:
            row = next(x for x in comparisons[g]["tasks"] if x["task"] == t)
            cell.update(delta=row["delta"], test=row["test"], p=row["p"], p_holm=row["p_adj"],
                        significant=row["significant"])
        entry["tasks"][t] = cell
    if g in comparisons:
        entry["glue_avg"]["delta"] = comparisons[g]["glue_average"]["delta"]
    seen = [r.get("seen") or {} for r in seeds]
    mean = lambda key, t: float(np.mean([s[key][t] or 0 for s in seen if key in s]))   # noqa: E731
    entry["seen"] = {"steps": {t: mean("steps", t) for t in tasks}, "passes": {t: mean("passes", t) for t in tasks}}
    if all("ran" in s for s in seen):
        entry["seen"]["ran"] = {t: mean("ran", t) for t in tasks}
    return entry


def reference_run(budget: Budget, *, task: str, seed: int, glue_dir: str | None, path: Path) -> dict:
    """One plain fine-tune (bench/reference.py's loop: fp32, AdamW at a constant LR, random batches) of the
    student's model and head on ``task``'s budgeted examples, scored at its last step on the full dev set(s);
    writes ``path`` (scores, steps, seconds) and its dev predictions beside it (``.npz``)."""
    import numpy as np

    from reference import predict_reference, train_reference
    from trainables import dev_predictions
    from trainables.data import load_examples
    from trainables.metrics import compute_metrics
    from trainables.model import load_tokenizer
    from trainables.recipe import recipe_from_dict
    from trainables.storage import atomic_write
    from trainables.tasks import get_task
    from trainables.trial import build_model
    t = get_task(task)
    recipe = recipe_from_dict({"tasks": [task], "model": budget.model, "seed": seed, "precision": "fp32",
                               "teacher": {"use": False}, "student": {"pooling": budget.pooling},
                               "data": budget.data(glue_dir=glue_dir)})
    tokenizer = load_tokenizer(budget.model)
    model = build_model(recipe, tokenizer=tokenizer, tasks={task: t})          # the student's init
    train = load_examples(task=task, split="train", glue_dir=glue_dir).subsample(
        max_examples=budget.max_train_examples, seed=recipe.data.data_seed)
    out = train_reference(model=model, tokenizer=tokenizer, train=train, task=t, epochs=budget.reference_epochs,
                          batch_size=recipe.optim.batch_size, lr=budget.reference_lr, max_length=budget.max_length,
                          seed=seed)
    splits, scores = {}, []
    for split in t.dev_splits:
        dev = load_examples(task=task, split=split, glue_dir=glue_dir).subsample(
            max_examples=budget.max_dev_examples, seed=recipe.data.data_seed)
        preds = predict_reference(model=model, tokenizer=tokenizer, examples=dev, task=t,
                                  max_length=budget.max_length)
        scores.append(compute_metrics(metrics=t.metrics, predictions=preds, labels=dev.labels)["score"])
        splits[split] = {"ids": np.asarray(dev.ids), "gold": np.asarray(dev.labels),
                         "pred": dev_predictions.compact(preds, regression=t.is_regression)}
    record = {"task": task, "seed": seed, "score": float(np.mean(scores)), "steps": out["steps"],
              "epochs": budget.reference_epochs, "lr": budget.reference_lr, "train_s": out["train_s"],
              "n_train": len(train)}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path.with_suffix(".npz"), dev_predictions.encode({task: {"metrics": list(t.metrics),
                                                                          "splits": splits}}))
    atomic_write(path, (json.dumps(record, indent=1) + "\n").encode())     # last: its presence means done
    return record


# ------------------------------------------------------------------------------------------------ output

def _cell(c: dict, *, teachers: bool) -> str:
    text = f"{c['mean']:.2f} ± {c['sd']:.2f}"
    if teachers:
        return text
    p = "n/a" if c.get("p_holm") is None else f"{c['p_holm']:.3f}"
    return f"{text} ({c['delta']:+.2f}; p {p}{'*' if c.get('significant') else ''})"


def _span(values) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.1f}" if abs(hi - lo) < 0.05 else f"{lo:.1f}–{hi:.1f}"


def seen_text(entry: dict) -> str:
    """What an arm's encoder saw behind its scores: steps and passes over each task's examples (the range
    over tasks of the means over seeds); teachers also how many epochs they ran before stopping."""
    seen = entry.get("seen") or {}
    if not seen.get("passes"):
        return "-"
    steps = list(seen["steps"].values())
    text = f"{_span(steps).split('.')[0] if len(set(int(s) for s in steps)) == 1 else _span(steps)} steps; " \
           f"{_span(seen['passes'].values())} passes/task"
    if seen.get("ran"):
        text += f" (of {_span(seen['ran'].values())} run)"
    return text


def markdown_table(result: dict, tasks) -> str:
    from trainables.tasks import get_task
    head = ["arm", "n", *[get_task(t).dir_name for t in tasks], "GLUE avg", "encoder saw (selected checkpoint)"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---:"] + ["---:"] * (len(tasks) + 1) + ["---"]) + "|"]
    for g, e in result["table"].items():
        teachers = g == "teachers"
        avg = f"{e['glue_avg']['mean']:.2f} ± {e['glue_avg']['sd']:.2f}"
        if not teachers:
            avg += f" ({e['glue_avg']['delta']:+.2f})"
        lines.append("| " + " | ".join([e["label"], str(e["n"]), *[_cell(e["tasks"][t], teachers=teachers) for t in tasks],
                                        avg, seen_text(e)]) + " |")
    return "\n".join(lines)


def target_lines(targets: dict) -> list[str]:
    """``- LABEL: X`` per target (the wording runs are compared by), met or not, or not run yet."""
    out = []
    for t in targets.values():
        want = f"target ≥ {t['target']:+g}" + (f", with ≥ {t['min_significant']} tasks significant (Holm)"
                                                if t["min_significant"] else "")
        if t["value"] is None:
            needs = (f"arms {t['baseline']} and {t['candidate']}" if t["baseline"] else
                     f"arm {t['candidate']} and one of the fixed recipes ({', '.join(FIXED)})")
            out.append(f"- {t['label']}: not run yet ({want}; needs {needs})")
            continue
        sig = f"; tasks significant (Holm): {', '.join(t['significant']) or 'none'}" if t["min_significant"] else ""
        base = f" [{t['baseline']}]" if t["candidate"] == "searched" and t["baseline"] in FIXED else ""
        if t.get("fixed_missing"):
            base = (f" [{t['baseline']}, the best of {', '.join(t['fixed_compared'])}; "
                    f"not in this run: {', '.join(t['fixed_missing'])}]")
        out.append(f"- {t['label']}: {t['value']:+.2f}{base}{sig} ({want}): "
                   f"{'met' if t['met'] else '**not met**'}")
    return out


def _rel(path: str | Path) -> str:
    p = Path(path).resolve()
    for base, shown in ((REPO, ""), (Path.home().resolve(), "~/")):   # no path of this machine in RESULTS.md
        try:
            return shown + str(p.relative_to(base))
        except ValueError:
            pass
    return str(p)


def markdown_section(result: dict, *, budget: Budget, meta: dict) -> str:
    figs = [_rel(result["report"][k]) for k in ("bars", "curves") if k in result["report"]]
    figs += [_rel(p["curves"]) for p in result["group_reports"].values() if "curves" in p]
    left_out = set(result.get("not_selected") or [])
    missing = [g for g in result.get("missing") or [] if g not in left_out]
    left_out = [g for g in result.get("missing") or [] if g in left_out]
    return "\n".join([
        f"Run: {meta['date']}, {meta['machine']}; the protocol's phases took {meta['compute']} in all "
        f"(summed over every invocation that ran them; this invocation: {meta['wall']}). "
        f"Budget (protocol v{budget.protocol}): model {budget.model}, tasks {', '.join(budget.tasks)}, "
        f"at most {budget.max_train_examples} training examples per task (seed 0), "
        f"{'full dev sets' if budget.max_dev_examples is None else f'{budget.max_dev_examples} dev examples'}, "
        f"max length {budget.max_length} (dynamic padding); students {budget.epochs:g} epochs over the union, "
        f"lr {budget.lr:g}, {budget.pooling} pooling, {budget.evals} evaluations (Lu et al. sequential "
        f"{budget.sequential_epochs:g} epochs, {budget.sequential_evals} evaluations); teachers early-stopped (patience {budget.teacher_patience}, up to "
        f"{budget.teacher_max_epochs:g} epochs, lr {budget.lr:g}); reference {budget.reference_epochs} epochs at "
        f"lr {budget.reference_lr:g}; compact students {budget.compact_layers} layers, "
        f"{budget.compact_epochs:g} epochs, {budget.compact_evals} evaluations; {budget.seeds} seeds; "
        f"{budget.trials} sweep trials.",
        "",
        "Cells: dev score mean ± sd over seeds (GLUE ×100); against the teachers: (Δ; Holm-adjusted p of the test "
        "the report names per task: the paired bootstrap over dev examples when every run stored its dev "
        "predictions, else Welch's t over seeds; * = p < 0.05). Each run's scores are one checkpoint's: a "
        "student's evaluation with the best GLUE average, a teacher's best evaluation, the reference's last step. "
        "'encoder saw': steps and passes over each task's examples up to that checkpoint (range over tasks).",
        "",
        markdown_table(result, budget.tasks),
        "",
        *target_lines(result["targets"]),
        *unreached_lines(result.get("unreached") or {}),
        *([f"- not run yet: {', '.join(missing)} (the protocol resumes from its storage)"] if missing else []),
        *([f"- not in this run (`--arms`): {', '.join(left_out)}"] if left_out else []),
        *([f"- report: `{_rel(result['report']['html'])}`; figures: " + ", ".join(f"`{f}`" for f in figs)]
          if result["report"] else []),
    ])


BEGIN, END = "<!-- quality-protocol-v2:begin -->", "<!-- quality-protocol-v2:end -->"


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
    p.add_argument("--glue-dir", help="GLUE-format folder (default $BAM_GLUE_DIR, else ../shared/data/glue; "
                                      "--quick without one uses the synthetic tasks)")
    p.add_argument("--tasks", help=f"comma-separated (default {','.join(GLUE5)})")
    p.add_argument("--storage", help="storage root (default ~/.cache/bam-bench/quality-v2; "
                                     "~/.cache/bam-bench/quality-v2-quick with --quick)")
    p.add_argument("--seeds", type=int, help="seeds per arm (default 3; 2 with --quick)")
    p.add_argument("--trials", type=int, help="sweep trials (default 16; 2 with --quick)")
    p.add_argument("--epochs", type=float, help="students' epochs over the union of the tasks (default 3; 1 with --quick)")
    p.add_argument("--max-train-examples", type=int, help="training examples per task (default 2000; 200 with --quick)")
    p.add_argument("--max-dev-examples", type=int, help="dev examples per task (default: all; 200 with --quick)")
    p.add_argument("--lr", type=float, help="learning rate of teachers and students (default 1e-4; 2e-3 with --quick); "
                                            "the sweep samples its own")
    p.add_argument("--pooling", choices=["cls", "mean"], help="sentence pooling of every model (default mean)")
    p.add_argument("--evals", type=int, help="evaluations per student run (default 6; 2 with --quick)")
    p.add_argument("--teacher-max-epochs", type=float, help="teachers stop early within this (default 10; 3 with --quick)")
    p.add_argument("--teacher-patience", type=int, help="evaluations without a better dev score (default 2; 1 with --quick)")
    p.add_argument("--reference-epochs", type=int, help="the plain loop's epochs (default 3; 1 with --quick)")
    p.add_argument("--compact-layers", type=int, help="layers of the compact students (default 3; 1 with --quick)")
    p.add_argument("--compact-epochs", type=float,
                   help="compact students' epochs over the union (default 10; --epochs with --quick)")
    p.add_argument("--compact-evals", type=int, help="compact students' evaluations (default 10; --evals with --quick)")
    p.add_argument("--sequential-epochs", type=float,
                   help="Lu et al. sequential's epochs over the union (default 6; --epochs with --quick)")
    p.add_argument("--sequential-evals", type=int,
                   help="Lu et al. sequential's evaluations (default 36; 3 x --evals with --quick)")
    p.add_argument("--arms", help="comma-separated phases to run, in this order (default: all, in the protocol's "
                                  f"order); the teachers always run first. Phases: {', '.join(PHASE_KEYS)}")
    p.add_argument("--partial", action="store_true",
                   help="run nothing: report (and --update-results) the arms complete so far, naming the rest")
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
                    trials=pick(args.trials, 16, 2), epochs=pick(args.epochs, 3.0, 1.0),
                    max_train_examples=pick(args.max_train_examples, 2000, 200),
                    max_dev_examples=pick(args.max_dev_examples, None, 200), max_length=128,
                    lr=pick(args.lr, 1e-4, 2e-3), pooling=pick(args.pooling, "mean", "cls"),
                    evals=pick(args.evals, 6, 2), teacher_max_epochs=pick(args.teacher_max_epochs, 10.0, 3.0),
                    teacher_patience=pick(args.teacher_patience, 2, 1),
                    reference_epochs=pick(args.reference_epochs, 3, 1),
                    compact_layers=pick(args.compact_layers, 3, 1))
    budget = replace(budget, compact_epochs=pick(args.compact_epochs, 10.0, budget.epochs),
                     compact_evals=pick(args.compact_evals, 10, budget.evals),
                     sequential_epochs=pick(args.sequential_epochs, 6.0, budget.epochs),
                     sequential_evals=pick(args.sequential_evals, 36, 3 * budget.evals))
    for name in ("seeds", "trials", "evals", "teacher_patience", "reference_epochs", "compact_layers", "compact_evals",
                 "sequential_evals"):
        if getattr(budget, name) < 1:
            raise UserError(f"--{name.replace('_', '-')}: must be >= 1")
    if min(budget.epochs, budget.lr, budget.teacher_max_epochs, budget.compact_epochs, budget.sequential_epochs) <= 0:
        raise UserError("--epochs, --compact-epochs, --sequential-epochs, --teacher-max-epochs and --lr: must be > 0")
    if budget.teacher_patience > math.ceil(budget.teacher_max_epochs) - 2:
        raise UserError(f"--teacher-patience {budget.teacher_patience}: teachers evaluate once an epoch "
                        f"({math.ceil(budget.teacher_max_epochs)} times) and stop at the earliest after patience + 1 "
                        "evaluations: give at most --teacher-max-epochs - 2")
    parse_arms(args.arms)                                  # bad --arms fails here, before anything loads
    default = Path.home() / ".cache" / "bam-bench" / ("quality-v2-quick" if q else "quality-v2")
    storage = Path(args.storage).expanduser().resolve() if args.storage else default
    return budget, storage, glue


PHASE_KEYS = ("teachers", "multitask", "bam_linear", "reference", "multitask_l3", "kd_switch_l3", "kd_switch",
              "bam_l3", "lu_joint", "lu_sequential", "sweep", "searched")


def parse_arms(text: str | None) -> tuple | None:
    """``--arms``: the phases to run, teachers first (every arm is compared with them; the KD arms and the
    sweep learn from them) and ``sweep`` before ``searched`` (the retrain needs the sweep's best)."""
    if text is None:
        return None
    keys = [k.strip() for k in text.split(",") if k.strip()]
    bad = [k for k in keys if k not in PHASE_KEYS]
    if bad or not keys:
        raise UserError(f"--arms {text}: unknown phase {', '.join(bad) or '(none given)'}; "
                        f"phases: {', '.join(PHASE_KEYS)}")
    if len(set(keys)) != len(keys):
        raise UserError(f"--arms {text}: a phase is named twice")
    if "searched" in keys and ("sweep" not in keys or keys.index("sweep") > keys.index("searched")):
        raise UserError(f"--arms {text}: searched (the sweep's best, retrained) needs sweep before it")
    return ("teachers", *(k for k in keys if k != "teachers"))


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
        console.print(f"[bold]quality protocol v{budget.protocol}[/]: {budget.model}, tasks {', '.join(budget.tasks)} "
                      f"({', '.join(f'{t} {n}/{d}' for t, (n, d) in sizes.items())} train/dev examples), "
                      f"{budget.epochs:g} epochs, {budget.seeds} seeds, {budget.trials} sweep trials; storage {storage}")
        console.print("estimate (" + f"{rates.train_examples_per_s:g} examples/s per trial and core, "
                      f"{concurrency()} trials at once, {rates.startup_s:g} s start-up per trial): "
                      + ", ".join(f"{k} {_hms(v)}" for k, v in estimates.items())
                      + f"; total {_hms(sum(estimates.values()))}")
        proto = Protocol(budget=budget, storage=storage, glue_dir=glue, rates=rates, sizes=sizes,
                         wandb=not args.no_wandb, address=args.address, console=console, estimates=estimates,
                         partial=args.partial, arms=parse_arms(args.arms))
        result = proto.run()
        meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "wall": _hms(time.time() - t0),
                "compute": _hms(proto.state.seconds()), "machine": host_line()}
        shown = (publish_figures(result, Path(args.update_results).resolve().parent / "figures" / "quality-v2")
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
                      f"report: {result['report'].get('html', 'none yet (no arm to compare)')}\n"
                      f"wall time {meta['wall']}")
        return 0
    except UserError as e:
        print(f"bench/quality.py: error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted):
        print("bench/quality.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        if proto is not None and proto.ray_started:
            import ray
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
