"""The sequential KD switch (Lu et al., NAACL 2022), in-process on the tiny model and three synthetic tasks.

Tasks join in ``switch.order``, each when every task before it has switched; a task that has not joined is
neither trained nor evaluated nor reported; λ of a late task runs over its own span; the joining state survives
a checkpoint; ``criterion: never`` with ``mode: sequential`` is refused, and no shipped space can sample it.
"""
from __future__ import annotations

import dataclasses
import itertools
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from search.spaces import examples_of, list_spaces, load_space
from trainables import trial
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.errors import UserError
from trainables.loop import Run
from trainables.recipe import load_recipe, recipe_from_dict, with_params
from test_model_loop import train                      # run_training, collecting the reports

pytestmark = pytest.mark.usefixtures("cpu_one_thread")     # tests/trainables/conftest.py

REPO = Path(__file__).resolve().parents[2]
A, B, C = "syn_sentiment", "syn_pairmatch", "syn_similarity"
# 12 steps, an evaluation every 2; A switches at step 4, B (joined at 4) at 8, C (joined at 8) at 12
SWITCH_AT = {A: 4, B: 8, C: 12}
JOINED = {2: [A], 4: [A], 6: [A, B], 8: [A, B], 10: [A, B, C], 12: [A, B, C]}


def sequential_recipe(**over) -> dict:
    rec = {"tasks": [A, B, C], "model": "tiny", "precision": "fp32", "evals": 6, "seed": 0,
           "teacher": {"use": False}, "optim": {"steps": 12, "batch_size": 8, "lr": 1e-3},
           "sampling": {"method": "uniform", "batches": "mixed"},
           "data": {"max_train_examples": 48, "max_dev_examples": 32, "max_length": 32},
           "switch": {"criterion": "fixed_step", "mode": "sequential", "order": [A, B, C],
                      "per_task": {t: {"at_step": s} for t, s in SWITCH_AT.items()}}}
    return with_params(rec, over)


def make_run(tmp: Path, rec: dict, cache_dir: str) -> Run:
    return trial.setup_run({"recipe": rec, "job": "student", "storage": str(tmp / "storage"),
                            "artifacts_dir": str(tmp / "art"), "cache_dir": cache_dir})


def spy_batches(run: Run) -> dict[int, set[str]]:
    """step -> the tasks that got a training batch at that step."""
    seen: dict[int, set[str]] = {}
    original = run._task_batches

    def wrapper():
        parts = original()
        seen[run.step] = set(parts)
        return parts

    run._task_batches = wrapper
    return seen


def task_keys(metrics: dict) -> set[str]:
    """The tasks that have any ``TASK/...`` key in a report."""
    return {k.split("/")[0] for k in metrics if "/" in k}


def test_tasks_join_in_order_and_only_joined_tasks_train_and_report(tmp_path, cache_dir):
    run = make_run(tmp_path, sequential_recipe(), cache_dir)
    assert run.active == [A] and run.joined_at == {A: 0}
    batches = spy_batches(run)
    reports = train(run)
    # (a) B gets no batch before A's switch (step 4) and does after; C likewise after B's (step 8)
    assert set().union(*(batches[s] for s in range(0, 4))) == {A}
    assert set().union(*(batches[s] for s in range(4, 8))) == {A, B}
    assert set().union(*(batches[s] for s in range(8, 12))) == {A, B, C}
    assert run.joined_at == {A: 0, B: 4, C: 8}
    assert {t: run.switch[t].switched_at for t in run.tasks} == SWITCH_AT
    # (b) every report covers exactly the tasks joined before its evaluation
    assert [m["step"] for m in reports] == sorted(JOINED)
    for m in reports:
        want = JOINED[m["step"]]
        assert m["joined"] == ",".join(want)
        assert task_keys(m) == set(want), m["step"]
        assert m["glue_avg"] == pytest.approx(np.mean([m[f"{t}/score"] for t in want]))
        assert m["glue_avg_best"] == pytest.approx(np.mean([m[f"{t}/best"] for t in want]))
        assert {t: m[f"{t}/joined_at"] for t in want} == {t: run.joined_at[t] for t in want}
    by_step = {m["step"]: m for m in reports}
    assert (by_step[4]["switched_now"], by_step[4]["joined_now"]) == (A, B)
    assert (by_step[8]["switched_now"], by_step[8]["joined_now"]) == (B, C)
    assert by_step[12]["joined_now"] == "" and by_step[12]["switched"] == f"{A},{B},{C}"
    assert [sorted(e["scores"]) for e in run.evals] == [sorted(JOINED[s]) for s in sorted(JOINED)]


def test_joint_mode_reports_every_task_from_the_start(tmp_path, cache_dir):
    run = make_run(tmp_path, sequential_recipe(**{"switch.mode": "joint", "evals": 2, "optim.steps": 4}), cache_dir)
    reports = train(run)
    assert run.joined_at == {A: 0, B: 0, C: 0}
    assert all(task_keys(m) == {A, B, C} and m["joined"] == f"{A},{B},{C}" for m in reports)


def test_switch_and_joining_state_survive_a_checkpoint(tmp_path, cache_dir):
    rec = sequential_recipe()
    ck = tmp_path / "ck"

    def save_at_6(m, r):
        if r.step == 6:                        # A switched, B joined but not switched, C not joined
            save_checkpoint(r, ck)

    torch.manual_seed(1)
    a = make_run(tmp_path, rec, cache_dir)
    ra = train(a, on_report=save_at_6)
    torch.manual_seed(2)
    b = make_run(tmp_path, rec, cache_dir)
    load_checkpoint(b, ck)
    assert b.step == 6 and b.active == [A, B] and b.joined_at == {A: 0, B: 4}
    assert b.switch[A].switched and not b.switch[B].switched and b.switch[C].history == []
    rb = train(b)
    assert [m["step"] for m in rb] == [8, 10, 12]
    for ma, mb in zip(ra[3:], rb):
        assert task_keys(ma) == task_keys(mb) and ma["joined"] == mb["joined"]
        for t in ma["joined"].split(","):
            assert ma[f"{t}/score"] == pytest.approx(mb[f"{t}/score"], abs=1e-9)
    assert {t: s.to_dict() for t, s in a.switch.items()} == {t: s.to_dict() for t, s in b.switch.items()}
    assert a.active == b.active and a.joined_at == b.joined_at == {A: 0, B: 4, C: 8}


def test_a_checkpoint_without_joined_at_loads(tmp_path, cache_dir):
    run = make_run(tmp_path, sequential_recipe(), cache_dir)
    st = run.state()
    st["active"] = [A, B]
    del st["joined_at"]                        # written before joined_at existed
    fresh = make_run(tmp_path, sequential_recipe(), cache_dir)
    fresh.load_state(st, tensors=run.tensor_state(), snapshots={})
    assert fresh.active == [A, B] and fresh.joined_at == {A: 0, B: 0}


def test_lambda_of_a_late_task_runs_over_its_own_span(tmp_path, cache_dir):
    run = make_run(tmp_path, sequential_recipe(), cache_dir)
    run.r = dataclasses.replace(run.r, teacher=dataclasses.replace(run.r.teacher, use=True))   # linear anneal
    for t in (A, B):
        run.data[t].teacher = np.zeros((len(run.data[t].train), 2), dtype=np.float32)
    run.joined_at = {A: 0, B: 4}
    index = np.arange(4)
    for step, lam_a, lam_b in ((4, 4 / 12, 0.0), (8, 8 / 12, 0.5), (12, 1.0, 1.0)):
        run.step = step
        assert run.task_progress(A) == run.progress() == step / 12
        assert run.target_source(A, index)[1] == pytest.approx(lam_a)
        assert run.target_source(B, index)[1] == pytest.approx(lam_b), step


def test_delta_vs_teachers_covers_the_joined_tasks(tmp_path, cache_dir, monkeypatch):
    """trial.py's reporter: a report without a not-yet-joined task's score (and baselines for every task)."""
    import ray
    import ray.train
    sent = []
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(get_node_id=lambda: "n"))
    monkeypatch.setattr(ray.train, "report", lambda metrics, **kw: sent.append(metrics))
    monkeypatch.setattr(trial, "save_checkpoint", lambda r, d: None)
    run = make_run(tmp_path, sequential_recipe(), cache_dir)
    cfg = trial.TrialConfig.of({"recipe": sequential_recipe(), "storage": str(tmp_path)})
    report = trial.train_reporter(cfg, baselines={A: 50.0, B: 60.0, C: 70.0}, timing=False)
    report({f"{A}/score": 80.0, "glue_avg": 80.0, "joined": A}, run, checkpoint_path=str(tmp_path))
    assert sent[0]["delta_vs_teachers"] == 30.0 and f"{B}/delta_vs_teachers" not in sent[0]


# ------------------------------------------------------------------------------------------------ the schema

@pytest.mark.parametrize("switch, key", [
    ({"mode": "sequential"}, "switch.criterion"),
    ({"mode": "sequential", "criterion": "patience", "per_task": {B: {"criterion": "never"}}},
     f"switch.per_task.{B}.criterion"),
    ({"mode": "sequential", "criterion": "never", "per_task": {A: {"patience": 2}}}, "switch.criterion"),
])
def test_never_with_sequential_is_refused_naming_the_key(switch, key):
    with pytest.raises(UserError) as e:
        recipe_from_dict({"tasks": [A, B], "switch": switch}, source="r.yaml")
    msg = str(e.value)
    assert msg.startswith(f"r.yaml: {key}: never with switch.mode sequential") and "\n" not in msg
    recipe_from_dict({"tasks": [A, B], "switch": {**switch, "mode": "joint"}})       # joint: fine


def test_a_wrong_order_is_named_before_the_criterion():
    with pytest.raises(UserError, match="switch.order"):
        recipe_from_dict({"tasks": [A, B], "switch": {"mode": "sequential", "order": [A]}})


@pytest.mark.parametrize("path", list_spaces(), ids=lambda p: p.stem)
def test_no_shipped_space_samples_a_refused_recipe(path):
    """Every combination of a space's categorical values (others at their first example) is a valid recipe."""
    space = load_space(path, base_recipe={"tasks": [A, B, C]})
    names = list(space["parameters"])
    choices = [examples_of(space["parameters"][n], space["kinds"][n]) if space["kinds"][n] == "categorical"
               else examples_of(space["parameters"][n], space["kinds"][n])[:1] for n in names]
    for combo in itertools.product(*choices):
        recipe_from_dict(with_params(space["base"], dict(zip(names, combo))), source=f"{path.name} {combo}")


def test_kd_switch_space_searches_both_families():
    params = load_space(REPO / "spaces" / "kd_switch.yaml", base_recipe={"tasks": [A, B]})["parameters"]
    assert params["teacher.use"]["values"] == [True, False]                  # BAM + switch, and Lu et al.
    assert params["switch.mode"]["values"] == ["joint", "sequential"]


@pytest.mark.parametrize("name, mode", [("lu_joint", "joint"), ("lu_sequential", "sequential")])
def test_lu_recipes_use_gold_labels_before_the_switch(name, mode):
    path = REPO / "recipes" / f"{name}.yaml"
    r = load_recipe(path)
    assert path.read_text().splitlines()[0] == f"# bam-search train recipes/{name}.yaml --seeds 3"
    assert not r.teacher.use and r.switch.mode == mode
    assert all(r.switch_for(t).criterion not in ("never", "fixed_step") for t in r.tasks)   # fires on the dev curve

