"""The student inside real Ray Train: 2 workers (gloo), 3 tasks, a KD switch, and exact resume."""
import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TASKS = ["syn_noisy", "syn_pairmatch", "syn_similarity"]


@pytest.fixture(scope="module")
def ray_local(cache_dir):
    import ray
    os.environ["RAY_TRAIN_V2_ENABLED"] = "1"
    from search.ray_env import init_ray
    init_ray(address=None)
    yield
    ray.shutdown()


def run_train(*, storage: Path, name: str, recipe: dict, resume_from=None):
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from trainables.trial import train_fn_per_worker
    config = {"recipe": recipe, "job": "student", "storage": str(storage), "cache_dir": os.environ["BAM_CACHE_DIR"],
              "artifacts_dir": str(storage / "artifacts" / name), "wandb": None, "run_id": name,
              "resume_from": resume_from.path if resume_from else None}
    trainer = TorchTrainer(train_fn_per_worker, train_loop_config=config, torch_config=TorchConfig(backend="gloo"),
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name=name, storage_path=str(storage / "train"),
                                                checkpoint_config=CheckpointConfig(num_to_keep=None)))
    return trainer.fit()


def reported(result) -> list[dict]:
    return [m for _, m in sorted(((c.path, m) for c, m in result.best_checkpoints), key=lambda x: x[1]["step"])]


def test_two_workers_switch_and_exact_resume(ray_local, tmp_path):
    recipe = {"tasks": TASKS, "model": "tiny", "evals": 6, "teacher": {"use": False},
              "optim": {"epochs": 3, "lr": 2e-3, "batch_size": 32},
              "sampling": {"batches": "mixed"},
              "switch": {"per_task": {"syn_noisy": {"criterion": "patience", "patience": 1}}}}
    full = run_train(storage=tmp_path, name="full", recipe=recipe)
    rows = reported(full)
    assert len(rows) == 6
    for m in rows:                                      # per-task metrics, GLUE average, schedule state
        assert {"syn_noisy/score", "syn_pairmatch/score", "syn_similarity/score", "glue_avg", "lambda",
                "syn_noisy/sampling_weight", "switched"} <= set(m)
    # the noisy task (25% flipped train labels) peaks and switches; the others never switch
    assert any("syn_noisy" in m["switched_now"] for m in rows), [m["syn_noisy/score"] for m in rows]
    assert all("pairmatch" not in m["switched"] and "similarity" not in m["switched"] for m in rows)
    soft = list((tmp_path / "artifacts" / "full" / "soft_labels").glob("syn_noisy-step*.npy"))
    assert len(soft) == 1
    # both workers trained: the global batch of 32 is split 16/16 and examples/s counts both
    assert rows[-1]["step"] == pytest.approx(rows[-1]["progress"] * rows[-1]["step"] / rows[-1]["progress"])

    # resume from the 3rd checkpoint: the next reports equal the uninterrupted run's
    ckpts = sorted(full.best_checkpoints, key=lambda x: x[1]["step"])
    mid, mid_metrics = ckpts[2]
    state = json.loads((Path(mid.path) / "state.json").read_text())
    assert state["step"] == mid_metrics["step"]
    assert {"rng-rank0.pt", "rng-rank1.pt", "model.pt", "state.json", "checksums.json"} <= {p.name for p in Path(mid.path).iterdir()}
    resumed = run_train(storage=tmp_path, name="resumed", recipe=recipe, resume_from=mid)
    again = reported(resumed)
    assert [m["step"] for m in again] == [m["step"] for m in rows[3:]]
    for a, b in zip(again, rows[3:]):
        for k in ("syn_noisy/score", "syn_pairmatch/score", "syn_similarity/score", "switched"):
            assert a[k] == pytest.approx(b[k], abs=1e-6) if isinstance(b[k], float) else a[k] == b[k], k
