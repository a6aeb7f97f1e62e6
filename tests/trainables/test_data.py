"""GLUE TSV reading (classic layout quirks), examples, the tokenisation cache, dynamic padding, batching."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from trainables import data as D
from trainables.data import (ExampleStream, Examples, length_grouped_order, load_examples, read_glue_tsv,
                             tokenize_split)
from trainables.errors import UserError
from trainables.tasks import get_task

BOM = "\ufeff"


# ---------------------------------------------------------------------------------------------- fixtures

COLA_ROWS = [
    ("gj04", "1", "", "Our friends won't buy this analysis, let alone the next one we propose."),
    ("gj04", "0", "*", 'He said "go away" to the dog.'),
    ("cj99", "1", "", "The 'quote' stays as it is."),
]
SST2_ROWS = [
    ("it 's a charming and often affecting journey . ", "1"),
    ('a "so-called" comedy', "0"),
    ("unflinchingly bleak and desperate ", "0"),
    ("the acting , costumes , music , cinematography and sound are all astounding ", "1"),
]
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
MRPC_ROWS = [
    ("1", "702876", "702977", 'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting '
                              "his evidence .",
     'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his evidence .'),
    ("0", "2108705", "2108831", "Yucaipa owned Dominick 's before selling the chain to Safeway in 1998 .",
     "Yucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 billion in 1998 ."),
]
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
STSB_ROWS = [
    ("0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "A plane is taking off.",
     "An air plane is taking off.", "5.000"),
    ("1", "main-captions", "MSRvid", "2012test", "0004", "none", "none", 'A man says "hello".',
     "A man is playing a flute.", "0.760"),
    ("2", "main-captions", "MSRvid", "2012test", "0005", "none", "none", "A man is spreading cheese on a pizza.",
     "A man is spreading shredded cheese on an uncooked pizza.", "3.8"),
]
RTE_HEADER = "index\tsentence1\tsentence2\tlabel"
RTE_ROWS = [
    ("0", "No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.",
     "not_entailment"),
    ("1", 'A place of "sorrow" after Pope John Paul II died.', "Pope Benedict XVI is the new leader.", "entailment"),
    ("2", "Herceptin was already approved to treat the sickest breast cancer patients.",
     "Herceptin can be used to treat breast cancer.", "entailment"),
]


def _tsv(rows, header: str | None = None, *, bom: bool = False) -> str:
    lines = ([header] if header is not None else []) + ["\t".join(r) for r in rows]
    return (BOM if bom else "") + "\n".join(lines) + "\n"


def _write(root: Path, dir_name: str, split: str, text: str) -> Path:
    path = root / dir_name / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    root = tmp_path / "glue_data"
    for split in ("train", "dev"):
        _write(root, "CoLA", split, _tsv(COLA_ROWS))
        _write(root, "SST-2", split, _tsv(SST2_ROWS, "sentence\tlabel"))
        _write(root, "MRPC", split, _tsv(MRPC_ROWS, MRPC_HEADER, bom=True))
        _write(root, "STS-B", split, _tsv(STSB_ROWS, STSB_HEADER))
        _write(root, "RTE", split, _tsv(RTE_ROWS, RTE_HEADER))
    return root


# ---------------------------------------------------------------------------------------------- reading TSVs

@pytest.mark.parametrize("task,rows", [("cola", COLA_ROWS), ("sst2", SST2_ROWS), ("mrpc", MRPC_ROWS),
                                       ("stsb", STSB_ROWS), ("rte", RTE_ROWS)])
@pytest.mark.parametrize("split", ["train", "dev"])
def test_row_counts_texts_and_labels(glue_dir, task, rows, split):
    t = get_task(task)
    ex = load_examples(task=task, split=split, glue_dir=str(glue_dir))
    assert len(ex) == len(rows) and ex.task == t.name and ex.split == split
    assert np.array_equal(ex.ids, np.arange(len(rows)))
    lay = t.tsv
    assert ex.text_a == [r[lay.text_columns[0]] for r in rows]
    if t.is_pair:
        assert ex.text_b == [r[lay.text_columns[1]] for r in rows]
    else:
        assert ex.text_b is None
    raw = [r[lay.label_column] for r in rows]
    if t.is_regression:
        assert ex.labels.dtype == np.float32
        np.testing.assert_allclose(ex.labels, [float(x) / 5 for x in raw], rtol=0, atol=1e-6)   # BAM: / 5
    else:
        assert ex.labels.dtype == np.int64
        assert ex.labels.tolist() == [t.labels.index(x) for x in raw]


def test_label_mapping_by_task(glue_dir):
    rte = load_examples(task="rte", split="train", glue_dir=str(glue_dir))
    assert rte.labels.tolist() == [1, 0, 0]                    # entailment -> 0, not_entailment -> 1
    cola = load_examples(task="CoLA", split="dev", glue_dir=str(glue_dir))  # folder name works as a task name
    assert cola.labels.tolist() == [1, 0, 1]
    mrpc = load_examples(task="mrpc", split="train", glue_dir=str(glue_dir))
    assert mrpc.labels.tolist() == [1, 0]


def test_quotes_are_kept_verbatim(glue_dir):
    """QUOTE_NONE: a double quote is text, it neither opens a quoted field nor is stripped."""
    cola = load_examples(task="cola", split="train", glue_dir=str(glue_dir))
    assert cola.text_a[1] == 'He said "go away" to the dog.'
    sst = load_examples(task="sst2", split="train", glue_dir=str(glue_dir))
    assert sst.text_a[1] == 'a "so-called" comedy' and sst.text_a[0].endswith(" . ")   # no whitespace stripping
    mrpc = load_examples(task="mrpc", split="train", glue_dir=str(glue_dir))
    assert '" the witness "' in mrpc.text_a[0] and '" the witness "' in mrpc.text_b[0]
    stsb = load_examples(task="stsb", split="train", glue_dir=str(glue_dir))
    assert stsb.text_a[1] == 'A man says "hello".'


def test_unbalanced_quote_does_not_swallow_following_lines(tmp_path):
    rows = [("a \"open quote without end", "1"), ("second line", "0"), ("third", "1")]
    path = tmp_path / "SST-2" / "train.tsv"
    path.parent.mkdir()
    path.write_text(_tsv(rows, "sentence\tlabel"))
    ex = read_glue_tsv(path, task=get_task("sst2"), split="train")
    assert ex.text_a == [r[0] for r in rows] and ex.labels.tolist() == [1, 0, 1]


def test_mrpc_bom_does_not_break_the_header(tmp_path):
    with_bom = _write(tmp_path / "a", "MRPC", "train", _tsv(MRPC_ROWS, MRPC_HEADER, bom=True))
    without = _write(tmp_path / "b", "MRPC", "train", _tsv(MRPC_ROWS, MRPC_HEADER))
    assert with_bom.read_bytes().startswith(b"\xef\xbb\xbf")
    a = read_glue_tsv(with_bom, task=get_task("mrpc"), split="train")
    b = read_glue_tsv(without, task=get_task("mrpc"), split="train")
    assert len(a) == len(MRPC_ROWS)
    assert a.fingerprint() == b.fingerprint()
    assert not any(BOM in s for s in a.text_a + a.text_b)


def test_bom_in_headerless_file_is_stripped(tmp_path):
    """CoLA has no header: without utf-8-sig the BOM would end up inside the first data row."""
    path = _write(tmp_path, "CoLA", "train", BOM + "\t".join(("x", "1", "", "Bill left.")) + "\n")
    ex = read_glue_tsv(path, task=get_task("cola"), split="train")
    assert ex.text_a == ["Bill left."] and ex.labels.tolist() == [1]


def test_blank_trailing_lines_are_ignored(tmp_path):
    path = _write(tmp_path, "RTE", "dev", _tsv(RTE_ROWS, RTE_HEADER) + "\n\n")
    assert len(read_glue_tsv(path, task=get_task("rte"), split="dev")) == len(RTE_ROWS)


def _lines_with_bad_row(rows, header, bad_row, at: int):
    lines = ["\t".join(r) for r in rows]
    lines.insert(at, bad_row)
    return ([header] if header else []) + lines


@pytest.mark.parametrize("task,dir_name,rows,header", [
    ("rte", "RTE", RTE_ROWS, RTE_HEADER),
    ("cola", "CoLA", COLA_ROWS, None),
    ("stsb", "STS-B", STSB_ROWS, STSB_HEADER),
])
def test_wrong_column_count_names_file_and_line(tmp_path, task, dir_name, rows, header):
    t = get_task(task)
    n = t.tsv.n_columns[0]
    bad = "\t".join(["x"] * (n - 1))                             # one field short
    lines = _lines_with_bad_row(rows, header, bad, at=2)
    bad_line = lines.index(bad) + 1                              # 1-based line of the file
    path = _write(tmp_path, dir_name, "train", "\n".join(lines) + "\n")
    with pytest.raises(UserError) as e:
        read_glue_tsv(path, task=t, split="train")
    msg = str(e.value)
    assert f"{path}:{bad_line}:" in msg and f"{n - 1} columns" in msg
    assert f":{bad_line - 1}:" not in msg and f":{bad_line + 1}:" not in msg


def test_too_many_columns_and_bad_header(tmp_path):
    t = get_task("sst2")
    path = _write(tmp_path, "SST-2", "train", "sentence\tlabel\nok\t1\ntoo\tmany\t1\n")
    with pytest.raises(UserError, match=rf"{path}:3: row has 3 columns"):
        read_glue_tsv(path, task=t, split="train")
    path = _write(tmp_path, "SST-2", "dev", "sentence\tlabel\textra\nok\t1\n")
    with pytest.raises(UserError, match=rf"{path}:1: header"):
        read_glue_tsv(path, task=t, split="dev")


def test_unknown_label_names_file_line_and_label(tmp_path):
    rows = list(RTE_ROWS) + [("3", "a", "b", "contradiction")]
    path = _write(tmp_path, "RTE", "train", _tsv(rows, RTE_HEADER))
    with pytest.raises(UserError) as e:
        read_glue_tsv(path, task=get_task("rte"), split="train")
    msg = str(e.value)
    assert f"{path}:{len(rows) + 1}:" in msg and "'contradiction'" in msg and "entailment" in msg


def test_non_numeric_stsb_score(tmp_path):
    rows = list(STSB_ROWS)
    rows[1] = rows[1][:9] + ("n/a",)
    path = _write(tmp_path, "STS-B", "train", _tsv(rows, STSB_HEADER))
    with pytest.raises(UserError) as e:
        read_glue_tsv(path, task=get_task("stsb"), split="train")
    assert f"{path}:3:" in str(e.value) and "'n/a'" in str(e.value)


def test_header_only_file_has_no_rows(tmp_path):
    path = _write(tmp_path, "RTE", "train", RTE_HEADER + "\n")
    with pytest.raises(UserError, match="no data rows"):
        read_glue_tsv(path, task=get_task("rte"), split="train")


def test_missing_file_and_missing_dir(tmp_path, glue_dir):
    (glue_dir / "RTE" / "dev.tsv").unlink()
    with pytest.raises(UserError) as e:
        load_examples(task="rte", split="dev", glue_dir=str(glue_dir))
    assert str(glue_dir / "RTE" / "dev.tsv") in str(e.value)
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as e:
        load_examples(task="rte", split="train", glue_dir=str(missing))
    assert str(missing) in str(e.value) and "not found" in str(e.value)


def test_glue_dir_from_environment(glue_dir, monkeypatch):
    monkeypatch.setenv(D.GLUE_DIR_ENV, str(glue_dir))
    assert D.resolve_glue_dir(None) == str(glue_dir)
    assert D.resolve_glue_dir("/flag/wins") == "/flag/wins"
    assert len(load_examples(task="sst2", split="dev", glue_dir=None)) == len(SST2_ROWS)


@pytest.mark.parametrize("task,split", [("rte", "test"), ("rte", "dev_matched"), ("mnli", "dev"),
                                        ("syn_noisy", "validation")])
def test_unknown_split(glue_dir, task, split):
    with pytest.raises(UserError) as e:
        load_examples(task=task, split=split, glue_dir=str(glue_dir))
    assert repr(split) in str(e.value) and "train" in str(e.value)


REAL_COUNTS = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "stsb": (5749, 1500),
               "rte": (2490, 277)}


@pytest.mark.skipif(not os.environ.get(D.GLUE_DIR_ENV), reason=f"set {D.GLUE_DIR_ENV} to the real glue_data")
@pytest.mark.parametrize("task", sorted(REAL_COUNTS))
def test_real_glue_row_counts(task):
    for split, n in zip(("train", "dev"), REAL_COUNTS[task]):
        ex = load_examples(task=task, split=split, glue_dir=None)
        assert len(ex) == n, (task, split, len(ex))
        t = get_task(task)
        if t.is_regression:
            assert ex.labels.min() >= 0 and ex.labels.max() <= 5
        else:
            assert set(np.unique(ex.labels)) == set(range(t.num_outputs))


# ---------------------------------------------------------------------------------------------- Examples

def _examples(n=50, *, pair=False, seed=0) -> Examples:
    rng = np.random.default_rng(seed)
    return Examples(task="rte", split="train", ids=np.arange(n, dtype=np.int64),
                    text_a=[f"text {i}" for i in range(n)], text_b=[f"other {i}" for i in range(n)] if pair else None,
                    labels=rng.integers(0, 2, size=n).astype(np.int64))


def test_subsample_deterministic_sorted_unique():
    ex = _examples(200, pair=True)
    a = ex.subsample(max_examples=37, seed=3)
    b = ex.subsample(max_examples=37, seed=3)
    c = ex.subsample(max_examples=37, seed=4)
    assert len(a) == 37 and np.array_equal(a.ids, b.ids) and a.fingerprint() == b.fingerprint()
    assert not np.array_equal(a.ids, c.ids)
    assert np.all(np.diff(a.ids) > 0)                          # sorted, hence no duplicates
    assert len(set(a.ids.tolist())) == 37
    for j, i in enumerate(a.ids):                               # rows stay aligned
        assert a.text_a[j] == ex.text_a[i] and a.text_b[j] == ex.text_b[i] and a.labels[j] == ex.labels[i]
    assert ex.subsample(max_examples=None, seed=0) is ex
    assert ex.subsample(max_examples=500, seed=0) is ex


def test_fingerprint_sensitive_to_one_label_and_one_text():
    ex = _examples(30, pair=True)
    labels = ex.labels.copy()
    labels[17] = 1 - labels[17]
    changed = Examples(task=ex.task, split=ex.split, ids=ex.ids, text_a=ex.text_a, text_b=ex.text_b, labels=labels)
    assert changed.fingerprint() != ex.fingerprint()
    text_b = list(ex.text_b)
    text_b[3] += "!"
    changed = Examples(task=ex.task, split=ex.split, ids=ex.ids, text_a=ex.text_a, text_b=text_b, labels=ex.labels)
    assert changed.fingerprint() != ex.fingerprint()
    same = Examples(task=ex.task, split=ex.split, ids=ex.ids.copy(), text_a=list(ex.text_a), text_b=list(ex.text_b),
                    labels=ex.labels.copy())
    assert same.fingerprint() == ex.fingerprint()


# ---------------------------------------------------------------------------------------------- tokenise once

@pytest.fixture(scope="module")
def tokenizer():
    from trainables.model import load_tokenizer
    return load_tokenizer("tiny")


def _cached_folders(cache: Path) -> list[str]:
    root = cache / "tokenized"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def _fresh_tokenizer():
    from trainables.model import load_tokenizer
    return load_tokenizer("tiny")


def test_tokenize_split_caches(tmp_path, monkeypatch, glue_dir):
    """A second call (as in a later process, with a fresh tokenizer) memory-maps the cache, never re-tokenises."""
    import datasets

    cache = tmp_path / "c"
    ex = load_examples(task="rte", split="train", glue_dir=str(glue_dir))
    first = tokenize_split(ex, tokenizer=_fresh_tokenizer(), max_length=32, cache_dir=cache)
    assert len(_cached_folders(cache)) == 1

    def boom(*a, **k):
        raise AssertionError("re-tokenised a cached split")

    with monkeypatch.context() as m:
        m.setattr(datasets.Dataset, "map", boom)
        m.setattr(datasets.Dataset, "from_dict", boom)
        second = tokenize_split(ex, tokenizer=_fresh_tokenizer(), max_length=32, cache_dir=cache)
    assert len(_cached_folders(cache)) == 1
    for name in ("ids", "labels", "lengths", "input_values", "type_values", "offsets"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    assert first.fingerprint == second.fingerprint == ex.fingerprint()

    labels = ex.labels.copy()
    labels[0] = 1 - labels[0]
    other = Examples(task=ex.task, split=ex.split, ids=ex.ids, text_a=ex.text_a, text_b=ex.text_b, labels=labels)
    third = tokenize_split(other, tokenizer=_fresh_tokenizer(), max_length=32, cache_dir=cache)
    assert len(_cached_folders(cache)) == 2                     # changed data -> a new cache entry
    assert third.labels.tolist() == labels.tolist()
    tokenize_split(ex, tokenizer=_fresh_tokenizer(), max_length=16, cache_dir=cache)
    assert len(_cached_folders(cache)) == 3                     # another max length -> another entry


def test_cache_hit_reads_arrow_without_datasets(tmp_path, monkeypatch, glue_dir):
    """A cache hit is read with pyarrow alone (a trial then never imports ``datasets``): the same rows as
    ``datasets.load_from_disk``, a folder saved in several shards read whole and in order."""
    import datasets

    ex = load_examples(task="rte", split="train", glue_dir=str(glue_dir))
    first = tokenize_split(ex, tokenizer=_fresh_tokenizer(), max_length=32, cache_dir=tmp_path)
    with monkeypatch.context() as m:
        m.setattr(datasets, "load_from_disk", lambda *a, **k: pytest.fail("cache hit went through datasets"))
        second = tokenize_split(ex, tokenizer=_fresh_tokenizer(), max_length=32, cache_dir=tmp_path)
    assert np.array_equal(first.input_values, second.input_values)
    folder = tmp_path / "tokenized" / _cached_folders(tmp_path)[0]
    assert D.read_cached_table(folder).equals(datasets.load_from_disk(str(folder)).data.table)
    datasets.Dataset.from_dict({"x": list(range(10))}).save_to_disk(str(tmp_path / "two"), num_shards=2)
    assert len(list((tmp_path / "two").glob("*.arrow"))) == 2
    assert D.read_cached_table(tmp_path / "two").column("x").to_pylist() == list(range(10))


def test_tokenize_split_cache_hit_with_the_same_tokenizer_object(tmp_path, glue_dir):
    tok = _fresh_tokenizer()
    ex = load_examples(task="rte", split="train", glue_dir=str(glue_dir))
    fp_before = D.tokenizer_fingerprint(tok)
    tokenize_split(ex, tokenizer=tok, max_length=32, cache_dir=tmp_path)
    tokenize_split(ex, tokenizer=tok, max_length=32, cache_dir=tmp_path)
    assert D.tokenizer_fingerprint(tok) == fp_before
    assert len(_cached_folders(tmp_path)) == 1


def test_tokens_match_the_tokenizer_and_truncate(tmp_path, tokenizer, glue_dir):
    ex = load_examples(task="mrpc", split="train", glue_dir=str(glue_dir))
    for L in (16, 64):
        ts = tokenize_split(ex, tokenizer=tokenizer, max_length=L, cache_dir=tmp_path)
        assert np.array_equal(ts.ids, ex.ids) and np.array_equal(ts.labels, ex.labels)
        assert ts.offsets[0] == 0 and ts.offsets[-1] == len(ts.input_values) == len(ts.type_values)
        for i in range(len(ex)):
            enc = tokenizer(ex.text_a[i], ex.text_b[i], truncation=True, max_length=L, return_token_type_ids=True)
            s, e = ts.offsets[i], ts.offsets[i + 1]
            assert ts.input_values[s:e].tolist() == enc["input_ids"]
            assert ts.type_values[s:e].tolist() == enc["token_type_ids"]
            assert ts.lengths[i] == len(enc["input_ids"]) <= L
    assert ts.lengths.max() > 16                                # the long MRPC sentences were really truncated at 16


def test_large_split_spans_arrow_chunks(tokenizer):
    """2000 examples are written in several Arrow record batches; flat offsets must stay aligned."""
    ex = load_examples(task="syn_sentiment", split="train", glue_dir=None)
    ts = tokenize_split(ex, tokenizer=tokenizer, max_length=32, cache_dir=None)   # BAM_CACHE_DIR or ~/.cache
    assert len(ts) == len(ex) == 2000 and np.array_equal(ts.labels, ex.labels)
    assert int(ts.lengths.sum()) == len(ts.input_values)
    for i in (0, 1, 999, 1000, 1001, 1500, 1999):
        enc = tokenizer(ex.text_a[i], truncation=True, max_length=32)
        assert ts.input_values[ts.offsets[i]:ts.offsets[i + 1]].tolist() == enc["input_ids"], i


def test_collate_pads_to_the_batch_longest(tmp_path, tokenizer, glue_dir):
    ex = load_examples(task="stsb", split="train", glue_dir=str(glue_dir))
    ts = tokenize_split(ex, tokenizer=tokenizer, max_length=128, cache_dir=tmp_path)
    assert len(set(ts.lengths.tolist())) > 1
    for idx in (np.array([0, 1, 2]), np.array([2, 0]), np.array([1])):
        b = ts.collate(idx)
        lens = ts.lengths[idx]
        assert tuple(b["input_ids"].shape) == (len(idx), int(lens.max()))
        assert b["attention_mask"].sum(1).tolist() == lens.tolist()
        assert b["index"].tolist() == idx.tolist()
        np.testing.assert_allclose(b["labels"].numpy(), ex.labels[idx])
        for row, i in enumerate(idx):
            n = lens[row]
            s = ts.offsets[i]
            assert b["input_ids"][row, :n].tolist() == ts.input_values[s:s + n].tolist()
            assert (b["input_ids"][row, n:] == 0).all() and (b["attention_mask"][row, n:] == 0).all()
            assert (b["token_type_ids"][row, n:] == 0).all()
            types = b["token_type_ids"][row, :n].tolist()       # pair: 0s, then 1s for the second sentence
            assert types == sorted(types) and types[0] == 0 and types[-1] == 1
    shortest = int(np.argmin(ts.lengths))
    assert ts.collate(np.array([shortest]))["input_ids"].shape[1] == ts.lengths[shortest] < ts.lengths.max()


# ---------------------------------------------------------------------------------------------- batching

def _padded_tokens(order: np.ndarray, lengths: np.ndarray, batch_size: int) -> int:
    total = 0
    for s in range(0, len(order), batch_size):
        b = lengths[order[s:s + batch_size]]
        total += int(b.max()) * len(b) - int(b.sum())
    return total


@pytest.mark.parametrize("n,batch_size,mega", [(1000, 16, 50), (2000, 8, 4), (5, 16, 50), (1, 1, 1)])
def test_length_grouped_order_is_a_permutation_with_less_padding(n, batch_size, mega):
    rng = np.random.default_rng(123)
    lengths = rng.integers(5, 120, size=n)
    order = length_grouped_order(lengths, batch_size=batch_size, rng=np.random.default_rng(1), mega=mega)
    assert len(order) == n and np.array_equal(np.sort(order), np.arange(n))
    if n >= 100:
        grouped = _padded_tokens(order, lengths, batch_size)
        random = _padded_tokens(np.random.default_rng(2).permutation(n), lengths, batch_size)
        assert grouped < 0.5 * random, (grouped, random)
        again = length_grouped_order(lengths, batch_size=batch_size, rng=np.random.default_rng(1), mega=mega)
        assert np.array_equal(order, again)                      # a pure function of the rng


def test_example_stream_passes_are_permutations():
    lengths = np.random.default_rng(0).integers(3, 40, size=53)
    s = ExampleStream(lengths, batch_size=4, seed=9)
    first = s.take(53)
    second = s.take(53)
    assert np.array_equal(np.sort(first), np.arange(53)) and np.array_equal(np.sort(second), np.arange(53))
    assert not np.array_equal(first, second)                    # a new order per pass
    assert s.state() == {"epoch": 1, "cursor": 53}


@pytest.mark.parametrize("before", [0, 7, 53, 60, 150])
def test_example_stream_resumes_identically(before):
    lengths = np.random.default_rng(1).integers(3, 40, size=53)
    a = ExampleStream(lengths, batch_size=4, seed=5)
    for k in (before // 3, before - before // 3):
        if k:
            assert len(a.take(k)) == k
    state = dict(a.state())
    b = ExampleStream(lengths, batch_size=4, seed=5)
    b.load_state(state)
    for k in (1, 10, 53, 77):
        assert np.array_equal(a.take(k), b.take(k))
    c = ExampleStream(lengths, batch_size=4, seed=6)
    c.load_state(state)
    assert not np.array_equal(a.take(53), c.take(53))           # the seed matters


def test_a_stream_counts_what_it_gave_over_passes_and_a_restore():
    from trainables.data import ExampleStream
    s = ExampleStream(np.arange(10) + 3, batch_size=4, seed=0)
    s.take(4)
    s.take(8)                                        # crosses into the 2nd pass
    assert s.seen == 12 and s.epoch == 1
    t = ExampleStream(np.arange(10) + 3, batch_size=4, seed=0)
    t.load_state(s.state())
    assert t.seen == 12
