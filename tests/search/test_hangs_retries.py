"""Issue 21.3 and trial retries: a resource request no node can hold is refused in one line (an autoscaler
may add the node: a warning and a pending timeout instead); online W&B that cannot start falls back to offline
with one warning; --max-failures / resume --retry-errored reach Tune. No Ray starts here (the storage probe's
timeout is tested in tests/trainables/test_storage.py)."""
from __future__ import annotations

import pytest

from search import ray_env
from search.cli import build_parser
from search.ray_env import Resources, node_types_of, resource_problem
from trainables.errors import UserError

TWO_CORES = [{"CPU": 3.0}]                       # the embedded Ray on a 2-core machine (one logical CPU more)


# ------------------------------------------------------------------------------------------- resources

@pytest.mark.parametrize("workers, cpw, gpu, nodes, needle", [
    (1, 8.0, False, TWO_CORES, "--workers-per-trial 1 --cpus-per-worker 8:"),        # --cpus-per-worker 8, 2 cores
    (1, 3.0, False, TWO_CORES, "--cpus-per-worker 3:"),                               # no room for the driver
    (4, 1.0, False, TWO_CORES, "--workers-per-trial 4 --cpus-per-worker 1:"),        # more workers than CPUs
    (1, 1.0, True, TWO_CORES, "--use-gpu:"),                                         # GPUs on a CPU-only cluster
    (1, 4.0, False, [{"CPU": 3.0}, {"CPU": 3.0}], "2 nodes with 3, 3 CPUs"),         # 6 CPUs, none holds 4
    (2, 1.0, True, [{"CPU": 8.0, "GPU": 1.0}], "1 GPUs in all"),                     # 2 GPU workers, 1 GPU
])
def test_a_trial_no_node_can_hold_is_one_line(workers, cpw, gpu, nodes, needle):
    problem = resource_problem(nodes, workers=workers, cpus_per_worker=cpw, use_gpu=gpu)
    assert problem is not None and needle in problem and "\n" not in problem
    assert "can never hold" in problem and ("drop --use-gpu" in problem) == (gpu and not any(
        n.get("GPU") for n in nodes))


@pytest.mark.parametrize("workers, cpw, gpu, nodes", [
    (1, 2.0, False, TWO_CORES),                   # 2 + 0.25 of 3
    (2, 1.0, False, TWO_CORES),
    (2, 3.0, False, [{"CPU": 0.0}, {"CPU": 3.0}, {"CPU": 3.25}]),   # a head without CPUs; workers on two nodes
    (2, 1.0, True, [{"CPU": 1.0}, {"CPU": 4.0, "GPU": 2.0}]),       # the driver on the CPU head
])
def test_a_trial_that_fits_somewhere_is_not_refused(workers, cpw, gpu, nodes):
    assert resource_problem(nodes, workers=workers, cpus_per_worker=cpw, use_gpu=gpu) is None


def _cluster(monkeypatch, nodes, types):
    import ray
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": n} for n in nodes]
                        + [{"Alive": False, "Resources": {"CPU": 64.0}}])               # a dead node counts not
    monkeypatch.setattr(ray_env, "autoscaler_node_types", lambda: types)


def test_check_fits_refuses_before_any_trial(monkeypatch):
    _cluster(monkeypatch, TWO_CORES, [])
    with pytest.raises(UserError, match="^--workers-per-trial 1 --cpus-per-worker 8: a trial needs"):
        ray_env.check_fits(Resources(workers=1, cpus_per_worker=8.0, use_gpu=False, max_concurrent=1), joined=False)
    ok = Resources(workers=1, cpus_per_worker=2.0, use_gpu=False, max_concurrent=1)
    assert ray_env.check_fits(ok, joined=False) is ok


def test_an_autoscaler_gets_a_warning_and_a_pending_timeout(monkeypatch, capsys):
    _cluster(monkeypatch, [{"CPU": 2.0}], ["ray.worker.gpu"])
    monkeypatch.setenv("BAM_PENDING_TIMEOUT", "600")
    gpu = Resources(workers=1, cpus_per_worker=1.0, use_gpu=True, max_concurrent=1)
    got = ray_env.check_fits(gpu, joined=True)
    err = capsys.readouterr().err.splitlines()
    assert got.pending_timeout_s == 600 and got.as_dict()["pending_timeout_s"] == 600
    assert len(err) == 1 and err[0].startswith("bam-search: warning: --workers-per-trial 1 --cpus-per-worker 1 "
                                               "--use-gpu:") and "ray.worker.gpu" in err[0] and "600 s" in err[0]
    with pytest.raises(UserError):                   # the embedded Ray has no autoscaler, whatever it reports
        ray_env.check_fits(gpu, joined=False)
    assert "pending_timeout_s" not in Resources(1, 1.0, False, 1).as_dict()   # recorded only when set


def test_pending_timeout_becomes_train_controller_retries(monkeypatch):
    from trainables.trial import pending_retries
    monkeypatch.delenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", raising=False)
    assert pending_retries(None) == -1              # Train's default: wait for as long as it takes
    assert pending_retries(1800) == 29              # 30 placement attempts of 60 s
    assert pending_retries(10) == 0
    monkeypatch.setenv("BAM_PENDING_TIMEOUT", "soon")
    with pytest.raises(UserError, match="^BAM_PENDING_TIMEOUT=soon: "):
        ray_env.pending_timeout()


def test_node_types_tell_an_autoscaler_from_a_cluster_started_by_hand():
    by_hand = {"autoscaler_report": {"active_nodes": {"node_3f2a": 1, "node_9c1e": 1}, "pending_launches": {},
                                     "pending_nodes": []}}
    aws = {"autoscaler_report": {"active_nodes": {"ray.head.default": 1}, "pending_launches": {"gpu_worker": 1},
                                 "pending_nodes": [["10.0.0.5", "gpu_worker", "setting-up"]]}}
    assert node_types_of(by_hand) == [] and node_types_of({}) == []
    assert node_types_of(aws) == ["gpu_worker", "ray.head.default"]


# ------------------------------------------------------------------------------------------- W&B

class _Trial:
    trial_id, config = "t1", {"loop": {"recipe": {"tasks": ["rte"]}, "job": "student"}, "params": {}}


def test_online_wandb_that_times_out_falls_back_to_offline_once(monkeypatch, tmp_path, capsys):
    import wandb
    from wandb.errors import CommError

    from search.tracking import WandbTrials
    calls = []

    def init(**kw):
        calls.append((kw["mode"], kw["settings"].init_timeout))
        if kw["mode"] == "online":
            raise CommError("Run initialization has timed out after 30.0 sec.\nPlease try again")
        return object()
    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)
    cb = WandbTrials(settings={"dir": str(tmp_path / "wandb")}, experiment="exp")
    cb._init(_Trial())
    cb._init(_Trial())                               # the next trial goes offline at once: no second wait
    assert calls == [("online", 30.0), ("offline", 30.0), ("offline", 30.0)]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("bam-search: warning: W&B online did not start (CommError: Run "
                                               "initialization has timed out after 30.0 sec.; timeout 30 s): "
                                               "logging offline to ")


def test_offline_wandb_errors_are_not_hidden(monkeypatch, tmp_path):
    import wandb

    from search.tracking import WandbTrials

    def init(**kw):
        raise OSError("disk full")
    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(OSError, match="disk full"):
        WandbTrials(settings={"dir": str(tmp_path)}, experiment="exp")._init(_Trial())


# ------------------------------------------------------------------------------------------- retries

@pytest.mark.parametrize("argv, max_failures, retry", [
    (["sweep", "s.yaml"], None, False),
    (["train", "r.yaml", "--max-failures", "3"], 3, False),
    (["teachers", "--max-failures", "0"], 0, False),
    (["resume", "exp", "--retry-errored", "--max-failures", "2"], 2, True),
    (["resume", "exp"], None, False),
])
def test_retry_flags_parse(argv, max_failures, retry):
    args = build_parser().parse_args(argv)
    assert args.max_failures == max_failures and getattr(args, "retry_errored", False) == retry


def test_with_retries_defaults_and_refuses_a_negative_count():
    from types import SimpleNamespace

    from search.preflight import Plan, with_retries
    plan = Plan(kind="sweep", name="x", trial=None, params={}, request=None)
    assert with_retries(plan, SimpleNamespace(max_failures=None)).max_failures == 1
    resume = with_retries(Plan(kind="resume", name="x", trial=None, params={}, request=None),
                          SimpleNamespace(max_failures=None, retry_errored=True))
    assert resume.max_failures is None and resume.retry_errored        # None: the experiment keeps its own
    with pytest.raises(UserError, match=r"^--max-failures -1: must be 0 or more"):
        with_retries(plan, SimpleNamespace(max_failures=-1))


class _FakeTuner:
    """Stands in for ray.tune.Tuner: records what run_experiment hands it; fit() returns at once."""
    seen: dict = {}
    restorable = False

    def __init__(self, trainable, *, param_space, run_config, tune_config):
        _FakeTuner.seen.update(run_config=run_config)

    @classmethod
    def can_restore(cls, path):
        return cls.restorable

    @classmethod
    def restore(cls, path, **kw):
        from types import SimpleNamespace

        from ray import tune
        _FakeTuner.seen.update(restore=kw)
        config = tune.RunConfig(failure_config=tune.FailureConfig(max_failures=0), callbacks=[])
        _FakeTuner.seen.update(restored=config)
        return SimpleNamespace(_local_tuner=SimpleNamespace(get_run_config=lambda: config), fit=lambda: "fitted")

    def fit(self):
        return "fitted"


def _run(tmp_path, monkeypatch, *, restorable: bool, **kw):
    from ray import tune

    from search.experiment import run_experiment
    from search.preflight import trial_config
    from trainables.recipe import recipe_from_dict
    monkeypatch.setattr(tune, "Tuner", _FakeTuner)
    _FakeTuner.seen, _FakeTuner.restorable = {}, restorable
    trial = trial_config(str(tmp_path), recipe_from_dict({"tasks": ["syn_noisy"]}), job="student", wandb=False)
    res = Resources(workers=1, cpus_per_worker=1.0, use_gpu=False, max_concurrent=1)
    assert run_experiment(name="exp", trial=trial, params={}, resources=res, num_samples=1, progress=False,
                          disk_budget=None, **kw) == "fitted"
    return _FakeTuner.seen


def test_max_failures_reaches_tunes_failure_config(tmp_path, monkeypatch):
    assert _run(tmp_path, monkeypatch, restorable=False)["run_config"].failure_config.max_failures == 1
    assert _run(tmp_path, monkeypatch, restorable=False, max_failures=4)["run_config"].failure_config.max_failures == 4


def test_resume_retry_errored_resumes_them_under_their_own_ids(tmp_path, monkeypatch):
    seen = _run(tmp_path, monkeypatch, restorable=True, max_failures=None, retry_errored=True)
    assert seen["restore"]["resume_errored"] is True and seen["restore"]["restart_errored"] is False
    ours = lambda cbs: [c for c in cbs if type(c).__name__ != "CtrlCWatch"]     # noqa: E731  (Ctrl-C: experiment.py)
    assert seen["restored"].failure_config.max_failures == 0 and ours(seen["restored"].callbacks) == []   # its own
    seen = _run(tmp_path, monkeypatch, restorable=True, max_failures=3)
    assert seen["restore"]["resume_errored"] is False and seen["restored"].failure_config.max_failures == 3
    (cb,) = ours(seen["restored"].callbacks)

    class T:
        max_failures = 0
    trials = [T(), T()]
    cb.on_step_begin(0, trials)
    assert [t.max_failures for t in trials] == [3, 3]      # restored trials get the new count too
