"""`bam-search teachers` trains exactly the (task, seed) pairs whose teacher for the current data is not stored,
whatever ran before under that name (issue 21, item 1: after a train.tsv was edited, the same command used to
restore the finished experiment, train nothing and exit 0, while `train` kept asking for it). No Ray: the plan
is checked, and stored teachers are written through the store's own API."""
from __future__ import annotations

import json

import numpy as np

from search.cli import build_parser, main
from search.preflight import plan_teachers
from trainables.recipe import PAIR, with_params
from trainables.teacher_store import TeacherStore, teacher_key


def glue(tmp_path, rows: int = 12, edited: bool = False):
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True, exist_ok=True)
    lines = ["index\tsentence1\tsentence2\tlabel"]
    for i in range(rows):
        word = "edited" if edited and i == 3 else f"word{i}"
        lines.append(f"{i}\tA {word} here .\tA claim {i} .\t{'entailment' if i % 2 else 'not_entailment'}")
    (d / "train.tsv").write_text("\n".join(lines) + "\n")
    (d / "dev.tsv").write_text("\n".join(lines[:7]) + "\n")
    return tmp_path / "glue"


def args(tmp_path, *extra):
    return ["teachers", "--tasks", "rte,syn_noisy", "--model", "tiny", "--seeds", "2", "--max-train-examples", "12",
            "--glue-dir", str(tmp_path / "glue"), "--storage", str(tmp_path / "st"), *extra]


def plan(tmp_path, *extra):
    return plan_teachers(build_parser().parse_args(args(tmp_path, *extra)))


def store_teacher(p, task: str, seed: int) -> None:
    """What a finished teacher trial leaves in the store (its key from the plan's own recipe)."""
    from trainables.model import model_identity
    from trainables.recipe import recipe_from_dict
    from trainables.teachers import teacher_config, train_examples
    one = recipe_from_dict(with_params(p.recipe.to_dict(), {"tasks": [task], "seed": seed}))
    ex = train_examples(one)[task]
    key = teacher_key(task=task, fingerprint=ex.fingerprint(), model=model_identity(one.model),
                      teacher_config=teacher_config(one), seed=seed)
    TeacherStore(p.storage).save(key=key, predictions=np.zeros((len(ex), 2), np.float32), ids=ex.ids,
                                 meta={"task": task, "seed": seed})


def pairs(params: dict) -> set[tuple[str, int]]:
    if PAIR in params:
        return {(v["tasks"][0], v["seed"]) for v in params[PAIR]["grid_search"]}
    return {(t[0], s) for t in params["tasks"]["grid_search"] for s in params["seed"]["grid_search"]}


def test_only_the_missing_pairs_are_trained_and_the_data_are_in_the_name(tmp_path, capsys):
    glue(tmp_path)
    first = plan(tmp_path)
    assert first.trials == 4 and pairs(first.params) == {("rte", 0), ("rte", 1), ("syn_noisy", 0), ("syn_noisy", 1)}
    for t, s in [("rte", 0), ("rte", 1), ("syn_noisy", 0)]:
        store_teacher(first, t, s)
    rest = plan(tmp_path)
    assert rest.name == first.name and rest.trials == 1 and pairs(rest.params) == {("syn_noisy", 1)}
    store_teacher(first, "syn_noisy", 1)

    # every pair stored: nothing to train, no Ray, exit 0
    assert plan(tmp_path).trials == 0
    assert main(args(tmp_path)) == 0
    assert "nothing to train" in capsys.readouterr().out

    # an edited train.tsv: the RTE teachers are stale; a new experiment name (no restore of the finished one)
    glue(tmp_path, edited=True)
    stale = plan(tmp_path)
    assert pairs(stale.params) == {("rte", 0), ("rte", 1)} and stale.name != first.name
    assert "grid_search" in json.dumps(stale.params, default=str)


def test_a_named_finished_experiment_with_stale_teachers_is_one_line(tmp_path, capsys):
    glue(tmp_path)
    exp = tmp_path / "st" / "experiments" / "mine"
    exp.mkdir(parents=True)
    state = {"trial_data": [[json.dumps({"relative_logdir": "t0", "status": "TERMINATED"}), ""]]}
    (exp / "experiment_state-2026-12-03_10-00-00.json").write_text(json.dumps(state))
    rc = main(args(tmp_path, "--name", "mine"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--name mine" in err[0] and "another --name" in err[0]


def test_a_pair_value_sets_the_task_and_the_seed_a_trial_builds():
    """What a trial does with one value of the joint grid (trainables.trial.build_trial_config's recipe)."""
    from trainables.recipe import recipe_from_dict
    base = {"tasks": ["rte", "syn_noisy"], "model": "tiny", "seed": 0, "teacher": {"use": False}}
    r = recipe_from_dict(with_params(base, {PAIR: {"tasks": ["syn_noisy"], "seed": 1}}), source="sampled config")
    assert list(r.tasks) == ["syn_noisy"]
    assert r.seed == 1
