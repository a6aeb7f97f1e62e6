"""The peer a user would otherwise pick: Hugging Face ``Trainer`` fine-tuning the same MiniLM on the same
examples, with its own speed options on (issue 19): bf16 where the CPU runs it natively (the product's
``precision: auto`` rule), ``group_by_length`` (transformers 5: ``train_sampling_strategy``), fused AdamW (``adamw_torch_fused``), its default attention,
dynamic padding (``DataCollatorWithPadding``). Its own model class (``AutoModelForSequenceClassification``)
and its own schedule (linear decay, no warm-up): what a user gets from the library, not our loop in its clothes.

Needs ``accelerate`` (``pip install -e '.[bench]'``). Used by ``bench/throughput.py --hf-trainer``.
"""
from __future__ import annotations

import time

import numpy as np


class _Encoded:
    """A list-like dataset of tokenised examples (dicts of lists): what ``Trainer`` and its collator take."""

    def __init__(self, tokenizer, examples, *, max_length: int, labels=None):
        args = (examples.text_a,) if examples.text_b is None else (examples.text_a, examples.text_b)
        self.enc = tokenizer(*[list(a) for a in args], truncation=True, max_length=max_length)
        self.labels = labels
        self.n = len(examples)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        row = {k: v[i] for k, v in self.enc.items()}
        if self.labels is not None:
            row["labels"] = self.labels[i]
        return row


class _Counting:
    """The collator, counting the real (non-padding) tokens of every batch it makes."""

    def __init__(self, collate):
        self.collate, self.real = collate, 0

    def __call__(self, rows: list[dict]):
        batch = self.collate(rows)
        self.real += int(batch["attention_mask"].sum())
        return batch


def train_hf_trainer(*, model_dir: str, train, dev, task, epochs: int | None, batch_size: int, lr: float,
                     max_length: int, seed: int, output_dir: str, max_steps: int | None = None) -> dict:
    """Fine-tune with ``Trainer``; real tokens/s of its training loop and (with ``epochs``) dev predictions."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)
    from trainables.precision import autocast_dtype
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=task.num_outputs)
    labels = np.asarray(train.labels, dtype=np.float32 if task.is_regression else np.int64)
    data = _Encoded(tokenizer, train, max_length=max_length, labels=labels)
    bf16 = autocast_dtype("auto", torch.device("cpu")) is torch.bfloat16
    targs = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, per_device_eval_batch_size=64,
        learning_rate=lr, num_train_epochs=epochs or 1, max_steps=max_steps or -1, seed=seed, data_seed=seed,
        bf16=bf16, train_sampling_strategy="group_by_length", optim="adamw_torch_fused", use_cpu=True, report_to=[],
        save_strategy="no", eval_strategy="no", logging_strategy="no", dataloader_num_workers=0,
        disable_tqdm=True)
    collate = _Counting(DataCollatorWithPadding(tokenizer))
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collate)
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    real = collate.real                                   # the batches the training loop asked for
    result = {"real_tokens": real, "train_s": seconds, "steps": out.global_step, "tokens_per_s": real / seconds,
              "dtype": "bfloat16" if bf16 else "float32", "trainer_runtime_s": out.metrics.get("train_runtime"),
              "matrix_params": sum(p.numel() for n, p in model.named_parameters()
                                   if p.ndim == 2 and "embeddings" not in n)}
    if epochs and dev is not None:
        result["predictions"] = predict_in_order(model, tokenizer, dev, task=task, max_length=max_length, bf16=bf16,
                                                 output_dir=output_dir)
    return result


def predict_in_order(model, tokenizer, dev, *, task, max_length: int, bf16: bool, output_dir: str) -> np.ndarray:
    """Dev predictions in the dev set's order. Not through the training ``Trainer``: in transformers 5 its
    ``train_sampling_strategy="group_by_length"`` also reorders the *evaluation* sampler (``_get_eval_sampler``),
    so ``trainer.predict`` returns predictions in a length-grouped order, not the dataset's (scored against
    the labels in order, SST-2 came out at chance, 50.0 +- 2.4 over 3 seeds, 2026-12-03)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
    args = TrainingArguments(output_dir=output_dir, per_device_eval_batch_size=64, bf16=bf16, use_cpu=True,
                             report_to=[], disable_tqdm=True)
    preds = Trainer(model=model, args=args, data_collator=DataCollatorWithPadding(tokenizer)).predict(
        _Encoded(tokenizer, dev, max_length=max_length)).predictions
    return preds.reshape(-1) if task.is_regression else preds
