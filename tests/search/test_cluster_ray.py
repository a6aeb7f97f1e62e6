"""Multi-node sweeps and joining a running cluster, on this machine.

* A ``ray.cluster_utils.Cluster`` (a head and two worker nodes): a local --storage is refused before any trial
  starts; with --storage-is-shared a smoke sweep's trials train on two different nodes, all reading the teacher
  predictions from the one store, and every trial completes. Then a node is lost: the worker node running a
  trial that has switched to KD is removed, and the trial goes on on the other node from its last checkpoint.
* ``ray start --head`` with token authentication: a driver without RAY_AUTH_MODE is refused with one line that
  says what to export; with it (and the token) a smoke sweep runs there with --address and a file:// storage.

Each cluster runs in its own process group under its own --temp-dir with its own ports: it never writes
/tmp/ray/ray_current_cluster (other people's ``ray.init()`` would join it) and is killed by PID, never with a
machine-wide ``ray stop``. Ray 2.60's GCS listens on all interfaces whatever --node-ip-address says; a random
token per test guards it (and ~/.ray is not touched).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from procs import descendants, processes

TASKS = ["syn_noisy", "syn_pairmatch"]
DATA = ["--max-train-examples", "64", "--max-dev-examples", "64"]
EVALS = 4                                                    # spaces/smoke.yaml base.evals


# ------------------------------------------------------------------------------------------- no Ray

def _node(node_id: str, cpus: float, alive: bool = True) -> dict:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": cpus} if cpus else {}}


@pytest.mark.parametrize("nodes, here, shared, storage, refused", [
    ([_node("a", 2)], "a", False, "/tmp/x", None),                             # one node with CPUs: fine
    ([_node("a", 2), _node("b", 4)], "a", False, "/tmp/x", "2 nodes"),
    ([_node("a", 2), _node("b", 4, alive=False)], "a", False, "/tmp/x", None),  # a dead node does not count
    ([_node("a", 0)], "a", False, "/tmp/x", "no CPU"),                          # a head that only schedules
    ([_node("a", 2), _node("b", 4)], "a", True, "/tmp/x", None),                # --storage-is-shared (NFS)
    ([_node("a", 2), _node("b", 4)], "a", False, "s3://bucket/bam", None),     # a URI is shared
    ([_node("a", 2), _node("b", 4)], "a", False, "file:///tmp/x", "2 nodes"),  # file:// is this machine's disk
])
def test_shared_storage_rule(nodes, here, shared, storage, refused):
    from search.ray_env import shared_storage_problem
    problem = shared_storage_problem(storage=storage, shared=shared, nodes=nodes, here=here)
    if refused is None:
        assert problem is None
    else:
        assert refused in problem and "--storage-is-shared" in problem and "s3://" in problem
        assert "--storage /tmp/x " in problem and "\n" not in problem


# ------------------------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_temp_dir() -> str:
    return tempfile.mkdtemp(prefix="bamrt", dir="/tmp")      # Ray's socket paths must stay short


def kill_group(proc: subprocess.Popen, temp_dir: str) -> None:
    """Kill what this test started: the process, everything under it, its process group, and whatever names
    its own --temp-dir; nothing else (never `ray stop`, which stops every Ray on the machine)."""
    procs = processes()
    mine = {proc.pid, *descendants(proc.pid, procs)}
    mine |= {p for p, (_, cmd) in procs.items() if temp_dir in cmd}
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in mine:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and any(p in mine for p in processes()):
        time.sleep(0.5)
    shutil.rmtree(temp_dir, ignore_errors=True)


# a loaded 2-core machine can take longer than Ray's defaults to start a node's agents
SLOW_START = {"RAY_agent_register_timeout_ms": "180000"}


def cli_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    return {**env, **extra}


def cli(*args, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def make_teachers(storage: Path) -> list[dict]:
    """The teachers of TASKS written to the store in this process (a few steps each, no Ray): what the
    sweep's trials must find and read, wherever they run."""
    from trainables import teachers, trial
    from trainables.loop import run_training
    records = []
    for t in TASKS:
        recipe = {"tasks": [t], "model": "tiny", "precision": "fp32", "evals": 1, "seed": 0,
                  "teacher": {"use": False}, "anneal": {"schedule": "none"}, "switch": {"criterion": "never"},
                  "optim": {"steps": 2, "batch_size": 16}, "data": {"max_train_examples": 64, "max_dev_examples": 64}}
        cfg = {"job": "teacher", "storage": str(storage), "artifacts_dir": str(storage / "teacher-artifacts"),
               "cache_dir": os.environ["BAM_CACHE_DIR"], "recipe": recipe}
        run = trial.setup_run(cfg)
        run_training(run, report=lambda m, r: None)
        records.append(teachers.finish_teacher(run, storage=cfg["storage"]))
    return records


def trial_rows(exp: Path) -> dict[str, list[dict]]:
    out = {}
    for d in sorted(p for p in exp.iterdir() if (p / "params.json").exists()):
        out[d.name] = [json.loads(l) for l in (d / "result.json").read_text().splitlines()]
    return out


def sweep_args(*, storage: str, name: str, address: str, extra=()) -> list[str]:
    return ["sweep", "smoke", "--tasks", ",".join(TASKS), "--model", "tiny", *DATA, "--num-samples", "2",
            "--scheduler", "none", "--searcher", "random", "--storage", storage, "--name", name,
            "--address", address, "--quiet", "--no-wandb", *extra]


def assert_complete(rows: dict[str, list[dict]]) -> None:
    assert len(rows) == 2
    for trial, rs in rows.items():
        assert len(rs) == EVALS and rs[-1]["progress"] == pytest.approx(1.0), trial
        assert {"glue_avg", "syn_noisy/score", "syn_pairmatch/score", "lambda", "node_id"} <= set(rs[-1])
        assert len({r["node_id"] for r in rs}) == 1                  # one Train worker per trial, one node


# ------------------------------------------------------------------------------------------- Cluster

CLUSTER = textwrap.dedent("""
    import json, sys, time
    import ray, ray._common.utils, ray._private.utils, ray.util
    # never point other people's ray.init() at this cluster, nor delete their /tmp/ray/ray_current_cluster
    ray._private.utils.write_ray_address = lambda *a, **k: None
    ray._common.utils.reset_ray_address = lambda *a, **k: None
    from ray.cluster_utils import Cluster

    temp, dashboard, agent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    # the nodes on this machine's IP: a driver given 127.0.0.1:PORT connects to that IP (Ray replaces
    # loopback addresses), and a Cluster's GCS listens only on its node IP
    ip = ray.util.get_node_ip_address()
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, temp_dir=temp, node_ip_address=ip, include_dashboard=True,
        dashboard_host="127.0.0.1", dashboard_port=dashboard, dashboard_agent_listen_port=agent))
    workers = [cluster.add_node(num_cpus=2, temp_dir=temp, node_ip_address=ip) for _ in range(2)]
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                      "workers": [w.node_id for w in workers]}), flush=True)
    for line in sys.stdin:                     # "remove NODE_ID": that node is lost (its processes killed)
        node = next(w for w in workers if w.node_id == line.split()[1])
        cluster.remove_node(node, allow_graceful=False)
        print("removed", flush=True)
    time.sleep(3600)
""")


@pytest.fixture
def ray_cluster():
    """A head (1 CPU: trial drivers only) and two worker nodes (2 CPUs: one 1.5-CPU Train worker each)."""
    temp = short_temp_dir()
    token = secrets.token_hex(32)
    env = {**cli_env(), **SLOW_START, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    log = open(Path(temp) / "cluster.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER, temp, str(free_port()), str(free_port())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"cluster did not start:\n{(Path(temp) / 'cluster.log').read_text()[-3000:]}")

        def remove_node(node_id: str) -> None:
            proc.stdin.write(f"remove {node_id}\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "removed"
        yield {**json.loads(line), "token": token, "remove_node": remove_node}
    finally:
        log.close()
        kill_group(proc, temp)


@pytest.mark.slow
def test_multi_node_sweep_reads_the_shared_store(ray_cluster, tmp_path, cache_dir):
    storage = tmp_path / "shared"
    records = make_teachers(storage)
    env = cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_cluster["token"])
    address = ray_cluster["address"]

    # a local path on a 3-node cluster: refused in one line before any trial starts
    r = cli(*sweep_args(storage=str(storage), name="refused", address=address), env=env)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [l for l in r.stderr.splitlines() if l.startswith("bam-search: error:")]
    assert len(lines) == 1 and "3 nodes" in lines[0] and "--storage-is-shared" in lines[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr and not (storage / "experiments" / "refused").exists()

    # the same path declared shared (it is: every node is this machine)
    r = cli(*sweep_args(storage=str(storage), name="multi", address=address,
                        extra=["--storage-is-shared", "--cpus-per-worker", "1.5", "--max-concurrent", "2"]), env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = trial_rows(storage / "experiments" / "multi")
    assert_complete(rows)
    nodes = {rs[0]["node_id"] for rs in rows.values()}
    assert nodes <= set(ray_cluster["workers"]) and len(nodes) == 2, (nodes, ray_cluster)
    # every trial distilled from the stored teachers: the sampled recipes use them, and a trial that could not
    # find them would have failed (find_teachers raises); the store still holds exactly those teachers
    for rs in rows.values():
        assert rs[0]["config"]["loop"]["recipe"].get("teacher", {}).get("use", True) is True   # the default
    from trainables.teacher_store import BaselineRegistry
    assert [x["key"] for x in BaselineRegistry(storage).records(strict=True)] == [x["key"] for x in records]
    assert sorted(p.name for p in (storage / "teachers").iterdir()) == sorted(x["key"] for x in records)


LOSS_SPACE = {"description": "node-loss test: a KD switch early, training long enough to lose a node after it",
              "base": {"evals": 8, "optim": {"steps": 1600, "lr": 1e-3, "batch_size": 16},
                       "switch": {"criterion": "fixed_step", "at_step": 150}},
              "parameters": {"anneal.schedule": {"values": ["linear"]}}}


@pytest.mark.slow
def test_a_lost_node_s_trial_resumes_on_the_other_with_its_switch_state(ray_cluster, tmp_path, cache_dir):
    """The node that runs a switched trial is lost: the trial goes on on the other worker node from its last
    checkpoint, with the KD-switch state and the soft labels it had (not switched again), and its rows are there
    once each (issue 21)."""
    import yaml
    storage = tmp_path / "shared"
    make_teachers(storage)
    space = tmp_path / "loss.yaml"
    space.write_text("# bam-search sweep loss.yaml (tests/search/test_cluster_ray.py)\n" + yaml.safe_dump(LOSS_SPACE))
    env = cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_cluster["token"])
    args = ["sweep", str(space), "--tasks", ",".join(TASKS), "--model", "tiny", *DATA, "--num-samples", "1",
            "--scheduler", "none", "--searcher", "random", "--storage", str(storage), "--name", "loss",
            "--address", ray_cluster["address"], "--storage-is-shared", "--cpus-per-worker", "1.5", "--quiet",
            "--no-wandb", "--max-failures", "1"]
    sweep = subprocess.Popen([sys.executable, "-m", "search.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    exp = storage / "experiments" / "loss"
    deadline, lost = time.time() + 600, None
    while lost is None and time.time() < deadline and sweep.poll() is None:
        rows = [r for rs in (trial_rows(exp).values() if exp.is_dir() else []) for r in rs]
        switched = [r for r in rows if r.get("switched")]
        if switched:                                   # the trial has switched and checkpointed: lose its node
            lost = switched[0]
            ray_cluster["remove_node"](lost["node_id"])
            removed_at = time.time()
        time.sleep(0.2)
    out, err = sweep.communicate(timeout=900)
    assert lost is not None, "the trial ended before its node could be removed\n" + err[-3000:]
    assert sweep.returncode == 0, out[-3000:] + err[-3000:]
    (rows,) = trial_rows(exp).values()
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and len(rows) == 8 and rows[-1]["progress"] == pytest.approx(1.0), steps
    # the rows run on the lost node up to its removal (a report may land while it is being removed), then on the
    # other worker node to the end
    nodes = [r["node_id"] for r in rows]
    moved = next((i for i, n in enumerate(nodes) if n != lost["node_id"]), None)
    assert moved is not None and set(nodes[:moved]) == {lost["node_id"]}, nodes
    assert len(set(nodes[moved:])) == 1 and nodes[-1] in ray_cluster["workers"], (nodes, ray_cluster)
    later = [r for r in rows if r["step"] > lost["step"]]
    assert all(r["switched"] == lost["switched"] for r in later)
    # resumed from a checkpoint, not trained again from step 0: the evaluations up to the lost node's last
    # checkpoint were not run again (each evaluation writes its dev predictions once; a re-report writes nothing)
    preds = storage / "experiments" / "loss" / "artifacts" / rows[0]["trial_id"] / "dev_predictions"
    assert (preds / f"step{lost['step']:07d}.npz").stat().st_mtime < removed_at
    assert len(list(preds.glob("step*.npz"))) == 8
    from search.budget import trial_checkpoints
    final = json.loads((trial_checkpoints(exp, rows[0]["trial_id"])[0] / "state.json").read_text())
    for task in lost["switched"].split(","):           # switched once, before the loss, against the same labels
        assert final["switch"][task]["switched_at"] <= lost["step"], final["switch"][task]
        assert Path(final["soft_labels"][task]["path"]).is_file()


# ------------------------------------------------------------------------------------------- ray start

@pytest.fixture
def ray_start_head():
    """`ray start --head --block` with token authentication, as a user would, scoped to this test."""
    temp = short_temp_dir()
    token = secrets.token_hex(32)
    port = free_port()
    env = {**cli_env(), **SLOW_START, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    ray = str(Path(sys.executable).parent / "ray")
    log = open(Path(temp) / "start.log", "w")
    proc = subprocess.Popen([ray, "start", "--head", "--block", "--temp-dir", temp, "--port", str(port),
                             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
                             "--ray-client-server-port", str(free_port()), "--num-cpus", "3",
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        ready = Path(temp) / "ray_current_cluster"            # ray start writes it into --temp-dir when up
        deadline = time.time() + 300
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        if not ready.exists():
            raise AssertionError(f"ray start failed:\n{(Path(temp) / 'start.log').read_text()[-3000:]}")
        yield {"address": f"127.0.0.1:{port}", "token": token, "temp": temp}
    finally:
        log.close()
        kill_group(proc, temp)


@pytest.mark.slow
def test_sweep_joins_ray_start_with_address(ray_start_head, tmp_path, cache_dir):
    storage = tmp_path / "s"
    make_teachers(storage)
    address = ray_start_head["address"]

    # forgot RAY_AUTH_MODE: one line that says what to export (Ray's own connect retries cut to ~3 s)
    r = cli(*sweep_args(storage=f"file://{storage}", name="noauth", address=address),
            env=cli_env(RAY_gcs_server_port_wait_time_s="3"), timeout=180)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [l for l in r.stderr.splitlines() if l.startswith("bam-search: error:")]
    assert len(lines) == 1 and "token authentication" in lines[0] and "RAY_AUTH_MODE=token" in lines[0], r.stderr
    assert "Traceback" not in r.stderr

    # as documented: RAY_AUTH_MODE=token and the cluster's token
    env = cli_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_start_head["token"])
    r = cli(*sweep_args(storage=f"file://{storage}", name="joined", address=address), env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = trial_rows(storage / "experiments" / "joined")
    assert_complete(rows)
    # the trials ran in the cluster that `ray start` made, not in a Ray of the CLI's own
    node = {rs[0]["node_id"] for rs in rows.values()}
    assert len(node) == 1
    raylet_logs = "".join(p.read_text(errors="replace") for p in
                          Path(ray_start_head["temp"]).glob("session_*/logs/raylet.out"))
    assert node.pop() in raylet_logs
    assert r.stdout.count("DONE") == 2, r.stdout             # bam-search status, printed at the end
