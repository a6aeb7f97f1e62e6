"""GLUE data: TSV folder | hub -> examples -> tokenised once into the Arrow cache -> length-grouped batches.

The classic ``glue_data/<TASK>/{train,dev}.tsv`` files are read with ``csv.QUOTE_NONE`` (quotes are text),
``utf-8-sig`` (MRPC starts with a byte-order mark), and per-task column layouts (``tasks.TsvLayout``).
Every malformed row is reported with its file and line before anything is trained.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import UserError
from .tasks import Task, get_task

if TYPE_CHECKING:
    from .recipe import Recipe

csv.field_size_limit(sys.maxsize)

HUB_DATASET = "nyu-mll/glue"
GLUE_DIR_ENV = "BAM_GLUE_DIR"


@dataclass(frozen=True)
class Examples:
    """One split of one task, in memory: ids (row numbers or hub ``idx``), texts and labels."""
    task: str
    split: str
    ids: np.ndarray                   # int64
    text_a: list[str]
    text_b: list[str] | None
    labels: np.ndarray                # int64 classes or float32 scores

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """Content hash of ids, texts and labels: a changed data file changes it."""
        h = hashlib.sha256()
        h.update(f"{self.task}\0{self.split}\0{len(self)}\0".encode())
        h.update(np.ascontiguousarray(self.ids, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.labels).astype(np.float64).tobytes())
        for t in self.text_a:
            h.update(t.encode()); h.update(b"\0")
        for t in self.text_b or ():
            h.update(t.encode()); h.update(b"\0")
        return h.hexdigest()

    def subsample(self, *, max_examples: int | None, seed: int) -> "Examples":
        """A fixed-seed random subset (kept in file order), or self when it is small enough."""
        if not max_examples or len(self) <= max_examples:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), size=max_examples, replace=False))
        return Examples(task=self.task, split=self.split, ids=self.ids[keep],
                        text_a=[self.text_a[i] for i in keep],
                        text_b=None if self.text_b is None else [self.text_b[i] for i in keep],
                        labels=self.labels[keep])


# ---------------------------------------------------------------------------------------------- sources

def resolve_glue_dir(glue_dir: str | None) -> str | None:
    """The flag wins, then ``BAM_GLUE_DIR``; None means the hub."""
    return glue_dir or os.environ.get(GLUE_DIR_ENV) or None


def _label_value(task: Task, raw: str, where: str) -> int | float:
    raw = raw.strip()
    if task.labels is None:
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"{where}: score {raw!r} is not a number") from None
        if not math.isfinite(value):                  # a "nan" score would turn the loss into NaN mid-training
            raise UserError(f"{where}: score {raw!r} is not a finite number")
        lo, hi = task.score_range
        if not lo <= value <= hi:                     # mapped to [0, 1]: a 7.5 would be a target of 1.5
            raise UserError(f"{where}: score {raw!r} is outside {task.dir_name}'s range {lo:g} to {hi:g}")
        return value
    if raw not in task.labels:
        raise UserError(f"{where}: label {raw!r} is not one of {', '.join(task.labels)}")
    return task.labels.index(raw)


def read_glue_tsv(path: str | Path, *, task: Task, split: str) -> Examples:
    """Read one classic GLUE TSV file; errors name the file and the 1-based line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected the classic glue_data layout <dir>/{task.dir_name}/{split}.tsv)")
    lay = task.tsv
    ids, a, b, labels = [], [], [], []
    try:
        _read_rows(path, task=task, lay=lay, out=(ids, a, b, labels))
    except UnicodeDecodeError:
        raise UserError(f"{path}:{_first_undecodable_line(path)}: not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if not ids:
        raise UserError(f"{path}: no data rows")
    dtype = np.float32 if task.is_regression else np.int64
    return Examples(task=task.name, split=split, ids=np.asarray(ids, dtype=np.int64), text_a=a,
                    text_b=b if task.is_pair else None, labels=np.asarray(labels, dtype=dtype))


def _first_undecodable_line(path: Path) -> int:
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return lineno
    return 1


def _read_rows(path: Path, *, task: Task, lay, out: tuple[list, list, list, list]) -> None:
    ids, a, b, labels = out
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for lineno, row in enumerate(reader, start=1):
            if lay.header and lineno == 1:
                if len(row) not in lay.n_columns:
                    raise UserError(f"{path}:1: header has {len(row)} columns, {task.dir_name} expects "
                                    f"{' or '.join(map(str, lay.n_columns))}")
                _check_header(path, row, task=task)
                continue
            if not row or row == [""]:
                continue                                  # a trailing blank line
            where = f"{path}:{lineno}"
            if len(row) not in lay.n_columns:
                raise UserError(f"{where}: row has {len(row)} columns, {task.dir_name} expects "
                                f"{' or '.join(map(str, lay.n_columns))}")
            labels.append(_label_value(task, row[lay.label_column], where))
            ids.append(len(ids))
            a.append(row[lay.text_columns[0]])
            if task.is_pair:
                b.append(row[lay.text_columns[1]])


# the names of the columns read (text columns, then the label's) in the header of each classic glue_data file
GLUE_HEADER_NAMES = {"SST-2": ("sentence", "label"), "MRPC": ("#1 String", "#2 String", "Quality"),
                     "STS-B": ("sentence1", "sentence2", "score"), "QQP": ("question1", "question2", "is_duplicate"),
                     "MNLI": ("sentence1", "sentence2", "gold_label"), "QNLI": ("question", "sentence", "label"),
                     "RTE": ("sentence1", "sentence2", "label"), "WNLI": ("sentence1", "sentence2", "label")}


def _check_header(path: Path, row: list[str], *, task: Task) -> None:
    """The header's text, not only its column count: a file without its header line would lose its first
    example to it, and a file of another task would be read as this one."""
    want = GLUE_HEADER_NAMES.get(task.dir_name)
    if want is None:
        return
    lay = task.tsv
    for col, name in zip((*lay.text_columns, lay.label_column), want):
        got = row[col].strip()
        if got.lower() != name.lower():
            raise UserError(f"{path}:1: header column {col % len(row) + 1} is {got[:40]!r}, {task.dir_name} expects "
                            f"{name!r} (the classic glue_data header line; a file without it would lose its first row)")


def check_dev_labels(ex: Examples, *, max_examples: int | None, seed: int, glue_dir: str | None) -> None:
    """The dev set a trial evaluates (``max_examples`` of it, as ``load_task_data`` subsamples) must hold two
    gold values or more: with one, MCC and the correlations are 0 and accuracy only counts that value, whatever
    the model, so the score cannot rank trials. Refused (not a warning)."""
    sub = ex.subsample(max_examples=max_examples, seed=seed)
    values = np.unique(sub.labels)
    if len(values) != 1:
        return
    from . import synthetic
    task, root = get_task(ex.task), resolve_glue_dir(glue_dir)
    where = (f"{Path(root) / task.dir_name / f'{ex.split}.tsv'}" if root and not synthetic.is_synthetic(task.name)
             else f"task {task.name} {ex.split}")
    gold = repr(task.labels[int(values[0])]) if task.labels else f"{values[0]:g} (on the [0, 1] scale)"
    cut = f" (the {len(sub)} kept by data.max_dev_examples)" if len(sub) < len(ex) else ""
    raise UserError(f"{where}: every dev example{cut} has the gold value {gold}: its score cannot rank models "
                    "(MCC and correlations are 0, accuracy counts that value only); use a dev set with two or more")


def load_hub(*, task: Task, split: str) -> Examples:  # pragma: no cover - needs the network
    """``nyu-mll/glue`` from the Hugging Face hub (users online; unreachable on offline machines)."""
    import datasets

    hub_split = "train" if split == "train" else task.hub_dev_splits[task.dev_splits.index(split)]
    try:
        ds = datasets.load_dataset(HUB_DATASET, task.hub_config, split=hub_split)
    except Exception as e:  # noqa: BLE001 - turn any hub failure into one clear line
        raise UserError(f"could not load {HUB_DATASET}/{task.hub_config} from the hub ({type(e).__name__}); "
                        f"offline? pass --glue-dir or set {GLUE_DIR_ENV}") from None
    cols = task.hub_text_columns
    labels = np.asarray(ds["label"], dtype=np.float32 if task.is_regression else np.int64)
    return Examples(task=task.name, split=split, ids=np.asarray(ds["idx"], dtype=np.int64),
                    text_a=list(ds[cols[0]]), text_b=list(ds[cols[1]]) if len(cols) > 1 else None,
                    labels=labels)


def load_examples(*, task: str, split: str, glue_dir: str | None) -> Examples:
    """One split of one task from the GLUE folder when given (flag or env), else from the hub.

    ``split`` is ``train`` or one of the task's dev splits (``dev``; MNLI: ``dev_matched``/``dev_mismatched``).
    """
    t = get_task(task)
    if split != "train" and split not in t.dev_splits:
        raise UserError(f"task {t.name} has no split {split!r}; it has train, {', '.join(t.dev_splits)}")
    from . import synthetic
    if synthetic.is_synthetic(t.name):
        return unit_scores(synthetic.load_examples(task=t.name, split=split), t)
    glue_dir = resolve_glue_dir(glue_dir)
    if glue_dir is None:
        return unit_scores(load_hub(task=t, split=split), t)
    root = Path(glue_dir)
    if not root.is_dir():
        raise UserError(f"{root}: GLUE directory not found (--glue-dir / {GLUE_DIR_ENV})")
    return unit_scores(read_glue_tsv(root / t.dir_name / f"{split}.tsv", task=t, split=split), t)


def unit_scores(ex: Examples, task: Task) -> Examples:
    """Regression scores mapped from ``task.score_range`` to [0, 1], the targets BAM trains on
    (``RegressionTask._add_features``: ``(label - min_value) / max_value``, STS-B 0 and 5); classes unchanged.

    Every model of the task (teacher, student, soft labels) then predicts on that scale, and the metrics
    (Pearson, Spearman) are the same on either scale. The data fingerprint changes with it, so teacher
    predictions made on the 0-5 scale are never matched to these labels."""
    if not task.is_regression:
        return ex
    lo, hi = task.score_range
    return replace(ex, labels=((ex.labels - lo) / (hi - lo)).astype(np.float32))


# ---------------------------------------------------------------------------------------------- tokenise once

def tokenizer_fingerprint(tokenizer) -> str:
    """Content hash of a fast tokenizer (vocabulary, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)                 # call-time state, not the tokenizer's identity
        spec.pop("padding", None)
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("BAM_CACHE_DIR") or Path.home() / ".cache" / "bam-search")


@dataclass
class TokenizedSplit:
    """A tokenised split as flat arrays (memory-mapped from the Arrow cache): no per-step tokenising."""
    task: str
    split: str
    ids: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray               # tokens per example (with [CLS]/[SEP])
    input_values: np.ndarray          # all input ids, concatenated
    type_values: np.ndarray           # all token type ids, concatenated
    offsets: np.ndarray               # start of example i in the flat arrays; len = N + 1
    fingerprint: str                  # of the examples (not of the tokens)

    def __len__(self) -> int:
        return len(self.ids)

    def collate(self, indices: np.ndarray, *, pad_id: int = 0) -> dict:
        """Pad to the longest example of this batch only (dynamic padding)."""
        import torch

        idx = np.asarray(indices)
        lens = self.lengths[idx]
        width = int(lens.max())
        input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        types = np.zeros((len(idx), width), dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, (i, n) in enumerate(zip(idx, lens)):
            s = self.offsets[i]
            input_ids[row, :n] = self.input_values[s:s + n]
            types[row, :n] = self.type_values[s:s + n]
            mask[row, :n] = 1
        return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask),
                "token_type_ids": torch.from_numpy(types), "labels": torch.from_numpy(self.labels[idx]),
                "index": torch.from_numpy(idx.astype(np.int64))}


def _flat(column) -> tuple[np.ndarray, np.ndarray]:
    arr = column.combine_chunks()
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    return values, offsets - offsets[0]


def read_cached_table(folder: Path):
    """A ``Dataset.save_to_disk`` folder as one memory-mapped pyarrow table, read with pyarrow alone (already
    imported by Ray): a trial whose tokenisation is cached never imports ``datasets``."""
    import pyarrow as pa
    files = json.loads((folder / "state.json").read_text())["_data_files"]
    tables = [pa.ipc.open_stream(pa.memory_map(str(folder / f["filename"]))).read_all() for f in files]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def tokenize_split(examples: Examples, *, tokenizer, max_length: int, cache_dir: str | Path | None = None,
                   ) -> TokenizedSplit:
    """Tokenise once per (tokenizer, max length, task, split, data fingerprint); later calls memory-map it."""
    fp = examples.fingerprint()
    key = f"{examples.task}-{examples.split}-L{max_length}-{tokenizer_fingerprint(tokenizer)}-{fp[:16]}"
    root = Path(cache_dir or default_cache_dir()) / "tokenized"
    target = root / key
    if not (target / "dataset_info.json").exists():
        import datasets                                     # only to write the cache: ~1-2 s of imports
        root.mkdir(parents=True, exist_ok=True)
        columns = {"ids": examples.ids, "text_a": examples.text_a, "labels": examples.labels}
        if examples.text_b is not None:
            columns["text_b"] = examples.text_b
        ds = datasets.Dataset.from_dict(columns)

        def encode(batch):
            args = (batch["text_a"], batch["text_b"]) if "text_b" in batch else (batch["text_a"],)
            enc = tokenizer(*args, truncation=True, max_length=max_length, return_token_type_ids=True)
            return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}

        ds = ds.map(encode, batched=True, batch_size=1000,
                    remove_columns=[c for c in ("text_a", "text_b") if c in columns],
                    load_from_cache_file=False, desc=None)
        tmp = root / f".{key}.{uuid.uuid4().hex}"
        ds.save_to_disk(str(tmp))
        try:
            os.rename(tmp, target)                          # atomic: readers see all or nothing
        except OSError:                                     # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    table = read_cached_table(target)                       # memory-mapped Arrow
    input_values, offsets = _flat(table.column("input_ids"))
    type_values, _ = _flat(table.column("token_type_ids"))
    return TokenizedSplit(task=examples.task, split=examples.split,
                          ids=table.column("ids").to_numpy(), labels=table.column("labels").to_numpy(),
                          lengths=np.diff(offsets), input_values=input_values, type_values=type_values,
                          offsets=offsets, fingerprint=fp)


# ---------------------------------------------------------------------------------------------- batching

def length_grouped_order(lengths: np.ndarray, *, batch_size: int, rng: np.random.Generator,
                         mega: int = 50) -> np.ndarray:
    """A permutation of all examples in which neighbours have similar lengths.

    Shuffle, cut into chunks of ``batch_size * mega``, sort each chunk by length, cut into batches, shuffle
    the batches. Every example appears exactly once; batches pad little.
    """
    n = len(lengths)
    perm = rng.permutation(n)
    chunk = max(1, batch_size * mega)
    blocks = []
    for s in range(0, n, chunk):
        part = perm[s:s + chunk]
        part = part[np.argsort(-lengths[part], kind="stable")]
        blocks.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    order = rng.permutation(len(blocks))
    return np.concatenate([blocks[i] for i in order]) if blocks else perm


def eval_batches(lengths: np.ndarray, *, batch_size: int) -> list[np.ndarray]:
    """Evaluation batches sorted by length (no shuffling needed)."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class ExampleStream:
    """Endless length-grouped passes over one task's training set; its position is two integers.

    The order of pass ``e`` is a pure function of (seed, e), so a checkpoint needs only (epoch, cursor).
    """

    def __init__(self, lengths: np.ndarray, *, batch_size: int, seed: int):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.cursor = 0
        self._order = self._make(0)

    def _make(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        return length_grouped_order(self.lengths, batch_size=self.batch_size, rng=rng)

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._make(self.epoch)
            n = min(k, len(self._order) - self.cursor)
            out.append(self._order[self.cursor:self.cursor + n])
            self.cursor += n
            k -= n
        return np.concatenate(out)

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    @property
    def seen(self) -> int:
        """Examples taken so far (over every pass): what the encoder has seen of this task."""
        return self.epoch * len(self.lengths) + self.cursor

    def load_state(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._make(self.epoch)


def load_task_data(recipe: Recipe, *, tokenizer, cache_dir: str | None) -> dict[str, TaskData]:
    d = recipe.data
    out = {}
    for name in recipe.tasks:
        task = get_task(name)
        train = load_examples(task=name, split="train", glue_dir=d.glue_dir)
        train = train.subsample(max_examples=d.max_train_examples, seed=d.data_seed)
        devs = {}
        for split in task.dev_splits:
            ex = load_examples(task=name, split=split, glue_dir=d.glue_dir)
            devs[split] = tokenize_split(ex.subsample(max_examples=d.max_dev_examples, seed=d.data_seed),
                                         tokenizer=tokenizer, max_length=d.max_length, cache_dir=cache_dir)
        out[name] = TaskData(task=task, train=tokenize_split(train, tokenizer=tokenizer, max_length=d.max_length,
                                                             cache_dir=cache_dir), dev=devs)
    return out


@dataclass
class TaskData:
    task: Task
    train: TokenizedSplit
    dev: dict[str, TokenizedSplit]
    teacher: np.ndarray | None = None        # train-set predictions aligned with train.ids
