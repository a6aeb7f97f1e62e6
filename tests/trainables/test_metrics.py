"""compute_metrics against direct scikit-learn / scipy calls; the GLUE average."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from trainables.metrics import compute_metrics, glue_average
from trainables.tasks import TASKS, get_task


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_classes", [2, 3])
def test_classification_metrics_match_sklearn(seed, n_classes):
    rng = np.random.default_rng(seed)
    n = 97
    labels = rng.integers(0, n_classes, size=n)
    logits = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[labels] * rng.random((n, 1))
    pred = logits.argmax(-1)
    out = compute_metrics(metrics=("mcc", "accuracy"), predictions=logits, labels=labels)
    assert out["mcc"] == pytest.approx(100 * matthews_corrcoef(labels, pred), abs=1e-9)
    assert out["accuracy"] == pytest.approx(100 * accuracy_score(labels, pred), abs=1e-9)
    assert out["score"] == pytest.approx((out["mcc"] + out["accuracy"]) / 2)
    assert set(out) == {"mcc", "accuracy", "score"}
    if n_classes == 2:
        out = compute_metrics(metrics=("accuracy", "f1"), predictions=logits, labels=labels)
        assert out["f1"] == pytest.approx(100 * f1_score(labels, pred), abs=1e-9)
        assert out["score"] == pytest.approx((out["f1"] + 100 * accuracy_score(labels, pred)) / 2)


@pytest.mark.parametrize("seed", range(5))
def test_regression_metrics_match_scipy(seed):
    rng = np.random.default_rng(seed)
    gold = rng.uniform(0, 5, size=80)
    pred = gold + rng.normal(scale=1.0 + seed, size=80)
    p, s = pearsonr(pred, gold)[0], spearmanr(pred, gold)[0]
    for shape in ((80,), (80, 1)):
        out = compute_metrics(metrics=("pearson", "spearman"), predictions=pred.reshape(shape).astype(np.float32),
                              labels=gold.astype(np.float32))
        assert out["pearson"] == pytest.approx(100 * p, abs=1e-3)
        assert out["spearman"] == pytest.approx(100 * s, abs=1e-3)
        assert out["score"] == pytest.approx(50 * (p + s), abs=1e-3)


@pytest.mark.parametrize("seed", range(4))
def test_ties_and_degenerate_cases_match_the_libraries(seed):
    """STS-B's gold scores repeat (ties share their mean rank); predictions may miss a class entirely."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 6, size=150) / 1.0                    # 6 distinct values: many ties
    pred = np.round(gold + rng.normal(scale=1.5, size=150))      # ties on the predicted side too
    out = compute_metrics(metrics=("pearson", "spearman"), predictions=pred, labels=gold)
    assert out["spearman"] == pytest.approx(100 * spearmanr(pred, gold)[0], abs=1e-9)
    assert out["pearson"] == pytest.approx(100 * pearsonr(pred, gold)[0], abs=1e-9)
    labels = rng.integers(0, 3, size=60)
    classes = np.where(labels == 2, 1, labels) if seed % 2 else rng.integers(0, 2, size=60)   # class 2 never predicted
    out = compute_metrics(metrics=("mcc",), predictions=classes, labels=labels)
    assert out["mcc"] == pytest.approx(100 * matthews_corrcoef(labels, classes), abs=1e-9)
    neg = np.zeros(20, dtype=int)                                 # no positive anywhere: F1 0, MCC 0
    out = compute_metrics(metrics=("f1", "mcc"), predictions=neg, labels=neg)
    assert out["f1"] == 100 * f1_score(neg, neg, zero_division=0) == 0
    assert out["mcc"] == 100 * matthews_corrcoef(neg, neg) == 0


def test_logits_are_argmaxed_and_class_ids_accepted():
    labels = np.array([0, 1, 1, 0, 1])
    logits = np.array([[2.0, -1.0], [0.1, 0.2], [-3.0, 3.0], [0.5, 0.4], [1.0, 0.0]])   # argmax 0 1 1 0 0
    out = compute_metrics(metrics=("accuracy",), predictions=logits, labels=labels)
    assert out["accuracy"] == pytest.approx(80.0)
    ids = compute_metrics(metrics=("accuracy",), predictions=logits.argmax(-1), labels=labels)
    assert ids == out
    # accuracy on logits must not depend on the logits' scale or shift
    shifted = compute_metrics(metrics=("accuracy",), predictions=10 * logits - 3, labels=labels)
    assert shifted == out


def test_constant_predictions_give_zero_not_nan():
    gold = np.linspace(0, 5, 20)
    out = compute_metrics(metrics=("pearson", "spearman"), predictions=np.full(20, 2.5), labels=gold)
    assert out == {"pearson": 0.0, "spearman": 0.0, "score": 0.0}
    out = compute_metrics(metrics=("pearson", "spearman"), predictions=gold, labels=np.full(20, 1.0))
    assert not any(math.isnan(v) for v in out.values()) and out["score"] == 0.0
    labels = np.array([0, 1, 0, 1, 1])
    out = compute_metrics(metrics=("mcc", "accuracy", "f1"), predictions=np.zeros((5, 2)) + [1, 0], labels=labels)
    assert out["mcc"] == 0.0 and out["f1"] == 0.0 and out["accuracy"] == pytest.approx(40.0)
    assert not any(math.isnan(v) for v in out.values())


def test_perfect_and_inverted_predictions():
    labels = np.array([0, 1, 1, 0, 1, 0])
    onehot = np.eye(2)[labels]
    out = compute_metrics(metrics=("mcc", "accuracy", "f1"), predictions=onehot, labels=labels)
    assert out["mcc"] == pytest.approx(100) and out["accuracy"] == 100 and out["f1"] == pytest.approx(100)
    inv = compute_metrics(metrics=("mcc",), predictions=onehot[:, ::-1], labels=labels)
    assert inv["mcc"] == pytest.approx(-100)
    gold = np.arange(10, dtype=float)
    out = compute_metrics(metrics=("pearson", "spearman"), predictions=-gold, labels=gold)
    assert out["pearson"] == pytest.approx(-100) and out["spearman"] == pytest.approx(-100)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_glue_task_metric_set(name):
    t = get_task(name)
    rng = np.random.default_rng(0)
    labels = rng.uniform(0, 5, 30) if t.is_regression else rng.integers(0, t.num_outputs, 30)
    preds = rng.uniform(0, 5, 30) if t.is_regression else rng.normal(size=(30, t.num_outputs))
    out = compute_metrics(metrics=t.metrics, predictions=preds, labels=labels)
    assert list(out) == list(t.metrics) + ["score"]
    assert out["score"] == pytest.approx(np.mean([out[m] for m in t.metrics]))
    assert t.primary == "_".join(t.metrics)


def test_glue_average():
    scores = {"cola": 50.0, "sst2": 90.0, "mrpc": 85.5, "stsb": 88.0, "rte": 66.0}
    assert glue_average(scores) == pytest.approx(sum(scores.values()) / 5)
    assert glue_average({"rte": 61.2}) == pytest.approx(61.2)
    with pytest.raises(ValueError):
        glue_average({})
