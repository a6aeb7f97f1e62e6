"""A NaN loss ends the run with an error that names the task and the step (the sweep records it as errored)."""
import pytest
import torch

from trainables.trial import setup_run
from trainables.loop import NonFiniteLoss, run_training


def test_nan_loss_stops_with_task_and_step(tmp_path, cache_dir):
    recipe = {"tasks": ["syn_noisy"], "model": "tiny", "teacher": {"use": False}, "evals": 2,
              "optim": {"steps": 6, "lr": 1e-3}}
    run = setup_run({"recipe": recipe, "job": "student", "storage": str(tmp_path),
                     "artifacts_dir": str(tmp_path / "art"), "cache_dir": cache_dir})
    run.train_step()
    run.train_step()
    with torch.no_grad():
        run.model.heads["syn_noisy"].bias.fill_(float("nan"))
    reports = []
    with pytest.raises(NonFiniteLoss, match=r"task syn_noisy at step 2"):
        run_training(run, report=lambda m, r: reports.append(m))
    assert reports == []                                   # nothing recorded as a result
