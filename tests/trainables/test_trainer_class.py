"""A trial's TorchTrainer starts no Ray Data DatasetManager when it passes no datasets (one Ray process less)."""
import pytest

pytest.importorskip("ray.train.v2._internal.callbacks.datasets")


def _kinds(cls) -> set[str]:
    from ray.train import ScalingConfig
    trainer = cls(lambda config: None, scaling_config=ScalingConfig(num_workers=1))
    return {type(c).__name__ for c in trainer._create_default_callbacks()}


def test_no_datasets_no_datasets_callback_and_the_env_switch_brings_it_back(monkeypatch):
    from trainables.trial import trainer_class
    monkeypatch.delenv("BAM_RAY_DATA_CALLBACK", raising=False)
    kinds = _kinds(trainer_class())
    assert "DatasetsCallback" not in kinds and "BackendSetupCallback" in kinds       # only that one is dropped
    monkeypatch.setenv("BAM_RAY_DATA_CALLBACK", "1")
    assert "DatasetsCallback" in _kinds(trainer_class())                             # Ray's own set
