"""The model, the losses and THE loop, in-process on the ``tiny`` model and the synthetic tasks (no Ray)."""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables import schedules, teachers, trial
from trainables.errors import UserError
from trainables.losses import (annealed_target_probs, dwa_weights, pcgrad, soft_cross_entropy, task_loss,
                               uncertainty_weighted)
from trainables.checkpoint import load_checkpoint, save_checkpoint, verify_checkpoint
from trainables.loop import Run, run_training
from trainables.metrics import compute_metrics, glue_average
from trainables.model import layer_depths
from trainables.teacher_store import BaselineRegistry, StoreError, TeacherStore
from trainables.synthetic import SYNTHETIC_TASKS

CACHE = os.environ.get("BAM_CACHE_DIR") or "/tmp/utcache"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Two busy cores: one intra-op thread is both faster and bitwise reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setattr(trial, "get_device", lambda: torch.device("cpu"))   # no ray.train import


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def recipe(tasks, **over) -> dict:
    base = {"tasks": list(tasks), "model": "tiny", "precision": "fp32", "evals": 2, "seed": 0,
            "teacher": {"use": False}, "optim": {"steps": 8, "batch_size": 8, "lr": 1e-3},
            "data": {"max_train_examples": 48, "max_dev_examples": 48, "max_length": 32}}
    return _merge(base, over)


def make_run(tmp: Path, rec: dict, *, job: str = "student") -> Run:
    return trial.setup_run({"recipe": rec, "job": job, "storage": str(tmp / "storage"),
                             "artifacts_dir": str(tmp / "art"), "cache_dir": CACHE})


def train(run: Run, on_report=None) -> list[dict]:
    reports = []

    def report(metrics, r):
        reports.append(metrics)
        if on_report:
            on_report(metrics, r)

    run_training(run, report=report)
    return reports


def params(run: Run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.model.named_parameters()}


# ---------------------------------------------------------------------------------------------- the model

def test_head_output_shapes(tmp_path):
    tasks = ("syn_noisy", "syn_similarity", "syn_pairmatch", "syn_sentiment")
    run = make_run(tmp_path, recipe(tasks))
    run.model.eval()
    expected = {"syn_noisy": (5, 3), "syn_similarity": (5,), "syn_pairmatch": (5, 2), "syn_sentiment": (5, 2)}
    for t in tasks:
        assert run.model.heads[t].out_features == SYNTHETIC_TASKS[t].num_outputs
        dev = run.data[t].dev["dev"]
        b = dev.collate(np.arange(5))
        out = run.model(task=t, input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        token_type_ids=b["token_type_ids"])
        assert tuple(out.shape) == expected[t], t
        assert torch.isfinite(out).all()
        logits, states = run.model(task=t, input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                   token_type_ids=b["token_type_ids"], hidden_states=True)
        assert torch.equal(logits, out) and len(states) == run.model.num_layers + 1
        assert run.predict(t, dev).shape == (len(dev),) + expected[t][1:]
    # pair tasks see two segments, single-sentence tasks one
    assert run.data["syn_pairmatch"].train.type_values.max() == 1
    assert run.data["syn_noisy"].train.type_values.max() == 0


def test_layer_depths_for_layer_decay(tmp_path):
    run = make_run(tmp_path, recipe(["syn_noisy"]))
    depths = layer_depths(run.model)
    L = run.model.num_layers
    assert set(depths) == {n for n, _ in run.model.named_parameters()}
    assert all(d == 0 for n, d in depths.items() if n.startswith("encoder.embeddings"))
    assert all(d == L + 2 for n, d in depths.items() if n.startswith("heads."))     # BAM: pooler L+1, heads L+2
    assert {d for n, d in depths.items() if ".layer." in n} == set(range(1, L + 1))
    # the optimizer's learning rates follow the depths
    lr = run.r.optim.lr
    by_param = {id(p): g["base_lr"] for g in run.opt.param_groups for p in g["params"]}
    for n, p in run.model.named_parameters():
        assert by_param[id(p)] == pytest.approx(lr * run.r.optim.layer_decay ** (L + 2 - depths[n])), n


def test_setup_respects_data_limits(tmp_path):
    run = make_run(tmp_path, recipe(["syn_noisy", "syn_similarity"], data={"max_train_examples": 40,
                                                                          "max_dev_examples": 30}))
    assert run.sizes == {"syn_noisy": 40, "syn_similarity": 40}
    assert all(len(run.data[t].dev["dev"]) == 30 for t in run.tasks)
    assert run.total == 8 and run.eval_steps == {4, 8}
    no_steps = make_run(tmp_path, recipe(["syn_noisy"], optim={"steps": None, "epochs": 2.0, "batch_size": 16}))
    assert no_steps.total == int(np.ceil(2.0 * 48 / 16))


# ---------------------------------------------------------------------------------------------- reports

def test_run_reports_every_eval_with_the_documented_keys(tmp_path):
    tasks = ("syn_noisy", "syn_similarity", "syn_pairmatch")
    rec = recipe(tasks, evals=3, optim={"steps": 9}, anneal={"schedule": "cosine"},
                 sampling={"method": "size_alpha", "alpha": 1.0, "alpha_end": 0.0},
                 data={"max_train_examples": None})
    run = make_run(tmp_path, rec)
    assert run.sizes == {"syn_noisy": 300, "syn_similarity": 800, "syn_pairmatch": 1200}
    reports = train(run)
    assert len(reports) == 3 and [m["step"] for m in reports] == [3, 6, 9] == sorted(run.eval_steps)
    assert len(run.evals) == 3 and run.step == run.total == 9
    for m in reports:
        p = m["step"] / 9
        assert m["progress"] == pytest.approx(p)
        for t in tasks:
            for key in ("score", "best", "switched", "loss", "sampling_weight"):
                assert f"{t}/{key}" in m, (t, key)
        assert "syn_noisy/mcc" in m and "syn_similarity/pearson" in m and "syn_pairmatch/f1" in m
        assert m["glue_avg"] == pytest.approx(glue_average({t: m[f"{t}/score"] for t in tasks}))
        assert m["lambda"] == pytest.approx(schedules.anneal_lambda(p, schedule="cosine"))
        want = schedules.sampling_weights(run.sizes, p=p, method="size_alpha", alpha=1.0, alpha_end=0.0)
        for t in tasks:
            assert m[f"{t}/sampling_weight"] == pytest.approx(want[t])
            assert m[f"{t}/score"] == pytest.approx(np.mean([m[k] for k in (f"{t}/{x}" for x in
                                                                             SYNTHETIC_TASKS[t].metrics)]))
        assert sum(m[f"{t}/sampling_weight"] for t in tasks) == pytest.approx(1.0)
        assert m["switched"] == "" and m["switched_now"] == ""
        assert m["examples_per_s"] > 0 and m["tokens_per_s"] > m["examples_per_s"]
    # the largest task loses sampling mass as alpha goes 1 -> 0
    assert reports[0]["syn_pairmatch/sampling_weight"] > reports[-1]["syn_pairmatch/sampling_weight"]
    for t in tasks:                                                  # best = running maximum of the scores
        assert reports[-1][f"{t}/best"] == pytest.approx(max(m[f"{t}/score"] for m in reports))
    # the last report describes the final weights
    final = run.evaluate()
    for t in tasks:
        assert final["scores"][t] == pytest.approx(reports[-1][f"{t}/score"])
        split = run.data[t].dev["dev"]
        direct = compute_metrics(metrics=SYNTHETIC_TASKS[t].metrics, predictions=run.predict(t, split),
                                 labels=split.labels)
        assert direct["score"] == pytest.approx(reports[-1][f"{t}/score"])
    assert run.examples_seen == 9 * 8


def test_training_reduces_the_training_loss(tmp_path):
    """Scores in [0, 5] start far from the untrained head's ~0 output: the MSE must fall a lot."""
    rec = recipe(["syn_similarity"], evals=1, optim={"steps": 30, "lr": 3e-3, "warmup": 0.0})
    run = make_run(tmp_path, rec)
    run.model.eval()
    idx = np.arange(48)
    with torch.no_grad():
        before = float(run._forward_loss("syn_similarity", idx))
    train(run)
    run.model.eval()
    with torch.no_grad():
        after = float(run._forward_loss("syn_similarity", idx))
    assert after < 0.5 * before, (before, after)


# ---------------------------------------------------------------------------------------------- KD switch

def test_kd_switch_writes_soft_labels_and_targets_use_them(tmp_path):
    rec = recipe(["syn_noisy", "syn_similarity"], evals=4, optim={"steps": 16}, student={"dropout": 0.0},
                 switch={"criterion": "fixed_step", "at_step": 3, "gold_weight": 0.25,
                         "per_task": {"syn_similarity": {"criterion": "never"}}})
    run = make_run(tmp_path, rec)
    idx = np.arange(10)
    assert run.target_source("syn_noisy", idx) == (None, 1.0)              # teacher.use false: gold only
    at_switch = {}

    def on_report(m, r):
        if m["step"] == 4:                                               # after the switch: weights == snapshot
            at_switch["noisy"] = r.predict("syn_noisy", r.data["syn_noisy"].train)

    reports = train(run, on_report)
    assert [m["switched_now"] for m in reports] == ["syn_noisy", "", "", ""]
    assert all(m["syn_noisy/switched"] == 1 and m["syn_similarity/switched"] == 0 for m in reports)
    assert run.switch["syn_noisy"].switched_at == 4 and not run.switch["syn_similarity"].switched
    path = tmp_path / "art" / "soft_labels" / "syn_noisy-step4.npy"
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == [path.name]
    soft = np.load(path)
    assert soft.shape == (48, 3)
    np.testing.assert_allclose(soft, at_switch["noisy"], rtol=0, atol=1e-6)
    assert run.soft_labels["syn_noisy"]["path"] == str(path) and run.soft_labels["syn_noisy"]["step"] == 4

    preds, gold_weight = run.target_source("syn_noisy", idx)
    assert gold_weight == 0.25
    np.testing.assert_array_equal(preds.numpy(), soft[idx])
    assert run.target_source("syn_similarity", idx) == (None, 1.0)
    # the training loss of a switched task is the annealed mix of gold and the soft labels
    run.model.eval()
    td = run.data["syn_noisy"]
    b = td.train.collate(idx)
    with torch.no_grad():
        got = run._forward_loss("syn_noisy", idx)
        logits = run.model(task="syn_noisy", input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                           token_type_ids=b["token_type_ids"])
        target = 0.25 * F.one_hot(b["labels"], 3).float() + 0.75 * torch.softmax(torch.from_numpy(soft[idx]), -1)
        want = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-5)


# ---------------------------------------------------------------------------------------------- checkpoints

CHECKPOINT_CASES = {
    "plain": {},
    "switch_mixed_dwa_unfreeze": {"switch": {"criterion": "fixed_step", "at_step": 4}, "sampling": {"batches": "mixed"},
                                  "mtl": {"weighting": "dwa"}, "student": {"unfreeze": "gradual"}},
    "uncertainty_pcgrad": {"sampling": {"batches": "mixed", "method": "uniform"},
                           "mtl": {"weighting": "uncertainty", "pcgrad": True}},
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_checkpoint_resumes_exactly(tmp_path, case):
    """Dropout stays on (default): the checkpoint carries the torch RNG, the task RNG and the streams."""
    rec = recipe(["syn_noisy", "syn_similarity"], evals=4, optim={"steps": 16}, **CHECKPOINT_CASES[case])
    ck = tmp_path / "ck"
    torch.manual_seed(123)
    a = make_run(tmp_path, rec)

    at_8 = {}

    def save_at_8(m, r):
        if r.step == 8:
            save_checkpoint(r, ck)
            at_8.update(params(r))

    ra = train(a, save_at_8)
    assert sorted(p.name for p in ck.iterdir()) == ["checksums.json", "model.pt", "rng-rank0.pt", "state.json"]

    torch.manual_seed(999)                                             # a different RNG: the checkpoint must fix it
    b = make_run(tmp_path, rec)
    assert not all(torch.equal(at_8[k], v) for k, v in params(b).items())
    load_checkpoint(b, ck)
    assert b.step == 8 and len(b.evals) == 2
    assert all(torch.equal(at_8[k], v) for k, v in params(b).items())
    rb = train(b)
    assert [m["step"] for m in rb] == [12, 16]
    pa, pb = params(a), params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.allclose(pa[k], pb[k], rtol=0, atol=1e-7), k
    for ma, mb in zip(ra[2:], rb):
        for t in rec["tasks"]:
            assert ma[f"{t}/score"] == pytest.approx(mb[f"{t}/score"], abs=1e-9)
            assert ma[f"{t}/loss"] == pytest.approx(mb[f"{t}/loss"], rel=1e-6)
    assert {t: s.to_dict() for t, s in a.switch.items()} == {t: s.to_dict() for t, s in b.switch.items()}
    assert {t: s.state() for t, s in a.streams.items()} == {t: s.state() for t, s in b.streams.items()}
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    assert a.examples_seen == b.examples_seen and a.tokens_seen == b.tokens_seen
    assert a.soft_labels == b.soft_labels and a.loss_history == b.loss_history
    sa, sb = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
    for i in sa:
        assert torch.allclose(sa[i]["exp_avg"], sb[i]["exp_avg"], rtol=0, atol=1e-9)


def test_verify_checkpoint_detects_damage(tmp_path):
    run = make_run(tmp_path, recipe(["syn_noisy"], evals=1, optim={"steps": 2}))
    train(run)
    good = tmp_path / "good"
    save_checkpoint(run, good)
    verify_checkpoint(good)                                            # intact: no error

    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    data = (bad / "model.pt").read_bytes()
    (bad / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        verify_checkpoint(bad)
    assert str(bad / "model.pt") in str(e.value) and "truncated or corrupt" in str(e.value)
    fresh = make_run(tmp_path, recipe(["syn_noisy"], evals=1, optim={"steps": 2}))
    with pytest.raises(UserError, match="model.pt"):
        load_checkpoint(fresh, bad)
    assert fresh.step == 0                                             # nothing was half-loaded

    shutil.rmtree(bad)
    shutil.copytree(good, bad)
    state = json.loads((bad / "state.json").read_text())
    state["step"] += 1
    (bad / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match="state.json"):
        verify_checkpoint(bad)
    (bad / "checksums.json").unlink()
    with pytest.raises(UserError, match="incomplete"):
        verify_checkpoint(bad)


def test_an_older_checkpoint_stays_loadable(tmp_path):
    rec = recipe(["syn_similarity"], evals=2, switch={"criterion": "patience", "patience": 5})
    run = make_run(tmp_path, rec)
    run.step = 2
    run.after_eval({"syn_similarity": 10.0})                           # best -> snapshot of step 2
    save_checkpoint(run, tmp_path / "ck2")
    run.step = 4
    run.after_eval({"syn_similarity": 20.0})                           # new best -> step-2 snapshot dropped
    save_checkpoint(run, tmp_path / "ck4")
    fresh = make_run(tmp_path, rec)
    load_checkpoint(fresh, tmp_path / "ck2")                            # e.g. the step-4 report never reached storage
    assert fresh.step == 2 and set(fresh.snapshots) == {2}


# ---------------------------------------------------------------------------------------------- teachers

def test_teacher_runs_feed_the_student(tmp_path):
    tasks = ("syn_noisy", "syn_similarity")
    teacher_preds = {}
    for t in tasks:
        trec = recipe([t], evals=1, optim={"steps": 3})
        trun = make_run(tmp_path, trec, job="teacher")
        train(trun)
        record = teachers.finish_teacher(trun, storage=str(tmp_path / "storage"))
        assert record["task"] == t and record["n_train"] == 48 and record["score"] == trun.switch[t].best
        teacher_preds[t] = trun.predict(t, trun.data[t].train)
    records = BaselineRegistry(tmp_path / "storage").records(strict=True)
    assert [r["task"] for r in records] == list(tasks)

    srec = recipe(tasks, teacher={"use": True}, anneal={"schedule": "linear"}, optim={"steps": 10})
    run = make_run(tmp_path, srec)
    for t in tasks:
        np.testing.assert_allclose(run.data[t].teacher, teacher_preds[t], rtol=0, atol=1e-6)
    assert run.data["syn_similarity"].teacher.shape == (48,)
    idx = np.array([3, 1, 4, 1, 5])
    for step in (0, 5, 10):
        run.step = step
        preds, lam = run.target_source("syn_noisy", idx)
        assert lam == pytest.approx(step / 10)
        np.testing.assert_array_equal(preds.numpy(), run.data["syn_noisy"].teacher[idx])

    # other data settings -> other fingerprint -> no teacher: a clear error naming task and seed
    other = _merge(srec, {"data": {"max_train_examples": 40}})
    with pytest.raises(StoreError, match=r"task syn_noisy seed 0"):
        make_run(tmp_path, other)
    # a second seed is missing
    with pytest.raises(StoreError, match=r"seed 1"):
        make_run(tmp_path, _merge(srec, {"teacher": {"seeds": [0, 1]}}))
    # a corrupted teacher file is caught before training
    key = records[0]["key"]
    f = TeacherStore(tmp_path / "storage").dir(key) / "predictions.npy"
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(StoreError, match="checksum"):
        make_run(tmp_path, srec)


# ---------------------------------------------------------------------------------------------- gradual unfreezing

def test_gradual_unfreezing_keeps_frozen_layers_fixed(tmp_path):
    rec = recipe(["syn_noisy", "syn_similarity"], optim={"steps": 40}, sampling={"batches": "mixed"},
                 student={"unfreeze": "gradual"})
    run = make_run(tmp_path, rec)
    before = params(run)
    for _ in range(3):                                                # p < 1/3: only the top layer + heads train
        run.train_step()
    after = params(run)
    L = run.model.num_layers
    for n in before:
        moved = not torch.equal(before[n], after[n])
        if n.startswith("encoder.embeddings") or f".layer.{L - 2}." in n:
            assert not moved, n
        elif n.startswith("heads.") or f".layer.{L - 1}." in n:
            assert moved, n


def test_gradual_unfreezing_with_pcgrad_keeps_frozen_layers_fixed(tmp_path):
    rec = recipe(["syn_noisy", "syn_similarity"], optim={"steps": 40}, sampling={"batches": "mixed"},
                 student={"unfreeze": "gradual"}, mtl={"pcgrad": True})
    run = make_run(tmp_path, rec)
    before = params(run)
    for _ in range(3):
        run.train_step()
    after = params(run)
    frozen = [n for n in before if n.startswith("encoder.embeddings")]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)


def test_fp16_with_pcgrad_steps(tmp_path):
    rec = recipe(["syn_noisy", "syn_similarity"], precision="fp16", sampling={"batches": "mixed"},
                 mtl={"pcgrad": True})
    run = make_run(tmp_path, rec)
    for _ in range(2):
        run.train_step()
    assert run.step == 2


def test_student_dropout_zero_makes_training_forward_deterministic(tmp_path):
    run = make_run(tmp_path, recipe(["syn_noisy"], student={"dropout": 0.0}))
    run.model.train()
    b = run.data["syn_noisy"].train.collate(np.arange(8))
    outs = [run.model(task="syn_noisy", input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                      token_type_ids=b["token_type_ids"]) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------------------------------------- losses

def test_annealed_target_probs():
    g = torch.Generator().manual_seed(0)
    gold = torch.tensor([0, 2, 1, 2])
    teacher = torch.randn(4, 3, generator=g)
    onehot = F.one_hot(gold, 3).float()
    for lam in (0.0, 0.3, 0.75):
        for T in (1.0, 2.0):
            got = annealed_target_probs(gold=gold, teacher_logits=teacher, lam=lam, num_classes=3, temperature=T)
            want = lam * onehot + (1 - lam) * torch.softmax(teacher / T, -1)
            assert torch.allclose(got, want, atol=1e-6)
            assert torch.allclose(got.sum(-1), torch.ones(4), atol=1e-6)
    assert torch.equal(annealed_target_probs(gold=gold, teacher_logits=teacher, lam=1.0, num_classes=3), onehot)
    assert torch.equal(annealed_target_probs(gold=gold, teacher_logits=None, lam=0.2, num_classes=3), onehot)
    sharp = annealed_target_probs(gold=gold, teacher_logits=teacher, lam=0.0, num_classes=3, temperature=0.5)
    soft = annealed_target_probs(gold=gold, teacher_logits=teacher, lam=0.0, num_classes=3, temperature=4.0)
    assert (sharp.max(-1).values > soft.max(-1).values).all()          # temperature softens


def test_task_loss_classification():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, generator=g)
    gold = torch.tensor([0, 1, 2, 2, 1, 0])
    teacher = torch.randn(6, 3, generator=g)
    assert float(task_loss(logits=logits, gold=gold, teacher=None, lam=0.3, regression=False)) == \
        pytest.approx(float(F.cross_entropy(logits, gold)), rel=1e-6)
    got = task_loss(logits=logits, gold=gold, teacher=teacher, lam=0.4, regression=False)
    target = 0.4 * F.one_hot(gold, 3) + 0.6 * torch.softmax(teacher, -1)
    assert float(got) == pytest.approx(float(-(target * torch.log_softmax(logits, -1)).sum(-1).mean()), rel=1e-6)
    kl = task_loss(logits=logits, gold=gold, teacher=teacher, lam=0.4, regression=False, kind="kl")
    want_kl = 0.4 * F.cross_entropy(logits, gold) + 0.6 * F.kl_div(torch.log_softmax(logits, -1),
                                                                   torch.softmax(teacher, -1), reduction="batchmean")
    assert float(kl) == pytest.approx(float(want_kl), rel=1e-5)
    # KL to the student's own distribution is 0, CE is its entropy
    p = torch.softmax(logits, -1)
    assert float(soft_cross_entropy(logits, p, kind="kl")) == pytest.approx(0.0, abs=1e-6)


def test_task_loss_regression():
    logits = torch.tensor([1.0, 2.0, 3.5, 0.0])
    gold = torch.tensor([1.5, 2.0, 3.0, 1.0])
    teacher = torch.tensor([0.5, 2.5, 4.0, 0.0])
    assert float(task_loss(logits=logits, gold=gold, teacher=None, lam=0.2, regression=True)) == \
        pytest.approx(float(((logits - gold) ** 2).mean()))
    for lam in (0.0, 0.3, 1.0):
        target = lam * gold + (1 - lam) * teacher
        got = task_loss(logits=logits, gold=gold, teacher=teacher, lam=lam, regression=True)
        assert float(got) == pytest.approx(float(((logits - target) ** 2).mean()), rel=1e-6)


def test_pcgrad_removes_the_conflicting_component():
    g1 = torch.tensor([1.0, 0.0, 0.5])
    g2 = torch.tensor([-3.0, 1.0, 0.0])
    assert torch.dot(g1, g2) < 0
    out = pcgrad([g1, g2], generator=torch.Generator().manual_seed(0))
    p1 = g1 - torch.dot(g1, g2) / g2.pow(2).sum() * g2
    p2 = g2 - torch.dot(g2, g1) / g1.pow(2).sum() * g1
    assert torch.allclose(out, p1 + p2, atol=1e-6)
    assert torch.dot(p1, g2) == pytest.approx(0.0, abs=1e-6) and torch.dot(p2, g1) == pytest.approx(0.0, abs=1e-6)
    assert torch.dot(out, g1) >= -1e-6 and torch.dot(out, g2) >= -1e-6
    assert torch.dot(g1 + g2, g1) < 0 or torch.dot(g1 + g2, g2) < 0   # the plain sum did conflict here
    # random conflicting pairs
    gen = torch.Generator().manual_seed(1)
    seen = 0
    for _ in range(200):
        a, b = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
        if torch.dot(a, b) >= 0:
            continue
        seen += 1
        out = pcgrad([a, b], generator=gen)
        assert torch.dot(out, a) >= -1e-5 and torch.dot(out, b) >= -1e-5
    assert seen > 50
    # no conflict: plain sum; inputs are not modified
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])
    assert torch.equal(pcgrad([a, b]), a + b) and torch.equal(a, torch.tensor([1.0, 2.0]))


def test_dwa_weights():
    tasks = ["a", "b", "c"]
    assert dwa_weights([], tasks) == {t: 1.0 for t in tasks}
    assert dwa_weights([{"a": 1.0, "b": 2.0, "c": 3.0}], tasks) == {t: 1.0 for t in tasks}
    hist = [{"a": 1.0, "b": 1.0, "c": 1.0}, {"a": 0.5, "b": 1.0, "c": 1.5}]
    for T in (0.5, 2.0, 10.0):
        w = dwa_weights(hist, tasks, temperature=T)
        assert sum(w.values()) == pytest.approx(len(tasks))
        assert w["a"] < w["b"] < w["c"]                                  # the slowest-improving task gets most
        e = {t: np.exp(hist[1][t] / hist[0][t] / T) for t in tasks}
        for t in tasks:
            assert w[t] == pytest.approx(3 * e[t] / sum(e.values()))
    assert dwa_weights([{"a": 2.0, "b": 4.0}, {"a": 2.0, "b": 4.0}], ["a", "b"]) == pytest.approx({"a": 1.0, "b": 1.0})


def test_uncertainty_weighting():
    loss = torch.tensor(2.0)
    lv = torch.tensor(0.0, requires_grad=True)
    out = uncertainty_weighted(loss, lv, regression=False)
    assert float(out.detach()) == pytest.approx(2.0)
    out.backward()                                                   # d/dlv (L e^-lv + lv/2) = -L + 1/2
    assert float(lv.grad) == pytest.approx(-1.5)
    assert float(uncertainty_weighted(loss, lv.detach(), regression=True)) == pytest.approx(1.0)
    lv2 = torch.tensor(np.log(2.0), dtype=torch.float32)
    assert float(uncertainty_weighted(loss, lv2, regression=False)) == pytest.approx(1.0 + 0.5 * np.log(2.0), rel=1e-6)


# ---------------------------------------------------------------------------------------------- precision

def test_bf16_matches_fp32(tmp_path):
    run = make_run(tmp_path, recipe(["syn_noisy", "syn_similarity"], data={"max_dev_examples": None},
                                    optim={"steps": 20, "lr": 3e-3}))
    for _ in range(20):
        run.train_step()
    assert run.amp is None
    for t in ("syn_noisy", "syn_similarity"):
        dev = run.data[t].dev["dev"]
        fp32 = run.predict(t, dev)
        run.amp = torch.bfloat16                                          # what precision=bf16 does in predict()
        try:
            bf16 = run.predict(t, dev)
        finally:
            run.amp = None
        assert len(dev) == 300 and fp32.shape == bf16.shape
        diff = np.abs(fp32 - bf16).max()
        assert 0 < diff < 0.01 + 0.02 * np.abs(fp32).max(), diff        # really ran in bf16, and stayed close
        if fp32.ndim == 2:
            assert (fp32.argmax(-1) == bf16.argmax(-1)).mean() >= 0.95
    # the same under an explicit autocast of the model
    dev = run.data["syn_noisy"].dev["dev"]
    b = dev.collate(np.arange(64))
    run.model.eval()
    with torch.no_grad():
        ref = run.model(task="syn_noisy", input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                        token_type_ids=b["token_type_ids"])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = run.model(task="syn_noisy", input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                            token_type_ids=b["token_type_ids"])
    assert low.dtype == torch.bfloat16
    assert (ref.argmax(-1) == low.float().argmax(-1)).float().mean() >= 0.95
    assert 0 < (ref - low.float()).abs().max() < 0.01 + 0.02 * ref.abs().max()
