"""Calibration metrics against scikit-learn and hand-computed values."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score

from vigil.calibration import calibration_metrics
from vigil.calibration._logistic import logit, sigmoid
from vigil.calibration.metrics import brier, calibration_intercept_slope, ece, reliability_curve


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    z = rng.normal(-2.5, 1.2, 6000)
    y = (rng.random(z.size) < sigmoid(z)).astype(int)
    return y, sigmoid(0.7 + 1.8 * z)  # too extreme


def test_brier_and_auroc_match_sklearn(data):
    y, p = data
    m = calibration_metrics(y, p)
    assert m.brier == pytest.approx(brier_score_loss(y, p))
    assert brier(y, p) == m.brier
    assert m.auroc == pytest.approx(roc_auc_score(y, p))
    assert m.scaled_brier == pytest.approx(1 - m.brier / (y.mean() * (1 - y.mean())))
    assert m.observed_expected == pytest.approx(y.sum() / p.sum())


def test_intercept_and_slope_match_sklearn_and_recover_the_distortion(data):
    y, p = data
    intercept, slope = calibration_intercept_slope(y, p)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=100_000).fit(logit(p)[:, None], y)
    assert slope == pytest.approx(ref.coef_[0, 0], abs=1e-6)
    assert slope == pytest.approx(1 / 1.8, abs=0.08)
    # in the large the model under-predicts (its log-odds are mostly pushed down): both agree
    assert intercept > 0 and y.sum() / p.sum() > 1
    # perfectly calibrated by construction: intercept 0 and slope 1 are inside noise
    rng = np.random.default_rng(1)
    q = rng.uniform(0.01, 0.5, 20_000)
    i2, s2 = calibration_intercept_slope((rng.random(q.size) < q).astype(int), q)
    assert abs(i2) < 0.05 and abs(s2 - 1) < 0.05


def test_intercept_slope_nan_with_one_class():
    assert all(np.isnan(calibration_intercept_slope(np.zeros(5, dtype=int), np.full(5, 0.1))))


def test_ece_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.12, 0.95, 0.85, 0.55])
    # uniform bins: [0.05] |0-.05|; [0.15, 0.12] |0.5-.135|; [0.55] .55; [0.85] .15; [0.95] .05
    expected = (0.05 + 2 * abs(0.5 - 0.135) + 0.55 + 0.15 + 0.05) / 6
    assert ece(y, p) == pytest.approx(expected)
    # equal-mass, 3 bins of 2 sorted rows: (.05,.12) (.15,.55) (.85,.95)
    expected_q = (2 * abs(0.5 - 0.085) + 2 * abs(0.0 - 0.35) + 2 * abs(1.0 - 0.9)) / 6
    assert ece(y, p, n_bins=3, strategy="quantile") == pytest.approx(expected_q)


def test_reliability_curve_matches_sklearn_uniform_bins(data):
    y, p = data
    curve = reliability_curve(y, p, n_bins=10, strategy="uniform")
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(curve.observed, prob_true)
    np.testing.assert_allclose(curve.predicted, prob_pred)
    q = reliability_curve(y, p, n_bins=10)  # equal mass by default
    assert q.count.sum() == y.size and np.ptp(q.count) <= 1


def test_recalibration_fixes_the_metrics(data):
    from vigil.calibration import LogisticCalibration

    y, p = data
    before = calibration_metrics(y, p)
    after = calibration_metrics(y, LogisticCalibration().fit_transform(p, y))
    assert after.intercept == pytest.approx(0, abs=1e-6)
    assert after.slope == pytest.approx(1, abs=1e-6)
    assert after.ece < before.ece and after.brier < before.brier
    assert after.auroc == pytest.approx(before.auroc)  # monotone: ranking unchanged
