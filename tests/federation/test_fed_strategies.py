"""Strategies: properties of the aggregation math, against independent references."""

import warnings
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import trim_mean

from vigil.core.errors import AggregationError, ConfigError
from vigil.federation.strategies import (
    Robust,
    StrategyName,
    coordinate_median,
    example_shares,
    fedavg,
    fedbn,
    fedprox,
    make_strategy,
    proximal_penalty,
    robust_aggregate,
    trimmed_mean,
)

SHAPES = {"norm.mean": (3,), "mlp.0.weight": (4, 3), "mlp.0.bias": (4,)}


def is_norm(name):
    return name.startswith("norm.")


def random_weights(rng, n_sites):
    return [OrderedDict((k, rng.normal(size=s).astype(np.float32)) for k, s in SHAPES.items())
            for _ in range(n_sites)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n_sites=st.integers(1, 6))
def test_identical_updates_give_that_update(seed, n_sites):
    rng = np.random.default_rng(seed)
    one = random_weights(rng, 1)[0]
    counts = rng.integers(1, 10_000, size=n_sites).tolist()
    for out in (fedavg([one] * n_sites, counts), fedprox([one] * n_sites, counts),
                fedavg([one] * n_sites, counts, max_share=1.0),
                coordinate_median([one] * n_sites), trimmed_mean([one] * n_sites, beta=0.25)):
        for k in SHAPES:
            np.testing.assert_allclose(out[k], one[k], rtol=1e-6, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n_sites=st.integers(2, 6))
def test_site_order_does_not_change_a_bit(seed, n_sites):
    rng = np.random.default_rng(seed)
    ws = random_weights(rng, n_sites)
    counts = rng.integers(1, 10_000, size=n_sites).tolist()
    perm = rng.permutation(n_sites)
    shuffled, shuffled_counts = [ws[i] for i in perm], [counts[i] for i in perm]
    pairs = [
        (fedavg(ws, counts), fedavg(shuffled, shuffled_counts)),
        (fedbn(ws, counts, is_local=is_norm), fedbn(shuffled, shuffled_counts, is_local=is_norm)),
        (coordinate_median(ws), coordinate_median(shuffled)),
        (trimmed_mean(ws, beta=0.25), trimmed_mean(shuffled, beta=0.25)),
    ]
    for a, b in pairs:
        assert list(a) == list(b)
        for k in a:
            assert np.array_equal(a[k], b[k])


def test_fedavg_is_the_example_weighted_mean():
    a = {"w": np.array([0.0, 3.0], np.float32)}
    b = {"w": np.array([3.0, 0.0], np.float32)}
    c = {"w": np.array([1.0, 1.0], np.float32)}
    out = fedavg([a, b, c], [1, 2, 3])["w"]
    np.testing.assert_allclose(out, (a["w"] * 1 + b["w"] * 2 + c["w"] * 3) / 6, rtol=1e-7)


def test_fedprox_aggregation_equals_fedavg_and_mu_zero_strategy_is_fedavg():
    rng = np.random.default_rng(1)
    ws = random_weights(rng, 4)
    out_avg, out_prox = fedavg(ws, [5, 6, 7, 8]), fedprox(ws, [5, 6, 7, 8])
    assert all(np.array_equal(out_avg[k], out_prox[k]) for k in SHAPES)
    with pytest.warns(UserWarning, match="mu=0 is FedAvg"):
        s = make_strategy("fedprox", mu=0.0)
    assert s.proximal_mu == 0.0
    out = s.aggregate(ws, [5, 6, 7, 8])
    assert all(np.array_equal(out[k], out_avg[k]) for k in SHAPES)


def test_fedbn_never_aggregates_local_entries():
    rng = np.random.default_rng(2)
    ws = random_weights(rng, 3)
    out = fedbn(ws, [1, 1, 1], is_local=is_norm)
    assert "norm.mean" not in out
    np.testing.assert_allclose(out["mlp.0.bias"], np.mean([w["mlp.0.bias"] for w in ws], axis=0),
                               rtol=1e-6)
    strategy = make_strategy("fedbn")
    assert strategy.keeps_norm_local
    assert "norm.mean" not in strategy.aggregate(ws, [1, 1, 1], is_local=is_norm)


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 10**6), min_size=2, max_size=8),
       cap_extra=st.floats(0.0, 1.0))
def test_capped_shares_sum_to_one_respect_the_cap_and_keep_proportions(counts, cap_extra):
    n = len(counts)
    cap = 1 / n + cap_extra * (1 - 1 / n)
    shares = example_shares(counts, max_share=cap)
    assert shares.sum() == pytest.approx(1.0, abs=1e-12)
    assert shares.max() <= cap + 1e-12
    uncapped = shares < cap - 1e-12
    if uncapped.sum() >= 2:  # uncapped sites keep their relative weights
        ratio = shares[uncapped] / np.asarray(counts, float)[uncapped]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)


def test_cap_below_one_over_n_is_refused():
    with pytest.raises(AggregationError, match="below 1/3"):
        example_shares([1, 2, 3], max_share=0.3)
    with pytest.raises(AggregationError, match="positive example counts"):
        example_shares([1, 0])


def test_robust_aggregators_match_numpy_and_scipy():
    rng = np.random.default_rng(3)
    ws = random_weights(rng, 5)
    for k in SHAPES:
        stacked = np.stack([w[k] for w in ws]).astype(np.float64)
        np.testing.assert_allclose(coordinate_median(ws)[k], np.median(stacked, axis=0), rtol=1e-6)
        np.testing.assert_allclose(trimmed_mean(ws, beta=0.2)[k],
                                   trim_mean(stacked, 0.2, axis=0), rtol=1e-6)
    one_bad = [*random_weights(rng, 3), {k: np.full(s, 1e6, np.float32) for k, s in SHAPES.items()}]
    for method in Robust:
        out = robust_aggregate(one_bad, method)
        assert all(np.abs(v).max() < 10 for v in out.values())
    with pytest.raises(AggregationError, match="0 <= beta < 0.5"):
        trimmed_mean(ws, beta=0.5)


def test_proximal_penalty_is_squared_norm():
    w = {"a": np.array([1.0, 2.0]), "b": np.array([[3.0]])}
    g = {"a": np.zeros(2), "b": np.ones((1, 1))}
    assert proximal_penalty(w, g, mu=0.5) == pytest.approx(0.25 * (1 + 4 + 4))


def test_make_strategy_error_contracts():
    with pytest.raises(ConfigError, match="fedavg, fedprox or fedbn; got 'fedsgd'"):
        make_strategy("fedsgd")
    with pytest.raises(ConfigError, match="--mu applies to --strategy fedprox only"):
        make_strategy("fedavg", mu=0.1)
    with pytest.raises(ConfigError, match="expected --mu >= 0"):
        make_strategy("fedprox", mu=-1.0)
    with pytest.raises(ConfigError, match="median or trimmed-mean; got 'mean'"):
        make_strategy("fedavg", robust="mean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = make_strategy(StrategyName.FEDPROX)
    assert s.proximal_mu > 0 and s.describe()["name"] == "fedprox"
