"""Starting or joining Ray, and choosing trial resources so the embedded default never deadlocks.

Embedded default (no --address, no RAY_ADDRESS): a local Ray started by this program on loopback with no
dashboard, Ray 2.60's token authentication left on. It is given one logical CPU more than the machine has:
each trial's driver (the Tune function that launches the TorchTrainer) holds only 0.25 CPU while its Train
workers hold the real cores, so N concurrent trials of W workers x C CPUs need N*(0.25 + W*C) logical CPUs
and the headroom keeps the driver and Ray Train's controller from starving the workers (a function trainable
starting a TorchTrainer deadlocked with num_cpus=2 and 0.5-CPU workers).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, replace

from trainables.errors import UserError

DRIVER_CPU = 0.25
# Ray Train knobs that shorten every trial (measured by bench/startup.py; bench/RESULTS.md "Trial start-up").
# A value set in the environment wins. Train's controller learns of a report, and of the end of training, only
# when it polls its workers: every 2 s by default, i.e. ~1 s lost on the first report and ~2 s before a
# finished trial frees its CPUs. A poll is one tiny actor call; a missed one is no error (a worker is declared
# dead only after RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S, 600 s), so 0.5 s costs nothing measurable.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# The embedded Ray only: one local node, which no autoscaler or cloud provider drains, so Train's
# PreemptionWatcher (one more Python process per trial, polling the node's drain state) has nothing to see.
EMBEDDED_TRAIN_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
# A trial whose workers no node can hold waits for an autoscaler this long (BAM_PENDING_TIMEOUT), then errors.
DEFAULT_PENDING_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Resources:
    workers: int
    cpus_per_worker: float
    use_gpu: bool
    max_concurrent: int
    pending_timeout_s: float | None = None   # an autoscaler must add a node: a trial waits this long for it
    gpus_per_worker: float = 1.0             # with use_gpu: a fraction lets trials share a GPU

    def as_dict(self) -> dict:
        d = {"workers": self.workers, "cpus_per_worker": self.cpus_per_worker, "use_gpu": self.use_gpu}
        if self.use_gpu:
            d["gpus_per_worker"] = self.gpus_per_worker
        return {**d, "pending_timeout_s": self.pending_timeout_s} if self.pending_timeout_s else d


@dataclass(frozen=True)
class ResourceRequest:
    """What the command line asks of Ray: which cluster, and how much per trial (None: choose)."""
    address: str | None = None
    workers: int = 1
    cpus_per_worker: float | None = None
    use_gpu: bool | None = None
    max_concurrent: int | None = None
    shared_storage: bool = False             # --storage-is-shared
    gpus_per_worker: float | None = None     # --gpus-per-worker: 0 CPU only; None: 1 when GPUs are used


def start_ray(request: ResourceRequest, *, storage: str, trials: int | None = None) -> Resources:
    """Start or join Ray, check the cluster can share ``storage``, and choose each trial's resources."""
    cluster = init_ray(address=request.address)
    check_shared_storage(storage=storage, shared=request.shared_storage)
    resources = choose_resources(cluster, workers=request.workers, cpus_per_worker=request.cpus_per_worker,
                                 use_gpu=request.use_gpu, max_concurrent=request.max_concurrent, trials=trials,
                                 gpus_per_worker=request.gpus_per_worker)
    return check_fits(resources, joined=bool(request.address or os.environ.get("RAY_ADDRESS")))


def check_fits(resources: Resources, *, joined: bool) -> Resources:
    """Before the first trial: a trial no node of the cluster can ever hold is refused in one line (it would wait
    PENDING forever). A cluster with an autoscaler may add such a node: then one warning line, and each trial
    waits at most ``BAM_PENDING_TIMEOUT`` seconds for its workers (``pending_timeout_s``) before it errors."""
    import ray
    nodes = [n.get("Resources") or {} for n in ray.nodes() if n.get("Alive", True)]
    problem = resource_problem(nodes, workers=resources.workers, cpus_per_worker=resources.cpus_per_worker,
                               use_gpu=resources.use_gpu, gpus_per_worker=resources.gpus_per_worker)
    if problem is None:
        return resources
    types = autoscaler_node_types() if joined else []
    if not types:
        raise UserError(problem)
    timeout = pending_timeout()
    print(f"bam-search: warning: {problem.split(': lower', 1)[0]}; the cluster's autoscaler (node types "
          f"{', '.join(types)}) may add one: each trial waits up to {timeout:g} s for it (BAM_PENDING_TIMEOUT)",
          file=sys.stderr)
    return replace(resources, pending_timeout_s=timeout)


def resource_problem(nodes: list[dict], *, workers: int, cpus_per_worker: float, use_gpu: bool,
                     gpus_per_worker: float = 1.0) -> str | None:
    """Why one trial can never run on nodes with these resources (``ray.nodes()[i]["Resources"]``), or None.

    A trial is its driver (``DRIVER_CPU``) on some node plus ``workers`` bundles of ``cpus_per_worker`` CPUs (and
    ``gpus_per_worker`` GPUs each with ``use_gpu``), each bundle on one node; Ray Train spreads bundles over
    nodes if it must."""
    gpw = gpus_per_worker if use_gpu else 0.0

    def holds(free: dict) -> int:
        n = int(free.get("CPU", 0) // cpus_per_worker + 1e-9) if cpus_per_worker > 0 else workers
        return min(n, int(free.get("GPU", 0) / gpw + 1e-9)) if gpw > 0 else n
    for i, host in enumerate(nodes):                  # the driver on node i, the workers wherever they fit
        if host.get("CPU", 0) + 1e-9 < DRIVER_CPU:
            continue
        rest = [{**n, "CPU": n.get("CPU", 0) - DRIVER_CPU} if j == i else n for j, n in enumerate(nodes)]
        if sum(max(0, holds(n)) for n in rest) >= workers:
            return None
    gpu = f" + {gpw:g} GPU" if gpw > 0 else ""
    cpus = sorted((n.get("CPU", 0) for n in nodes), reverse=True)
    gpus = sum(n.get("GPU", 0) for n in nodes)
    has = (f"{len(nodes)} node{'s' * (len(nodes) != 1)} with {', '.join(f'{c:g}' for c in cpus[:4])}"
           f"{', ...' if len(cpus) > 4 else ''} CPUs" + (f" and {gpus:g} GPUs in all" if use_gpu else ""))
    flag = "" if not gpw else " --use-gpu" if gpw == 1 else f" --gpus-per-worker {gpw:g}"
    return (f"--workers-per-trial {workers} --cpus-per-worker {cpus_per_worker:g}{flag}: "
            f"a trial needs {workers} x ({cpus_per_worker:g} CPU{gpu}) + {DRIVER_CPU:g} CPU for its driver, which "
            f"this Ray cluster ({has}) can never hold: lower --cpus-per-worker or --workers-per-trial"
            f"{', drop --use-gpu (or give --gpus-per-worker 0)' if gpw and not gpus else ''}"
            f"{', lower --gpus-per-worker' if gpw and gpus else ''}, or join a larger cluster (--address)")


def pending_timeout() -> float:
    """Seconds a trial waits for an autoscaler to add a node its workers fit on (BAM_PENDING_TIMEOUT)."""
    raw = os.environ.get("BAM_PENDING_TIMEOUT", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_PENDING_TIMEOUT_S
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"BAM_PENDING_TIMEOUT={raw}: give the seconds a trial may wait for a node (> 0)")
    return value


def autoscaler_node_types() -> list[str]:
    """The node types of the connected cluster's autoscaler ([] when it has none, or cannot say)."""
    import json

    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get
    try:
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        status = json.loads(raw) if raw else {}
    except Exception:  # noqa: BLE001 - no status is no autoscaler as far as this check goes
        return []
    return node_types_of(status)


def node_types_of(status: dict) -> list[str]:
    """An autoscaler's node types from its status (``ray status``'s source): each node of a cluster without an
    autoscaler (``ray start`` by hand, the embedded Ray) is a type of its own named ``node_<id>``."""
    report = status.get("autoscaler_report") or {}
    types = set()
    for key in ("active_nodes", "idle_nodes", "pending_launches"):
        types.update((report.get(key) or {}).keys())
    types.update(p[1] for p in report.get("pending_nodes") or [] if len(p) > 1)
    return sorted(t for t in types if not str(t).startswith("node_"))


def init_ray(*, address: str | None, quiet: bool = True) -> dict:
    import ray
    address = address or os.environ.get("RAY_ADDRESS")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    env = {"env_vars": {"RAY_TRAIN_V2_ENABLED": "1", "TOKENIZERS_PARALLELISM": "false",
                        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "WANDB_SILENT": "true"}}
    knobs = {**TRAIN_ENV, **({} if address else EMBEDDED_TRAIN_ENV)}
    for k in ("BAM_CACHE_DIR", "BAM_GLUE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE",
              "BAM_STARTUP_LOG", "BAM_RAY_DATA_CALLBACK", "RAY_TRAIN_CALLBACKS", *knobs):
        if k in os.environ:
            env["env_vars"][k] = os.environ[k]
    if ray.is_initialized():
        return ray.cluster_resources()
    for k, v in knobs.items():                     # here too: a TorchTrainer fitted from this process
        os.environ.setdefault(k, v)
        env["env_vars"].setdefault(k, v)
    if address:
        _join(address, runtime_env=env, quiet=quiet)
        return ray.cluster_resources()
    # The embedded Ray: on loopback, at a GCS port chosen here, so that every process of this cluster
    # is told its address (RAY_ADDRESS). Without it, Ray Train's placement-group cleaner cannot find
    # its own cluster when another Ray runs on the machine, and a stopped trial's CPUs leak for good.
    port = _free_port()
    env["env_vars"]["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    previous = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    quiet_token = _quiet_token_notice()
    try:
        # address="local": a private Ray even when `ray start` runs on this machine (ray.init() would join that)
        ray.init(address="local", num_cpus=(os.cpu_count() or 1) + 1, include_dashboard=True, dashboard_host="127.0.0.1",
                 runtime_env=env,
                 _node_ip_address="127.0.0.1", log_to_driver=not quiet, logging_level="WARNING",
                 configure_logging=True)
    finally:
        quiet_token()
        if previous is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = previous
    _private_token()
    return ray.cluster_resources()


def _quiet_token_notice():
    """Ray's "Token authentication is enabled for this Ray cluster" warning at the embedded Ray's start off the
    console (it is the setting bam-search keeps on, and README says so); the function that puts it back."""
    import logging
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = log.level
    log.setLevel(logging.ERROR)
    return lambda: log.setLevel(level)


def _join(address: str, *, runtime_env: dict, quiet: bool) -> None:
    """Join a running cluster. With an explicit address Ray 2.60 sends a token only under RAY_AUTH_MODE=token
    (it never offers this machine's token to an address it was merely given), so a cluster with token
    authentication refuses a driver without it: say so in one line instead of Ray's 20 s of retry logs."""
    import ray
    from ray.exceptions import AuthenticationError
    token_mode = (os.environ.get("RAY_AUTH_MODE") or "").lower() == "token"
    where = "RAY_AUTH_TOKEN, a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token"
    _probe(address)
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=not quiet, logging_level="WARNING")
    except AuthenticationError:
        raise UserError(f"--address {address}: RAY_AUTH_MODE=token but no token found: put the cluster's token "
                        f"in {where}") from None
    except ConnectionError as e:
        refused = "InvalidAuthToken" in f"{e} {e.__cause__}"
        if refused and not token_mode:
            raise UserError(f"--address {address}: the cluster uses token authentication: export RAY_AUTH_MODE=token "
                            f"and give it the cluster's token ({where}); see docs/cluster.md") from None
        if refused:
            raise UserError(f"--address {address}: the cluster refused this token: use the cluster's token ({where})"
                            ) from None
        raise UserError(f"--address {address}: no Ray cluster answers there ({str(e).splitlines()[0]}); start one "
                        "with `ray start --head` or check the address") from None


def _probe(address: str, *, timeout_s: float = 10.0) -> None:
    """Fail in one line when nothing listens at ``address``: ray.init() would retry for minutes.

    Probes the host Ray itself connects to (it replaces 127.0.0.1/localhost by this machine's IP)."""
    import socket

    from ray._private.services import canonicalize_bootstrap_address
    try:
        target = canonicalize_bootstrap_address(address)
    except (ValueError, ConnectionError) as e:
        raise UserError(f"--address {address}: {e}") from None
    if target is None:                                # "local"/"auto" without a cluster: Ray says what it does
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        shown = address if target == address else f"{address} (Ray connects to {target})"
        raise UserError(f"--address {shown}: no Ray cluster answers there ({e.strerror or type(e).__name__}); "
                        "start one with `ray start --head` or check the address") from None


def shared_storage_problem(*, storage: str, shared: bool, nodes: list[dict], here: str | None) -> str | None:
    """Why ``storage`` cannot serve this cluster, or None. A path on this machine's disk works only when every
    trial runs on this machine: refuse it when the cluster has other alive nodes, or when this node offers no
    CPU (trials then run on workers an autoscaler starts). An NFS mount looks like a local path: ``shared``."""
    from trainables.storage import Storage
    st = Storage.resolve(storage)
    if not st.is_local or shared:
        return None
    alive = [n for n in nodes if n.get("Alive", n.get("alive", True))]
    mine = next((n for n in alive if n.get("NodeID") == here), None)
    if len(alive) > 1:
        why = f"the Ray cluster has {len(alive)} nodes"
    elif mine is not None and not (mine.get("Resources") or {}).get("CPU"):
        why = "this Ray node offers no CPU to trials (they run on worker nodes)"
    else:
        return None
    return (f"--storage {st.uri} is a path on this machine, but {why}: give a location every node reads and "
            "writes (--storage s3://BUCKET/PATH or gs://BUCKET/PATH), or, if the path is a shared mount (NFS) "
            "at the same place on every node, add --storage-is-shared")


def check_shared_storage(*, storage: str, shared: bool) -> None:
    """Before any trial starts: raise UserError if the connected cluster cannot share ``storage``."""
    import ray
    problem = shared_storage_problem(storage=storage, shared=shared, nodes=ray.nodes(),
                                     here=ray.get_runtime_context().get_node_id())
    if problem:
        raise UserError(problem)


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
                     trials: int | None = None, gpus_per_worker: float | None = None) -> Resources:
    """GPUs when the cluster has them (``gpus_per_worker`` each, default 1; 0: CPU only, even on a GPU cluster);
    concurrency = what the cluster holds (at least 1): 1 GPU and 0.5 per worker run two trials at once.

    Without --cpus-per-worker, the CPUs are shared out over the trials that can run at once: a lone
    trial (``train`` with one seed) gets every core, a sweep gets one core per worker.
    """
    gpus = float(cluster.get("GPU", 0))
    cpus = float(cluster.get("CPU", 1))
    gpu = bool(gpus) if use_gpu is None else use_gpu
    if gpus_per_worker is not None:                    # given: it decides (preflight refuses --use-gpu with 0)
        gpu = gpus_per_worker > 0
    gpw = (gpus_per_worker or 1.0) if gpu else 1.0
    by_gpu = max(1, int(gpus / (workers * gpw) + 1e-9)) if gpu and gpus else None   # trials the GPUs hold
    cpw = cpus_per_worker
    if cpw is None:
        at_once = max(1, int(cpus // (DRIVER_CPU + workers)))
        at_once = min(at_once, trials or at_once, max_concurrent or at_once, by_gpu or at_once)
        cpw = float(max(1, int((cpus - DRIVER_CPU * at_once) // (workers * at_once))))
    fit = int(cpus // (DRIVER_CPU + workers * cpw) + 1e-9)
    fit = max(1, min(fit, by_gpu or fit))
    return Resources(workers=workers, cpus_per_worker=cpw, use_gpu=gpu, gpus_per_worker=gpw,
                     max_concurrent=min(max_concurrent, fit) if max_concurrent else fit)
