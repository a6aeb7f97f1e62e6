"""The formulas of the papers and of BAM's reference code (google-research/google-research, ``bam/``), pinned
with their numbers: layer-wise LR decay (``bam/bert/optimization.py``), STS-B targets scaled to [0, 1]
(``bam/task_specific/classification/classification_tasks.py``), and the T^2 factor on the soft term of
knowledge distillation (Hinton et al. 2015, "Distilling the knowledge in a neural network", section 2)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainables import synthetic
from trainables.data import load_examples, unit_scores
from trainables.loop import Run
from trainables.losses import annealed_target_probs, soft_cross_entropy, task_loss
from trainables.metrics import compute_metrics
from trainables.model import MultiTaskModel, build_encoder, layer_depths
from trainables.schedules import layer_lr_scale
from trainables.tasks import get_task

# ---------------------------------------------------------------------------------------------- layer decay


def bam_key_to_depths(n_layers: int) -> dict[str, int]:
    """BAM's ``get_key_to_depths``, as written there."""
    key_to_depths = {"task_specific/": n_layers + 2, "/pooler/": n_layers + 1, "/embeddings/": 0}
    for layer in range(n_layers):
        key_to_depths["/layer_" + str(layer) + "/"] = layer + 1
    return key_to_depths


@pytest.mark.parametrize("n_layers", [2, 12, 24])
def test_layer_lr_scale_is_bams_edecay(n_layers):
    """``_get_edecay_lrs``: learning_rate * (config.lr_decay ** (n_layers + 2 - depth))."""
    for key, depth in bam_key_to_depths(n_layers).items():
        assert layer_lr_scale(depth, num_layers=n_layers, decay=0.9) == pytest.approx(0.9 ** (n_layers + 2 - depth)), key


def test_layer_lr_scale_bert_base_numbers():
    """BERT-Base (12 layers), lr_decay 0.9: heads 1, pooler 0.9, top layer 0.81, embeddings 0.9^14."""
    depths = bam_key_to_depths(12)
    scale = {k: layer_lr_scale(d, num_layers=12, decay=0.9) for k, d in depths.items()}
    assert scale["task_specific/"] == 1.0
    assert scale["/pooler/"] == pytest.approx(0.9)
    assert scale["/layer_11/"] == pytest.approx(0.81)
    assert scale["/layer_0/"] == pytest.approx(0.9 ** 13)
    assert scale["/embeddings/"] == pytest.approx(0.22876792454961)     # 0.9 ** 14


def _tiny_model(*, pooler: bool) -> MultiTaskModel:
    torch.manual_seed(0)
    enc = build_encoder("tiny", vocab_size=64, init="random")
    if pooler:
        from transformers import BertModel
        enc = BertModel(enc.config, add_pooling_layer=True)
    return MultiTaskModel(enc, {"stsb": get_task("stsb"), "rte": get_task("rte")})


def test_layer_depths_follow_bam_convention():
    model = _tiny_model(pooler=True)
    L = model.num_layers
    depths = layer_depths(model)
    assert set(depths) == {n for n, _ in model.named_parameters()}
    for name, d in depths.items():
        if name.startswith("encoder.embeddings"):
            assert d == 0, name
        elif name.startswith("encoder.pooler"):
            assert d == L + 1, name
        elif name.startswith("heads."):
            assert d == L + 2, name
        else:
            assert d == int(name.split(".layer.")[1].split(".")[0]) + 1, name
    assert any(n.startswith("encoder.pooler") for n in depths)


def test_optimizer_rates_are_bams():
    """The rate each parameter trains at: head lr, top layer 0.81 lr, bottom layer 0.9^(L+1) lr (L = 2 here)."""
    model = _tiny_model(pooler=False)
    L, lr = model.num_layers, 1e-3
    fake = SimpleNamespace(r=SimpleNamespace(optim=SimpleNamespace(lr=lr, layer_decay=0.9, weight_decay=0.01)),
                           model=model, device=torch.device("cpu"))
    opt = Run._optimizer(fake)
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    top = f"encoder.encoder.layer.{L - 1}.attention.self.query.weight"
    assert rate[id(named["heads.stsb.weight"])] == pytest.approx(lr)
    assert rate[id(named[top])] == pytest.approx(0.81 * lr)
    assert rate[id(named["encoder.encoder.layer.0.output.dense.weight"])] == pytest.approx(0.9 ** (L + 1) * lr)
    assert rate[id(named["encoder.embeddings.word_embeddings.weight"])] == pytest.approx(0.9 ** (L + 2) * lr)


# ---------------------------------------------------------------------------------------------- STS-B scale

STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
STSB_SCORES = ["5.000", "3.800", "0.000", "2.500", "1.200"]


@pytest.fixture()
def stsb_dir(tmp_path):
    lines = [STSB_HEADER] + [f"{i}\tg\tf\ty\t{i:04d}\tnone\tnone\tSentence {i} a.\tSentence {i} b.\t{s}"
                             for i, s in enumerate(STSB_SCORES)]
    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path / "glue"


def test_stsb_targets_are_bams_unit_scale(stsb_dir):
    """BAM ``RegressionTask._add_features``: ``label = (label - self._min_value) / self._max_value`` with
    ``STS`` built as ``RegressionTask(config, "sts", tokenizer, 0.0, 5.0)``."""
    ex = load_examples(task="stsb", split="train", glue_dir=str(stsb_dir))
    assert ex.labels.dtype == np.float32
    np.testing.assert_allclose(ex.labels, [1.0, 0.76, 0.0, 0.5, 0.24], atol=1e-6)
    assert get_task("stsb").score_range == (0.0, 5.0)
    assert unit_scores(ex, get_task("rte")) is ex                             # classification is untouched


def test_synthetic_similarity_scaled_like_stsb():
    raw = synthetic.load_examples(task="syn_similarity", split="dev")
    ex = load_examples(task="syn_similarity", split="dev", glue_dir=None)
    np.testing.assert_allclose(ex.labels, raw.labels / 5.0, atol=1e-6)
    assert ex.labels.min() >= 0.0 and ex.labels.max() <= 1.0


def test_scaled_targets_change_the_fingerprint(stsb_dir):
    """Teacher predictions stored for 0-5 labels are matched by data fingerprint: they no longer match."""
    from trainables.data import read_glue_tsv
    raw = read_glue_tsv(stsb_dir / "STS-B" / "train.tsv", task=get_task("stsb"), split="train")
    assert raw.labels.max() == 5.0
    assert load_examples(task="stsb", split="train", glue_dir=str(stsb_dir)).fingerprint() != raw.fingerprint()


def test_stsb_metrics_are_the_same_on_either_scale():
    rng = np.random.default_rng(3)
    gold = rng.uniform(0, 5, 200)
    pred = gold + rng.normal(0, 1.0, 200)
    metrics = ("pearson", "spearman")
    original = compute_metrics(metrics=metrics, predictions=pred, labels=gold)
    unit = compute_metrics(metrics=metrics, predictions=pred / 5, labels=gold / 5)
    for k in original:
        assert unit[k] == pytest.approx(original[k], abs=1e-9)


def test_stsb_loss_scale_and_teacher_mix():
    """On the unit scale MSE is 1/25 of the 0-5 one; BAM's distillation target is
    ``targets * percent_done + distill_targets * (1 - percent_done)``, teacher and gold on the same scale."""
    gold = torch.tensor([5.0, 3.8, 0.0, 2.5])
    pred = torch.tensor([4.0, 4.3, 1.0, 2.0])
    teacher = torch.tensor([4.5, 3.0, 0.5, 2.5])
    raw = task_loss(logits=pred, gold=gold, teacher=None, lam=1.0, regression=True)
    unit = task_loss(logits=pred / 5, gold=gold / 5, teacher=None, lam=1.0, regression=True)
    assert float(raw) == pytest.approx((1 + 0.25 + 1 + 0.25) / 4)
    assert float(unit) == pytest.approx(float(raw) / 25)
    mixed = task_loss(logits=pred / 5, gold=gold / 5, teacher=teacher / 5, lam=0.3, regression=True)
    target = (0.3 * gold + 0.7 * teacher) / 5
    assert float(mixed) == pytest.approx(float(((pred / 5 - target) ** 2).mean()))


# ---------------------------------------------------------------------------------------------- T^2


def _batch(seed=0, b=5, c=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, generator=g), torch.randint(0, c, (b,), generator=g), torch.randn(b, c, generator=g)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.6, 1.0])
def test_temperature_one_is_bams_mixed_target(lam):
    """At T = 1 the split loss equals BAM's CE to ``labels = true * p + teacher * (1 - p)``."""
    z, gold, t = _batch()
    target = annealed_target_probs(gold=gold, teacher_logits=t, lam=lam, num_classes=4)
    want = soft_cross_entropy(z, target)
    got = task_loss(logits=z, gold=gold, teacher=t, lam=lam, regression=False, temperature=1.0)
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_hand_computed_example():
    """z = (2, 0), gold 0, teacher (0, 0), T = 2, lambda = 0.5:
    0.5 * log(1 + e^-2) + 0.5 * 4 * (0.5 log(1 + e^-1) + 0.5 log(1 + e))."""
    z, t, gold = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([0])
    want = 0.5 * math.log1p(math.exp(-2)) + 0.5 * 4 * (0.5 * math.log1p(math.exp(-1)) + 0.5 * math.log1p(math.e))
    got = task_loss(logits=z, gold=gold, teacher=t, lam=0.5, regression=False, temperature=2.0)
    assert float(got) == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(0.063464 + 1.626523, abs=2e-6)


def test_gold_term_stays_at_temperature_one():
    z, gold, t = _batch(1)
    for T in (0.5, 2.0, 8.0):
        only_gold = task_loss(logits=z, gold=gold, teacher=t, lam=1.0, regression=False, temperature=T)
        assert float(only_gold) == pytest.approx(float(F.cross_entropy(z, gold)), rel=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("kind", ["ce", "kl"])
def test_soft_gradient_closed_form(T, kind):
    """d/dz [T^2 * CE(softmax(t/T), softmax(z/T))] = T * (softmax(z/T) - softmax(t/T)) per example (KL has the
    same gradient); the loss is a batch mean."""
    z, gold, t = _batch(2)
    z.requires_grad_(True)
    task_loss(logits=z, gold=gold, teacher=t, lam=0.0, regression=False, temperature=T, kind=kind).backward()
    want = T * (torch.softmax(z.detach() / T, -1) - torch.softmax(t / T, -1)) / len(z)
    assert torch.allclose(z.grad, want, atol=1e-6)


def test_high_temperature_limit_is_logit_matching():
    """Hinton et al.: with zero-mean logits, as T grows the soft gradient (1/T)(q_i - p_i) ~ (z_i - v_i)/(N T^2);
    times T^2 it tends to (z_i - v_i)/N (N classes), whatever T: temperature no longer scales the step."""
    z, gold, t = _batch(3, c=5)
    z, t = z - z.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    want = (z - t) / 5 / len(z)
    errors = []
    for T in (100.0, 1000.0):
        zz = z.clone().requires_grad_(True)
        task_loss(logits=zz, gold=gold, teacher=t, lam=0.0, regression=False, temperature=T).backward()
        errors.append(float((zz.grad - want).abs().max()))
    assert errors[1] < 1e-3 * float(want.abs().max())
    assert errors[1] < errors[0] / 5                                           # the gap shrinks as 1/T


def test_teachers_of_the_old_depths_get_other_keys():
    """Layer decay changed the rates a teacher trains at: its key changes (unless no decay is applied)."""
    from trainables.recipe import recipe_from_dict
    from trainables.teacher_store import teacher_key
    from trainables.teachers import teacher_config
    key = lambda cfg: teacher_key(task="rte", fingerprint="f" * 64, model="tiny", teacher_config=cfg, seed=0)  # noqa: E731
    cfg = teacher_config(recipe_from_dict({"tasks": ["rte"], "model": "tiny"}))
    assert cfg["layer_depths"] == "bam"
    assert key(cfg) != key({k: v for k, v in cfg.items() if k != "layer_depths"})
    flat = teacher_config(recipe_from_dict({"tasks": ["rte"], "model": "tiny", "optim": {"layer_decay": 1.0}}))
    assert "layer_depths" not in flat                  # every rate is lr either way: those teachers keep keys
