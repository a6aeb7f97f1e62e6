"""The loop's speed levers keep its behaviour (issue 9): length-grouped batches see every example exactly once
per epoch and pad only to the batch's longest; evaluation covers every example once; the fused AdamW step is
AdamW's update; bf16 training from the same start stays close to fp32."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trainables.data import TokenizedSplit
from trainables.precision import autocast_dtype

from test_model_loop import _cpu, _one_thread, make_run, recipe  # noqa: F401 (fixtures)


def _record_collates(monkeypatch):
    seen: list[tuple[str, np.ndarray, int]] = []
    original = TokenizedSplit.collate

    def spy(self, indices, **kw):
        batch = original(self, indices, **kw)
        seen.append((self.split, np.asarray(indices).copy(), batch["input_ids"].shape[1]))
        return batch

    monkeypatch.setattr(TokenizedSplit, "collate", spy)
    return seen


@pytest.mark.parametrize("batches", ["single", "mixed"])
def test_one_epoch_of_grouped_batches_sees_every_example_once(tmp_path, monkeypatch, batches):
    # 60 examples of one task, batch 8: exactly 7.5 batches per epoch, so 15 steps are two whole epochs
    run = make_run(tmp_path, recipe(["syn_noisy"], optim={"steps": 15, "batch_size": 8},
                                    sampling={"batches": batches}, data={"max_train_examples": 60}))
    train = run.data["syn_noisy"].train
    assert len(train) == 60
    seen = _record_collates(monkeypatch)
    for _ in range(15):
        run.train_step()
    train_batches = [(idx, width) for split, idx, width in seen if split == "train"]
    order = np.concatenate([idx for idx, _ in train_batches])
    assert len(order) == 120
    for epoch in (order[:60], order[60:]):
        assert np.array_equal(np.sort(epoch), np.arange(60))            # each example exactly once per epoch
    for idx, width in train_batches:
        assert width == int(train.lengths[idx].max())                   # padded to the batch's longest only
    # grouping pads far less than random batches of the same size would
    wasted = sum(int(train.lengths[i].max()) * len(i) - int(train.lengths[i].sum()) for i, _ in train_batches)
    rng = np.random.default_rng(0)
    perm = np.concatenate([rng.permutation(60), rng.permutation(60)])
    random_waste = sum(int(train.lengths[perm[s:s + 8]].max()) * len(perm[s:s + 8]) - int(train.lengths[perm[s:s + 8]].sum())
                       for s in range(0, 120, 8))
    assert wasted < 0.6 * random_waste, (wasted, random_waste)


def test_evaluation_sees_every_dev_example_once_grouped_by_length(tmp_path, monkeypatch):
    run = make_run(tmp_path, recipe(["syn_noisy"], data={"max_dev_examples": 100}))
    dev = run.data["syn_noisy"].dev["dev"]
    seen = _record_collates(monkeypatch)
    preds = run.predict("syn_noisy", dev, batch_size=16)
    batches = [(idx, width) for split, idx, width in seen if split == "dev"]
    order = np.concatenate([idx for idx, _ in batches])
    assert np.array_equal(np.sort(order), np.arange(len(dev)))
    assert all(width == int(dev.lengths[idx].max()) for idx, width in batches)
    widths = [w for _, w in batches]
    assert widths == sorted(widths, reverse=True)                      # longest first, no mixing of lengths
    assert preds.shape[0] == len(dev) and np.isfinite(preds).all()


def test_optimizer_is_fused_and_steps_like_adamw(tmp_path):
    run = make_run(tmp_path, recipe(["syn_noisy"]))
    assert all(g.get("fused") for g in run.opt.param_groups)
    # the same parameters and gradients through the plain for-loop AdamW give the same update
    plain_params = [p.detach().clone().requires_grad_(True) for p in run.params]
    groups = []
    k = 0
    for g in run.opt.param_groups:
        n = len(g["params"])
        groups.append({"params": plain_params[k:k + n], "lr": g["lr"], "weight_decay": g["weight_decay"]})
        k += n
    assert k == len(plain_params)
    start = [p.detach().clone() for p in plain_params]
    plain = torch.optim.AdamW(groups, foreach=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(run.params, plain_params):
            g = torch.randn(p.shape, generator=gen) * 1e-2
            p.grad, q.grad = g.clone(), g.clone()
        run.opt.step()
        plain.step()
    gap = max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(run.params, plain_params))
    update = max(float((q.detach() - s).abs().max()) for q, s in zip(plain_params, start))
    assert update > 1e-4                                                # the step really moved the weights
    assert gap < 1e-2 * update, (gap, update)                          # fused: same rule, float-order noise only


def test_bf16_training_tracks_fp32(tmp_path):
    if autocast_dtype("auto", torch.device("cpu")) is None:
        pytest.skip("this CPU has no native bf16 (precision auto stays fp32 here)")
    common = dict(optim={"steps": 30, "lr": 3e-3, "batch_size": 16}, data={"max_dev_examples": 200})
    runs = {}
    for prec in ("fp32", "auto"):
        run = make_run(tmp_path / prec, recipe(["syn_sentiment"], precision=prec, **common))
        losses = [run.train_step()["syn_sentiment"] for _ in range(30)]
        runs[prec] = (run, losses)
    fp32, bf16 = runs["fp32"], runs["auto"]
    assert bf16[0].amp == torch.bfloat16 and fp32[0].amp is None
    # same start, same batches: the first loss agrees to bf16 precision, and both runs learn about as much
    assert bf16[1][0] == pytest.approx(fp32[1][0], rel=2e-2)
    assert np.mean(bf16[1][-5:]) < 0.9 * bf16[1][0] and np.mean(fp32[1][-5:]) < 0.9 * fp32[1][0]
    dev = fp32[0].data["syn_sentiment"].dev["dev"]
    a, b = fp32[0].predict("syn_sentiment", dev), bf16[0].predict("syn_sentiment", dev)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.85


def test_cpu_training_uses_eager_attention_with_the_same_outputs(tmp_path):
    """On CPUs the loop swaps SDPA for the plain attention (its backward is much faster there); the model
    computes the same function, padding masks included, with the same gradients."""
    from trainables.model import attention_for
    run = make_run(tmp_path, recipe(["syn_pairmatch"], precision="fp32"))
    assert run.attention == "bam_eager" and run.model.encoder.config._attn_implementation == "bam_eager"
    assert attention_for(torch.device("cuda")) == "sdpa"
    dev = run.data["syn_pairmatch"].dev["dev"]
    batch = dev.collate(np.arange(min(16, len(dev))))
    assert (batch["attention_mask"] == 0).any()                        # some padding in the batch
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    run.model.eval()
    outs = {}
    for impl in ("bam_eager", "eager", "sdpa"):
        run.model.encoder.set_attn_implementation(impl)
        run.model.zero_grad(set_to_none=True)
        logits = run.model(task="syn_pairmatch", **kw)
        logits.float().pow(2).sum().backward()
        grad = run.model.encoder.encoder.layer[0].attention.self.query.weight.grad.clone()
        outs[impl] = (logits.detach(), grad)
    torch.testing.assert_close(outs["bam_eager"][0], outs["eager"][0], rtol=0, atol=0)   # same ops, same order
    torch.testing.assert_close(outs["bam_eager"][1], outs["eager"][1], rtol=0, atol=0)
    torch.testing.assert_close(outs["eager"][0], outs["sdpa"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs["eager"][1], outs["sdpa"][1], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_at_rate_p_and_keeps_the_expectation(dtype, p):
    """The CPU dropout is dropout: each element zeroed with probability p (to 1/65536), the rest scaled by
    1/(1-p) so the mean is kept, the gradient masked the same way, and the global seed decides the mask."""
    from trainables.model import cpu_dropout
    n = 400_000
    x = torch.ones(n, dtype=dtype, requires_grad=True)
    torch.manual_seed(3)
    y = cpu_dropout(x, p=p)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5                 # binomial: 5 standard deviations
    kept = y[y != 0].float()
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)), rtol=4e-3, atol=0)   # bf16 rounding
    assert abs(y.float().mean().item() - 1.0) < 0.01
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad, 2.0 * y.detach())                          # d(out)/dx is the same mask
    torch.manual_seed(3)
    assert torch.equal(cpu_dropout(x.detach(), p=p), y.detach())           # seeded: the same mask
    assert not torch.equal(cpu_dropout(x.detach(), p=p), y.detach())       # and a new one on the next call
    # the mask is not shared between the four 16-bit lanes of one random word, nor along rows
    m = (cpu_dropout(torch.ones(n, dtype=dtype), p=p) == 0).double().view(-1, 4)
    assert abs(np.corrcoef(m[:, 0].numpy(), m[:, 1].numpy())[0, 1]) < 0.02
    assert all(abs(m[:, j].mean().item() - p) < 5 * (p * (1 - p) / (n / 4)) ** 0.5 for j in range(4))


def test_cpu_dropout_identity_cases():
    from trainables.model import cpu_dropout
    x = torch.randn(7, 5)
    assert cpu_dropout(x, p=0.3, training=False) is x
    assert cpu_dropout(x, p=0.0) is x
    assert torch.equal(cpu_dropout(x, p=1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        cpu_dropout(x, p=1.5)


def test_cpu_training_swaps_every_dropout_keeping_p_and_weights(tmp_path):
    """On CPUs every nn.Dropout of the model (embeddings, layers, heads) becomes the CPU dropout with the same
    p, the state dict is untouched, evaluation is deterministic and training still drops (attention included)."""
    from torch import nn

    from trainables import trial
    from trainables.model import CpuDropout, bam_eager_attention, set_dropout
    rec = recipe(["syn_pairmatch"], precision="fp32")
    run = make_run(tmp_path, rec)
    fresh = trial.build_model(run.r, tokenizer=trial.load_tokenizer(run.r.model, cache_dir=None),
                               tasks={t: run.data[t].task for t in run.tasks})
    before = {n: m.p for n, m in fresh.named_modules() if type(m) is nn.Dropout}
    assert len(before) >= 2 * run.model.num_layers + 2                     # per layer two, embeddings, head
    after = {n: m for n, m in run.model.named_modules() if isinstance(m, nn.Dropout)}
    assert set(after) == set(before) and all(type(m) is CpuDropout for m in after.values())
    assert {n: m.p for n, m in after.items()} == before
    assert set(run.model.state_dict()) == set(fresh.state_dict())
    assert set_dropout(fresh, torch.device("cuda")) == 0                   # GPUs keep PyTorch's own

    dev = run.data["syn_pairmatch"].dev["dev"]
    batch = dev.collate(np.arange(min(16, len(dev))))
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    run.model.eval()
    assert torch.equal(run.model(task="syn_pairmatch", **kw), run.model(task="syn_pairmatch", **kw))
    run.model.train()
    torch.manual_seed(0)
    a = run.model(task="syn_pairmatch", **kw)
    torch.manual_seed(0)
    assert torch.equal(a, run.model(task="syn_pairmatch", **kw))
    assert not torch.equal(a, run.model(task="syn_pairmatch", **kw))

    attn = run.model.encoder.encoder.layer[0].attention.self
    q = torch.randn(4, 2, 10, 16)
    _, w = bam_eager_attention(attn, q, q, q, None, dropout=0.5)
    assert 0.4 < (w == 0).float().mean().item() < 0.6                     # training: probabilities dropped
    attn.eval()
    _, w = bam_eager_attention(attn, q, q, q, None, dropout=0.5)
    assert (w > 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 2, 10))
