"""Pooled imaging metrics after site calibration, on synthetic kept predictions."""

import numpy as np
import pytest

from vigil.core.errors import DataError
from vigil.features.bootstrap import bootstrap_estimates, weighted_auroc
from vigil.federation.evaluation import SCORE_EDGES
from vigil.federation.image_calibrated import (
    _Replicates,
    calibrate_runs,
    calibrated_comparisons,
    calibrated_interval,
    calibrated_markdown,
)
from vigil.federation.image_intervals import paired_draws, paired_interval

OFFSETS = {"site-a": -2.0, "site-b": 0.0, "site-c": 2.5}
"""Each site's logit offset: the same ranking power on three probability scales."""


def _predictions(rng, labels, quality, offsets=OFFSETS):
    """One seed's kept predictions: arm -> site -> threshold and probabilities."""
    out = {}
    for arm, q in quality.items():
        out[arm] = {}
        for site, y in labels.items():
            z = q * (2 * y - 1) + rng.normal(size=y.size) + offsets[site]
            out[arm][site] = {"threshold": 0.5, "probability": list(1 / (1 + np.exp(-z)))}
    return out


def _data(seed, n_test, n_valid, quality, n_seeds=2):
    rng = np.random.default_rng(seed)
    labels = {s: rng.integers(0, 2, n_test) for s in OFFSETS}
    valid = {s: rng.integers(0, 2, n_valid) for s in OFFSETS}
    runs = [_predictions(rng, labels, quality) for _ in range(n_seeds)]
    held = [_predictions(rng, valid, quality) for _ in range(n_seeds)]
    return labels, runs, valid, held


@pytest.fixture(scope="module")
def data():
    return _data(0, 120, 80, {"fedavg": 1.5, "fedbn": 1.5, "centralized": 1.0})


def test_site_calibration_keeps_each_sites_auc_and_lines_up_the_pooled_scale(data):
    labels, runs, valid, held = data
    calibrated = calibrate_runs(labels, runs, valid, held)
    for raw, cal in zip(runs, calibrated, strict=True):
        for arm in raw:
            for site, y in labels.items():
                p = np.asarray(raw[arm][site]["probability"])
                q = np.asarray(cal[arm][site]["probability"])
                # a calibrator is increasing: the site's ranking, so its AUC, is unchanged
                assert np.all(np.diff(q[np.argsort(p)]) >= 0)
                assert cal[arm][site]["auc"] == pytest.approx(
                    weighted_auroc(y, p, np.ones(y.size)), abs=1e-12)
            y_all = np.concatenate(list(labels.values()))
            p_all = np.concatenate([raw[arm][s]["probability"] for s in labels])
            # the offsets penalize pooling the raw scales, not the ranking within a site
            assert cal[arm]["pooled"]["auc"] > weighted_auroc(y_all, p_all, np.ones(y_all.size))


def test_golden_pooled_auc_and_accuracy_against_scikit_learn():
    """The calibrated pooled metrics recomputed with scikit-learn on a small hand-made case."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    labels, runs, valid, held = _data(3, 30, 50, {"arm": 1.2}, n_seeds=1)
    got = calibrate_runs(labels, runs, valid, held)[0]["arm"]
    every_y, every_q, every_d = [], [], []
    for site, y in labels.items():
        logit_v = np.log(np.asarray(held[0]["arm"][site]["probability"]))
        logit_v -= np.log1p(-np.asarray(held[0]["arm"][site]["probability"]))
        p_t = np.asarray(runs[0]["arm"][site]["probability"])
        model = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(
            logit_v[:, None], valid[site])
        assert model.coef_[0, 0] > 0  # the slope constraint is not active here
        q_v = model.predict_proba(logit_v[:, None])[:, 1]
        q_t = model.predict_proba((np.log(p_t) - np.log1p(-p_t))[:, None])[:, 1]
        accuracy = [np.mean((q_v >= edge) == (valid[site] > 0)) for edge in SCORE_EDGES]
        edge = SCORE_EDGES[int(np.argmax(accuracy))]
        np.testing.assert_allclose(got[site]["probability"], q_t, atol=1e-6)
        assert got[site]["threshold"] == edge
        every_y.append(y)
        every_q.append(q_t)
        every_d.append(q_t >= edge)
    y_all = np.concatenate(every_y)
    assert got["pooled"]["auc"] == pytest.approx(
        roc_auc_score(y_all, np.concatenate(every_q)), abs=1e-9)
    assert got["pooled"]["accuracy"] == pytest.approx(
        np.mean(np.concatenate(every_d) == (y_all > 0)))


def test_paired_draws_are_bootstrap_estimates_draws():
    seen = []

    def record(counts):
        seen.append(counts)
        return np.zeros((counts.shape[0], 1))

    bootstrap_estimates(record, 37, ["x"], n_boot=25, level=0.95, seed=11, batched=True)
    test_counts, valid_counts = paired_draws(37, [9, 14], n_boot=25, seed=11)
    np.testing.assert_array_equal(test_counts[0], np.ones(37))
    np.testing.assert_array_equal(test_counts[1:], seen[1])
    assert [v.shape for v in valid_counts] == [(26, 9), (26, 14)]
    assert all((v[0] == 1).all() and (v[1:].sum(axis=1) == v.shape[1]).all()
               for v in valid_counts)


def test_fixed_calibrators_interval_is_paired_intervals_on_the_calibrated_runs(data):
    """The fixed variant resamples the test images exactly as paired_interval does."""
    labels, runs, valid, held = data
    calibrated = calibrate_runs(labels, runs, valid, held)
    for arm, versus, factor in (("fedavg", None, 1.0), ("fedavg", "centralized", 0.98)):
        got, counts = calibrated_interval(labels, runs, valid, held, arm, versus,
                                          factor=factor, n_boot=300, seed=4)
        want = paired_interval(labels, calibrated, arm, versus, factor=factor, n_boot=300,
                               seed=4)
        for m in ("auc", "accuracy"):
            assert (got[m].value, got[m].low, got[m].high) == pytest.approx(
                (want[m].value, want[m].low, want[m].high), abs=1e-12)
        assert counts == {"undefined": 0, "separated": 0}


def test_refit_is_paired_with_the_fixed_resamples_and_widens_with_few_validation_images():
    # many validation images: the re-fitted calibrators barely move, so every resample's
    # value is the fixed one's, which holds only if both score the same test draws
    big = _data(1, 100, 3000, {"fedavg": 1.5}, n_seeds=1)
    options = {"n_boot": 40, "seed": 2, "method": "logistic"}
    fixed, _ = _Replicates(*big, refit=False, **options).of(0, "fedavg")
    refit, separated = _Replicates(*big, refit=True, **options).of(0, "fedavg")
    assert not separated.any()
    assert np.abs(refit[:, 0] - fixed[:, 0]).max() < 0.001  # AUC
    assert np.abs(refit[:, 1] - fixed[:, 1]).max() < 0.02  # accuracy: an edge may move
    other, _ = _Replicates(*big, refit=False, n_boot=40, seed=3, method="logistic").of(
        0, "fedavg")
    assert np.abs(other[1:, 0] - fixed[1:, 0]).max() > 0.005  # other draws: far apart
    # few validation images: the calibrators' own noise widens the interval
    small = _data(5, 150, 50, {"fedavg": 1.0, "centralized": 1.0})
    a, _ = calibrated_interval(*small, "fedavg", "centralized", n_boot=300, seed=0)
    b, counts = calibrated_interval(*small, "fedavg", "centralized", n_boot=300, seed=0,
                                    refit=True)
    assert b["auc"].value == pytest.approx(a["auc"].value, abs=1e-12)
    assert b["accuracy"].value == pytest.approx(a["accuracy"].value, abs=1e-12)
    # (here 1.29 and 1.80 times as wide; 1.1 to 1.4 and 1.4 to 2.0 over other data seeds)
    assert b["auc"].high - b["auc"].low > 1.15 * (a["auc"].high - a["auc"].low)
    assert b["accuracy"].high - b["accuracy"].low > 1.3 * (a["accuracy"].high
                                                           - a["accuracy"].low)
    assert counts["undefined"] == 0


def test_separated_resamples_are_counted():
    rng = np.random.default_rng(8)
    labels = {"site-a": rng.integers(0, 2, 60)}
    y_v = np.array([0] * 25 + [1] * 25)
    valid = {"site-a": y_v}
    # one negative above one positive: the validation images are not separated, most
    # resamples that drop either of the two are
    p_v = np.where(y_v > 0, np.linspace(0.6, 0.95, 50), np.linspace(0.05, 0.4, 50))
    p_v[0], p_v[-1] = 0.7, 0.5
    runs = [{"a": {"site-a": {"probability": list(rng.random(60))}}}]
    held = [{"a": {"site-a": {"probability": list(p_v)}}}]
    _, fixed = calibrated_interval(labels, runs, valid, held, "a", n_boot=200)
    _, refit = calibrated_interval(labels, runs, valid, held, "a", n_boot=200, refit=True)
    assert fixed == {"undefined": 0, "separated": 0}
    # P(a resample lacks a given image) = (1 - 1/50) ** 50 = 0.364; either of two: 0.60
    assert 0.5 < refit["separated"] / 200 < 0.7


def test_comparisons_skip_absent_arms_and_render(data):
    labels, runs, valid, held = data
    rows = calibrated_comparisons(labels, runs, valid, held, n_boot=50)
    got = {(r["arm"], r["versus"], r["variant"]) for r in rows}
    assert got == {(a, v, variant) for a, v in (("fedavg", None), ("fedbn", "fedavg"),
                                                ("fedavg", "centralized"))
                   for variant in ("fixed", "refit")}
    table = calibrated_markdown(rows)
    assert table.count("\n") == 3 + 1 and "fedavg − 0.98 × centralized" in table


def test_missing_validation_predictions_are_a_clear_error(data):
    labels, runs, valid, held = data
    stripped = [{arm: dict(cells) for arm, cells in h.items()} for h in held]
    stripped[1]["fedbn"]["site-b"] = {"auc": 0.9}
    with pytest.raises(DataError, match="expected kept test and validation predictions of "
                                        "arm 'fedbn' at site-b"):
        calibrate_runs(labels, runs, valid, stripped)
    with pytest.raises(DataError, match="for each of the 2 runs, got 1"):
        calibrated_interval(labels, runs, valid, held[:1], "fedavg")
    short = {s: y[:10] for s, y in valid.items()}
    with pytest.raises(DataError, match="expected 120 test and 10 validation predictions"):
        calibrate_runs(labels, runs, short, held)
