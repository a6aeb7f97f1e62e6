"""Issue 21, items 2 and 4, without Ray: a command whose trials errored exits 1 with one line per errored trial;
paths in a recipe are made absolute before any trial runs; experiment names stay under the storage.
(The one-line refusals themselves are rows of tests/search/test_bad_input_matrix.py.)"""
import json
from pathlib import Path

import pytest

from search import cli, experiment, preflight
from search.cli import build_parser, main
from search.results import errored_trials
from trainables.errors import UserError

RECIPE = {"tasks": ["syn_noisy"], "model": "tiny", "teacher": {"use": False}}
REASON = "trainables.errors.UserError: --model minilmm: cannot load its tokenizer (OSError)"
ERROR_TXT = ("Failure # 1 (occurred at 2026-12-03_07-21-45)\n"
             "\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=10320, ip=192.0.2.2, repr=train_driver_fn)\n"
             "  File \"trainables/trial.py\", line 217, in train_driver_fn\n    trainer.fit()\n"
             f"ray.train.WorkerGroupError: Training failed due to worker errors:\n{REASON}\n\n")


def fake_experiment(storage: Path, name: str, *, errored: int = 1, done: int = 1) -> Path:
    """Tune's layout of an experiment: ``done`` finished trials and ``errored`` ones with an error.txt."""
    exp = storage / "experiments" / name
    for i in range(errored + done):
        d = exp / f"train_driver_fn_ab12c_{i:05d}_{i}_seed={i}_2026-12-03_07-20-47"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"params": {"seed": i}}))
        if i < errored:
            (d / "error.txt").write_text(ERROR_TXT)
            (d / "error.pkl").write_bytes(b"")
        else:
            (d / "result.json").write_text(json.dumps({"trial_id": f"ab12c_{i:05d}", "step": 4, "progress": 1.0,
                                                       "glue_avg": 50.0}) + "\n")
    return exp


def test_errored_trials_are_named_with_the_last_line_of_their_error_txt(tmp_path):
    fake_experiment(tmp_path, "exp", errored=2, done=1)
    assert errored_trials(str(tmp_path), "exp") == [("ab12c_00000", REASON), ("ab12c_00001", REASON)]
    assert errored_trials(str(tmp_path), "never-run") == []


def test_tunes_own_state_decides_a_trial_retried_after_an_error_that_then_finished_is_not_errored(tmp_path):
    exp = fake_experiment(tmp_path, "exp", errored=2, done=0)
    first, second = sorted(d.name for d in exp.iterdir())
    state = {"trial_data": [[json.dumps({"relative_logdir": first, "status": "TERMINATED"}), "{}"],
                            [json.dumps({"relative_logdir": second, "status": "ERROR"}), "{}"]]}
    (exp / "experiment_state-2026-12-03_07-20-47.json").write_text(json.dumps(state))
    assert errored_trials(str(tmp_path), "exp") == [("ab12c_00001", REASON)]


@pytest.fixture
def fake_run(monkeypatch):
    """``_run`` without Ray: the experiment it would leave behind has one errored trial and one finished."""
    def run(plan, *, quiet, banner=None):
        fake_experiment(Path(plan.storage), plan.name)
    monkeypatch.setattr(cli, "_run", run)
    monkeypatch.delenv("BAM_STORAGE", raising=False)
    monkeypatch.delenv("BAM_GLUE_DIR", raising=False)


@pytest.mark.parametrize("command", ["teachers", "train", "sweep", "resume"])
def test_a_command_whose_trial_errored_exits_1_with_one_line_per_trial(tmp_path, capsys, fake_run, monkeypatch,
                                                                         command):
    st = tmp_path / "st"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(RECIPE))
    argv = {"teachers": ["teachers", "--tasks", "syn_noisy", "--model", "tiny", "--name", "exp"],
            "train": ["train", str(recipe), "--name", "exp"],
            "sweep": ["sweep", "smoke", "--tasks", "syn_noisy", "--model", "tiny", "--set", "teacher.use=false",
                      "--name", "exp"],
            "resume": ["resume", "exp"]}[command]
    if command == "resume":                             # what an interrupted run left: its bam_experiment.json
        from trainables.recipe import recipe_from_dict
        loop = preflight.trial_config(str(st), recipe_from_dict(RECIPE), job="student",
                                      wandb=False).to_dict()
        (st / "experiments" / "exp").mkdir(parents=True)
        (st / "experiments" / "exp" / "bam_experiment.json").write_text(json.dumps(
            {"name": "exp", "loop": loop, "num_samples": 1,
             "resources": {"workers": 1, "cpus_per_worker": 1, "use_gpu": False}}))
    assert main(argv + ["--storage", str(st), "--quiet"] + (["--no-wandb"] if command != "resume" else [])) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"bam-search: trial ab12c_00000 of exp errored: {REASON}"     # its id and reason, one line
    assert err[1:] == [f"bam-search: tracebacks in {st / 'experiments' / 'exp'}/*/error.txt"]


def test_a_command_whose_trials_all_finished_exits_0(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_run", lambda plan, **kw: fake_experiment(Path(plan.storage), plan.name, errored=0))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tasks: [syn_noisy]\nmodel: tiny\nteacher: {use: false}\n")
    assert main(["train", str(recipe), "--name", "exp", "--storage", str(tmp_path / "st"), "--no-wandb"]) == 0
    assert capsys.readouterr().err == ""


def test_the_demo_stops_with_exit_1_when_a_teacher_errored(tmp_path, capsys, monkeypatch):
    from search.ray_env import Resources
    ran = []

    def run_plan(plan, resources, **kw):
        ran.append(plan.kind)
        fake_experiment(Path(plan.storage), plan.name)
    monkeypatch.setattr(cli, "_start", lambda plan: Resources(workers=1, cpus_per_worker=1, use_gpu=False,
                                                               max_concurrent=1))
    monkeypatch.setattr(experiment, "run_plan", run_plan)
    monkeypatch.delenv("BAM_GLUE_DIR", raising=False)
    assert main(["demo", "--model", "tiny", "--quick", "--no-wandb", "--storage", str(tmp_path / "st")]) == 1
    assert ran == ["teachers"]                          # no sweep of students without their teachers
    assert f"trial ab12c_00000 of demo-teachers errored: {REASON}" in capsys.readouterr().err


def test_a_relative_glue_dir_is_relative_to_the_recipe_file_and_a_set_one_to_the_current_folder(tmp_path,
                                                                                                   monkeypatch):
    from test_bad_input_matrix import write_glue
    write_glue(tmp_path / "data" / "glue")
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text("tasks: [rte]\nmodel: tiny\nteacher: {use: false}\ndata:\n  glue_dir: ../data/glue\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")           # where the command runs is not where the recipe is
    monkeypatch.delenv("BAM_GLUE_DIR", raising=False)
    args = ["train", str(recipe), "--storage", str(tmp_path / "st")]
    plan = preflight.plan_train(build_parser().parse_args(args))
    assert plan.recipe.data.glue_dir == str(tmp_path / "data" / "glue")   # what every trial gets: absolute
    assert plan.trial.to_dict()["recipe"]["data"]["glue_dir"] == str(tmp_path / "data" / "glue")
    monkeypatch.chdir(tmp_path / "data")
    plan = preflight.plan_train(build_parser().parse_args(args + ["--set", "data.glue_dir=glue"]))
    assert plan.recipe.data.glue_dir == str(tmp_path / "data" / "glue")


def test_bam_glue_dir_reaches_a_train_trial_as_an_absolute_path(tmp_path, monkeypatch):
    from test_bad_input_matrix import write_glue
    write_glue(tmp_path / "glue")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tasks: [rte]\nmodel: tiny\nteacher: {use: false}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BAM_GLUE_DIR", "glue")          # relative: a trial runs in another folder
    plan = preflight.plan_train(build_parser().parse_args(["train", str(recipe), "--storage", str(tmp_path / "st")]))
    assert plan.recipe.data.glue_dir == str(tmp_path / "glue")


def test_train_seeds_and_first_seed(tmp_path, monkeypatch):
    """--seeds N runs seeds 0..N-1 (one seed: the recipe's own); --first-seed K runs K..K+N-1, the retrain a
    best recipe's exported command asks for; a negative first seed is one line before anything runs."""
    from test_bad_input_matrix import write_glue
    write_glue(tmp_path / "glue")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tasks: [rte]\nmodel: tiny\nteacher: {use: false}\nseed: 4\n")
    monkeypatch.setenv("BAM_GLUE_DIR", str(tmp_path / "glue"))
    base = ["train", str(recipe), "--storage", str(tmp_path / "st")]

    def plan(*extra):
        return preflight.plan_train(build_parser().parse_args(base + list(extra)))
    assert plan().seeds == (0,) and plan().params == {"seed": 4}
    assert plan("--seeds", "3").seeds == (0, 1, 2)
    p = plan("--seeds", "3", "--first-seed", "5")
    assert p.seeds == (5, 6, 7) and p.params["seed"].get("grid_search") == [5, 6, 7]
    assert plan("--first-seed", "5").params == {"seed": 5}
    assert plan("--seeds", "3", "--first-seed", "5").name != plan("--seeds", "3").name
    with pytest.raises(UserError, match=r"^--first-seed -1: must be from 0 to 2\^32-1$"):
        plan("--first-seed", "-1")


def test_retrain_command_starts_after_the_best_trial_s_seed():
    from search.results import retrain_command
    assert retrain_command("b.yaml", {"seed": 0}, "runs") == \
        ["bam-search", "train", "b.yaml", "--seeds", "3", "--first-seed", "1", "--storage", "runs"]
    assert retrain_command("b.yaml", {"seed": 7}, "runs", seeds=5)[3:7] == ["--seeds", "5", "--first-seed", "8"]


@pytest.mark.parametrize("key,kind,refused", [
    ("optim.batch_size", "uniform", True), ("optim.batch_size", "int_uniform", False),
    ("optim.steps", "log_uniform_values", True), ("switch.per_task.rte.patience", "normal", True),
    ("optim.lr", "uniform", False), ("anneal.per_task.rte.k", "q_uniform", False),
    ("sampling.weights.rte", "uniform", False), ("optim.batch_size", "categorical", False)])
def test_a_fractional_distribution_on_a_whole_number_key_is_refused(key, kind, refused):
    space = {"kinds": {key: kind}, "where": {key: "s.yaml:3"}}
    if refused:
        with pytest.raises(UserError, match=rf"^s.yaml:3: parameter {key}: distribution {kind} draws fractional"):
            preflight.check_space_types(space)
    else:
        preflight.check_space_types(space)


@pytest.mark.parametrize("name,ok", [("sweep-smoke-20260101-120000", True), ("a.b_c-1", True), ("..", False),
                                     (".", False), ("../x", False), ("/abs/path", False), ("a/b", False),
                                     ("", False), ("a b", False), ("a\\b", False)])
def test_experiment_names(name, ok):
    if ok:
        assert experiment.check_name(name) == name
    else:
        with pytest.raises(UserError, match="not an experiment name"):
            experiment.check_name(name)


def test_default_names_from_file_stems_are_valid_names():
    assert experiment.check_name(experiment.name_part("my recipe (v2)")) == "my_recipe__v2_"
