"""The built-in synthetic benchmark: deterministic, well-formed, noisy where documented, and learnable."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from scipy.stats import pearsonr
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, matthews_corrcoef

from trainables.data import Examples
from trainables.errors import UserError
from trainables.synthetic import (NOISY_FLIP_RATE, SIZES, SYNTHETIC_TASKS, VOCABULARY, is_synthetic,
                                  load_examples, true_label)
from trainables.tasks import TASKS, all_tasks, get_task, parse_tasks

NAMES = tuple(SYNTHETIC_TASKS)
SPLITS = ("train", "dev")
_CACHE: dict[tuple[str, str], Examples] = {}


def examples(task: str, split: str) -> Examples:
    if (task, split) not in _CACHE:
        _CACHE[task, split] = load_examples(task=task, split=split)
    return _CACHE[task, split]


def test_registry_shape():
    assert len(NAMES) >= 4 and all(n.startswith("syn_") for n in NAMES)
    specs = SYNTHETIC_TASKS.values()
    assert sum(t.is_regression for t in specs) == 1
    assert {t.num_outputs for t in specs if not t.is_regression} >= {2, 3}
    assert any(t.is_pair for t in specs) and any(not t.is_pair for t in specs)
    for name, t in SYNTHETIC_TASKS.items():
        assert t.name == t.dir_name == t.hub_config == name and t.dev_splits == ("dev",)
        assert t.primary == "_".join(t.metrics)
        assert set(t.metrics) <= {"accuracy", "f1", "mcc", "pearson", "spearman"}
        assert ("f1" not in t.metrics) or t.num_outputs == 2
    assert len({SIZES[n][0] for n in NAMES}) == len(NAMES)       # different sizes


def test_is_synthetic_and_get_task():
    assert all(is_synthetic(n) for n in NAMES)
    assert not is_synthetic("rte") and not is_synthetic("syn_nope")
    assert get_task("syn_noisy") is SYNTHETIC_TASKS["syn_noisy"]
    assert get_task(" SYN_Sentiment ") is SYNTHETIC_TASKS["syn_sentiment"]
    assert get_task("SST-2") is TASKS["sst2"]
    assert parse_tasks("rte,syn_pairmatch") == ("rte", "syn_pairmatch")
    assert set(all_tasks()) == set(TASKS) | set(SYNTHETIC_TASKS)


def test_data_load_examples_dispatches_to_synthetic():
    from trainables import data
    ex = data.load_examples(task="syn_similarity", split="dev", glue_dir="/nonexistent/glue")
    want = data.unit_scores(examples("syn_similarity", "dev"), get_task("syn_similarity"))   # scores / 5 (BAM)
    assert ex.fingerprint() == want.fingerprint()


def test_unknown_split_and_task_are_user_errors():
    with pytest.raises(UserError, match="no split"):
        load_examples(task="syn_noisy", split="test")
    with pytest.raises(UserError):
        load_examples(task="rte", split="train")


@pytest.mark.parametrize("task", NAMES)
def test_deterministic(task):
    for split in SPLITS:
        a, b = load_examples(task=task, split=split), load_examples(task=task, split=split)
        assert a.text_a == b.text_a and a.text_b == b.text_b
        assert a.labels.tobytes() == b.labels.tobytes() and a.ids.tobytes() == b.ids.tobytes()
        assert a.fingerprint() == b.fingerprint()
    assert examples(task, "train").fingerprint() != examples(task, "dev").fingerprint()


@pytest.mark.parametrize("task", NAMES)
def test_shapes_dtypes_and_labels(task):
    spec = SYNTHETIC_TASKS[task]
    for split, n in zip(SPLITS, SIZES[task]):
        ex = examples(task, split)
        assert len(ex) == n and ex.task == task and ex.split == split
        assert 100 <= n <= 2000
        assert ex.ids.dtype == np.int64 and np.array_equal(ex.ids, np.arange(n))
        assert len(ex.text_a) == n
        assert (ex.text_b is not None) == spec.is_pair and (ex.text_b is None or len(ex.text_b) == n)
        if spec.is_regression:
            assert ex.labels.dtype == np.float32
            assert ex.labels.min() >= 0.0 and ex.labels.max() <= 5.0 and ex.labels.std() > 1.0
        else:
            assert ex.labels.dtype == np.int64
            counts = np.bincount(ex.labels, minlength=spec.num_outputs)
            assert len(counts) == spec.num_outputs
            assert counts.min() >= 0.15 * n, counts


@pytest.mark.parametrize("task", NAMES)
def test_text_uses_only_vocabulary(task):
    vocab = set(VOCABULARY)
    for split in SPLITS:
        ex = examples(task, split)
        for text in ex.text_a + (ex.text_b or []):
            assert text and text == " ".join(text.split()), repr(text)
            assert set(text.split()) <= vocab, set(text.split()) - vocab


def test_vocabulary_is_small_lowercase_and_unique():
    assert len(VOCABULARY) == len(set(VOCABULARY)) and 50 <= len(VOCABULARY) <= 400
    assert all(w.isascii() and w.isalpha() and w.islower() for w in VOCABULARY)


def _rule_labels(ex: Examples) -> np.ndarray:
    b = ex.text_b or [None] * len(ex)
    return np.asarray([true_label(ex.task, a, bb) for a, bb in zip(ex.text_a, b)])


@pytest.mark.parametrize("task", NAMES)
def test_dev_labels_are_clean(task):
    ex = examples(task, "dev")
    np.testing.assert_allclose(ex.labels, _rule_labels(ex).astype(np.float32), rtol=0, atol=1e-6)


def test_noise_rates_on_train():
    noisy = examples("syn_noisy", "train")
    rate = float(np.mean(noisy.labels != _rule_labels(noisy)))
    assert abs(rate - NOISY_FLIP_RATE) < 0.02, rate
    for task in ("syn_sentiment", "syn_pairmatch"):             # the large tasks are clean
        ex = examples(task, "train")
        assert np.array_equal(ex.labels, _rule_labels(ex))
    sim = examples("syn_similarity", "train")
    err = np.abs(sim.labels - _rule_labels(sim))
    assert 0.05 < err.mean() < 0.5                              # mild annotator noise only


def test_rules_on_hand_written_examples():
    assert true_label("syn_sentiment", "the film was good") == 1
    assert true_label("syn_sentiment", "the film was not good") == 0
    assert true_label("syn_sentiment", "the film was good but the song was not very dull") == 1
    assert true_label("syn_sentiment", "the film was not bad but the song was awful") == 0
    assert true_label("syn_pairmatch", "the river faces a bridge", "a bridge is near the river") == 1
    assert true_label("syn_pairmatch", "the river faces a bridge", "a bridge is near the lake") == 0
    assert true_label("syn_similarity", "the river and a lake", "a lake with the river") == 5.0
    assert true_label("syn_similarity", "the river and a lake", "a hill with the river") == pytest.approx(5 / 3)
    assert true_label("syn_noisy", "we saw a cat today") == 0
    assert true_label("syn_noisy", "they found the cake") == 1
    with pytest.raises(UserError):
        true_label("rte", "x")


def _features(train: Examples, ex: Examples, *, ngrams: int):
    """Single sentences: binary word n-grams. Pairs: words of a, words of b, and words in both (overlap)."""
    if train.text_b is None:
        vec = CountVectorizer(ngram_range=(1, ngrams), binary=True, token_pattern=r"[a-z]+").fit(train.text_a)
        return vec.transform(ex.text_a)
    vec = CountVectorizer(vocabulary=VOCABULARY, binary=True, token_pattern=r"[a-z]+")
    a, b = vec.transform(ex.text_a), vec.transform(ex.text_b)
    return sparse.hstack([a, b, a.multiply(b)]).tocsr()


def _linear_dev_score(task: str, *, ngrams: int = 3) -> float:
    train, dev = examples(task, "train"), examples(task, "dev")
    x_train, x_dev = _features(train, train, ngrams=ngrams), _features(train, dev, ngrams=ngrams)
    if SYNTHETIC_TASKS[task].is_regression:
        return float(pearsonr(Ridge(alpha=1.0).fit(x_train, train.labels).predict(x_dev), dev.labels)[0])
    pred = LogisticRegression(C=1.0, max_iter=1000).fit(x_train, train.labels).predict(x_dev)
    if task == "syn_noisy":
        return float(matthews_corrcoef(dev.labels, pred))
    return float(accuracy_score(dev.labels, pred))


@pytest.mark.parametrize("task,floor", [("syn_sentiment", 0.75), ("syn_pairmatch", 0.75),
                                        ("syn_similarity", 0.6), ("syn_noisy", 0.6)])
def test_rules_are_learnable_by_a_linear_model(task, floor):
    """Accuracy (chance 0.5), Pearson r (chance 0) or MCC (chance 0) on clean dev, fitted on noisy train."""
    score = _linear_dev_score(task)
    assert score > floor, (task, score)


def test_sentiment_is_compositional():
    """Negation flips polarity: a bag of single words stays near chance, n-grams that see "not" do not."""
    assert _linear_dev_score("syn_sentiment", ngrams=1) < 0.6
