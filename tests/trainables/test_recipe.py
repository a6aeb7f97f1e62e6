"""The typed recipe schema: defaults, rejection of unknown keys and wrong values, overrides, YAML files."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from trainables.errors import UserError
from trainables.recipe import Recipe, apply_overrides, dump_recipe, load_recipe, load_yaml, parse_override, recipe_from_dict
from trainables.schedules import ANNEAL as ANNEAL_SCHEDULES
from trainables.switch import CRITERIA as SWITCH_CRITERIA

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def err(data: dict, *needles: str) -> str:
    with pytest.raises(UserError) as e:
        recipe_from_dict(data, source="test.yaml")
    msg = str(e.value)
    assert msg.startswith("test.yaml: "), msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_defaults_are_valid():
    r = recipe_from_dict({})
    assert r == Recipe()
    assert recipe_from_dict(None) == Recipe()
    d = r.to_dict()
    assert d["tasks"] == list(Recipe().tasks) and isinstance(d["teacher"]["seeds"], list)
    assert recipe_from_dict(d) == r                               # to_dict is a valid recipe again


@pytest.mark.parametrize("data,path", [
    ({"optim": {"lrr": 1e-4}}, "optim.lrr"),
    ({"epochs": 3}, "epochs"),
    ({"student": {"dropuot": 0.1}}, "student.dropuot"),
    ({"switch": {"per_task": {"rte": {"patiense": 2}}}}, "switch.per_task.rte.patiense"),
    ({"anneal": {"per_task": {"mrpc": {"shedule": "linear"}}}}, "anneal.per_task.mrpc.shedule"),
])
def test_unknown_key_named_by_dotted_path(data, path):
    msg = err(data, f"unknown key {path!r}")
    assert "known:" in msg


@pytest.mark.parametrize("data,path", [
    ({"evals": "3"}, "evals"),
    ({"evals": 3.0}, "evals"),
    ({"evals": True}, "evals"),
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"optim": {"lr": True}}, "optim.lr"),
    ({"teacher": {"use": "yes please"}}, "teacher.use"),
    ({"teacher": {"use": 1}}, "teacher.use"),
    ({"tasks": 5}, "tasks"),
    ({"data": {"max_train_examples": 1.5}}, "data.max_train_examples"),
    ({"sampling": {"weights": [1, 2]}}, "sampling.weights"),
    ({"optim": 3}, "optim"),
    ({"model": 7}, "model"),
])
def test_wrong_types(data, path):
    err(data, f"{path}: expected")


def test_numbers_and_lists_are_normalised():
    r = recipe_from_dict({"optim": {"lr": 1, "epochs": 2}, "tasks": "syn_noisy,syn_pairmatch",
                          "teacher": {"seeds": [1, 2]}, "data": {"max_train_examples": None}})
    assert isinstance(r.optim.lr, float) and r.optim.lr == 1.0 and isinstance(r.optim.epochs, float)
    assert r.tasks == ("syn_noisy", "syn_pairmatch") and r.teacher.seeds == (1, 2)
    assert r.data.max_train_examples is None


@pytest.mark.parametrize("data,needles", [
    ({"anneal": {"schedule": "cubic"}}, ("anneal.schedule", "'cubic'")),
    ({"anneal": {"per_task": {"rte": {"schedule": "cubic"}}}}, ("anneal.per_task.rte.schedule", "'cubic'")),
    ({"sampling": {"method": "roundrobin"}}, ("sampling.method", "'roundrobin'")),
    ({"switch": {"criterion": "sometimes"}}, ("switch.criterion", "'sometimes'")),
    ({"switch": {"per_task": {"mrpc": {"criterion": "sometimes"}}}}, ("switch.per_task.mrpc.criterion",)),
    ({"sampling": {"alpha": -0.1}}, ("sampling.alpha",)),
    ({"sampling": {"alpha_end": -1}}, ("sampling.alpha",)),
    ({"sampling": {"method": "weights", "weights": {"rte": 0, "mrpc": 0}}}, ("sampling.weights",)),
    ({"sampling": {"method": "weights"}}, ("sampling.weights",)),
    ({"sampling": {"method": "weights", "weights": {"rte": 1, "mrpc": -1}}}, ("sampling.weights",)),
    ({"sampling": {"method": "weights", "weights": {"rte": 1, "cola": 1}}}, ("sampling.weights.cola",)),
    ({"sampling": {"temperature": 0}}, ("sampling.temperature",)),
    ({"sampling": {"batches": "both"}}, ("sampling.batches",)),
    ({"switch": {"per_task": {"cola": {"patience": 2}}}}, ("switch.per_task.cola", "not in this run")),
    ({"anneal": {"per_task": {"sst2": {}}}}, ("anneal.per_task.sst2", "not in this run")),
    ({"switch": {"criterion": "fixed_step"}}, ("switch.at_step",)),
    ({"switch": {"patience": 0}}, ("switch.patience",)),
    ({"switch": {"ema": 0}}, ("switch.ema",)),
    ({"switch": {"gold_weight": 1.5}}, ("switch.gold_weight",)),
    ({"switch": {"mode": "parallel"}}, ("switch.mode",)),
    ({"switch": {"order": ["rte"]}}, ("switch.order",)),
    ({"tasks": ["rte", "nope"]}, ("tasks", "nope")),
    ({"tasks": ["rte", "RTE"]}, ("tasks", "twice")),
    ({"tasks": ["RTE", "mrpc"]}, ("tasks", "canonical")),
    ({"tasks": []}, ("tasks",)),
    ({"precision": "fp8"}, ("precision",)),
    ({"evals": 0}, ("evals",)),
    ({"optim": {"lr": 0}}, ("optim.lr",)),
    ({"optim": {"batch_size": 0}}, ("optim.batch_size",)),
    ({"optim": {"layer_decay": 0}}, ("optim.layer_decay",)),
    ({"optim": {"warmup": 1.0}}, ("optim.warmup",)),
    ({"optim": {"decay": "cosine"}}, ("optim.decay",)),
    ({"optim": {"clip": -1}}, ("optim.clip",)),
    ({"optim": {"weight_decay": -0.1}}, ("optim.weight_decay",)),
    ({"data": {"max_length": 4}}, ("data.max_length",)),
    ({"anneal": {"w": 1.5}}, ("anneal",)),
    ({"anneal": {"temperature": 0}}, ("anneal.temperature",)),
    ({"anneal": {"loss": "mse"}}, ("anneal.loss",)),
    ({"student": {"init": "magic"}}, ("student.init",)),
    ({"student": {"unfreeze": "all"}}, ("student.unfreeze",)),
    ({"student": {"hidden_distill": -1}}, ("student.hidden_distill",)),
    ({"mtl": {"weighting": "gradnorm"}}, ("mtl.weighting",)),
    ({"mtl": {"weights": {"cola": 2}}}, ("mtl.weights.cola",)),
    ({"teacher": {"seeds": []}}, ("teacher.seeds",)),
])
def test_invalid_values(data, needles):
    err(data, *needles)


def test_every_listed_schedule_and_criterion_is_accepted():
    for s in ANNEAL_SCHEDULES:
        assert recipe_from_dict({"anneal": {"schedule": s}}).anneal.schedule == s
    for c in SWITCH_CRITERIA:
        r = recipe_from_dict({"switch": {"criterion": c, "at_step": 5}})
        assert r.switch_for("rte").criterion == c


def test_per_task_overrides_merge():
    r = recipe_from_dict({
        "tasks": ["rte", "mrpc", "stsb"],
        "anneal": {"schedule": "linear", "temperature": 2.0, "per_task": {"rte": {"schedule": "step", "p0": 0.3}}},
        "switch": {"criterion": "patience", "patience": 4, "gold_weight": 0.2,
                   "per_task": {"mrpc": {"criterion": "fixed_step", "at_step": 100}, "stsb": {"patience": 1}}},
    })
    a = r.anneal_for("rte")
    assert (a.schedule, a.p0, a.temperature, a.per_task) == ("step", 0.3, 2.0, {})
    assert r.anneal_for("mrpc") == dataclasses.replace(r.anneal, per_task={})
    s = r.switch_for("mrpc")
    assert (s.criterion, s.at_step, s.patience, s.gold_weight) == ("fixed_step", 100, 4, 0.2)
    s = r.switch_for("stsb")
    assert (s.criterion, s.patience) == ("patience", 1)
    assert r.switch_for("rte") == dataclasses.replace(r.switch, per_task={})


def test_per_task_values_are_type_checked():
    err({"anneal": {"per_task": {"rte": {"w": "half"}}}}, "anneal.per_task.rte.w")
    err({"switch": {"per_task": {"rte": {"patience": 1.5}}}}, "switch.per_task.rte.patience")
    err({"switch": {"per_task": {"rte": {"criterion": "fixed_step"}}}}, "switch.per_task.rte.at_step")


@pytest.mark.parametrize("section", ["anneal", "switch"])
def test_empty_per_task_entry(section):
    r = recipe_from_dict(yaml.safe_load(f"{section}:\n  per_task:\n    rte:\n"))
    assert getattr(r, f"{section}_for")("rte") == dataclasses.replace(getattr(r, section), per_task={})


def test_nested_per_task_is_a_user_error():
    with pytest.raises(UserError, match="anneal.per_task.rte.per_task"):
        recipe_from_dict({"anneal": {"per_task": {"rte": {"per_task": {}}}}})


# ------------------------------------------------------------------------------------------------ overrides

def test_apply_overrides_dotted_keys_and_yaml_values():
    base = {"tasks": ["rte", "mrpc"], "optim": {"lr": 5e-5}}
    out = apply_overrides(base, ["optim.steps=12", "anneal.schedule=cosine", "tasks=[syn_noisy, syn_pairmatch]",
                                 "switch.per_task.syn_noisy.patience=2", "teacher.use=false",
                                 "data.max_train_examples=null", "optim.lr=0.0001", "sampling.alpha_end=0.5"])
    assert base == {"tasks": ["rte", "mrpc"], "optim": {"lr": 5e-5}}      # input untouched
    assert out["optim"] == {"lr": 0.0001, "steps": 12}
    assert out["switch"] == {"per_task": {"syn_noisy": {"patience": 2}}}
    assert out["teacher"]["use"] is False and out["data"]["max_train_examples"] is None
    r = recipe_from_dict(out)
    assert r.tasks == ("syn_noisy", "syn_pairmatch") and r.optim.steps == 12 and r.anneal.schedule == "cosine"
    assert r.switch_for("syn_noisy").patience == 2 and r.sampling.alpha_end == 0.5
    # the last override of a key wins; '=' inside the value is kept
    assert apply_overrides({}, ["model=a", "model=b=c"])["model"] == "b=c"


def test_yaml_scientific_notation():
    """Plain PyYAML (YAML 1.1) reads ``1e-4`` as a string; bam-search's loader reads it as a float."""
    assert yaml.safe_load("1e-4") == "1e-4"
    assert parse_override("optim.lr=1.0e-4") == (["optim", "lr"], 1.0e-4)
    assert recipe_from_dict(apply_overrides({}, ["optim.lr=1.0e-4"])).optim.lr == pytest.approx(1e-4)
    # bam-search's own loader reads it as a float
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)


def test_override_lr_in_plain_scientific_notation():
    assert recipe_from_dict(apply_overrides({}, ["optim.lr=1e-4"])).optim.lr == pytest.approx(1e-4)


@pytest.mark.parametrize("text,needle", [("optim.lr", "key=value"), ("=3", "empty key"), ("optim..lr=3", "empty key"),
                                         ("optim.=3", "empty key")])
def test_bad_overrides(text, needle):
    with pytest.raises(UserError, match=needle):
        apply_overrides({}, [text])


def test_override_through_a_non_section():
    with pytest.raises(UserError, match="not a section"):
        apply_overrides({"model": "tiny"}, ["model.name=x"])


def test_unparseable_yaml_value_stays_a_string():
    assert parse_override("model=[unclosed")[1] == "[unclosed"
    assert parse_override("model=")[1] is None


# ------------------------------------------------------------------------------------------------ files

def test_load_yaml_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: tiny\nevals: 3\noptim: lr: 0.1\nseed: 0\n")
    with pytest.raises(UserError) as e:
        load_yaml(path)
    assert str(e.value).startswith(f"{path}:3: invalid YAML")
    path.write_text("tasks: [rte, mrpc\nmodel: tiny\n")
    with pytest.raises(UserError, match=rf"^{path}:\d+: invalid YAML"):
        load_recipe(path)


def test_load_yaml_other_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="mapping at the top level"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(UserError, match="empty recipe"):      # issue 21: not silently every default
        load_recipe(tmp_path / "empty.yaml")


def test_load_recipe_error_names_the_file_and_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(UserError) as e:
        load_recipe(path)
    assert str(e.value).startswith(str(path)) and "optim.lrr" in str(e.value)
    path.write_text("optim:\n  lr: 0.1\n")
    assert load_recipe(path, overrides=["optim.lr=0.5"]).optim.lr == 0.5


def test_dump_recipe_first_line_is_the_command_and_loads_back_equal(tmp_path):
    r = recipe_from_dict({
        "tasks": ["syn_noisy", "syn_pairmatch", "syn_similarity"], "seed": 3, "precision": "fp32",
        "optim": {"lr": 3e-5, "steps": 40, "weight_decay": 0.0}, "data": {"max_train_examples": 100},
        "anneal": {"schedule": "sigmoid", "k": 12, "per_task": {"syn_noisy": {"schedule": "step", "p0": 0.25}}},
        "sampling": {"method": "weights", "weights": {"syn_noisy": 2, "syn_pairmatch": 1}, "alpha_end": 0.1,
                     "batches": "mixed"},
        "switch": {"criterion": "ema", "mode": "sequential", "order": ["syn_pairmatch", "syn_noisy", "syn_similarity"],
                   "per_task": {"syn_similarity": {"criterion": "fixed_step", "at_step": 7}}},
        "teacher": {"seeds": [0, 1, 2], "ensemble": True}, "mtl": {"weighting": "dwa", "pcgrad": True},
    })
    command = "bam-search train r.yaml --seeds 3 --set optim.lr=3.0e-5"
    text = dump_recipe(r, command=command)
    assert text.splitlines()[0] == f"# {command}"
    path = tmp_path / "dumped.yaml"
    path.write_text(text)
    back = load_recipe(path)
    assert back == r and back.to_dict() == r.to_dict()
    assert dump_recipe(Recipe(), command="x").startswith("# x\n")
    path.write_text(dump_recipe(Recipe(), command="x"))
    assert load_recipe(path) == Recipe()                          # 5e-05 must come back as a float


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load(path, tmp_path):
    r = load_recipe(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# bam-search ")
    again = tmp_path / path.name
    again.write_text(dump_recipe(r, command=first[2:]))
    assert load_recipe(again) == r


def test_there_are_shipped_recipes():
    assert len(RECIPES) >= 3
