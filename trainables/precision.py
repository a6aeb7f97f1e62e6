"""Mixed precision (PRECISIONS): a recipe's ``precision`` -> the autocast dtype on a device (None: fp32).

torch is imported only when called, so the recipe schema reads the names without importing torch.
"""
from __future__ import annotations

from .registry import choose


def _auto(device) -> str | None:
    """bf16 where the hardware runs it natively (CPU with AMX/AVX512-BF16, GPUs with bf16), else fp32/fp16."""
    import torch
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    native = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() or \
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return "bfloat16" if native else None


# name -> function(device) -> the name of a torch dtype, or None for no autocast
PRECISIONS = {"auto": _auto, "bf16": lambda device: "bfloat16", "fp16": lambda device: "float16",
              "fp32": lambda device: None}


def autocast_dtype(precision: str, device):
    """The ``torch.dtype`` to autocast to on ``device`` (a ``torch.device``), or None: fp32 throughout."""
    import torch
    name = choose(PRECISIONS, precision, "precision")(device)
    return None if name is None else getattr(torch, name)
