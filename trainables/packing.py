"""Packing a batch's short examples into fewer rows (recipe ``pack``): block-diagonal attention.

A length-grouped batch of short sentences still pads ~21% of its token slots on SST-2 (bench/RESULTS.md
section 16). Packed, each row holds several whole examples, one after the other, and:

* position ids restart at 0 for each example, token type ids are kept;
* a 4D additive mask lets each token attend only to its own example's real tokens (block-diagonal); a slot
  left over at a row's end attends only to itself, so no attention row is all-masked (no NaN in fp16);
* the encoder's hidden states are scattered back to ``[examples, batch width, hidden]`` (0 at padding), so
  pooling, heads, losses and hidden-state KD see what they see unpacked.

The row length is the batch's own width (its longest example): a packed row is never longer than an unpacked
one, so each row's attention costs no more than before and only the number of rows drops (SST-2, 2,000
examples, batch 32: 33,536 -> 29,120 token slots, 8.8% padding left; a fixed budget of 64 or 128 tokens keeps
fewer rows but more slots, 32,224 / 31,488). Rows are filled first-fit, longest example first.

Batches are right-padded (``TokenizedSplit.collate``). Evaluation stays unpacked.
"""
from __future__ import annotations

import torch

PACKABLE = ("bert",)   # model types whose encoder takes position ids and a ready 4D mask as they are


class Packed:
    """Where each real token of a right-padded ``[B, L]`` batch goes in ``[rows, L]`` packed rows."""

    def __init__(self, attention_mask: torch.Tensor):
        B, L = attention_mask.shape
        self.shape = (B, L)
        lengths = attention_mask.sum(1).tolist()
        order = sorted(range(B), key=lambda i: -lengths[i])
        fill: list[int] = []                                   # tokens used per row
        where = [(0, 0)] * B                                    # example -> (row, offset)
        for i in order:
            n = lengths[i]
            row = next((r for r, used in enumerate(fill) if used + n <= L), None)
            if row is None:
                row = len(fill)
                fill.append(0)
            where[i] = (row, fill[row])
            fill[row] += n
        self.rows = len(fill)
        dev = attention_mask.device
        src, dst, pos, seg = [], [], [], []
        for i, ((row, off), n) in enumerate(zip(where, lengths)):
            src.append(torch.arange(i * L, i * L + n))
            dst.append(torch.arange(row * L + off, row * L + off + n))
            pos.append(torch.arange(n))
            seg.append(torch.full((n,), i + 1))
        self.src, self.dst = torch.cat(src).to(dev), torch.cat(dst).to(dev)
        self._pos, self._seg = torch.cat(pos).to(dev), torch.cat(seg).to(dev)

    def pack(self, values: torch.Tensor) -> torch.Tensor:
        """A ``[B, L]`` per-token tensor -> ``[rows, L]`` (0 at the rows' unused ends)."""
        B, L = self.shape
        out = values.new_zeros(self.rows * L)
        out[self.dst] = values.reshape(-1)[self.src]
        return out.view(self.rows, L)

    def position_ids(self) -> torch.Tensor:
        out = self._pos.new_zeros(self.rows * self.shape[1])
        out[self.dst] = self._pos
        return out.view(self.rows, -1)

    def mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[rows, 1, L, L]`` additive mask: 0 within an example (and on the diagonal), the dtype's min elsewhere."""
        L = self.shape[1]
        seg = self._seg.new_zeros(self.rows * L)
        seg[self.dst] = self._seg
        seg = seg.view(self.rows, L)
        allowed = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
        allowed |= torch.eye(L, dtype=torch.bool, device=seg.device)
        zero = torch.zeros((), dtype=dtype, device=seg.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]

    def unpack(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[rows, L, H]`` -> ``[B, L, H]``, each example's tokens back in its own row, 0 at padding."""
        B, L = self.shape
        flat = hidden.reshape(self.rows * L, -1)
        out = flat.new_zeros(B * L, flat.shape[-1])
        return out.index_copy(0, self.src, flat.index_select(0, self.dst)).view(B, L, -1)


def packed_encode(encoder, *, input_ids, attention_mask, token_type_ids=None, output_hidden_states: bool = False):
    """``encoder``'s (last hidden state, hidden states or None) for the batch, computed on packed rows and
    returned per example, as the unpacked call would give them (up to float rounding; padding 0)."""
    if encoder.config.model_type not in PACKABLE:
        raise ValueError(f"pack: model type {encoder.config.model_type} is not one of {', '.join(PACKABLE)}")
    p = Packed(attention_mask)
    types = None if token_type_ids is None else p.pack(token_type_ids)
    out = encoder(input_ids=p.pack(input_ids), attention_mask=p.mask(), token_type_ids=types,
                  position_ids=p.position_ids(), output_hidden_states=output_hidden_states)
    states = tuple(p.unpack(h) for h in out.hidden_states) if output_hidden_states else None
    return p.unpack(out.last_hidden_state), states
