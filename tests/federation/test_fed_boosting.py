import numpy as np
import pytest

from vigil.core.errors import ConfigError, DataError
from vigil.federation.boosting import (
    BoostingPlan,
    BoostingSite,
    best_splits,
    bin_edges,
    bin_rows,
    predict_raw,
    site_quantiles,
)
from vigil.federation.treegrowth import boost


def _data(seed: int, n: int = 3000, n_features: int = 5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_features)).astype(np.float32)
    x[:, 1] = np.round(x[:, 1])  # a feature with ties and few distinct values
    logit = 1.5 * x[:, 0] - x[:, 1] * (x[:, 2] > 0) - 2.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, y, rng.uniform(0.5, 2.0, n)


def _sites(x, y, w, cuts, edges):
    return [BoostingSite(f"s{i}", bin_rows(x[a:b], edges), y[a:b], w[a:b])
            for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))]


def _grown(boosted):
    assert boosted.exclusions == ()
    return boosted.base, boosted.trees


def test_trees_from_summed_site_histograms_are_the_pooled_trees():
    x, y, w = _data(0)
    plan = BoostingPlan(n_trees=5, max_depth=3, n_bins=16)
    edges = bin_edges([site_quantiles(x, plan.n_bins)], [len(x)])
    one = boost(_sites(x, y, w, [0, len(x)], edges), edges, plan)
    three = boost(_sites(x, y, w, [0, 700, 2100, len(x)], edges), edges, plan)
    assert one.base == pytest.approx(three.base, abs=1e-12)
    for a, b in zip(one.trees, three.trees, strict=True):
        assert np.array_equal(a.feature, b.feature) and np.array_equal(a.bin, b.bin)
        np.testing.assert_allclose(a.value, b.value, rtol=1e-9, atol=1e-12)


def test_thresholds_on_raw_values_route_rows_as_the_bins_do():
    x, y, w = _data(1)
    plan = BoostingPlan(n_trees=4, max_depth=4, n_bins=32)
    edges = bin_edges([site_quantiles(x[:1500], 32), site_quantiles(x[1500:], 32)],
                      [1500, 1500])
    sites = _sites(x, y, w, [0, 1500, len(x)], edges)
    base, trees = _grown(boost(sites, edges, plan))
    running = np.concatenate([s.score for s in sites])
    np.testing.assert_allclose(predict_raw(x, base, trees), running, rtol=0, atol=1e-12)


def test_the_split_gain_by_hand():
    # one node, one feature, three bins: gradient and hessian sums per bin
    hist = np.array([[[[-4.0, 2.0], [1.0, 2.0], [3.0, 2.0]]]])
    gain, feature, bin_ = best_splits(hist, l2=1.0, min_child_weight=0.5)
    # cut after bin 0: G_L=-4,H_L=2 | G_R=4,H_R=4: 16/3 + 16/5 - 0/7
    # cut after bin 1: G_L=-3,H_L=4 | G_R=3,H_R=2: 9/5 + 9/3 - 0
    assert (feature[0], bin_[0]) == (0, 0)
    assert gain[0] == pytest.approx(16 / 3 + 16 / 5)
    # a child lighter than min_child_weight is not allowed
    _, feature, _ = best_splits(hist, l2=1.0, min_child_weight=4.5)
    assert feature[0] == -1


def test_the_chosen_split_beats_every_threshold_by_brute_force():
    x, y, w = _data(2, n=800, n_features=3)
    plan = BoostingPlan(n_trees=1, max_depth=1, n_bins=8, l2=1.0, min_child_weight=0.1)
    edges = bin_edges([site_quantiles(x, 8)], [len(x)])
    base, (tree,) = _grown(boost(_sites(x, y, w, [0, len(x)], edges), edges, plan))
    p = 1 / (1 + np.exp(-base))
    g, h = w * (p - y), w * p * (1 - p)

    def gain(mask):
        gl, hl, gr, hr = g[mask].sum(), h[mask].sum(), g[~mask].sum(), h[~mask].sum()
        return gl**2 / (hl + 1) + gr**2 / (hr + 1) - g.sum() ** 2 / (h.sum() + 1)

    best = max(gain(x[:, f] <= t) for f in range(3) for t in edges[f][:-1])
    chosen = x[:, tree.feature[0]] <= tree.threshold[0]
    assert gain(chosen) == pytest.approx(best)
    # the leaves are -lr * G / (H + l2) of the rows that reach them
    assert tree.value[tree.left[0]] == pytest.approx(-0.1 * g[chosen].sum() / (h[chosen].sum() + 1))


def test_training_loss_falls_with_every_tree():
    x, y, w = _data(3)
    edges = bin_edges([site_quantiles(x, 32)], [len(x)])
    losses = []
    for n in (1, 5, 20):
        base, trees = _grown(boost(_sites(x, y, w, [0, len(x)], edges), edges,
                                   BoostingPlan(n_trees=n, max_depth=3, n_bins=32)))
        p = 1 / (1 + np.exp(-predict_raw(x, base, trees)))
        losses.append(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())
    assert losses[0] > losses[1] > losses[2]


def test_a_site_sends_sums_whose_size_does_not_depend_on_its_rows():
    x, y, w = _data(4)
    edges = bin_edges([site_quantiles(x, 16)], [len(x)])
    small, large = _sites(x, y, w, [0, 100, len(x)], edges)
    for s in (small, large):
        s.start(0.0)
        s.begin_tree()
        assert s.histograms(np.array([0]), 16).shape == (1, x.shape[1], 16, 2)
    assert site_quantiles(x[:100], 16).shape == site_quantiles(x, 16).shape == (5, 15)


def test_bad_settings_and_shapes_are_refused():
    with pytest.raises(ConfigError, match="expected 2 <= n_bins <= 256, got 300"):
        BoostingPlan(n_trees=1, n_bins=300)
    with pytest.raises(ConfigError, match="expected n_trees and max_depth >= 1"):
        BoostingPlan(n_trees=0)
    x, y, w = _data(5)
    edges = bin_edges([site_quantiles(x, 16)], [len(x)])
    with pytest.raises(DataError, match=r"expected rows of 5 features, got shape \(10, 4\)"):
        bin_rows(x[:10, :4], edges)
    with pytest.raises(DataError, match=r"expected y and weight of shape \(10,\)"):
        BoostingSite("s", bin_rows(x[:10], edges), y[:9], w[:10])


def test_trees_in_onnx_score_as_the_thresholds_do():
    import onnxruntime as ort

    from vigil.federation.export import INPUT_NAME, TREES_OUTPUT_NAME, trees_to_onnx

    x, y, w = _data(6, n=4000)
    edges = bin_edges([site_quantiles(x, 32)], [len(x)])
    base, trees = _grown(boost(_sites(x, y, w, [0, len(x)], edges), edges,
                               BoostingPlan(n_trees=10, max_depth=4, n_bins=32)))
    # rows exactly at every split threshold, and just above, must route as the trees do
    at = np.repeat(x[:1], 2 * len(trees), axis=0)
    for i, tree in enumerate(trees):
        f, t = tree.feature[0], tree.threshold[0]
        at[2 * i, f], at[2 * i + 1, f] = t, np.nextafter(t, np.float32(np.inf))
    rows = np.concatenate([x, at]).astype(np.float32)
    session = ort.InferenceSession(trees_to_onnx(base, trees, x.shape[1]),
                                   providers=["CPUExecutionProvider"])
    (onnx_raw,) = session.run([TREES_OUTPUT_NAME], {INPUT_NAME: rows})
    np.testing.assert_allclose(onnx_raw.reshape(-1), predict_raw(rows, base, trees), atol=1e-5)


class _Tampered(BoostingSite):
    """A site whose histograms a test corrupts from tree ``at`` on."""

    def __init__(self, *args, tamper, at=0, **kw):
        super().__init__(*args, **kw)
        self._tamper, self._at, self._trees = tamper, at, 0

    def end_tree(self, tree):
        super().end_tree(tree)
        self._trees += 1

    def histograms(self, nodes, n_bins):
        hist = super().histograms(nodes, n_bins)
        return self._tamper(hist) if self._trees >= self._at else hist


def _raise(hist):
    raise ConnectionError("lost")


def _shift_one_feature(hist):
    hist = hist.copy()
    hist[:, 2, 0, 0] += 5.0
    return hist


@pytest.mark.parametrize(("tamper", "reason"), [
    (lambda h: 50 * h, "bounds"),
    (lambda h: np.where(np.arange(h.size).reshape(h.shape) == 7, np.nan, h), "non-finite"),
    (lambda h: h[:, :-1], "schema"),
    (lambda h: h.astype(np.int64), "schema"),
    (lambda h: h * np.array([1.0, -1.0]), "hessian"),
    (_shift_one_feature, "inconsistent"),
    (_raise, "error"),
])
def test_a_site_with_bad_histograms_at_the_root_is_left_out_and_the_others_grow_their_trees(
    tamper, reason
):
    x, y, w = _data(7)
    plan = BoostingPlan(n_trees=3, max_depth=3, n_bins=16)
    edges = bin_edges([site_quantiles(x, plan.n_bins)], [len(x)])
    good = _sites(x, y, w, [0, 1000, 2000], edges)
    bad = _Tampered("bad", bin_rows(x[2000:], edges), y[2000:], w[2000:], tamper=tamper)
    boosted = boost([*good, bad], edges, plan, min_sites=2)
    (excluded,) = boosted.exclusions
    assert (excluded.site, excluded.reason.value, excluded.tree, excluded.depth) == (
        "bad", reason, 0, 0)
    assert boosted.sites == ("s0", "s1")
    # the reference: the same sites, the third sending all-zero sums, which add nothing
    # (and pass every rule: a site that lies consistently is not caught); the base counts
    # the third site's declared labels in both runs
    silent = _Tampered("bad", bin_rows(x[2000:], edges), y[2000:], w[2000:], tamper=np.zeros_like)
    reference = boost([*_sites(x, y, w, [0, 1000, 2000], edges), silent], edges, plan)
    assert reference.exclusions == () and reference.base == boosted.base
    for a, b in zip(boosted.trees, reference.trees, strict=True):
        assert np.array_equal(a.feature, b.feature) and np.array_equal(a.bin, b.bin)
        np.testing.assert_array_equal(a.value, b.value)


def test_a_site_scaling_its_histograms_mid_tree_breaks_the_parent_totals():
    x, y, w = _data(8)
    plan = BoostingPlan(n_trees=3, max_depth=3, n_bins=16)
    edges = bin_edges([site_quantiles(x, plan.n_bins)], [len(x)])
    calls = {"n": 0}

    def late(hist):  # honest root of every tree, then scaled from tree 1's first split on
        calls["n"] += 1
        return hist if hist.shape[0] == 1 else 3 * hist

    bad = _Tampered("bad", bin_rows(x[2000:], edges), y[2000:], w[2000:], tamper=late, at=1)
    boosted = boost([*_sites(x, y, w, [0, 1000, 2000], edges), bad], edges, plan, min_sites=2)
    (excluded,) = boosted.exclusions
    assert (excluded.reason.value, excluded.tree, excluded.depth) == ("inconsistent", 1, 1)
    assert "children differ from their parent" in excluded.detail
    assert len(boosted.trees) == 3


def test_too_few_honest_sites_stop_the_boosting():
    from vigil.core.errors import AggregationError

    x, y, w = _data(9)
    plan = BoostingPlan(n_trees=2, max_depth=2, n_bins=16)
    edges = bin_edges([site_quantiles(x, plan.n_bins)], [len(x)])
    bad = _Tampered("bad", bin_rows(x[1500:], edges), y[1500:], w[1500:], tamper=_raise)
    with pytest.raises(AggregationError, match="boosting needs at least 2 sites, 1 remain"):
        boost([*_sites(x, y, w, [0, 1500], edges), bad], edges, plan, min_sites=2)
    with pytest.raises(ConfigError, match="expected distinct site names"):
        boost(_sites(x, y, w, [0, 1500], edges) * 2, edges, plan)


def test_the_subtraction_trick_gives_the_directly_summed_histograms_and_trees():
    x, y, w = _data(10, n=4000)
    x[:, 3] = x[:, 3] > 0  # a binary feature: most of its bins are empty
    plan = BoostingPlan(n_trees=4, max_depth=5, n_bins=32)
    edges = bin_edges([site_quantiles(x, plan.n_bins)], [len(x)])
    seen = []

    class Direct(BoostingSite):
        def histograms(self, nodes, n_bins):
            return self._direct(np.asarray(nodes), n_bins)

    class Both(BoostingSite):
        def histograms(self, nodes, n_bins):
            fast = super().histograms(nodes, n_bins)
            seen.append(np.abs(fast - self._direct(np.asarray(nodes), n_bins)).max())
            return fast

    direct = boost([Direct("s", bin_rows(x, edges), y, w)], edges, plan)
    fast = boost([Both("s", bin_rows(x, edges), y, w)], edges, plan)
    assert len(seen) > plan.n_trees and max(seen) < 1e-9
    for a, b in zip(direct.trees, fast.trees, strict=True):
        assert np.array_equal(a.feature, b.feature) and np.array_equal(a.bin, b.bin)
        np.testing.assert_allclose(a.value, b.value, rtol=1e-9, atol=1e-12)
