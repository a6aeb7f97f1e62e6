"""PCGrad on the shared parameters only (Yu et al. 2020), teacher ensembles as averaged probabilities (Hinton
et al. 2015), and the per-task λ in each evaluation's report: in-process, tiny model, synthetic tasks."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainables import schedules, teachers, trial
from trainables.errors import UserError
from trainables.loop import Run, eval_metrics
from trainables.losses import task_loss
from trainables.recipe import recipe_from_dict
from trainables.tasks import get_task

CACHE = os.environ.get("BAM_CACHE_DIR") or "/tmp/utcache"
A, B = "syn_noisy", "syn_sentiment"            # two classification tasks


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setattr(trial, "get_device", lambda: torch.device("cpu"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def recipe(**over) -> dict:
    base = {"tasks": [A, B], "model": "tiny", "precision": "fp32", "evals": 2, "seed": 0, "teacher": {"use": False},
            "optim": {"steps": 8, "batch_size": 8, "lr": 1e-3, "clip": 0.0},
            "data": {"max_train_examples": 48, "max_dev_examples": 48, "max_length": 32},
            "sampling": {"batches": "mixed"}, "mtl": {"pcgrad": True, "weighting": "uncertainty"}}
    for k, v in over.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def make_run(tmp: Path, rec: dict, world=None) -> Run:
    return trial.setup_run({"recipe": rec, "job": "student", "storage": str(tmp / "storage"),
                            "artifacts_dir": str(tmp / "art"), "cache_dir": CACHE}, world=world)


# ---------------------------------------------------------------------------------------------- PCGrad

SHARED = "encoder.embeddings.LayerNorm.weight"
G = {A: (3.0, 1.0), B: (-1.0, 2.0)}          # each task's gradient on SHARED[0:2]: g_A . g_B = -1 < 0
HEAD = {A: 2.0, B: 5.0}                       # d loss / d (every weight of the task's own head)


def _hand_losses(run: Run, monkeypatch, parts: dict[str, np.ndarray]) -> None:
    """Every step trains ``parts``, and task t's loss is G[t]·SHARED[0:2] + HEAD[t]·sum(head weights)."""
    named = dict(run.model.named_parameters())

    def forward_loss(task, index):
        g0, g1 = G[task]
        return g0 * named[SHARED][0] + g1 * named[SHARED][1] + HEAD[task] * run.model.heads[task].weight.sum()
    monkeypatch.setattr(run, "_forward_loss", forward_loss)
    monkeypatch.setattr(run, "_task_batches", lambda: dict(parts))


def _grads_at_step(run: Run, monkeypatch) -> dict[str, torch.Tensor | None]:
    seen = {}

    def step():
        seen.update({n: None if p.grad is None else p.grad.detach().clone() for n, p in run.model.named_parameters()})
    monkeypatch.setattr(run.opt, "step", step)
    run.train_step()
    return seen


def _own_gradient(run: Run, task: str, share: float) -> dict[str, torch.Tensor]:
    """``task``'s gradient alone (its weighted loss times its share of the batch), no PCGrad."""
    run.model.zero_grad(set_to_none=True)
    (run._weighted(run._forward_loss(task, None), task) * share).backward()
    out = {n: p.grad.detach().clone() for n, p in run.model.named_parameters() if p.grad is not None}
    run.model.zero_grad(set_to_none=True)
    return out


def test_pcgrad_projects_shared_gradients_and_leaves_heads_and_log_vars_alone(tmp_path, monkeypatch):
    run = make_run(tmp_path, recipe())
    idx = np.arange(4)
    _hand_losses(run, monkeypatch, {A: idx, B: idx})
    own = {t: _own_gradient(run, t, 0.5) for t in (A, B)}          # each task: 4 of the step's 8 examples
    got = _grads_at_step(run, monkeypatch)
    # Yu et al. (Alg. 1): g_i <- g_i - (g_i.g_j / |g_j|^2) g_j when g_i.g_j < 0, then sum. Halved (share 0.5):
    # g_A = (1.5, 0.5), g_B = (-0.5, 1), g_A.g_B = -0.25, |g_A|^2 = 2.5, |g_B|^2 = 1.25
    # g_A' = (1.5, 0.5) + 0.2 (-0.5, 1) = (1.4, 0.7);  g_B' = (-0.5, 1) + 0.1 (1.5, 0.5) = (-0.35, 1.05)
    want = torch.zeros_like(got[SHARED])
    want[:2] = torch.tensor([1.4 - 0.35, 0.7 + 1.05])
    assert torch.allclose(got[SHARED], want, atol=1e-6)
    assert float(got[SHARED][:2] @ torch.tensor([1.5, 0.5])) >= -1e-6        # no longer conflicts with g_A
    assert float(got[SHARED][:2] @ torch.tensor([-0.5, 1.0])) >= -1e-6       # ... nor with g_B
    # what no task touched stays without a gradient (AdamW skips it), as without PCGrad
    assert got["encoder.embeddings.word_embeddings.weight"] is None
    for t in (A, B):                                                 # a task's own parameters: bit-equal
        for name in (f"heads.{t}.weight", f"log_vars.{t}"):
            assert torch.equal(got[name], own[t][name]), name
        assert torch.all(got[f"heads.{t}.weight"] == 0.5 * HEAD[t])
        assert got[f"heads.{t}.bias"] is None                        # not in the hand losses: untouched


def test_without_pcgrad_the_shared_gradient_is_the_plain_sum(tmp_path, monkeypatch):
    run = make_run(tmp_path, recipe(mtl={"pcgrad": False}))
    _hand_losses(run, monkeypatch, {A: np.arange(4), B: np.arange(4)})
    got = _grads_at_step(run, monkeypatch)
    assert torch.allclose(got[SHARED][:2], torch.tensor([1.5 - 0.5, 0.5 + 1.0]), atol=1e-6)


class _TwoRanks:
    """A stand-in for torch.distributed with one other rank that trained task B only (this rank: A only)."""

    def __init__(self, other_matrix_row_b: torch.Tensor):
        self.other_b = other_matrix_row_b

    def all_gather_object(self, out, obj):
        out[:] = [obj, [B]]

    def all_reduce(self, t):
        if t.ndim == 2:                       # the per-task shared gradients [A, B]: the other rank's are [0, g_B]
            t[1] += self.other_b
        else:                                 # every other gradient: as if the other rank had the same
            t *= 2


def test_each_task_gradient_is_averaged_over_workers_before_projection(tmp_path, monkeypatch):
    run = make_run(tmp_path, recipe())
    shared = run._shared_params()
    at = sum(p.numel() for p in shared[:[id(p) for p in shared].index(id(run.model.get_parameter(SHARED)))])
    other = torch.zeros(sum(p.numel() for p in shared))
    other[at:at + 2] = torch.tensor(G[B])     # the other rank's whole batch is task B: share 1
    run.world = SimpleNamespace(size=2, rank=0, dist=_TwoRanks(other),
                                gather=lambda obj: [obj, [B]], allreduce_grads=lambda ps: None)
    _hand_losses(run, monkeypatch, {A: np.arange(4)})                 # this rank's whole batch is task A
    got = _grads_at_step(run, monkeypatch)
    # averaged first: g_A = (3, 1)/2, g_B = (-1, 2)/2: the same conflict as above, so the same projection
    assert torch.allclose(got[SHARED][:2], torch.tensor([1.05, 1.75]), atol=1e-6)
    assert torch.all(got[SHARED][2:] == 0)                           # every rank gets every shared gradient


def test_pcgrad_with_single_task_batches_is_refused_in_one_line():
    with pytest.raises(UserError) as e:
        recipe_from_dict(recipe(sampling={"batches": "single"}))
    assert "mtl.pcgrad" in str(e.value) and "sampling.batches" in str(e.value) and "\n" not in str(e.value)
    recipe_from_dict(recipe())                                        # mixed: fine


# ---------------------------------------------------------------------------------------------- ensembles

def test_classification_ensemble_averages_probabilities_not_logits():
    # seed 0: p = (0.1, 0.9); seed 1: p = (0.5, 0.5) (logits shifted by +7: softmax does not care)
    seeds = [np.log([[0.1, 0.9]]), np.array([[7.0, 7.0]])]
    ens = teachers.ensemble_predictions(seeds, regression=False)
    probs = torch.softmax(torch.from_numpy(ens), -1).numpy()
    assert probs == pytest.approx(np.array([[0.3, 0.7]]), abs=1e-6)   # Hinton: the mean of the probabilities
    mean_logits = torch.softmax(torch.from_numpy(np.mean(seeds, axis=0)), -1).numpy()
    assert mean_logits[0, 1] == pytest.approx(0.75, abs=1e-6)          # the old mean of logits: 3/(1+3)
    # through the loss (lambda = 0: the teacher only) at T = 1: cross-entropy to the mean probabilities
    z = torch.tensor([[0.4, -1.2]])
    got = task_loss(logits=z, gold=torch.tensor([0]), teacher=torch.from_numpy(ens), lam=0.0, regression=False)
    want = -(0.3 * torch.log_softmax(z, -1)[0, 0] + 0.7 * torch.log_softmax(z, -1)[0, 1])
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    # the loss's soft target at T = 2, softmax(teacher / T): the mean probabilities flattened, p^(1/2) renormalised
    s = np.sqrt([0.3, 0.7])
    assert torch.softmax(torch.from_numpy(ens) / 2.0, -1).numpy()[0] == pytest.approx(s / s.sum(), abs=1e-6)


def test_three_class_ensemble_and_a_lone_seed():
    p0, p1 = np.array([0.2, 0.3, 0.5]), np.array([0.6, 0.2, 0.2])
    ens = teachers.ensemble_predictions([np.log(p0)[None], np.log(p1)[None] + 5.0], regression=False)
    assert np.exp(ens[0]) == pytest.approx([0.4, 0.25, 0.35], abs=1e-6)   # log-probabilities: sum to 1
    lone = np.array([[2.0, -1.0, 0.5]], dtype=np.float32)
    one = teachers.ensemble_predictions([lone], regression=False)
    for T in (1.0, 3.0):                     # one seed: the same targets as its logits at any temperature
        assert torch.allclose(torch.softmax(torch.from_numpy(one) / T, -1),
                              torch.softmax(torch.from_numpy(lone) / T, -1), atol=1e-6)


def test_regression_ensemble_is_the_mean_value():
    ens = teachers.ensemble_predictions([np.array([2.0, 3.0]), np.array([4.0, 1.0])], regression=True)
    assert ens == pytest.approx([3.0, 2.0])


def test_attach_teacher_predictions_ensembles_per_task_kind(monkeypatch):
    stored = {"c0": np.log([[0.1, 0.9]]), "c1": np.log([[0.5, 0.5]]),
              "r0": np.array([0.2]), "r1": np.array([0.6])}
    monkeypatch.setattr(teachers, "find_teachers", lambda recipe, data, storage: {
        "rte": [{"key": "c0"}, {"key": "c1"}], "stsb": [{"key": "r0"}, {"key": "r1"}]})
    monkeypatch.setattr(teachers, "TeacherStore", lambda storage: SimpleNamespace(
        load=lambda key, **kw: stored[key]))
    split = SimpleNamespace(ids=None, fingerprint="fp")
    data = {t: SimpleNamespace(task=get_task(t), train=split, teacher=None) for t in ("rte", "stsb")}
    for ensemble, want_c, want_r in ((True, [0.3, 0.7], [0.4]), (False, [0.1, 0.9], [0.2])):
        r = recipe_from_dict({"tasks": ["rte", "stsb"], "teacher": {"seeds": [0, 1], "ensemble": ensemble}})
        teachers.attach_teacher_predictions(r, data, storage="unused")
        assert torch.softmax(torch.from_numpy(data["rte"].teacher), -1).numpy()[0] == pytest.approx(want_c)
        assert data["stsb"].teacher == pytest.approx(want_r)


# ---------------------------------------------------------------------------------------------- λ per task

def _evaluated(run: Run) -> None:
    run.loss_history.append({})
    for sw in run.switch.values():
        sw.best = 0.0


def test_eval_metrics_log_lambda_per_task(tmp_path):
    rec = recipe(mtl={"pcgrad": False}, anneal={"schedule": "linear", "per_task": {B: {"schedule": "none"}}})
    run = make_run(tmp_path, rec)
    run.step = 2                                                      # progress 2/8 = 0.25
    _evaluated(run)
    m = eval_metrics(run, {"scores": {A: 0.0, B: 0.0}, "metrics": {}}, fired=[], train_time=1.0)
    assert m[f"{A}/lambda"] == pytest.approx(0.25)                    # BAM linear: lambda = progress
    assert m[f"{B}/lambda"] == 1.0                                    # none: gold only
    assert m["lambda"] == pytest.approx(0.25)                         # the recipe's own schedule, as before
    seq = copy.deepcopy(rec)
    seq["switch"] = {"mode": "sequential", "criterion": "fixed_step", "at_step": 1, "order": [B, A]}
    run = make_run(tmp_path / "seq", seq)
    run.joined_at[A] = 4                                              # A joined at step 4 of 8
    run.step = 6
    _evaluated(run)
    m = eval_metrics(run, {"scores": {B: 0.0, A: 0.0}, "metrics": {}}, fired=[], train_time=1.0)
    assert m[f"{A}/lambda"] == pytest.approx(0.5)                     # (6 - 4) / (8 - 4) over its own span
    assert m[f"{A}/lambda"] == schedules.anneal_lambda(run.task_progress(A), schedule="linear")
