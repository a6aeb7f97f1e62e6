"""Starting or joining Ray, and choosing trial resources so the embedded default never deadlocks.

Embedded default (no --address, no RAY_ADDRESS): a local Ray started by this program on loopback with no
dashboard, Ray 2.60's token authentication left on. It is given one logical CPU more than the machine has:
each trial's driver (the Tune function that launches the TorchTrainer) holds only 0.25 CPU while its Train
workers hold the real cores, so N concurrent trials of W workers x C CPUs need N*(0.25 + W*C) logical CPUs
and the headroom keeps the driver and Ray Train's controller from starving the workers (a function trainable
starting a TorchTrainer deadlocked with num_cpus=2 and 0.5-CPU workers).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

DRIVER_CPU = 0.25


@dataclass(frozen=True)
class Resources:
    workers: int
    cpus_per_worker: float
    use_gpu: bool
    max_concurrent: int

    def as_dict(self) -> dict:
        return {"workers": self.workers, "cpus_per_worker": self.cpus_per_worker, "use_gpu": self.use_gpu}


def init_ray(*, address: str | None, quiet: bool = True) -> dict:
    import ray
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    env = {"env_vars": {"RAY_TRAIN_V2_ENABLED": "1", "TOKENIZERS_PARALLELISM": "false",
                        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "WANDB_SILENT": "true"}}
    for k in ("BAM_CACHE_DIR", "BAM_GLUE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE",
              "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"):
        if k in os.environ:
            env["env_vars"][k] = os.environ[k]
    if ray.is_initialized():
        return ray.cluster_resources()
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=not quiet, logging_level="WARNING")
        return ray.cluster_resources()
    # The embedded Ray: on loopback, at a GCS port chosen here, so that every process of this cluster
    # is told its address (RAY_ADDRESS). Without it, Ray Train's placement-group cleaner cannot find
    # its own cluster when another Ray runs on the machine, and a stopped trial's CPUs leak for good.
    port = _free_port()
    env["env_vars"]["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    previous = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(num_cpus=(os.cpu_count() or 1) + 1, include_dashboard=True, dashboard_host="127.0.0.1",
                 runtime_env=env,
                 _node_ip_address="127.0.0.1", log_to_driver=not quiet, logging_level="WARNING",
                 configure_logging=True)
    finally:
        if previous is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = previous
    _private_token()
    return ray.cluster_resources()


def _private_token() -> None:
    """Ray writes ~/.ray/auth_token readable by everyone on the machine: make it the owner's only."""
    from pathlib import Path
    token = Path.home() / ".ray" / "auth_token"
    try:
        if token.is_file() and token.stat().st_mode & 0o077:
            token.chmod(0o600)
    except OSError:
        pass


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def choose_resources(cluster: dict, *, workers: int = 1, cpus_per_worker: float | None = None,
                     use_gpu: bool | None = None, max_concurrent: int | None = None,
                     trials: int | None = None) -> Resources:
    """GPUs when the cluster has them; concurrency = what the cluster holds (at least 1).

    Without --cpus-per-worker, the CPUs are shared out over the trials that can run at once: a lone
    trial (``train`` with one seed) gets every core, a sweep gets one core per worker.
    """
    gpus = int(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    gpu = bool(gpus) if use_gpu is None else use_gpu
    cpw = cpus_per_worker
    if cpw is None:
        at_once = max(1, int(cpus // (DRIVER_CPU + workers)))
        at_once = min(at_once, trials or at_once, max_concurrent or at_once)
        cpw = float(max(1, int((cpus - DRIVER_CPU * at_once) // (workers * at_once))))
    per_trial = DRIVER_CPU + workers * cpw
    fit = int(cpus // per_trial + 1e-9)
    if gpu:
        fit = min(fit, gpus // workers) if gpus else fit
    fit = max(1, fit)
    return Resources(workers=workers, cpus_per_worker=cpw, use_gpu=gpu,
                     max_concurrent=min(max_concurrent, fit) if max_concurrent else fit)
