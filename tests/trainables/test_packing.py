"""Recipe ``pack`` (issue 19, item 2): a batch's examples packed into fewer rows with block-diagonal attention
give the same per-example logits and the same gradients as the unpacked batch, and run through THE loop."""
from __future__ import annotations

import copy

import pytest
import torch

from trainables import trial
from trainables.loop import run_training
from trainables.losses import hidden_mse
from trainables.model import MultiTaskModel, set_attention
from trainables.packing import Packed
from trainables.recipe import recipe_from_dict
from trainables.tasks import get_task
from transformers import AutoModel, BertConfig

LENGTHS = [5, 12, 3, 9, 2, 12, 7, 4]          # width 12: rows [12], [12], [9, 3], [7, 5], [4, 2]


pytestmark = pytest.mark.usefixtures("cpu_one_thread")     # tests/trainables/conftest.py


def batch(lengths: list[int], seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(lengths)
    mask = (torch.arange(L)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, 99, (B, L), generator=g) * mask
    types = (torch.rand(B, L, generator=g) < 0.4).long() * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def model(pooling: str, attention: str = "bam_eager", teacher: bool = False) -> MultiTaskModel:
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m = MultiTaskModel(AutoModel.from_config(cfg, add_pooling_layer=False), {"sst2": get_task("sst2")},
                       dropout=0.0, pooling=pooling)
    if attention == "sdpa":
        m.encoder.set_attn_implementation("sdpa")
    else:
        set_attention(m, torch.device("cpu"))                   # bam_eager, as the loop trains on CPUs
    assert m.encoder.config._attn_implementation == attention
    if teacher:
        m.projections = torch.nn.ModuleList(torch.nn.Linear(32, 32) for _ in range(2))
    return m


def loss_and_grads(m: MultiTaskModel, b: dict, *, pack: bool, teacher_states=None):
    m.zero_grad(set_to_none=True)
    out = m(task="sst2", **b, pack=pack, hidden_states=teacher_states is not None)
    logits, states = out if teacher_states is not None else (out, None)
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(logits)) % 2)
    if states is not None:
        loss = loss + hidden_mse(states, teacher_states, m.projections, attention_mask=b["attention_mask"])
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("pooling,attention,kd", [("cls", "bam_eager", False), ("mean", "bam_eager", False),
                                                  ("mean", "sdpa", False), ("cls", "bam_eager", True)])
def test_packed_and_unpacked_give_the_same_logits_and_gradients(pooling, attention, kd):
    m, b = model(pooling, attention, teacher=kd), batch(LENGTHS)
    teacher_states = None
    if kd:
        with torch.no_grad():
            teacher_states = model("cls").encoder(**b, output_hidden_states=True).hidden_states
    assert Packed(b["attention_mask"]).rows == 5                    # 8 examples in 5 rows of 12
    ref_logits, ref_grads = loss_and_grads(m, b, pack=False, teacher_states=teacher_states)
    logits, grads = loss_and_grads(m, b, pack=True, teacher_states=teacher_states)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name in ref_grads:                                  # position embeddings past 12 get no gradient in both
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_packing_changes_the_result_if_the_mask_were_dropped(monkeypatch):
    """The 4D mask reaches the attention: without it (every token sees its row) the logits differ."""
    m, b = model("mean"), batch(LENGTHS)
    ref = m(task="sst2", **b, pack=True)
    def no_mask(self, dtype=torch.float32):
        return torch.zeros(self.rows, 1, self.shape[1], self.shape[1], dtype=dtype)
    monkeypatch.setattr(Packed, "mask", no_mask)
    assert not torch.allclose(m(task="sst2", **b, pack=True), ref, atol=1e-3)


def test_a_batch_where_nothing_packs_is_identical():
    m, b = model("mean"), batch([6, 6, 5, 6])                # no two fit in a row of 6
    p = Packed(b["attention_mask"])
    assert p.rows == 4
    assert torch.equal(p.unpack(p.pack(b["input_ids"])[..., None])[..., 0], b["input_ids"])
    ref_logits, ref_grads = loss_and_grads(m, b, pack=False)
    logits, grads = loss_and_grads(m, b, pack=True)
    torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_rows_respect_the_batch_width_and_positions_restart():
    b = batch(LENGTHS)
    p = Packed(b["attention_mask"])
    ids, pos = p.pack(b["input_ids"]), p.position_ids()
    assert ids.shape == (5, 12) and pos.shape == (5, 12)
    real = p.pack(b["attention_mask"])
    assert sorted(real.sum(1).tolist()) == [6, 12, 12, 12, 12]  # every token once, no row over 12
    assert int(real.sum()) == sum(LENGTHS)
    for row in range(p.rows):                               # positions count 0.. within each example
        starts = [k for k in range(12) if real[row, k] and pos[row, k] == 0]
        assert len(starts) >= 1 and starts[0] == 0
    mask = p.mask()[:, 0]
    assert mask.shape == (5, 12, 12) and bool((mask.diagonal(dim1=1, dim2=2) == 0).all())
    assert int((mask == 0).sum()) == sum(n * n for n in LENGTHS) + int((real == 0).sum())


def test_pack_runs_a_training_step_and_an_evaluation_in_the_loop(tmp_path, cache_dir, monkeypatch):
    packed = []                                             # (examples, rows) of every packed forward
    init = Packed.__init__

    def spy(self, attention_mask):
        init(self, attention_mask)
        packed.append((self.shape[0], self.rows))
    monkeypatch.setattr(Packed, "__init__", spy)
    base = {"tasks": ["syn_sentiment"], "model": "tiny", "precision": "fp32", "evals": 1, "seed": 0,   # 6-14 tokens
            "teacher": {"use": False}, "optim": {"steps": 2, "batch_size": 32, "lr": 1e-3},
            "student": {"dropout": 0.0}, "data": {"max_train_examples": 32, "max_dev_examples": 16, "max_length": 32}}
    assert recipe_from_dict(base).pack is False                 # off by default
    reports, weights = {}, {}
    for pack in (False, True):
        rec = recipe_from_dict({**copy.deepcopy(base), "pack": pack}).to_dict()
        run = trial.setup_run({"recipe": rec, "job": "student", "storage": str(tmp_path / "storage"),
                               "artifacts_dir": str(tmp_path / f"art{pack}"), "cache_dir": cache_dir})
        reports[pack] = []
        run_training(run, report=lambda metrics, r: reports[pack].append(metrics))
        assert run.step == 2 and len(reports[pack]) == 1
        weights[pack] = {k: v.clone() for k, v in run.model.state_dict().items()}
    assert len(packed) >= 2 and any(rows < n for n, rows in packed), packed   # training packed; evaluation not
    for t in base["tasks"]:                                  # the same two steps: the same dev scores
        assert reports[True][0][f"{t}/score"] == pytest.approx(reports[False][0][f"{t}/score"], abs=1e-6)
    for k in weights[False]:
        torch.testing.assert_close(weights[True][k], weights[False][k], atol=1e-5, rtol=1e-4, msg=k)


def test_pack_with_a_model_it_cannot_pack_is_one_line_before_ray(tmp_path):
    from search.preflight import check_model
    from trainables.errors import UserError
    (tmp_path / "config.json").write_text('{"model_type": "distilbert"}')
    rec = recipe_from_dict({"tasks": ["syn_noisy"], "model": str(tmp_path), "pack": True})
    with pytest.raises(UserError) as e:
        check_model(rec)
    assert str(e.value).startswith("pack: true") and "distilbert" in str(e.value) and "\n" not in str(e.value)
    check_model(recipe_from_dict({"tasks": ["syn_noisy"], "model": str(tmp_path)}))    # pack off: not checked
