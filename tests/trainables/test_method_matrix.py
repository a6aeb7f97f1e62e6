"""Every combination the search can sample runs, or is refused in one line before Ray starts (issue 17, Show).

* The cross pairs of method families that interact: ``switch.mode`` x ``switch.criterion``, ``mtl.pcgrad`` x
  ``sampling.batches``, ``pack`` x pooling, batches and ``student.hidden_distill`` (``student.hidden_distill`` x
  the student's size: test_compact_students.py). Each runs two training steps and one evaluation in-process on
  the tiny model, or the schema refuses it in one line.
* Every shipped space: every pair of values of its categorical parameters appears together in at least one
  recipe that runs two steps and one evaluation (an all-pairs cover; numeric parameters at their first example),
  as ``bam-search sweep`` would build it from the command line ``--tasks ... --model tiny``.
"""
from __future__ import annotations

import itertools

import pytest

from search.spaces import examples_of, list_spaces, load_space
from trainables import teachers, trial
from trainables.errors import UserError
from trainables.loop import run_training
from trainables.recipe import method_families, recipe_from_dict, with_params
from test_compact_students import _cpu_one_thread, hf_folder  # noqa: F401  (autouse: one thread, CPU, no ray.train)

TASKS = ["syn_noisy", "syn_pairmatch"]
DATA = {"max_train_examples": 24, "max_dev_examples": 16, "max_length": 32}
BASE = {"tasks": TASKS, "model": "tiny", "precision": "fp32", "evals": 1, "seed": 0,
        "optim": {"steps": 2, "batch_size": 8, "lr": 1e-3}, "data": DATA}


@pytest.fixture(scope="module")
def env(tmp_path_factory, cache_dir):
    """A store with one tiny teacher per task (3 steps), so recipes with ``teacher.use`` find predictions."""
    tmp = tmp_path_factory.mktemp("matrix")
    e = {"tmp": tmp, "storage": str(tmp / "storage"), "cache": cache_dir}
    for t in TASKS:
        rec = with_params(BASE, {"tasks": [t], "teacher.use": False, "optim.steps": 3})
        run = trial.setup_run({"recipe": rec, "job": "teacher", "storage": e["storage"], "cache_dir": cache_dir,
                               "artifacts_dir": str(tmp / "art" / "teacher")})
        run_training(run, report=lambda m, r: None)
        teachers.finish_teacher(run, storage=e["storage"])
    return e


def two_steps(env: dict, rec: dict, name: str) -> dict:
    """Two training steps and one evaluation of ``rec``; its last report."""
    run = trial.setup_run({"recipe": rec, "job": "student", "storage": env["storage"], "cache_dir": env["cache"],
                           "artifacts_dir": str(env["tmp"] / "art" / name)})
    reports = []
    run_training(run, report=lambda metrics, r: reports.append(metrics))
    assert run.step == 2 and len(reports) == 1, name
    assert any(k.endswith("/score") for k in reports[0]), name
    return reports[0]


def runs_or_refused(env: dict, rec: dict, name: str, *, refused_for: str | None) -> None:
    """``refused_for``: the key the one-line refusal must name (None: the recipe must run)."""
    if refused_for is None:
        two_steps(env, recipe_from_dict(rec, source=name).to_dict(), name)
        return
    with pytest.raises(UserError) as e:
        recipe_from_dict(rec, source=name)
    assert refused_for in str(e.value) and "\n" not in str(e.value), str(e.value)


CRITERION_NEEDS = {"fixed_step": {"switch.at_step": 1}}


@pytest.mark.parametrize("mode,criterion", itertools.product(["joint", "sequential"],
                                                             method_families()["switch.criterion"]))
def test_mode_by_criterion(mode, criterion, env):
    rec = with_params(BASE, {"teacher.use": False, "switch.mode": mode, "switch.criterion": criterion,
                             **CRITERION_NEEDS.get(criterion, {})})
    refused = "switch.criterion" if (mode, criterion) == ("sequential", "never") else None
    runs_or_refused(env, rec, f"{mode}-{criterion}", refused_for=refused)


@pytest.mark.parametrize("pcgrad,batches", itertools.product([False, True], ["single", "mixed"]))
def test_pcgrad_by_batches(pcgrad, batches, env):
    rec = with_params(BASE, {"teacher.use": False, "mtl.pcgrad": pcgrad, "sampling.batches": batches})
    refused = "mtl.pcgrad" if (pcgrad, batches) == (True, "single") else None
    runs_or_refused(env, rec, f"pcgrad{pcgrad}-{batches}", refused_for=refused)


@pytest.mark.parametrize("pooling,batches,hidden", [("cls", "single", 0.0), ("mean", "mixed", 0.0),
                                                   ("cls", "mixed", 1.0)])
def test_pack_by_pooling_batches_and_hidden_distill(pooling, batches, hidden, env):
    """``pack: true`` (off by default) with what reads the encoder's per-token states (tests/trainables/test_packing.py
    shows packed and unpacked give the same logits and gradients)."""
    rec = with_params(BASE, {"pack": True, "student.pooling": pooling, "sampling.batches": batches,
                             "student.hidden_distill": hidden, "teacher.use": hidden > 0})
    runs_or_refused(env, rec, f"pack-{pooling}-{batches}-{hidden}", refused_for=None)


def all_pairs(choices: list[list]) -> list[tuple]:
    """A small set of combinations in which every pair of values of two different parameters appears (greedy)."""
    want = {((i, a), (j, b)) for i, j in itertools.combinations(range(len(choices)), 2)
            for a in range(len(choices[i])) for b in range(len(choices[j]))}
    out = []
    while want:
        (i, a), (j, b) = min(want)
        pick = {i: a, j: b}
        for k in range(len(choices)):
            if k not in pick:
                pick[k] = max(range(len(choices[k])), key=lambda v: sum(
                    ((min(k, m), v if k < m else pick[m]), (max(k, m), pick[m] if k < m else v)) in want
                    for m in pick))
        combo = tuple(pick[k] for k in range(len(choices)))
        want -= {((i, combo[i]), (j, combo[j])) for i, j in itertools.combinations(range(len(choices)), 2)}
        out.append(tuple(choices[k][combo[k]] for k in range(len(choices))))
    return out or [tuple(c[0] for c in choices)]


def test_all_pairs_covers_every_pair():
    choices = [[1, 2, 3], ["a", "b"], [True, False], ["x"]]
    combos = all_pairs(choices)
    for (i, ci), (j, cj) in itertools.combinations(enumerate(choices), 2):
        assert {(c[i], c[j]) for c in combos} == set(itertools.product(ci, cj))
    assert len(combos) < 3 * 2 * 2


# spaces that extract layers (tiny has no weights to extract and 2 layers): a tiny-like local folder that deep,
# distilled from the tiny teachers (same tokenizer and width)
NEEDS_DEPTH = {"compact": 6}


def command_line_for(path, env: dict) -> dict:
    """``--tasks ... --model tiny`` as the sweep's command line; a space in NEEDS_DEPTH: a deep enough model."""
    if path.stem not in NEEDS_DEPTH:
        return with_params(BASE, {})
    folder = env["tmp"] / f"deep{NEEDS_DEPTH[path.stem]}"
    if not folder.exists():
        hf_folder(folder, layers=NEEDS_DEPTH[path.stem])
    return with_params(BASE, {"model": str(folder), "teacher.model": "tiny"})


@pytest.mark.parametrize("path", list_spaces(), ids=lambda p: p.stem)
def test_every_pair_a_shipped_space_samples_runs(path, env):
    command_line = command_line_for(path, env)
    space = load_space(path, base_recipe=command_line)
    names = list(space["parameters"])
    choices = [examples_of(space["parameters"][n], space["kinds"][n])[:None if space["kinds"][n] == "categorical"
                                                                         else 1] for n in names]
    for combo in all_pairs(choices):
        sample = dict(zip(names, combo))
        rec = recipe_from_dict(with_params(space["base"], sample), source=f"{path.name} {sample}").to_dict()
        two_steps(env, rec, f"{path.stem}-{abs(hash(combo))}")
