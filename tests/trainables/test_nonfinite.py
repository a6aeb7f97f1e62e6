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


def test_a_diverged_trial_is_not_trained_again_on_a_retry(tmp_path):
    """Train's and Tune's FailureConfig retry a failed trial; a non-finite loss would only repeat (same weights,
    data order, settings), so the first one is recorded under the storage and a retry fails at once."""
    from trainables.trial_config import TrialConfig
    from trainables.trial import check_not_diverged, mark_diverged
    cfg = TrialConfig.from_dict({"recipe": {"tasks": ["syn_noisy"], "model": "tiny"}, "job": "student",
                                 "storage": str(tmp_path), "experiment": "e", "run_id": "t1"})
    check_not_diverged(cfg)                                           # nothing recorded: trains
    mark_diverged(cfg, "non-finite loss (nan) on task syn_noisy at step 2")
    with pytest.raises(RuntimeError, match=r"non-finite loss \(nan\) on task syn_noisy at step 2.*not retried"):
        check_not_diverged(cfg)
    check_not_diverged(cfg.replace(run_id="t2"))                      # another trial of the sweep is not affected
