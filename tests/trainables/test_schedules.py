"""Pure schedules of training progress p: teacher annealing, task sampling, LR, layer decay, unfreezing."""
from __future__ import annotations

import math

import numpy as np
import pytest

from trainables.schedules import ANNEAL as ANNEAL_SCHEDULES, SAMPLERS as SAMPLING_METHODS
from trainables.schedules import anneal_lambda, layer_lr_scale, lr_multiplier, sampling_weights, unfrozen_layers

GRID = np.linspace(0, 1, 201)


def lam(p, schedule, **kw):
    return anneal_lambda(p, schedule=schedule, **kw)


def test_every_recipe_schedule_is_implemented():
    for s in ANNEAL_SCHEDULES:
        lam(0.3, s)
    with pytest.raises(ValueError, match="nope"):
        lam(0.3, "nope")


@pytest.mark.parametrize("p0", [0.25, 0.5, 0.8])
def test_values_at_chosen_points(p0):
    for p in (0.0, p0, 0.5, 1.0):
        assert lam(p, "none", p0=p0) == 1.0
        assert lam(p, "constant", w=0.3, p0=p0) == 0.3
        assert lam(p, "linear", p0=p0) == pytest.approx(p)
        assert lam(p, "cosine", p0=p0) == pytest.approx((1 - math.cos(math.pi * p)) / 2)
        assert lam(p, "exponential", k=3.0) == pytest.approx((math.exp(3 * p) - 1) / (math.exp(3) - 1))
    assert lam(0.5, "cosine") == pytest.approx(0.5)
    # step: 0 before p0, 1 from p0 on
    assert lam(0.0, "step", p0=p0) == 0.0 and lam(p0 - 1e-9, "step", p0=p0) == 0.0
    assert lam(p0, "step", p0=p0) == 1.0 and lam(1.0, "step", p0=p0) == 1.0
    # delayed_linear: 0 up to p0, then linear to 1
    assert lam(0.0, "delayed_linear", p0=p0) == 0.0 and lam(p0, "delayed_linear", p0=p0) == 0.0
    assert lam(1.0, "delayed_linear", p0=p0) == pytest.approx(1.0)
    mid = (p0 + 1) / 2
    assert lam(mid, "delayed_linear", p0=p0) == pytest.approx(0.5)
    # sigmoid: rescaled to hit 0 and 1 at the ends; half-way point near p0 when symmetric
    for k in (5.0, 10.0, 30.0):
        assert lam(0.0, "sigmoid", p0=p0, k=k) == pytest.approx(0.0, abs=1e-12)
        assert lam(1.0, "sigmoid", p0=p0, k=k) == pytest.approx(1.0)
    assert lam(0.5, "sigmoid", p0=0.5, k=10) == pytest.approx(0.5)
    assert lam(p0 - 0.1, "sigmoid", p0=p0, k=30) < 0.5 < lam(p0 + 0.1, "sigmoid", p0=p0, k=30)


def test_exponential_is_convex_and_k0_is_linear():
    assert lam(0.5, "exponential", k=10) < 0.5 < lam(0.5, "cosine") + 1e-9
    assert lam(0.37, "exponential", k=0) == pytest.approx(0.37)
    assert lam(0.37, "exponential", k=1e-9) == pytest.approx(0.37, abs=1e-6)


@pytest.mark.parametrize("schedule", ANNEAL_SCHEDULES)
@pytest.mark.parametrize("kw", [{}, {"p0": 0.2, "k": 3.0, "w": 0.9}, {"p0": 0.9, "k": 25.0, "w": 0.0}])
def test_range_and_monotonicity(schedule, kw):
    values = np.array([lam(p, schedule, **kw) for p in GRID])
    assert np.all(values >= 0) and np.all(values <= 1)
    if schedule in ("none", "constant"):
        assert np.all(values == values[0])
    else:
        assert np.all(np.diff(values) >= -1e-12), schedule
        assert values[0] == pytest.approx(0.0, abs=1e-12) and values[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("schedule", ANNEAL_SCHEDULES)
def test_progress_is_clamped(schedule):
    assert lam(-0.5, schedule) == lam(0.0, schedule)
    assert lam(1.7, schedule) == lam(1.0, schedule)


# ---------------------------------------------------------------------------------------------- sampling

SIZES = {"a": 100, "b": 400, "c": 2500}


@pytest.mark.parametrize("method", SAMPLING_METHODS)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_sampling_weights_sum_to_one(method, p):
    w = sampling_weights(SIZES, p=p, method=method, alpha=0.6, alpha_end=0.1, temperature=3.0,
                         weights={"a": 2.0, "b": 1.0, "c": 0.5})
    assert list(w) == list(SIZES)
    assert sum(w.values()) == pytest.approx(1.0)
    assert all(v >= 0 for v in w.values())


def test_known_values():
    two = {"a": 100, "b": 400}
    w = sampling_weights(two, method="size_alpha", alpha=0.5)
    assert w["a"] == pytest.approx(1 / 3) and w["b"] == pytest.approx(2 / 3)      # 10 : 20
    w = sampling_weights(two, method="proportional")
    assert w["a"] == pytest.approx(0.2) and w["b"] == pytest.approx(0.8)
    w = sampling_weights(two, method="uniform")
    assert w == {"a": 0.5, "b": 0.5}
    w = sampling_weights(two, method="temperature", temperature=2.0)            # n^(1/2) as size_alpha 0.5
    assert w["a"] == pytest.approx(1 / 3)
    assert sampling_weights(two, method="temperature", temperature=1.0) == pytest.approx(
        sampling_weights(two, method="proportional"))
    w = sampling_weights(two, method="weights", weights={"a": 3.0, "b": 1.0})
    assert w["a"] == pytest.approx(0.75) and w["b"] == pytest.approx(0.25)
    w = sampling_weights(SIZES, method="weights", weights={"c": 5.0})            # missing tasks get 0
    assert w == {"a": 0.0, "b": 0.0, "c": 1.0}
    w = sampling_weights(SIZES, method="size_alpha", alpha=0.75)                # BAM default
    z = sum(n ** 0.75 for n in SIZES.values())
    for t, n in SIZES.items():
        assert w[t] == pytest.approx(n ** 0.75 / z)


def test_alpha_end_moves_toward_uniform_over_training():
    seq = [sampling_weights(SIZES, p=p, method="size_alpha", alpha=1.0, alpha_end=0.0)["c"] for p in GRID]
    assert seq[0] == pytest.approx(2500 / 3000)                               # alpha 1: proportional
    assert seq[-1] == pytest.approx(1 / 3)                                     # alpha 0: uniform
    assert np.all(np.diff(seq) <= 1e-12)                                      # the largest task only loses mass
    half = sampling_weights(SIZES, p=0.5, method="size_alpha", alpha=1.0, alpha_end=0.0)
    assert half == pytest.approx(sampling_weights(SIZES, method="size_alpha", alpha=0.5))
    # without alpha_end, p has no effect
    assert sampling_weights(SIZES, p=0.9, method="size_alpha", alpha=0.7) == \
        sampling_weights(SIZES, p=0.0, method="size_alpha", alpha=0.7)


def test_sampling_errors():
    with pytest.raises(ValueError, match="unknown sampling method"):
        sampling_weights(SIZES, method="roundrobin")
    with pytest.raises(ValueError, match="zero"):
        sampling_weights(SIZES, method="weights", weights={"a": 0.0})
    with pytest.raises(ValueError, match="zero"):
        sampling_weights(SIZES, method="weights", weights=None)


# ---------------------------------------------------------------------------------------------- LR etc.

@pytest.mark.parametrize("total,warmup", [(100, 0.1), (1000, 0.06), (37, 0.25), (50, 0.0)])
def test_lr_multiplier_warmup_then_linear_decay(total, warmup):
    w = int(total * warmup)
    m = np.array([lr_multiplier(s, total=total, warmup=warmup) for s in range(total + 1)])
    assert np.all(m >= 0) and np.all(m <= 1 + 1e-12)
    if w:
        assert m[0] == pytest.approx(1 / w) and m[w - 1] == pytest.approx(1.0)
        assert np.all(np.diff(m[:w]) > 0)                                     # warmup rises
        assert np.allclose(np.diff(m[:w]), 1 / w)                              # ... linearly
    assert m[w] == pytest.approx(1.0)
    assert np.all(np.diff(m[w:]) < 0)                                        # then decays
    assert np.allclose(np.diff(m[w:]), -1 / (total - w))                     # ... linearly
    assert m[total] == 0.0 and m[total - 1] > 0
    assert lr_multiplier(total + 5, total=total, warmup=warmup) == 0.0


@pytest.mark.parametrize("total,warmup", [(100, 0.1), (37, 0.25), (50, 0.0)])
def test_lr_multiplier_constant_after_warmup(total, warmup):
    w = int(total * warmup)
    m = np.array([lr_multiplier(s, total=total, warmup=warmup, decay="constant") for s in range(total + 1)])
    linear = np.array([lr_multiplier(s, total=total, warmup=warmup) for s in range(total + 1)])
    assert np.array_equal(m[:w], linear[:w])                                  # the same warm-up
    assert np.all(m[w:] == 1.0)                                               # then the full rate to the end
    with pytest.raises(ValueError, match="cosine"):
        lr_multiplier(0, total=10, warmup=0.0, decay="cosine")


def test_layer_lr_scale():
    L, d = 6, 0.8
    scales = [layer_lr_scale(depth, num_layers=L, decay=d) for depth in range(L + 3)]
    assert scales[-1] == 1.0                                                  # heads (BAM depth L+2)
    assert scales[0] == pytest.approx(d ** (L + 2))                            # embeddings
    assert all(b / a == pytest.approx(1 / d) for a, b in zip(scales, scales[1:]))
    assert all(layer_lr_scale(x, num_layers=L, decay=1.0) == 1.0 for x in range(L + 3))


@pytest.mark.parametrize("L", [1, 2, 6, 12])
def test_unfrozen_layers_from_one_to_all(L):
    seq = [unfrozen_layers(p, num_layers=L) for p in GRID]
    assert seq[0] == 1 and seq[-1] == L + 1
    assert np.all(np.diff(seq) >= 0) and np.all(np.diff(seq) <= 1)
    assert set(seq) == set(range(1, L + 2))                                   # every stage is visited
    assert unfrozen_layers(-1, num_layers=L) == 1 and unfrozen_layers(2, num_layers=L) == L + 1
    # stages are equal slices of training
    for stage in range(L + 1):
        assert unfrozen_layers((stage + 0.5) / (L + 1), num_layers=L) == stage + 1


@pytest.mark.parametrize("schedule", ["exponential", "sigmoid"])
def test_steep_schedules_stay_finite(schedule):
    values = [lam(p, schedule, k=2000.0, p0=0.5) for p in GRID]
    assert all(0.0 <= v <= 1.0 for v in values)
