"""Trees grown across the sites after the rounds, fused with the network: pooling, export."""

import numpy as np
import pytest
import torch

from vigil.core.errors import AggregationError, ConfigError
from vigil.core.package import read_package
from vigil.features import FEATURE_SCHEMA
from vigil.features.metrics import auroc
from vigil.federation.boosting import BoostingPlan, BoostingSite
from vigil.federation.driver import Plan
from vigil.federation.evaluation import SCORE_EDGES
from vigil.federation.hybrid import (
    HybridTrees,
    Standardization,
    fuse,
    grow_hybrid,
    hybrid_proba,
    platt_from_histograms,
    refuse_trees,
    sigmoid,
)
from vigil.federation.messages import LogitSums
from vigil.federation.model import SepsisNet, predict_logit, set_weights
from vigil.federation.simulation import export_run, federate
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy
from vigil.runtime.scoring import Scorer

SPEC = ModelSpec(hidden=(8,), dropout=0.0)
PLAN = Plan(rounds=2, batch_size=512, lr=1e-3)
TREES = BoostingPlan(n_trees=4, max_depth=3, n_bins=32)


@pytest.fixture(scope="module")
def half(sample):
    torch.set_num_threads(1)
    return sample.select(np.arange(0, sample.grid.n_patients, 2))


@pytest.fixture(scope="module")
def hybrid_run(half):
    return federate(half, scheme="hospital-unit", strategy=make_strategy("fedprox", mu=0.01),
                    plan=PLAN, model=SPEC, data="sample.parquet", trees=TREES)


def _net(run):
    net = SepsisNet(len(FEATURE_SCHEMA), hidden=SPEC.hidden, dropout=SPEC.dropout)
    set_weights(net, run.result.weights)
    return net


def _pooled_valid(run):
    X = np.concatenate([s.valid.X for s in run.sites])
    y = np.concatenate([s.valid.y for s in run.sites])
    return X, y


def test_standardization_pools_site_sums_to_the_moments_of_all_rows():
    rng = np.random.default_rng(0)
    parts = [(rng.normal(-3, 1.5, n), rng.normal(-4, 0.5, n)) for n in (50, 200, 7)]
    sums = [LogitSums(f"s{i}", len(a), a.sum(), a @ a, b.sum(), b @ b)
            for i, (a, b) in enumerate(parts)]
    st = Standardization.from_sums(sums)
    net, tree = np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])
    assert (st.net_mean, st.net_std) == pytest.approx((net.mean(), net.std()), rel=1e-12)
    assert (st.tree_mean, st.tree_std) == pytest.approx((tree.mean(), tree.std()), rel=1e-12)
    assert st == Standardization.from_sums(list(reversed(sums)))
    # the fused score of the module docstring, by hand
    assert fuse(np.array([net.mean() + 2 * net.std()]), np.array([tree.mean() - tree.std()]),
                st)[0] == pytest.approx(2 - 1)


def test_platt_scaling_from_histograms_is_the_weighted_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    s = rng.normal(-1.0, 2.0, 20000)
    y = rng.random(s.size) < 1 / (1 + np.exp(-(-3.0 + 0.7 * s)))
    bins = np.searchsorted(SCORE_EDGES, sigmoid(s), side="right")
    n_bins = SCORE_EDGES.size + 1
    pos = np.bincount(bins[y], minlength=n_bins)
    neg = np.bincount(bins[~y], minlength=n_bins)
    a, b = platt_from_histograms(pos, neg)
    # the reference: scikit-learn, unpenalized, on every bin's center weighted by its rows
    edges = np.log(SCORE_EDGES / (1 - SCORE_EDGES))
    centers = np.r_[edges[0] - 0.025, (edges[:-1] + edges[1:]) / 2, edges[-1] + 0.025]
    keep = pos + neg > 0
    X = np.r_[centers[keep], centers[keep]][:, None]
    target = np.r_[np.ones(keep.sum()), np.zeros(keep.sum())]
    weight = np.r_[pos[keep], neg[keep]]
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(X, target, weight)
    assert (a, b) == pytest.approx((ref.intercept_[0], ref.coef_[0, 0]), abs=1e-5)
    assert (a, b) == pytest.approx((-3.0, 0.7), abs=0.15)  # and near the truth
    with pytest.raises(AggregationError, match="expected positive and negative"):
        platt_from_histograms(np.zeros(n_bins), neg)


def test_constant_scores_or_no_rows_cannot_be_standardized():
    with pytest.raises(AggregationError, match="constant over 3 validation rows"):
        Standardization.from_sums([LogitSums("s", 3, 3.0, 3.0, 1.0, 5.0)])
    with pytest.raises(AggregationError, match="expected validation rows"):
        Standardization.from_sums([])


def test_pooled_validation_of_the_fused_score_matches_the_pooled_rows(hybrid_run):
    hybrid = hybrid_run.hybrid
    assert hybrid is not None and len(hybrid.part.trees) == TREES.n_trees
    assert hybrid.boosted.exclusions == () and len(hybrid.evaluations) == 4
    X, y = _pooled_valid(hybrid_run)
    p = hybrid_proba(_net(hybrid_run), hybrid.part, X)
    # from the sites' binned histograms: the AUROC of the binned scores
    binned = np.searchsorted(SCORE_EDGES, p, side="right")
    assert hybrid.pooled.auroc == pytest.approx(auroc(y, binned), abs=1e-9)
    # the bins are 0.05 wide in the calibrated logit a + b s: ties cost a little AUROC
    assert abs(hybrid.pooled.auroc - auroc(y, p)) < 5e-3
    # Platt scaling's likelihood equations: the mean probability is the positive rate
    # (exactly at the bins' centers, closely on the rows themselves)
    assert p.mean() == pytest.approx(y.mean(), rel=0.05)
    # the fused score, standardized over the same rows, has mean 0 and variance 2 (1 + rho)
    net_logit, raw = predict_logit(_net(hybrid_run), X), hybrid.part.raw(X)
    s = fuse(net_logit, raw, hybrid.part.standardization)
    np.testing.assert_allclose(np.log(p / (1 - p)),
                               hybrid.part.intercept + hybrid.part.slope * s, atol=1e-9)
    rho = np.corrcoef(net_logit, raw)[0, 1]
    assert s.mean() == pytest.approx(0.0, abs=1e-9)
    assert s.var() == pytest.approx(2 * (1 + rho), rel=1e-9)
    assert hybrid_run.pooled is hybrid.pooled and hybrid_run.result.pooled is not hybrid.pooled


def test_the_package_scores_as_the_network_and_trees_fused(hybrid_run, half, tmp_path):
    (package,) = export_run(hybrid_run, tmp_path / "hyb", name="sepsis-hyb", version="0.0.1")
    m = read_package(package.path, expected_schema_sha256=FEATURE_SCHEMA.sha256).manifest
    arch = m.model_dump()["architecture"]
    assert arch["type"] == "SepsisNet+trees" and arch["trees"]["n_trees"] == TREES.n_trees
    assert m.threshold == hybrid_run.hybrid.pooled.threshold
    assert m.validation["auroc"] == hybrid_run.hybrid.pooled.auroc
    assert m.validation["network"]["auroc"] == hybrid_run.result.pooled.auroc
    assert m.training["boosting"]["exclusions"] == []
    assert m.training["boosting"]["sites"] == ["A-MICU", "A-SICU", "B-MICU", "B-SICU"]
    # the runtime's scorer on real rows equals torch's logit and numpy's trees, fused
    X, _ = _pooled_valid(hybrid_run)
    expected = hybrid_proba(_net(hybrid_run), hybrid_run.hybrid.part, X)
    np.testing.assert_allclose(Scorer(package).predict_proba(X), expected, atol=1e-5)
    assert "gradient-boosted trees" in (package.path / "MODEL_CARD.md").read_text()


def test_a_site_sending_bad_histograms_is_left_out_of_the_trees_with_a_record(half):
    class Scaling(BoostingSite):
        def histograms(self, nodes, n_bins):
            return 50 * super().histograms(nodes, n_bins)

    run = federate(half, scheme="hospital-unit", strategy=make_strategy("fedavg"),
                   plan=Plan(rounds=1, batch_size=512, lr=1e-3), model=SPEC, trees=TREES)
    sites = run.sites
    bad = sites[2]
    original = bad.boosting

    def boosting(edges):
        honest = original(edges)
        return Scaling(honest.name, honest.binned, honest.y, honest.weight)

    bad.boosting = boosting  # type: ignore[method-assign]
    counts = {n: s.count for n, s in run.result.statistics.items()}
    result = grow_hybrid(sites, run.result.weights, TREES, counts=counts, min_sites=2)
    (excluded,) = result.boosted.exclusions
    assert (excluded.site, excluded.reason.value, excluded.tree) == (bad.name, "bounds", 0)
    assert bad.name not in result.boosted.sites
    # it still evaluates the fused model on its validation rows
    assert len(result.evaluations) == 4
    with pytest.raises(AggregationError, match="boosting needs at least 4 sites, 3 remain"):
        grow_hybrid(sites, run.result.weights, TREES, counts=counts, min_sites=4)


def test_trees_are_refused_with_fedbn(half):
    with pytest.raises(ConfigError, match="FedBN keeps a network per site"):
        federate(half, scheme="hospital-unit", strategy=make_strategy("fedbn"), plan=PLAN,
                 model=SPEC, trees=TREES)
    with pytest.raises(ConfigError, match="FedBN keeps a network per site"):
        refuse_trees(keeps_norm_local=True)
    refuse_trees(keeps_norm_local=False)  # with or without DP (noisy trees, tree_privacy)


def test_sigmoid_is_the_logistic_function():
    assert sigmoid(np.array([0.0, np.log(3.0)])) == pytest.approx([0.5, 0.75])


def test_hybrid_trees_describe_counts_leaves(hybrid_run):
    part: HybridTrees = hybrid_run.hybrid.part
    d = part.describe()
    assert d["n_leaves"] == sum(int((t.feature < 0).sum()) for t in part.trees)
    assert d["standardization"]["net_std"] > 0 and d["plan"]["n_trees"] == TREES.n_trees


def test_for_the_trees_a_site_sends_only_quantiles_sums_and_histograms(hybrid_run):
    """Every message of the trees' steps: shaped by features, bins and nodes, never by rows."""
    sent: list[tuple[str, object]] = []

    class RecordingBoosting(BoostingSite):
        def label_sums(self):
            sent.append(("label sums", out := super().label_sums()))
            return out

        def histograms(self, nodes, n_bins):
            sent.append(("histograms", out := super().histograms(nodes, n_bins)))
            return out

    class Recording:
        def __init__(self, site):
            self.site, self.name = site, site.name

        def quantiles(self, n_bins):
            sent.append(("quantiles", out := self.site.quantiles(n_bins)))
            return out

        def boosting(self, edges):
            b = self.site.boosting(edges)
            return RecordingBoosting(b.name, b.binned, b.y, b.weight)

        def logit_sums(self, weights, base, trees):
            sent.append(("logit sums", out := self.site.logit_sums(weights, base, trees)))
            return out

        def evaluate_hybrid(self, weights, part):
            sent.append(("evaluation", out := self.site.evaluate_hybrid(weights, part)))
            return out

    sites = hybrid_run.sites
    counts = {n: s.count for n, s in hybrid_run.result.statistics.items()}
    grow_hybrid([Recording(s) for s in sites], hybrid_run.result.weights, TREES, counts=counts)
    n_features = len(FEATURE_SCHEMA)
    rows = {n for s in sites for n in (s.train.n_rows, s.valid.n_rows)}
    kinds = {k for k, _ in sent}
    assert kinds == {"quantiles", "label sums", "histograms", "logit sums", "evaluation"}
    for kind, message in sent:
        if kind == "quantiles":
            assert message.shape == (n_features, TREES.n_bins - 1)
        elif kind == "histograms":
            assert message.shape[1:] == (n_features, TREES.n_bins, 2)
            assert message.shape[0] <= 2 ** TREES.max_depth
        elif kind == "label sums":
            assert all(isinstance(v, float) for v in message)
        else:
            for key, value in message.payload().items():
                if isinstance(value, np.ndarray):
                    assert value.shape == (SCORE_EDGES.size + 1,), (kind, key)
                else:
                    assert isinstance(value, int | float | np.integer | np.floating), (kind, key)
        if isinstance(message, np.ndarray):
            assert not set(message.shape) & rows
