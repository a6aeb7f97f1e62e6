import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    d = os.environ.get("BAM_CACHE_DIR") or str(tmp_path_factory.mktemp("bam-cache"))
    os.environ["BAM_CACHE_DIR"] = d
    return d
