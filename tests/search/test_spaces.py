"""Every shipped space loads and maps onto Tune; bad spaces fail with one line naming the key."""
import pytest
import yaml

from search.spaces import list_spaces, load_space, to_tune
from trainables.errors import UserError

BASE = {"tasks": ["rte", "mrpc"]}


@pytest.mark.parametrize("path", list_spaces(), ids=lambda p: p.stem)
def test_every_shipped_space_loads_and_maps(path):
    space = load_space(path, base_recipe=BASE)
    tune_space = to_tune(space, searcher="optuna")
    assert set(tune_space) == set(space["parameters"])
    assert path.read_text().startswith("# bam-search sweep "), "a space opens with the command that runs it"


def test_required_spaces_shipped():
    assert {p.stem for p in list_spaces()} >= {"anneal", "sampling", "kd_switch", "bam_full", "baselines", "smoke"}


def test_nested_and_dotted_keys_flatten_the_same(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text(yaml.safe_dump({"parameters": {"anneal": {"parameters": {"schedule": {"values": ["linear"]}}}}}))
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump({"parameters": {"anneal.schedule": {"values": ["linear"]}}}))
    assert load_space(a, base_recipe=BASE)["parameters"] == load_space(b, base_recipe=BASE)["parameters"]


def test_distributions_map_to_tune_domains(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"parameters": {
        "optim.lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
        "switch.patience": {"distribution": "int_uniform", "min": 1, "max": 4},
        "anneal.p0": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
        "anneal.schedule": {"values": ["linear", "cosine"]},
        "seed": {"value": 3}}}))
    t = to_tune(load_space(p, base_recipe=BASE), searcher="random")
    assert isinstance(t["optim.lr"], Float) and t["optim.lr"].lower == 1e-5 and t["optim.lr"].upper == 1e-3
    assert isinstance(t["switch.patience"], Integer) and t["switch.patience"].upper == 5   # max inclusive
    assert isinstance(t["anneal.schedule"], Categorical) and t["anneal.schedule"].categories == ["linear", "cosine"]
    assert t["seed"] == 3
    samples = [t["switch.patience"].sample() for _ in range(200)]
    assert min(samples) >= 1 and max(samples) <= 4


@pytest.mark.parametrize("params, needle", [
    ({"optim.lrr": {"values": [1e-4]}}, "optim.lrr"),
    ({"optim.lr": {"distribution": "log_uniform", "min": 1e-5, "max": 1e-4}}, "log_uniform"),
    ({"optim.lr": {"distribution": "uniform", "min": 0.5, "max": 0.1}}, "min 0.5 > max 0.1"),
    ({"anneal.schedule": {"values": ["linear", "wavy"]}}, "wavy"),
    ({"sampling.alpha": {"distribution": "uniform", "min": -1.0, "max": 1.0}}, "sampling.alpha"),
    ({"optim.lr": {"distribution": "log_uniform_values", "min": 0.0, "max": 1.0}}, "min > 0"),
    ({"optim.lr": {"valuez": [1]}}, "valuez"),
    ({"switch.per_task.cola.criterion": {"values": ["patience"]}}, "cola"),
])
def test_bad_spaces_fail_naming_the_key(tmp_path, params, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"parameters": params}))
    with pytest.raises(UserError) as e:
        load_space(p, base_recipe=BASE)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and str(p) in msg


def test_unknown_top_level_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("paramters: {}\n")
    with pytest.raises(UserError, match="paramters"):
        load_space(p, base_recipe=BASE)


def test_grid_refuses_continuous(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"parameters": {"optim.lr": {"min": 1e-5, "max": 1e-4}}}))
    with pytest.raises(UserError, match="grid"):
        to_tune(load_space(p, base_recipe=BASE), searcher="grid")


def test_the_command_line_beats_the_spaces_base():
    """smoke.yaml's base sets evals 4 and optim {epochs 2, lr 1e-3}; what the command line gives wins, the
    rest of the base stays."""
    space = load_space("smoke", base_recipe={**BASE, "evals": 6, "optim": {"batch_size": 8}})
    assert space["base"]["evals"] == 6
    assert space["base"]["optim"] == {"epochs": 2, "lr": 1e-3, "batch_size": 8}
    assert load_space("smoke", base_recipe=BASE)["base"]["evals"] == 4
