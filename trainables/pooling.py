"""Sentence pooling (POOLING): the encoder's last hidden states -> one vector per example for the heads.

Tensor methods only (no torch import), so the recipe schema reads the names without importing torch.
"""
from __future__ import annotations


def _mean(seq, attention_mask):
    m = attention_mask.unsqueeze(-1).to(seq.dtype)
    return (seq * m).sum(1) / m.sum(1).clamp(min=1)


# name -> function(last hidden states [batch, tokens, hidden], attention mask [batch, tokens]) -> [batch, hidden]
POOLING = {"cls": lambda seq, attention_mask: seq[:, 0], "mean": _mean}
