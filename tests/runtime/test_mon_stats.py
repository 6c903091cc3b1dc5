"""Drift statistics against scipy and hand-computed values, their properties and errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.spatial.distance import jensenshannon

from vigil.runtime.monitoring.stats import (
    binned_std,
    histogram,
    jensen_shannon,
    ks_binned,
    normed_wasserstein,
    proportion_change,
    psi,
    psi_noise_floor,
    quantile_edges,
    wasserstein_binned,
)

change = proportion_change

counts = st.lists(st.integers(min_value=0, max_value=500), min_size=2, max_size=12).filter(
    lambda c: sum(c) > 0
)


def integer_bins(a, b):
    """Both samples binned with one bin per integer: binning loses nothing."""
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    edges = np.arange(lo - 0.5, hi + 1.0, 1.0)
    return histogram(a, edges), histogram(b, edges), edges


def test_psi_hand_computed():
    # shares (0.5, 0.5) -> (0.25, 0.75): -0.25 ln 0.5 + 0.25 ln 1.5
    want = 0.25 * np.log(2) + 0.25 * np.log(1.5)
    assert psi([50, 50], [25, 75]) == pytest.approx(want, rel=1e-12)
    assert psi([1, 2, 3], [2, 4, 6]) == 0.0


def test_psi_empty_bin_uses_eps():
    got = psi([100, 0], [50, 50], eps=1e-4)
    p, q = np.array([1.0, 1e-4]), np.array([0.5, 0.5])
    assert got == pytest.approx(np.sum((q - p) * np.log(q / p)))


@given(counts, st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_psi_is_symmetric_and_non_negative(ref, rnd):
    cur = [rnd.randint(0, 500) for _ in ref]
    cur[0] += 1
    assert psi(ref, cur) >= 0
    assert psi(ref, cur) == pytest.approx(psi(cur, ref), rel=1e-9, abs=1e-12)


def test_psi_noise_floor_holds_about_one_percent_of_null_draws():
    rng = np.random.default_rng(7)
    shares = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    n, m = 2000, 300
    floor = psi_noise_floor(5, n_reference=n, n_current=m, quantile=0.99)
    above = sum(
        psi(rng.multinomial(n, shares), rng.multinomial(m, shares)) > floor for _ in range(2000)
    )
    assert floor == pytest.approx(sps.chi2.ppf(0.99, 4) * (1 / n + 1 / m))
    assert 5 <= above <= 45  # 1% of 2000 = 20


def test_psi_noise_floor_edge_cases():
    assert psi_noise_floor(1, n_reference=10, n_current=10) == 0.0
    assert psi_noise_floor(3, n_reference=10, n_current=0) == float("inf")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_binned_equals_scipy_on_integer_data(seed):
    rng = np.random.default_rng(seed)
    a = rng.poisson(4.0, 400)
    b = rng.poisson(4.6, 250)
    r, c, _ = integer_bins(a, b)
    got = ks_binned(r, c)
    want = sps.ks_2samp(a, b, method="asymp")
    assert got.statistic == pytest.approx(want.statistic, abs=1e-12)
    assert got.pvalue == pytest.approx(want.pvalue, rel=1e-9)


def test_ks_binned_effective_sizes_and_infinite_reference():
    loose = ks_binned([100, 100], [40, 60], n_reference=10, n_current=10)
    tight = ks_binned([100, 100], [40, 60])
    assert loose.statistic == tight.statistic == pytest.approx(0.1)
    assert loose.pvalue > tight.pvalue
    exact = ks_binned([1, 1], [40, 60], n_reference=float("inf"))
    assert exact.pvalue == pytest.approx(sps.kstwo.sf(0.1, 100))


@pytest.mark.parametrize("seed", [0, 3])
def test_wasserstein_binned_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    edges = np.sort(rng.uniform(-3, 5, 9))
    r, c = rng.integers(0, 50, 8), rng.integers(0, 50, 8)
    x = (edges[1:] + edges[:-1]) / 2
    assert wasserstein_binned(r, c, edges) == pytest.approx(
        sps.wasserstein_distance(x, x, r, c), rel=1e-12
    )


def test_wasserstein_binned_on_integer_data_equals_raw_samples():
    rng = np.random.default_rng(4)
    a, b = rng.integers(0, 20, 300), rng.integers(3, 25, 200)
    r, c, edges = integer_bins(a, b)
    assert wasserstein_binned(r, c, edges) == pytest.approx(sps.wasserstein_distance(a, b))


def test_normed_wasserstein_divides_by_reference_std():
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    r, c = [10, 20, 10], [5, 10, 25]
    x = np.array([0.5, 1.5, 2.5])
    std = np.sqrt(np.cov(x, aweights=r, ddof=0))
    assert binned_std(r, edges) == pytest.approx(std)
    assert normed_wasserstein(r, c, edges) == pytest.approx(
        sps.wasserstein_distance(x, x, r, c) / std
    )
    # a reference with no spread is measured in its bin width
    assert normed_wasserstein([0, 5, 0], [0, 0, 5], edges) == pytest.approx(1.0)


@given(counts, st.randoms(use_true_random=False))
@settings(max_examples=60, deadline=None)
def test_jensen_shannon_equals_scipy(ref, rnd):
    cur = [rnd.randint(0, 500) for _ in ref]
    cur[-1] += 1
    p, q = np.asarray(ref, float), np.asarray(cur, float)
    assert jensen_shannon(ref, cur) == pytest.approx(
        jensenshannon(p / p.sum(), q / q.sum(), base=2), abs=1e-7
    )
    assert 0 <= jensen_shannon(ref, cur) <= 1


@pytest.mark.parametrize(
    ("a", "n0", "b", "n1"), [(10, 100, 30, 100), (3, 400, 9, 120), (50, 80, 20, 60)]
)
def test_proportion_change_z_squared_is_pearson_chi2(a, n0, b, n1):
    got = proportion_change(reference_events=a, reference_n=n0, current_events=b, current_n=n1)
    chi2 = sps.chi2_contingency([[a, n0 - a], [b, n1 - b]], correction=False)
    assert got.z**2 == pytest.approx(chi2.statistic, rel=1e-9)
    assert got.pvalue == pytest.approx(chi2.pvalue, rel=1e-9)
    assert got.difference == pytest.approx(b / n1 - a / n0)


def test_proportion_change_degenerate_rates():
    same = proportion_change(reference_events=0, reference_n=50, current_events=0, current_n=50)
    assert same.z == 0.0 and same.pvalue == 1.0
    full = proportion_change(reference_events=50, reference_n=50, current_events=7, current_n=7)
    assert full.z == 0.0 and full.difference == 0.0


def test_histogram_open_outer_bins_match_numpy_inside():
    rng = np.random.default_rng(5)
    v = rng.normal(size=1000)
    edges = np.linspace(-1, 1, 6)
    got = histogram(v, edges)
    inner = np.histogram(v[(v > -1) & (v < 1)], edges)[0]
    assert got.sum() == v.size
    assert got[1:-1].tolist() == inner[1:-1].tolist()
    assert got[0] == np.sum(v < edges[1]) and got[-1] == np.sum(v >= edges[-2])


def test_quantile_edges_binary_and_continuous():
    assert quantile_edges([0, 1, 1, 0, 1]).tolist() == [-1.0, -0.5, 0.5, 1.5, 2.0]
    one = quantile_edges([3, 3, 3])
    assert one.tolist() == [2.0, 2.5, 3.5, 4.0]
    # a value the reference never had gets its own bin, so the change is visible
    assert histogram([1, 3, 9], one).tolist() == [1, 1, 1]
    assert psi(histogram([3, 3], one) + 0.5, histogram([1, 1], one) + 0.5) > 1
    e = quantile_edges(np.arange(1000.0), n_bins=10)
    assert e.size == 11
    assert histogram(np.arange(1000.0), e).tolist() == [100] * 10


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: psi([1, 2], [1, 2, 3]), "same bins"),
        (lambda: psi([0, 0], [1, 2]), "at least one value"),
        (lambda: psi([1, -2], [1, 2]), "non-negative"),
        (lambda: ks_binned([], [1]), "non-empty"),
        (lambda: wasserstein_binned([1, 2], [2, 1], [0.0, 1.0]), "expected 3 bin edges"),
        (lambda: wasserstein_binned([1, 2], [2, 1], [0.0, 2.0, 1.0]), "strictly increasing"),
        (lambda: quantile_edges([np.nan]), "no finite reference value"),
        (lambda: change(reference_events=1, reference_n=0, current_events=1, current_n=2),
         "finite number of trials"),
        (lambda: change(reference_events=5, reference_n=2, current_events=1, current_n=2),
         "between 0"),
    ],
)
def test_errors_say_what_was_expected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
