"""bench/hf_trainer.py scores Hugging Face Trainer's dev predictions in the dev set's order.

transformers 5's ``train_sampling_strategy="group_by_length"`` reorders the evaluation sampler too, so the
training Trainer's ``predict`` returns predictions length-grouped (SST-2 scored at chance, 2026-12-03). The
predictions must be the model's outputs for dev examples 0, 1, 2, ... in that order.
"""
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from hf_trainer import predict_in_order  # noqa: E402


class Dev:
    """The two fields of trainables.data.Examples that the Trainer path reads."""

    def __init__(self, text_a):
        self.text_a, self.text_b = text_a, None

    def __len__(self):
        return len(self.text_a)


def test_predictions_follow_the_dev_order_with_varied_lengths(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from trainables.model import TINY, load_tokenizer
    tok = load_tokenizer("tiny")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tok), num_labels=2, **TINY)).eval()
    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "the", "a", "plot", "long", "dull", "fun"]
    lengths = rng.permutation(np.arange(1, 81))           # 80 examples of 1..80 words, in shuffled order
    dev = Dev([" ".join(rng.choice(words, size=n)) for n in lengths])
    preds = predict_in_order(model, tok, dev, task=SimpleNamespace(is_regression=False), max_length=128,
                             bf16=False, output_dir=str(tmp_path / "out"))
    with torch.no_grad():
        want = np.stack([model(**tok(t, return_tensors="pt")).logits[0].numpy() for t in dev.text_a])
    assert preds.shape == (80, 2)
    np.testing.assert_allclose(preds, want, atol=1e-4)
