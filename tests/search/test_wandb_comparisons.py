"""W&B comparisons that need no extra code (issue 20, item 4): each run's job_type, group and tags; the
student summary's ``delta/TASK`` next to ``selected/TASK``; --wandb-project/--wandb-entity/--wandb-tags; and
``bam-search sync NAME``. No network, no Ray: ``wandb sync`` is a monkeypatched subprocess.run."""
from __future__ import annotations

import json
import struct
import subprocess

import pytest

from search.cli import build_parser, main
from search.tracking import WandbTrials, run_labels
from search.wandb_file import read_run

ROWS = [  # a student with teachers: the trial reports TASK/delta_vs_teachers (trainables.teachers)
    {"step": 10, "a/score": 80.0, "b/score": 60.0, "glue_avg": 70.0, "a/delta_vs_teachers": -2.0,
     "b/delta_vs_teachers": -4.0, "delta_vs_teachers": -3.0},
    {"step": 20, "a/score": 85.0, "b/score": 70.0, "glue_avg": 77.5, "a/delta_vs_teachers": 3.0,
     "b/delta_vs_teachers": 6.0, "delta_vs_teachers": 4.5},
    {"step": 30, "a/score": 90.0, "b/score": 50.0, "glue_avg": 70.0, "a/delta_vs_teachers": 8.0,
     "b/delta_vs_teachers": -14.0, "delta_vs_teachers": -3.0},
]


def test_job_type_group_and_tags_per_job():
    kd = {"tasks": ["a", "b"]}
    plain = {"tasks": ["a", "b"], "teacher": {"use": False}, "switch": {"criterion": "never"}}
    assert run_labels(job="teacher", recipe={"tasks": ["a"]}, experiment="t", tags=("v2",)) == {
        "job_type": "teacher", "group": "t", "tags": ["teacher", "a", "v2"]}
    assert run_labels(job="student", recipe=kd, experiment="sw")["job_type"] == "student"
    assert run_labels(job="student", recipe=plain, experiment="mt", tags=("a", "x")) == {
        "job_type": "baseline-multitask", "group": "mt", "tags": ["baseline-multitask", "a", "b", "x"]}
    # no teachers but a KD switch (its own snapshots), here or on one task: not the plain baseline
    assert run_labels(job="student", recipe={**plain, "switch": {"criterion": "patience"}},
                      experiment="s")["job_type"] == "student"
    assert run_labels(job="student", recipe={**plain, "switch": {"per_task": {"b": {"criterion": "ema"}}}},
                      experiment="s")["job_type"] == "student"


class FakeRun:
    def __init__(self):
        self.summary, self.logged = {}, []

    def log(self, metrics, step):
        self.logged.append(step)


class FakeTrial:
    trial_id = "t1"
    config = {"metric": "glue_avg", "params": {}, "loop": {"job": "student", "recipe": {"tasks": ["a", "b"]}}}


def test_student_summary_holds_the_delta_to_its_teachers_at_the_selected_evaluation():
    cb = WandbTrials(settings={"dir": "unused"}, experiment="sw")
    cb.runs["t1"] = run = FakeRun()
    for r in ROWS:
        cb.on_trial_result(0, [], FakeTrial(), r)
    # step 20 has the highest glue_avg: the delta is that one checkpoint's, not the last nor each task's best
    assert {k: v for k, v in run.summary.items() if k.startswith("delta/")} == {
        "delta/a": 3.0, "delta/b": 6.0, "delta/mean": 4.5}
    assert run.summary["selected/a"] == 85.0 and run.summary["selected/step"] == 20
    cb.runs["t2"] = plain = FakeRun()                   # no teachers, no delta keys (none made up)
    trial = type("T", (FakeTrial,), {"trial_id": "t2"})()
    cb.on_trial_result(0, [], trial, {"step": 5, "a/score": 50.0, "glue_avg": 50.0})
    assert not [k for k in plain.summary if k.startswith("delta/")] and plain.summary["selected/a"] == 50.0


def _init_kwargs(monkeypatch, tmp_path, settings: dict, trial=FakeTrial) -> dict:
    seen = {}
    monkeypatch.setattr(WandbTrials, "_start", lambda self, **kw: seen.update(kw) or FakeRun())
    WandbTrials(settings={"dir": str(tmp_path / "w"), **settings}, experiment="sw")._init(trial())
    return seen


def test_project_entity_and_tags_reach_wandb_init_and_env_is_honoured(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    kw = _init_kwargs(monkeypatch, tmp_path, {"project": None, "entity": None, "tags": []})
    assert (kw["project"], kw["entity"], kw["job_type"], kw["group"]) == ("bam-search", None, "student", "sw")
    monkeypatch.setenv("WANDB_PROJECT", "from-env")    # no flag: wandb's own variable wins over our default
    assert _init_kwargs(monkeypatch, tmp_path, {"project": None})["project"] == "from-env"
    kw = _init_kwargs(monkeypatch, tmp_path, {"project": "p", "entity": "team", "tags": ["v2"]})
    assert (kw["project"], kw["entity"], kw["tags"]) == ("p", "team", ["student", "a", "b", "v2"])


def sweep_argv(tmp_path, *flags) -> list[str]:
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n  optim.lr: {min: 0.001, max: 0.01}\n")
    return ["sweep", str(space), "--tasks", "syn_noisy", "--model", "tiny", "--set", "teacher.use=false",
            "--evals", "4", "--storage", str(tmp_path / "st"), *flags]


def test_wandb_flags_reach_the_experiment_config(tmp_path):
    """What the plans of teachers/train/sweep/demo pass to ``trial_config`` (no torch import: stays fast)."""
    from search.preflight import trial_config, wandb_options
    from trainables.recipe import recipe_from_dict
    recipe, storage = recipe_from_dict({"tasks": ["syn_noisy"]}), str(tmp_path / "st")

    def settings(*flags):
        args = build_parser().parse_args(sweep_argv(tmp_path, *flags))
        return trial_config(storage, recipe, job="student", wandb=wandb_options(args)).wandb
    w = settings("--wandb-project", "bam-x", "--wandb-entity", "lab", "--wandb-tags", "v2, cpu,v2")
    assert (w["project"], w["entity"], w["tags"]) == ("bam-x", "lab", ["v2", "cpu"])
    assert w["dir"] == str(tmp_path / "st" / "wandb") and "key" not in json.dumps(w).lower()
    plain = settings()
    assert (plain["project"], plain["entity"], plain["tags"]) == (None, None, [])
    assert settings("--no-wandb") is None
    for cmd in ("teachers", "train", "demo"):
        args = build_parser().parse_args([cmd, *(["r.yaml"] if cmd == "train" else []), "--wandb-tags", "x,y"])
        assert wandb_options(args)["tags"] == ("x", "y")


@pytest.mark.parametrize("flags, says", [
    (["--wandb-project", "a/b"], "--wandb-project 'a/b': a W&B name"),
    (["--wandb-entity", ""], "--wandb-entity '': a W&B name"),
    (["--wandb-tags", " , "], "--wandb-tags ' , ': give comma-separated tags"),
    (["--wandb-tags", "x" * 65], "--wandb-tags: tag"),
    (["--no-wandb", "--wandb-project", "p"], "--wandb-project: not with --no-wandb"),
])
def test_bad_wandb_flags_are_one_line(tmp_path, capsys, flags, says):
    assert main(sweep_argv(tmp_path, *flags)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bam-search: error: {says}") and err.count("\n") == 1
    assert not (tmp_path / "st").exists()


def write_offline_run(folder, *, run_id: str, group: str) -> None:
    """An offline run folder as wandb 0.31 writes it: a ``run-ID.wandb`` log whose first record is the run."""
    from wandb.proto import wandb_internal_pb2 as pb
    rec = pb.Record()
    rec.run.run_id, rec.run.run_group, rec.run.job_type = run_id, group, "student"
    payload = rec.SerializeToString()
    folder.mkdir(parents=True)
    (folder / f"run-{run_id}.wandb").write_bytes(b":W&B" + struct.pack("<HB", 0xBEE1, 0)
                                                 + struct.pack("<IHB", 0, len(payload), 1) + payload)


def experiment(storage, name: str, wandb: dict | None) -> None:
    (storage / "experiments" / name).mkdir(parents=True)
    (storage / "experiments" / name / "bam_experiment.json").write_text(json.dumps({"loop": {"wandb": wandb}}))


def test_sync_uploads_exactly_that_experiments_offline_runs(tmp_path, monkeypatch, capsys):
    storage, calls = tmp_path / "st", []
    wdir = storage / "wandb"
    experiment(storage, "sw", {"dir": str(wdir)})
    experiment(storage, "other", {"dir": str(wdir)})
    experiment(storage, "quiet", None)
    for stamp, rid, group in (("20260101_000001", "a_00000", "sw"), ("20260101_000002", "b_00000", "other"),
                              ("20260101_000003", "a_00001", "sw")):
        write_offline_run(wdir / "wandb" / f"offline-run-{stamp}-{rid}", run_id=rid, group=group)
    (wdir / "wandb" / "run-20260101_000004-c_00000").mkdir()                  # online: uploaded already
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)) or
                        subprocess.CompletedProcess(cmd, 0))
    assert main(["sync", "sw", "--storage", str(storage)]) == 0
    (cmd, kw), = calls
    assert cmd[-3:] == ["sync", str(wdir / "wandb" / "offline-run-20260101_000001-a_00000"),
                        str(wdir / "wandb" / "offline-run-20260101_000003-a_00001")]
    assert kw["env"]["WANDB_DIR"] == str(wdir)
    out = capsys.readouterr().out
    assert out.startswith("running: ") and "offline-run-20260101_000001-a_00000" in out and "b_00000" not in out
    for name, says in (("quiet", "quiet: ran with --no-wandb"), ("nothing", "no experiment 'nothing'")):
        assert main(["sync", name, "--storage", str(storage)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"bam-search: error: {says}") and err.count("\n") == 1
    experiment(storage, "empty", {"dir": str(wdir)})
    assert main(["sync", "empty", "--storage", str(storage)]) == 2
    assert "empty: no offline W&B runs under" in capsys.readouterr().err and len(calls) == 1


def test_offline_run_files_hold_the_job_types_and_the_delta_summary(tmp_path, monkeypatch):
    """Real offline W&B runs (wandb.init, no network), read back from their files."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cb = WandbTrials(settings={"dir": str(tmp_path / "w"), "project": "p", "tags": ["v2"]}, experiment="mt")
    plain = type("T", (FakeTrial,), {"trial_id": "p1", "config": {
        **FakeTrial.config, "loop": {"job": "student", "recipe": {"tasks": ["a", "b"], "teacher": {"use": False}}}}})()
    for trial, rows in ((FakeTrial(), ROWS), (plain, [{"step": 5, "a/score": 50.0, "b/score": 40.0,
                                                       "glue_avg": 45.0}])):
        cb.on_trial_start(0, [], trial)
        for r in rows:
            cb.on_trial_result(0, [], trial, r)
        cb.on_trial_complete(0, [], trial)
    runs = {r["run"]["id"]: r for r in map(read_run, sorted((tmp_path / "w").rglob("run-*.wandb")))}
    assert {i: (r["run"]["job_type"], r["run"]["group"]) for i, r in runs.items()} == {
        "t1": ("student", "mt"), "p1": ("baseline-multitask", "mt")}
    assert "v2" in runs["p1"]["run"]["tags"] and runs["t1"]["run"]["project"] == "p"
    assert runs["t1"]["summary"]["delta/a"] == 3.0 and runs["t1"]["summary"]["selected/b"] == 70.0
    assert not [k for k in runs["p1"]["summary"] if k.startswith("delta/")]
