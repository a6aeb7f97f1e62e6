"""bench/startup.py --reuse-actors: every TuneConfig the bench process builds asks Tune to reuse ended trials'
actors, and only that changes (the product's own TuneConfig stays Ray's default, reuse off)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import startup  # noqa: E402


def test_reuse_actors_turns_on_reuse_and_keeps_the_rest(monkeypatch):
    from ray import tune
    ray_default = tune.TuneConfig
    monkeypatch.setattr(tune, "TuneConfig", ray_default)             # restored after the test
    assert tune.TuneConfig(metric="glue_avg").reuse_actors is False   # Ray's default, what the product runs
    startup.reuse_tune_actors()
    cfg = tune.TuneConfig(metric="glue_avg", mode="max", num_samples=6)
    assert cfg.reuse_actors is True
    assert (cfg.metric, cfg.mode, cfg.num_samples) == ("glue_avg", "max", 6)
    assert isinstance(cfg, ray_default)                              # what Tune's checks expect
    assert tune.TuneConfig(reuse_actors=False).reuse_actors is False  # an explicit value still wins
