"""`resume` refuses the resource flags it cannot honour and keeps the experiment's recorded disk budget and
resources; `demo --set` reaches the demo's recipes. In-process ``search.cli.main``; Ray never starts."""
from __future__ import annotations

import json

import pytest

from search import cli, experiment
from search.cli import build_parser, main
from search.preflight import plan_demo, plan_resume
from search.ray_env import Resources

RECORDED = {"name": "exp", "loop": None, "num_samples": 3, "disk_budget": 123456789,
            "resources": {"workers": 2, "cpus_per_worker": 0.5, "use_gpu": False}}


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("Ray was started")
    monkeypatch.setattr(cli, "_start", refuse)
    monkeypatch.setattr(experiment, "run_plan", refuse)
    yield
    import ray
    assert not ray.is_initialized()


def _experiment(tmp_path, **over) -> None:
    from trainables.recipe import recipe_from_dict
    from search.preflight import trial_config
    meta = {**RECORDED, **over}
    meta["loop"] = trial_config(str(tmp_path), recipe_from_dict({"tasks": ["syn_noisy"]}), job="student",
                                wandb=False).to_dict()
    d = tmp_path / "experiments" / "exp"
    d.mkdir(parents=True)
    (d / "bam_experiment.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("flag,value", [("--workers-per-trial", "4"), ("--cpus-per-worker", "2"),
                                        ("--max-concurrent", "1"), ("--disk-budget", "1GB")])
def test_resume_refuses_flags_it_cannot_honour(tmp_path, capsys, flag, value):
    _experiment(tmp_path)
    assert main(["resume", "exp", "--storage", str(tmp_path), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"bam-search: error: {flag}: resume continues")


def test_resume_keeps_the_recorded_disk_budget_and_resources(tmp_path, monkeypatch):
    _experiment(tmp_path)
    plan = plan_resume(build_parser().parse_args(["resume", "exp", "--storage", str(tmp_path)]))
    assert plan.disk_budget == 123456789                       # not the 20GB default
    assert (plan.request.workers, plan.request.cpus_per_worker) == (2, 0.5)
    assert (plan.resources.workers, plan.resources.cpus_per_worker) == (2, 0.5)
    seen = {}
    monkeypatch.setattr(cli, "_start", lambda p: Resources(workers=1, cpus_per_worker=1.0, use_gpu=False,
                                                           max_concurrent=1))
    monkeypatch.setattr(experiment, "run_plan", lambda p, res, **kw: seen.update(plan=p, resources=res))
    monkeypatch.setattr(cli, "_status", lambda storage, name: 0)
    assert main(["resume", "exp", "--storage", str(tmp_path), "--quiet"]) == 0
    assert seen["plan"].disk_budget == 123456789 and seen["resources"].workers == 2


def test_resume_of_an_unlimited_budget_stays_unlimited(tmp_path):
    _experiment(tmp_path, disk_budget=None)
    assert plan_resume(build_parser().parse_args(["resume", "exp", "--storage", str(tmp_path)])).disk_budget is None


def _demo(tmp_path, *extra):
    return build_parser().parse_args(["demo", "--model", "tiny", "--quick", "--no-wandb", "--storage",
                                      str(tmp_path), *extra])


def test_demo_set_reaches_teachers_and_sweep(tmp_path, monkeypatch):
    monkeypatch.delenv("BAM_GLUE_DIR", raising=False)
    plain = plan_demo(_demo(tmp_path))
    assert plain.sweep.recipe.optim.weight_decay != 0.05
    demo = plan_demo(_demo(tmp_path, "--set", "optim.weight_decay=0.05", "--set", "tasks=[syn_noisy,syn_sentiment]"))
    assert demo.teachers.recipe.optim.weight_decay == 0.05 and demo.sweep.recipe.optim.weight_decay == 0.05
    assert demo.tasks == ["syn_noisy", "syn_sentiment"] and list(demo.sweep.recipe.tasks) == demo.tasks
    assert demo.sweep.recipe.optim.epochs == plain.sweep.recipe.optim.epochs        # the rest: the demo's own


def test_demo_set_of_a_searched_key_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("BAM_GLUE_DIR", raising=False)
    assert main(["demo", "--model", "tiny", "--quick", "--no-wandb", "--storage", str(tmp_path),
                 "--set", "optim.lr=1e-4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--set optim.lr" in err and "searches optim.lr" in err
