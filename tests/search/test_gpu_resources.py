"""Issue 20.3: resources as users state them. --gpus-per-worker (a fraction: trials share a GPU; 0: CPU only on
a GPU cluster) flows parser -> plan -> choose_resources -> the trial's ScalingConfig; sweep --time-budget
reaches Tune's TuneConfig; bad values are one line, exit 2. No Ray starts here, except in the CUDA test
(skipped without a GPU; bench/gpu_check.sh runs the GPU path on a machine that has one)."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from search.cli import build_parser, main
from search.ray_env import Resources, choose_resources, resource_problem

GPU_BOX = {"CPU": 9.0, "GPU": 1.0}                # 8 cores + the embedded Ray's extra one, 1 GPU


# ------------------------------------------------------------------------------------------- the parser

@pytest.mark.parametrize("argv", [["teachers", "--tasks", "syn_noisy"], ["train", "r.yaml"], ["sweep", "smoke"],
                                  ["demo"]])
def test_every_training_command_takes_gpus_per_worker(argv):
    args = build_parser().parse_args(argv + ["--gpus-per-worker", "0.5"])
    assert args.gpus_per_worker == 0.5
    assert build_parser().parse_args(argv).gpus_per_worker is None


def test_time_budget_is_a_sweep_flag():
    assert build_parser().parse_args(["sweep", "smoke", "--time-budget", "90m"]).time_budget == "90m"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "r.yaml", "--time-budget", "90m"])


@pytest.mark.parametrize("text, seconds", [("90m", 5400), ("2h", 7200), ("1h30m", 5400), ("3600", 3600),
                                           ("1.5h", 5400), ("45s", 45), ("1d", 86400)])
def test_time_budget_units(text, seconds):
    from search.preflight import time_budget
    assert time_budget(SimpleNamespace(time_budget=text)) == seconds
    assert time_budget(SimpleNamespace(time_budget=None)) is None


# ------------------------------------------------------------------------------------------- choosing

def test_half_a_gpu_per_worker_runs_two_trials_on_one_gpu():
    res = choose_resources(GPU_BOX, gpus_per_worker=0.5, trials=8)
    assert res.use_gpu and res.gpus_per_worker == 0.5 and res.max_concurrent == 2
    assert res.cpus_per_worker == 4.0                # the 9 CPUs shared by the 2 trials the GPU holds
    assert res.as_dict() == {"workers": 1, "cpus_per_worker": 4.0, "use_gpu": True, "gpus_per_worker": 0.5}
    whole = choose_resources(GPU_BOX, trials=8)      # default on a GPU cluster: 1 GPU each, 1 trial at once
    assert whole.use_gpu and whole.gpus_per_worker == 1.0 and whole.max_concurrent == 1


def test_zero_gpus_is_cpu_only_on_a_gpu_cluster():
    res = choose_resources(GPU_BOX, gpus_per_worker=0.0, trials=8)
    assert not res.use_gpu and "gpus_per_worker" not in res.as_dict()
    assert res.max_concurrent == 7                   # CPU bound now: 9 // (0.25 + 1)


def test_use_gpu_without_a_count_is_one_gpu_per_worker():
    res = choose_resources({"CPU": 3.0}, use_gpu=True)          # an autoscaler adds GPU nodes later
    assert res.use_gpu and res.gpus_per_worker == 1.0


@pytest.mark.parametrize("workers, gpw, nodes, fits", [
    (2, 0.5, [{"CPU": 8.0, "GPU": 1.0}], True),      # two workers share the one GPU
    (2, 1.0, [{"CPU": 8.0, "GPU": 1.0}], False),
    (1, 2.0, [{"CPU": 8.0, "GPU": 1.0}], False),
    (1, 2.0, [{"CPU": 8.0, "GPU": 2.0}], True),
    (3, 0.5, [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 0.5}], True),   # 2 + 1 over two nodes
])
def test_check_fits_counts_gpus_per_worker(workers, gpw, nodes, fits):
    problem = resource_problem(nodes, workers=workers, cpus_per_worker=1.0, use_gpu=True, gpus_per_worker=gpw)
    assert (problem is None) == fits
    if not fits:
        assert f"x (1 CPU + {gpw:g} GPU)" in problem and "lower --gpus-per-worker" in problem
        assert ("--gpus-per-worker 2:" in problem) == (gpw == 2.0) and "\n" not in problem


def test_a_gpu_trial_on_a_cpu_cluster_names_the_cpu_only_way_out():
    problem = resource_problem([{"CPU": 3.0}], workers=1, cpus_per_worker=1.0, use_gpu=True, gpus_per_worker=0.5)
    assert problem.startswith("--workers-per-trial 1 --cpus-per-worker 1 --gpus-per-worker 0.5:")
    assert "(or give --gpus-per-worker 0)" in problem


# ------------------------------------------------------------------------------------------- the trial side

def _trainer(resources: dict):
    from ray.train import UserCallback

    from trainables.recipe import recipe_from_dict
    from trainables.trial import torch_trainer
    from trainables.trial_config import TrialConfig
    cfg = TrialConfig(recipe=recipe_from_dict({"tasks": ["syn_noisy"], "model": "tiny"}), storage="/nonexistent",
                      experiment="e", run_id="r")
    return torch_trainer(cfg, run_name="r", resources=resources, metric="glue_avg", callback=UserCallback())


@pytest.mark.parametrize("res, per_worker, backend", [
    (Resources(2, 1.0, True, 2, gpus_per_worker=0.5), {"CPU": 1.0, "GPU": 0.5}, "nccl"),
    (Resources(1, 2.0, True, 1), {"CPU": 2.0, "GPU": 1.0}, "nccl"),
    (Resources(2, 1.0, False, 1), {"CPU": 1.0}, "gloo"),
])
def test_scaling_config_holds_what_was_asked(res, per_worker, backend):
    sc = (t := _trainer(res.as_dict())).scaling_config
    assert sc.resources_per_worker == per_worker and sc.use_gpu == res.use_gpu and sc.num_workers == res.workers
    assert sc.total_resources == {k: v * res.workers for k, v in per_worker.items()}
    assert t.backend_config.backend == backend


def test_an_experiment_recorded_before_the_flag_keeps_one_gpu_per_worker():
    sc = _trainer({"workers": 1, "cpus_per_worker": 1.0, "use_gpu": True}).scaling_config
    assert sc.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}


# ------------------------------------------------------------------------------------------- sweep -> Tune

def test_gpus_and_time_budget_reach_tune(tmp_path, monkeypatch):
    """A checked sweep plan -> run_plan: the TuneConfig has the time budget, every trial's resources the GPUs,
    bam_experiment.json both (Tune's Tuner replaced: nothing runs)."""
    from ray import tune

    from search.experiment import run_plan
    from search.preflight import plan_sweep
    seen = {}

    class FakeTuner:
        can_restore = staticmethod(lambda path: False)

        def __init__(self, trainable, **kw):
            seen.update(kw)

        def fit(self):
            return "fit"
    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  optim.lr: {values: [0.001]}\n")
    st = tmp_path / "st"
    args = build_parser().parse_args(["sweep", str(space), "--tasks", "syn_noisy", "--model", "tiny", "--set",
                                      "teacher.use=false", "--storage", str(st), "--no-wandb", "--num-samples", "2",
                                      "--gpus-per-worker", "0.5", "--time-budget", "1h30m", "--name", "tb"])
    plan = plan_sweep(args)
    assert plan.time_budget_s == 5400 and plan.request.gpus_per_worker == 0.5
    res = choose_resources(GPU_BOX, gpus_per_worker=plan.request.gpus_per_worker, trials=plan.trials)
    assert run_plan(plan, res, progress=False) == "fit"
    assert seen["tune_config"].time_budget_s == 5400
    assert seen["param_space"]["resources"]["gpus_per_worker"] == 0.5
    meta = json.loads((st / "experiments" / "tb" / "bam_experiment.json").read_text())
    assert meta["time_budget_s"] == 5400 and meta["resources"]["gpus_per_worker"] == 0.5


# ------------------------------------------------------------------------------------------- bad values

SMOKE = ["sweep", "smoke", "--tasks", "syn_noisy", "--model", "tiny"]
TEACH = ["teachers", "--tasks", "syn_noisy", "--model", "tiny"]


@pytest.mark.parametrize("argv, needle", [
    (TEACH + ["--gpus-per-worker", "-1"], "--gpus-per-worker -1: must be 0"),
    (TEACH + ["--gpus-per-worker", "nan"], "--gpus-per-worker nan"),
    (SMOKE + ["--gpus-per-worker", "1.5"], "--gpus-per-worker 1.5: Ray takes a fraction up to 1"),
    (SMOKE + ["--gpus-per-worker", "0.00001"], "steps of 0.0001"),
    (TEACH + ["--use-gpu", "--gpus-per-worker", "0"], "--use-gpu --gpus-per-worker 0"),
    (SMOKE + ["--time-budget", "0"], "--time-budget 0: must be a finite time more than 0"),
    (SMOKE + ["--time-budget=-2h"], "--time-budget -2h"),
    (SMOKE + ["--time-budget", "soon"], "--time-budget soon: give a duration such as 90m"),
    (["resume", "x", "--gpus-per-worker", "1"], "--gpus-per-worker: resume continues"),
])
def test_bad_values_are_one_line_before_ray(tmp_path, capsys, monkeypatch, argv, needle):
    import ray
    monkeypatch.chdir(tmp_path)
    rc = main(argv + ["--storage", str(tmp_path / "st")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "st" / "experiments").exists() and not ray.is_initialized()


# ------------------------------------------------------------------------------------------- a real GPU

def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - no torch build with CUDA
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (bench/gpu_check.sh runs this path in one go)")
def test_two_trials_share_one_gpu(tmp_path):
    """`train` with two seeds and --gpus-per-worker 0.5: both trials end, each held half a GPU, and they ran
    at the same time (their recorded rows overlap in time)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tasks: [syn_noisy]\nmodel: tiny\nteacher: {use: false}\nprecision: auto\nevals: 2\n")
    r = subprocess.run([sys.executable, "-m", "search.cli", "train", str(recipe), "--seeds", "2", "--quiet",
                        "--gpus-per-worker", "0.5", "--storage", str(tmp_path / "st"), "--name", "gpu", "--no-wandb"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = [d for d in (tmp_path / "st" / "experiments" / "gpu").iterdir() if (d / "params.json").exists()]
    assert len(trials) == 2
    spans = []
    for d in trials:
        assert json.loads((d / "params.json").read_text())["resources"]["gpus_per_worker"] == 0.5
        rows = [json.loads(line) for line in (d / "result.json").read_text().splitlines()]
        spans.append((rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"]))
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
