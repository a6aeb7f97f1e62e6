"""W&B sweep-file keys are honoured or refused, never dropped (issue 17, item 11).

``method`` -> searcher (bayes = Optuna's TPE), ``metric: {name, goal}`` -> --metric (goal maximize),
``early_terminate: {type: hyperband, ...}`` -> ASHA's grace period and reduction factor, ``name`` -> the
experiment's name, ``values`` + ``probabilities`` -> a weighted categorical (random search); ``program`` and
what ASHA or Tune cannot do are refused in one line naming file:line. A flag given on the command line beats
the file's key. Everything here stops at the checked ``Plan`` (``preflight.plan_sweep``): no Ray starts.
"""
from __future__ import annotations

import collections
import pickle

import numpy as np
import pytest

from search.cli import build_parser, main
from search.preflight import plan_sweep
from search.spaces import load_space, to_tune, weighted_choice
from trainables.errors import UserError

PARAMS = "parameters:\n  anneal.schedule: {values: [linear, cosine]}\n  optim.lr: {min: 0.001, max: 0.01}\n"
CATEGORICAL = "parameters:\n  anneal.schedule: {values: [linear, cosine, none]}\n"
BASE = {"tasks": ["syn_noisy"], "model": "tiny", "teacher": {"use": False}}


def write(tmp_path, head: str, params: str = PARAMS):
    path = tmp_path / "space.yaml"
    path.write_text(head + params)
    return path


def argv(tmp_path, path, *flags) -> list[str]:
    return ["sweep", str(path), "--tasks", "syn_noisy", "--model", "tiny", "--set", "teacher.use=false",
            "--evals", "4", "--storage", str(tmp_path / "st"), *flags]


def plan(tmp_path, head: str, *flags, params: str = PARAMS):
    return plan_sweep(build_parser().parse_args(argv(tmp_path, write(tmp_path, head, params), *flags)))


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """A refusal that went missing must fail here, not start a real sweep."""
    from search import cli

    def past_preflight(plan, **_):
        raise AssertionError(f"preflight passed: searcher {plan.searcher}, scheduler {plan.scheduler}")
    monkeypatch.setattr(cli, "_run", past_preflight)


def refused(tmp_path, capsys, head: str, *flags, params: str = PARAMS) -> str:
    """The real CLI: exit 2, one line on stderr, nothing recorded, no Ray."""
    import ray
    rc = main(argv(tmp_path, write(tmp_path, head, params), *flags))
    out, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.strip() and "Warning" not in l and "warn(" not in l]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("bam-search: error:"), err
    assert not (tmp_path / "st" / "experiments").exists() and not ray.is_initialized()
    return lines[0]


# ------------------------------------------------------------------------------------------------ method

@pytest.mark.parametrize("method, searcher", [("bayes", "optuna"), ("random", "random"), ("grid", "grid")])
def test_method_picks_the_searcher(tmp_path, method, searcher):
    p = plan(tmp_path, f"method: {method}\n", params=CATEGORICAL)
    assert p.searcher == searcher
    assert p.space["settings_from"]["searcher"] == f"{tmp_path}/space.yaml:1: method {method}"
    assert p.trials == (3 * 8 if method == "grid" else 8)          # grid: every value, num_samples times


def test_no_method_keeps_the_default_searcher(tmp_path):
    assert plan(tmp_path, "").searcher == "optuna"


def test_unknown_method_refused_naming_the_line(tmp_path, capsys):
    line = refused(tmp_path, capsys, "description: x\nmethod: custom\n")
    assert f"{tmp_path}/space.yaml:2: method 'custom'" in line and "bayes" in line


def test_method_bayes_with_pbt_refused_naming_the_file(tmp_path, capsys):
    line = refused(tmp_path, capsys, "method: bayes\n", "--scheduler", "pbt")
    assert "space.yaml:1: method bayes" in line and "pbt" in line and "method: random or grid" in line


# ------------------------------------------------------------------------------------------------ metric

def test_metric_name_and_goal_maximize_are_honoured(tmp_path):
    p = plan(tmp_path, "metric:\n  name: syn_noisy/score\n  goal: maximize\n")
    assert p.metric == "syn_noisy/score"
    assert p.space["settings_from"]["metric"].endswith("space.yaml:2: metric.name")


@pytest.mark.parametrize("head, needles", [
    ("metric: {name: glue_avg, goal: minimize}\n", ["space.yaml:1", "metric.goal minimize", "goal: maximize"]),
    ("metric:\n  name: glue_avg\n  goal: minimize\n", ["space.yaml:3", "metric.goal minimize"]),
    ("metric:\n  name: glue_avg\n", ["space.yaml:1", "metric.goal missing", "W&B's default is minimize"]),
    ("metric:\n  name: glue_avg\n  goal: biggest\n", ["space.yaml:3", "'biggest'"]),
    ("metric:\n  goal: maximize\n", ["space.yaml:1", "metric.name"]),
    ("metric: glue_avg\n", ["space.yaml:1", "metric must be a mapping"]),
    ("metric:\n  name: glue_avg\n  goal: maximize\n  target: 0.9\n",
     ["space.yaml:4", "metric.target", "not supported"]),
    ("metric:\n  name: accuracy\n  goal: maximize\n", ["space.yaml:2: metric.name 'accuracy'", "not reported"]),
])
def test_bad_metric_refused_in_one_line(tmp_path, capsys, head, needles):
    line = refused(tmp_path, capsys, head)
    assert all(n in line for n in needles), line


def test_the_metric_flag_beats_the_file_but_the_goal_still_counts(tmp_path, capsys):
    p = plan(tmp_path, "metric: {name: syn_noisy/score, goal: maximize}\n", "--metric", "glue_avg_best")
    assert p.metric == "glue_avg_best" and p.space["settings_from"]["metric"] == "--metric"
    # a metric name the flag replaces is not checked; a goal of minimize is wrong for every metric
    assert plan(tmp_path, "metric: {name: accuracy, goal: maximize}\n", "--metric", "glue_avg").metric == "glue_avg"
    assert "metric.goal minimize" in refused(tmp_path, capsys, "metric: {name: glue_avg, goal: minimize}\n",
                                             "--metric", "glue_avg")


# ------------------------------------------------------------------------------------------------ early_terminate

def test_hyperband_min_iter_and_eta_become_asha(tmp_path):
    p = plan(tmp_path, "early_terminate:\n  type: hyperband\n  min_iter: 2\n  eta: 4\n")
    assert p.scheduler == "asha" and p.early_stopping == {"grace_period": 2, "reduction_factor": 4}
    assert p.space["settings_from"]["grace_period"].endswith("space.yaml:3: early_terminate.min_iter")


def test_hyperband_eta_defaults_to_wandbs_3(tmp_path):
    p = plan(tmp_path, "early_terminate: {type: hyperband, min_iter: 1}\n")
    assert p.early_stopping == {"grace_period": 1, "reduction_factor": 3}


def test_hyperband_max_iter_and_s_give_the_first_band(tmp_path):
    """W&B's bands are max_iter / eta^k for k = 1..s: the first, int(4 / 2^2) = 1, is ASHA's grace period."""
    p = plan(tmp_path, "early_terminate: {type: hyperband, max_iter: 4, s: 2, eta: 2}\n")
    assert p.scheduler == "asha" and p.early_stopping == {"grace_period": 1, "reduction_factor": 2}


def test_the_asha_scheduler_object_gets_them(tmp_path):
    from search.experiment import make_scheduler
    p = plan(tmp_path, "early_terminate: {type: hyperband, min_iter: 2, eta: 3}\n")
    s = make_scheduler(p.scheduler, max_t=p.recipe.evals, metric=p.metric, **p.early_stopping)
    assert s._reduction_factor == 3 and s._max_t == 4 and min(s._brackets[0]._rungs)[0] == 2


@pytest.mark.parametrize("head, needles", [
    ("early_terminate: {type: envelope, min_iter: 1}\n", ["space.yaml:1", "early_terminate.type 'envelope'",
                                                           "only hyperband"]),
    ("early_terminate:\n  min_iter: 1\n", ["space.yaml:1", "early_terminate.type None"]),
    ("early_terminate:\n  type: hyperband\n  min_iter: 1\n  strict: true\n",
     ["space.yaml:4", "early_terminate.strict"]),
    ("early_terminate:\n  type: hyperband\n  min_iter: 0\n", ["space.yaml:3", "min_iter 0", ">= 1"]),
    ("early_terminate:\n  type: hyperband\n  min_iter: 9\n", ["space.yaml:3: early_terminate.min_iter 9",
                                                               "evals (4)"]),
    ("early_terminate:\n  type: hyperband\n  min_iter: 1\n  eta: 1\n", ["space.yaml:4", "eta 1", "> 1"]),
    ("early_terminate: {type: hyperband, eta: 2}\n", ["space.yaml:1", "min_iter, or max_iter with s"]),
    ("early_terminate: {type: hyperband, min_iter: 1, max_iter: 4, s: 1}\n", ["min_iter, or max_iter with s"]),
    ("early_terminate: {type: hyperband, max_iter: 4}\n", ["min_iter, or max_iter with s"]),
    ("early_terminate:\n  type: hyperband\n  max_iter: 8\n  s: 1\n", ["space.yaml:3: early_terminate.max_iter 8",
                                                                      "evals (4)", "max_iter: 4"]),
    ("early_terminate:\n  type: hyperband\n  max_iter: 4\n  s: 3\n", ["space.yaml:4", "below one evaluation"]),
    ("early_terminate: hyperband\n", ["space.yaml:1", "must be a mapping"]),
])
def test_bad_early_terminate_refused_in_one_line(tmp_path, capsys, head, needles):
    line = refused(tmp_path, capsys, head)
    assert all(n in line for n in needles), line


# ------------------------------------------------------------------------------------------------ flags win

HEAD = ("name: from-the-file\nmethod: bayes\nmetric: {name: syn_noisy/score, goal: maximize}\n"
        "early_terminate: {type: hyperband, min_iter: 2, eta: 3}\n")


def test_without_flags_the_file_decides(tmp_path):
    p = plan(tmp_path, HEAD)
    assert (p.name, p.searcher, p.scheduler, p.metric) == ("from-the-file", "optuna", "asha", "syn_noisy/score")
    assert p.early_stopping == {"grace_period": 2, "reduction_factor": 3}


def test_flags_given_beat_the_file(tmp_path):
    p = plan(tmp_path, HEAD, "--name", "mine", "--searcher", "random", "--metric", "glue_avg",
             "--grace-period", "1", "--reduction-factor", "2")
    assert (p.name, p.searcher, p.scheduler, p.metric) == ("mine", "random", "asha", "glue_avg")
    assert p.early_stopping == {"grace_period": 1, "reduction_factor": 2}
    assert {k: v for k, v in p.space["settings_from"].items() if k != "scheduler"} == {
        "name": "--name", "searcher": "--searcher", "metric": "--metric", "grace_period": "--grace-period",
        "reduction_factor": "--reduction-factor"}


def test_one_flag_beats_one_part_of_early_terminate(tmp_path):
    p = plan(tmp_path, HEAD, "--reduction-factor", "2")
    assert p.early_stopping == {"grace_period": 2, "reduction_factor": 2}


@pytest.mark.parametrize("scheduler, early", [("median", None), ("none", None), ("asha", {"grace_period": 2,
                                                                                          "reduction_factor": 3})])
def test_the_scheduler_flag_replaces_early_terminate_unless_it_is_asha(tmp_path, scheduler, early):
    p = plan(tmp_path, HEAD, "--scheduler", scheduler)
    assert p.scheduler == scheduler and p.early_stopping == early


def test_defaults_apply_after_merging(tmp_path):
    p = plan(tmp_path, "description: no W&B keys\n")
    assert (p.searcher, p.scheduler, p.metric, p.early_stopping) == ("optuna", "asha", "glue_avg", None)
    assert p.name.startswith("sweep-space-")


def test_help_still_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    flat = " ".join(capsys.readouterr().out.split())
    assert "asha (default" in flat and "glue_avg (default" in flat and "bayes = Optuna's TPE" in flat


# ------------------------------------------------------------------------------------------------ name, program

@pytest.mark.parametrize("head, needles", [
    ("program: train.py\n", ["space.yaml:1", "program", "remove program"]),
    ("name: ../elsewhere\n", ["space.yaml:1", "name '../elsewhere'", "experiments/NAME"]),
    ("name: [a, b]\n", ["space.yaml:1", "name ['a', 'b']"]),
    ("run_cap: 10\n", ["space.yaml:1", "unknown key 'run_cap'"]),
])
def test_keys_that_cannot_mean_anything_here_are_refused(tmp_path, capsys, head, needles):
    line = refused(tmp_path, capsys, head)
    assert all(n in line for n in needles), line


# ------------------------------------------------------------------------------------------------ probabilities

WEIGHTED = "parameters:\n  optim.lr: {values: [0.001, 0.002, 0.004], probabilities: [0.6, 0.3, 0.1]}\n"


def test_probabilities_are_sampled_with_their_weights(tmp_path):
    """Tune's random search (generate_variants, what BasicVariantGenerator runs) draws each value about as
    often as its probability says (seeded; a loose bound)."""
    from ray.tune.search.variant_generator import generate_variants
    p = plan(tmp_path, "method: random\n", params=WEIGHTED)
    assert p.searcher == "random"
    domain = pickle.loads(pickle.dumps(p.params["optim.lr"]))      # Tune pickles the param space
    rs, counts, n = np.random.RandomState(0), collections.Counter(), 4000
    for _ in range(n):
        for _, spec in generate_variants({"params": {"optim.lr": domain}}, random_state=rs):
            counts[spec["params"]["optim.lr"]] += 1
    assert set(counts) <= {0.001, 0.002, 0.004}
    for value, prob in ((0.001, 0.6), (0.002, 0.3), (0.004, 0.1)):
        assert abs(counts[value] / n - prob) < 0.04, counts


def test_weighted_choice_keeps_each_values_type():
    d = weighted_choice(["a", 2, None], [0.0, 1.0, 0.0], searcher="random", where="x")
    assert {d.sample(random_state=s) for s in range(20)} == {2}
    assert d.sample(size=5, random_state=0) == [2] * 5


@pytest.mark.parametrize("spec, needle", [
    ("{values: [0.001, 0.002], probabilities: [0.5]}", "1 probabilities for 2 values"),
    ("{values: [0.001, 0.002], probabilities: [1.2, -0.2]}", ">= 0"),
    ("{values: [0.001, 0.002], probabilities: [0.5, 0.4]}", "sum to 0.9, not 1"),
    ("{values: [0.001, 0.002], probabilities: [0.5, high]}", "list of numbers"),
    ("{values: [0.001, 0.002], probabilities: 0.5}", "list of numbers"),
    ("{min: 0.001, max: 0.002, probabilities: [1.0]}", "probabilities go with values"),
])
def test_bad_probabilities_refused_naming_file_and_line(tmp_path, capsys, spec, needle):
    line = refused(tmp_path, capsys, "method: random\n",
                   params=f"parameters:\n  anneal.schedule: {{values: [linear]}}\n  optim.lr: {spec}\n")
    assert f"{tmp_path}/space.yaml:4: parameter optim.lr" in line and needle in line, line


def test_probabilities_within_a_tolerance_load(tmp_path):
    path = write(tmp_path, "", "parameters:\n  optim.lr: {values: [0.001, 0.002, 0.003], "
                               "probabilities: [0.3333333, 0.3333333, 0.3333334]}\n")
    assert load_space(path, base_recipe=BASE)["parameters"]["optim.lr"]["probabilities"][0] == 0.3333333


@pytest.mark.parametrize("flags, needle", [
    (["--searcher", "grid"], "the grid searcher runs every value once"),
    ([], "Optuna's TPE"),                                              # the default searcher
    (["--searcher", "optuna"], "Optuna's TPE"),
    (["--scheduler", "pbt", "--searcher", "random"], "PBT's explore step"),
])
def test_probabilities_refused_where_they_cannot_be_honoured(tmp_path, capsys, flags, needle):
    line = refused(tmp_path, capsys, "", *flags, params=WEIGHTED)
    assert "space.yaml:2: parameter optim.lr: probabilities" in line and needle in line, line


def test_method_grid_with_probabilities_refused(tmp_path):
    space = load_space(write(tmp_path, "method: grid\n", WEIGHTED), base_recipe=BASE)
    with pytest.raises(UserError, match="grid searcher"):
        to_tune(space, searcher=space["sweep"]["searcher"][0])
