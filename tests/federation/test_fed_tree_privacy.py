"""Differentially private trees: public edges, the Gaussian noise, RDP composition, the package."""

import json
import math

import numpy as np
import pytest
import torch

from vigil.core.errors import ConfigError
from vigil.features import FEATURE_SCHEMA
from vigil.features.metrics import auroc
from vigil.federation.boosting import (
    BoostingPlan,
    BoostingSite,
    bin_rows,
    check_histograms,
    predict_raw,
)
from vigil.federation.driver import Plan
from vigil.federation.privacy import ALPHAS, DPSettings
from vigil.federation.public_edges import Spacing, feature_range, public_edges
from vigil.federation.simulation import federate, training_section
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy
from vigil.federation.tree_privacy import (
    NoisyBoostingSite,
    TreeDPSettings,
    TreeNoise,
    calibrate_tree_noise,
    gaussian_rdp,
    level_sensitivity,
    network_rdp,
    private_plan,
    rdp_epsilon,
    tree_features,
    tree_releases,
)
from vigil.federation.treegrowth import boost


def test_public_edges_cover_every_feature_and_need_no_data():
    edges = public_edges(64)
    assert len(edges) == len(FEATURE_SCHEMA) == 184
    again = public_edges(64)
    for e, f in zip(edges, again, strict=True):
        assert e.dtype == np.float32 and 1 <= e.size <= 63
        assert np.all(np.diff(e) > 0) and np.array_equal(e, f)
    named = dict(zip(FEATURE_SCHEMA.names, edges, strict=True))
    np.testing.assert_array_equal(named["HR__missing"], [0.5])
    np.testing.assert_array_equal(named["qsofa"], [0.5, 1.5, 2.5])
    np.testing.assert_array_equal(named["Glucose__count_24h"], np.arange(24) + 0.5)
    # linear HR edges: 20 + 280 k / 64 (catalog range 20-300)
    np.testing.assert_allclose(named["HR"], 20 + 280 * np.arange(1, 64) / 64, rtol=1e-6)
    assert feature_range("AST").spacing is Spacing.LOG and feature_range("HR").spacing is \
        Spacing.LINEAR
    slope = named["HR__slope_6h"]
    np.testing.assert_allclose(slope, -slope[::-1], rtol=1e-5)  # symmetric around 0
    with pytest.raises(ConfigError, match="expected a feature of the schema"):
        public_edges(8, ["PatientID"])
    with pytest.raises(ConfigError, match="n_bins"):
        public_edges(1)


def test_gaussian_rdp_and_its_epsilon_by_hand():
    # three releases at z = 2: RDP 3 * alpha / (2 * 4) = 0.75 at alpha = 2
    np.testing.assert_allclose(gaussian_rdp([2.0, 10.0], noise_multiplier=2.0, count=3),
                               [0.75, 3.75])
    # Balle et al. 2020 conversion at the one order 2, delta 1e-5:
    # 0.75 + log(1/2) - (log(1e-5) + log 2) / 1 = 10.876...
    expected = 0.75 + math.log(0.5) - (math.log(1e-5) + math.log(2.0))
    assert rdp_epsilon(np.array([0.75]), [2.0], 1e-5) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(10.8767, abs=1e-4)
    assert level_sensitivity(16) == pytest.approx(math.sqrt(17.0))


def test_composition_of_network_and_trees_stays_within_the_target_and_is_tight():
    plan = BoostingPlan(n_trees=20, max_depth=3)
    releases = tree_releases(plan)
    assert releases == 1 + 20 * 4
    net = network_rdp(sample_rate=0.02, noise_multiplier=1.0, steps=500, orders=ALPHAS)
    alone = rdp_epsilon(net, ALPHAS, 1e-5)
    z, composed = calibrate_tree_noise(epsilon=8.0, delta=1e-5, releases=releases,
                                       network=net, orders=ALPHAS)
    assert alone < composed <= 8.0 and composed == pytest.approx(8.0, abs=1e-6)
    total = net + gaussian_rdp(ALPHAS, noise_multiplier=z, count=releases)
    assert rdp_epsilon(total, ALPHAS, 1e-5) <= 8.0
    less = net + gaussian_rdp(ALPHAS, noise_multiplier=z * 0.99, count=releases)
    assert rdp_epsilon(less, ALPHAS, 1e-5) > 8.0  # the smallest noise that fits
    # the composition is tighter than adding the two epsilons
    trees_alone = rdp_epsilon(gaussian_rdp(ALPHAS, noise_multiplier=z, count=releases),
                              ALPHAS, 1e-5)
    assert alone + trees_alone > 8.0
    with pytest.raises(ConfigError, match="leave part of epsilon"):
        calibrate_tree_noise(epsilon=alone * 0.9, delta=1e-5, releases=releases, network=net,
                             orders=ALPHAS)


def _noisy(noise, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (rng.random(n) < 0.2).astype(float)
    edges = [np.linspace(-2, 2, 15, dtype=np.float32)] * 6
    noisy = NoisyBoostingSite("s", bin_rows(x, edges), y, np.ones(n), noise=noise,
                              n_edges=[15] * 6)
    return noisy, BoostingSite("s", bin_rows(x, edges), y, np.ones(n))


def test_the_histogram_noise_has_the_accountants_scale_on_the_drawn_features_only():
    noise = TreeNoise(noise_multiplier=3.0, features_per_tree=2, seed=5, epsilon=1.0,
                      delta=1e-5, network_epsilon=0.5, releases=10)
    site, exact = _noisy(noise)
    residuals = []
    for _ in range(60):
        site.begin_tree()
        exact.begin_tree()
        drawn = tree_features(5, site._tree, 6, 2)
        got = site.histograms(np.array([0]), 32)
        want = exact.histograms(np.array([0]), 32)
        others = np.setdiff1d(np.arange(6), drawn)
        assert not got[:, others].any() and not got[:, :, 16:].any()  # exact zeros
        residuals.append((got - want)[:, drawn, :16, 0].ravel())  # gradients (unclipped)
    sigma = 3.0 * math.sqrt(2 * (1 + 1 / 16))
    assert np.std(np.concatenate(residuals)) == pytest.approx(sigma, rel=0.05)
    positives, rows = site.label_sums()
    assert 0 <= positives <= rows and abs(rows - 4000) < 6 * 3.0 * math.sqrt(2)


def test_noisy_histograms_pass_the_screening_noise_cannot_break():
    noise = TreeNoise(noise_multiplier=1.0, features_per_tree=6, seed=0, epsilon=1.0,
                      delta=1e-5, network_epsilon=0.5, releases=10)
    site, _ = _noisy(noise)
    site.begin_tree()
    hist = site.histograms(np.array([0]), 16)
    assert check_histograms(hist, hist.shape, label_sums=(800.0, 4000.0)) is not None
    assert check_histograms(hist, hist.shape, label_sums=(800.0, 4000.0), exact=False) is None
    hist[0, 0, 0, 0] = np.nan
    assert check_histograms(hist, hist.shape, exact=False)[0].value == "non-finite"


def test_noisy_trees_still_learn_a_strong_signal_and_split_only_on_drawn_features():
    rng = np.random.default_rng(1)
    n = 20000
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(2.5 * x[:, 0] - 1.0)))).astype(float)
    edges = [np.linspace(-3, 3, 31, dtype=np.float32)] * 5
    noise = TreeNoise(noise_multiplier=2.0, features_per_tree=2, seed=3, epsilon=1.0,
                      delta=1e-5, network_epsilon=0.5, releases=10)
    plan = private_plan(BoostingPlan(n_trees=10, max_depth=2, n_bins=32), [noise, noise])
    assert plan.min_child_weight == pytest.approx(
        2 * math.sqrt(32 * 2 * (2.0 * level_sensitivity(2)) ** 2))
    sites = [NoisyBoostingSite(f"s{i}", bin_rows(x[i::2], edges), y[i::2], np.ones(n // 2),
                               noise=noise, n_edges=[31] * 5) for i in range(2)]
    boosted = boost(sites, edges, plan, exact=False)
    assert boosted.exclusions == ()
    for t, tree in enumerate(boosted.trees):
        used = set(tree.feature[tree.feature >= 0].tolist())
        assert used <= set(tree_features(3, t, 5, 2).tolist())
    assert np.isfinite(boosted.base) and sum(t.feature.size > 1 for t in boosted.trees) >= 3
    raw = predict_raw(x, boosted.base, boosted.trees)
    assert auroc(y, raw) > 0.8


def test_tree_dp_settings_are_checked():
    with pytest.raises(ConfigError, match="tree share"):
        TreeDPSettings(tree_share=1.0)
    with pytest.raises(ConfigError, match="features per tree"):
        TreeDPSettings(features_per_tree=0)


@pytest.mark.slow
def test_dp_with_trees_in_process_gives_a_package_with_the_composed_epsilon(sample):
    torch.set_num_threads(1)
    half = sample.select(np.arange(0, sample.grid.n_patients, 2))
    run = federate(half, scheme="hospital-unit", strategy=make_strategy("fedavg"),
                   plan=Plan(rounds=1, batch_size=512, lr=1e-3), model=ModelSpec(hidden=(8,),
                   dropout=0.0), trees=BoostingPlan(n_trees=2, max_depth=2, n_bins=16),
                   dp=DPSettings(8.0, max_grad_norm=10.0),
                   tree_dp=TreeDPSettings(tree_share=0.25, features_per_tree=8))
    dp = training_section(run)["differential_privacy"]
    assert dp["target_epsilon"] == 8.0 and dp["split"]["network_target_epsilon"] == 6.0
    for name, spent in run.result.privacy.items():
        composed = dp["composed_epsilon"][name]
        assert spent.epsilon <= 6.0 + 1e-6 < composed <= 8.0 + 1e-9
        assert dp["trees"]["sites"][name]["releases"] == 1 + 2 * 3
    assert training_section(run)["boosting"]["edges"] == "public"
    json.dumps(dp)  # plain values for the manifest


class _NoQuantiles:
    """A site whose quantiles must not be asked (public edges)."""

    def __init__(self, name, x, y):
        self.name, self.x, self.y = name, x, y

    def quantiles(self, n_bins):
        raise AssertionError("quantiles asked with public edges")

    def boosting(self, edges):
        return BoostingSite(self.name, bin_rows(self.x, edges), self.y, np.ones_like(self.y))


def test_with_public_edges_no_site_sends_quantiles_and_thresholds_are_public_edges():
    from vigil.federation.hybrid import grow_trees

    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 3)).astype(np.float32)
    y = (rng.random(3000) < 1 / (1 + np.exp(-2 * x[:, 0]))).astype(float)
    edges = [np.linspace(-2, 2, 9, dtype=np.float32)] * 3
    sites = [_NoQuantiles(f"s{i}", x[i::2], y[i::2]) for i in range(2)]
    boosted, _ = grow_trees(sites, BoostingPlan(n_trees=3, max_depth=2, n_bins=16),
                            counts={"s0": 1500, "s1": 1500}, edges=edges)
    assert boosted.exclusions == ()
    for tree in boosted.trees:
        inner = tree.feature >= 0
        assert inner.any() and np.isin(tree.threshold[inner], edges[0]).all()
