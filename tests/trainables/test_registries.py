"""Every method family is one registry: each name is accepted by the schema, listed by ``bam-search spaces``,
and runs two training steps and one evaluation in-process on the tiny model; a new entry needs no schema change.
"""
from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
from pathlib import Path

import pytest

from trainables import trial
from trainables.errors import UserError
from trainables.losses import KD_LOSSES, WEIGHTINGS, Weighting
from trainables.loop import run_training
from trainables.pooling import POOLING
from trainables.precision import PRECISIONS
from trainables.recipe import is_mutable, method_families, mutable_keys, recipe_from_dict, with_params
from trainables.schedules import ANNEAL, LR_DECAYS, SAMPLERS
from trainables.switch import CRITERIA

REPO = Path(__file__).resolve().parents[2]
TASKS = ["syn_noisy", "syn_pairmatch"]
REGISTRIES = {"anneal.schedule": ANNEAL, "anneal.loss": KD_LOSSES, "sampling.method": SAMPLERS,
              "switch.criterion": CRITERIA, "mtl.weighting": WEIGHTINGS, "student.pooling": POOLING,
              "precision": PRECISIONS, "optim.decay": LR_DECAYS}
COMPANIONS = {("switch.criterion", "fixed_step"): {"switch.at_step": 1},          # what a name needs beside it
              ("sampling.method", "weights"): {"sampling.weights": {t: 1 for t in TASKS}},
              ("switch.mode", "sequential"): {"switch.criterion": "fixed_step", "switch.at_step": 1},  # never: refused
              ("student.init", "extract"): {"model": "minilm", "student.num_layers": 1}}   # tiny has no weights
EVERY_NAME = [(key, name) for key, names in method_families().items() for name in names]


pytestmark = pytest.mark.usefixtures("cpu_one_thread")     # tests/trainables/conftest.py


def base_recipe() -> dict:
    return {"tasks": TASKS, "model": "tiny", "precision": "fp32", "evals": 1, "teacher": {"use": False},
            "optim": {"steps": 2, "batch_size": 8, "lr": 1e-3},
            "data": {"max_train_examples": 16, "max_dev_examples": 16, "max_length": 32}}


def with_value(key: str, name: str) -> dict:
    return with_params(base_recipe(), {key: name, **COMPANIONS.get((key, name), {})})


def step_and_evaluate(tmp: Path, rec: dict, cache_dir: str) -> dict:
    """Two training steps and one evaluation of ``rec``; the metrics reported."""
    run = trial.setup_run({"recipe": rec, "job": "student", "storage": str(tmp / "storage"),
                           "artifacts_dir": str(tmp / "art"), "cache_dir": cache_dir})
    reports = []
    run_training(run, report=lambda metrics, r: reports.append(metrics))
    assert run.step == 2 and len(reports) == 1
    return reports[0]


def spy(monkeypatch, registry: dict, name: str) -> list:
    """Replace ``registry[name]`` by a wrapper (same signature) that counts its calls; an MTL ``Weighting``
    (a small class) has its ``transform`` wrapped, which the loop calls on every task loss."""
    calls, entry = [], registry[name]
    fn = entry.transform if isinstance(entry, Weighting) else entry

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        calls.append(1)
        return fn(*args, **kw)

    monkeypatch.setitem(registry, name, dataclasses.replace(entry, transform=wrapper)
                        if isinstance(entry, Weighting) else wrapper)
    return calls


def test_every_registry_is_listed_by_the_schema():
    families = method_families()
    for key, registry in REGISTRIES.items():
        assert families[key] == tuple(registry), key


@pytest.mark.parametrize("key,name", EVERY_NAME)
def test_every_name_is_accepted_listed_and_runs(key, name, tmp_path, cache_dir, monkeypatch):
    rec = with_value(key, name)
    parsed = recipe_from_dict(rec).to_dict()
    section, _, field = key.rpartition(".")
    assert (parsed[section] if section else parsed)[field] == name
    calls = spy(monkeypatch, REGISTRIES[key], name) if key in REGISTRIES else None
    metrics = step_and_evaluate(tmp_path, rec, cache_dir)
    sequential = (key, name) == ("switch.mode", "sequential")      # the second task joins at the first switch
    assert all(f"{t}/score" in metrics for t in (TASKS[:1] if sequential else TASKS))
    if sequential:
        assert (metrics["switched_now"], metrics["joined_now"]) == tuple(TASKS)
    if calls is not None:
        assert calls, f"{key}={name} is valid but the loop never called it"


def test_an_unknown_name_lists_the_registry():
    with pytest.raises(UserError) as e:
        recipe_from_dict({"anneal": {"schedule": "cubic"}}, source="r.yaml")
    assert str(e.value) == f"r.yaml: anneal.schedule: 'cubic' is not one of {', '.join(ANNEAL)}"


NEW_ENTRIES = {                      # one function and one registry entry each, no schema change
    "anneal.schedule": (ANNEAL, "quadratic", lambda p: p * p),
    "switch.criterion": (CRITERIA, "always", lambda s, *, step, score: True),
    "mtl.weighting": (WEIGHTINGS, "half", Weighting(factor=lambda task: 0.5)),
    "student.pooling": (POOLING, "max", lambda seq, attention_mask: seq.max(1).values),
}


@pytest.mark.parametrize("key", sorted(NEW_ENTRIES))
def test_a_new_entry_needs_no_schema_change(key, tmp_path, cache_dir, monkeypatch):
    registry, name, fn = NEW_ENTRIES[key]
    monkeypatch.setitem(registry, name, fn)
    calls = spy(monkeypatch, registry, name)
    assert name in method_families()[key]
    rec = with_value(key, name)
    recipe_from_dict(rec)
    metrics = step_and_evaluate(tmp_path, rec, cache_dir)
    assert calls
    if key == "anneal.schedule":
        assert metrics["lambda"] == 1.0                                  # p = 1 at the only evaluation
    if key == "switch.criterion":
        assert metrics["switched_now"] == ",".join(TASKS)


def test_spaces_lists_every_family(capsys):
    from search.cli import main
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    for key, names in method_families().items():
        assert f"  {key}: {', '.join(names)}" in out.splitlines(), key


def test_pbt_mutability_comes_from_the_schema():
    assert mutable_keys() == ["optim.lr", "optim.weight_decay", "optim.warmup", "optim.clip", "anneal.*",
                              "sampling.*", "switch.gold_weight", "mtl.weights.*", "mtl.dwa_temperature"]
    for key in ("optim.lr", "anneal.schedule", "anneal.per_task.rte.k", "sampling.weights.rte", "mtl.weights.rte",
                "switch.gold_weight"):
        assert is_mutable(key), key
    for key in ("optim.steps", "optim.layer_decay", "switch.criterion", "switch.per_task.rte.gold_weight", "model",
                "anneal", "student.pooling", "optim.nope"):
        assert not is_mutable(key), key


def test_spaces_load_without_torch():
    code = ("import sys\nfrom search.spaces import list_spaces, load_space\n"
            "for path in list_spaces():\n    load_space(path, base_recipe={})\n"
            "assert list_spaces() and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
