"""The plain fine-tuning loop that the student's loop is measured against (issue 9).

Single task, fp32, the text tokenised inside every step, each batch padded to its own longest example
(random batches, so lengths mix), AdamW with a constant learning rate, nothing else: no length grouping,
no mixed precision, no warm-up or decay, no layer-wise LR, no clipping. It uses the same model as the student
(``MultiTaskModel`` over the same encoder, one head) and the same metric code, so only the loop differs.
"""
from __future__ import annotations

import time

import numpy as np
import torch


def _encode(tokenizer, examples, index, *, max_length: int):
    a = [examples.text_a[i] for i in index]
    args = (a,) if examples.text_b is None else (a, [examples.text_b[i] for i in index])
    return tokenizer(*args, truncation=True, max_length=max_length, padding="longest",
                     return_token_type_ids=True, return_tensors="pt")


def train_reference(*, model, tokenizer, train, task, epochs: int, batch_size: int = 32, lr: float = 5e-5,
                    max_length: int = 128, seed: int = 0, max_steps: int | None = None) -> dict:
    """Train ``model`` on ``train`` (an ``Examples``); returns real tokens, padded tokens and train seconds."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    labels = torch.as_tensor(train.labels)
    real = padded = steps = 0
    seconds = 0.0
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(train))
        for s in range(0, len(order), batch_size):
            if max_steps is not None and steps >= max_steps:
                return {"real_tokens": real, "padded_tokens": padded, "train_s": seconds, "steps": steps}
            index = order[s:s + batch_size]
            t0 = time.perf_counter()
            enc = _encode(tokenizer, train, index, max_length=max_length)
            logits = model(task=task.name, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                           token_type_ids=enc["token_type_ids"])
            y = labels[index]
            if task.is_regression:
                loss = torch.nn.functional.mse_loss(logits, y.float())
            else:
                loss = torch.nn.functional.cross_entropy(logits, y.long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            seconds += time.perf_counter() - t0
            real += int(enc["attention_mask"].sum())
            padded += enc["input_ids"].numel()
            steps += 1
    return {"real_tokens": real, "padded_tokens": padded, "train_s": seconds, "steps": steps}


@torch.no_grad()
def predict_reference(*, model, tokenizer, examples, task, batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(examples), batch_size):
        index = np.arange(s, min(s + batch_size, len(examples)))
        enc = _encode(tokenizer, examples, index, max_length=max_length)
        out.append(model(task=task.name, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         token_type_ids=enc["token_type_ids"]).float().numpy())
    return np.concatenate(out)
