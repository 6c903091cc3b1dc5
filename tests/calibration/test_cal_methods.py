"""Recalibration methods: golden values vs independent references, properties, contracts."""

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from vigil.calibration import (
    BetaCalibration,
    CalibrationWarning,
    InTheLarge,
    IsotonicCalibration,
    LogisticCalibration,
    calibrator_from_dict,
    make_calibrator,
    parse_method,
)
from vigil.calibration._logistic import logit, sigmoid
from vigil.calibration.isotonic import pool_adjacent_violators
from vigil.core.errors import ConfigError, DataError, NotFittedError

ALL = (InTheLarge, LogisticCalibration, BetaCalibration, IsotonicCalibration)


def distorted(seed, n=4000, *, slope=1.6, shift=0.5, base=-3.0):
    """Outcomes from a true risk, and a model whose log-odds are a distortion of it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(base, 1.5, n)
    y = (rng.random(n) < sigmoid(z)).astype(int)
    return sigmoid(shift + slope * z), y


def unpenalized(x, y):
    return LogisticRegression(C=np.inf, tol=1e-12, max_iter=100_000).fit(x, y)


def log_loss(y, p):
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


# -- golden values ---------------------------------------------------------------------------------


def test_logistic_matches_unpenalized_sklearn_logistic_regression_on_the_logit():
    p, y = distorted(0)
    cal = LogisticCalibration().fit(p, y)
    ref = unpenalized(logit(p)[:, None], y)
    assert cal.slope_ == pytest.approx(ref.coef_[0, 0], abs=1e-6)
    assert cal.intercept_ == pytest.approx(ref.intercept_[0], abs=1e-6)
    assert cal.slope_ == pytest.approx(1 / 1.6, abs=0.1)  # undoes the distortion


def test_beta_matches_sklearn_on_log_features_when_unconstrained():
    p, y = distorted(1)
    cal = BetaCalibration().fit(p, y)
    ref = unpenalized(np.column_stack([np.log(p), -np.log1p(-p)]), y)
    assert [cal.a_, cal.b_] == pytest.approx(ref.coef_[0].tolist(), abs=1e-6)
    assert cal.c_ == pytest.approx(ref.intercept_[0], abs=1e-6)


def test_beta_sets_a_negative_coefficient_to_zero_and_refits_kull_2017():
    rng = np.random.default_rng(2)
    p = rng.uniform(0.01, 0.99, 3000)
    # true log-odds decrease in ln p but increase in -ln(1-p): unconstrained a < 0
    y = (rng.random(p.size) < sigmoid(-1.0 - 0.8 * np.log(p) - 1.5 * np.log1p(-p))).astype(int)
    free = unpenalized(np.column_stack([np.log(p), -np.log1p(-p)]), y)
    assert free.coef_[0, 0] < 0
    cal = BetaCalibration().fit(p, y)
    ref = unpenalized(-np.log1p(-p)[:, None], y)
    assert cal.a_ == 0.0
    assert cal.b_ == pytest.approx(ref.coef_[0, 0], abs=1e-6)
    assert cal.c_ == pytest.approx(ref.intercept_[0], abs=1e-6)


def test_in_the_large_solves_its_score_equation():
    p, y = distorted(3)
    z = logit(p)
    root = brentq(lambda a: float(np.sum(y - sigmoid(a + z))), -10, 10, xtol=1e-14)
    cal = InTheLarge().fit(p, y)
    assert cal.intercept_ == pytest.approx(root, abs=1e-8)
    assert cal.transform(p).sum() == pytest.approx(y.sum(), rel=1e-9)  # O:E = 1 after


def test_isotonic_matches_sklearn_isotonic_regression_everywhere():
    p, y = distorted(4, n=3000)
    w = np.random.default_rng(5).uniform(0.5, 2.0, p.size)
    p = np.round(p, 3)  # ties
    cal = IsotonicCalibration().fit(p, y, sample_weight=w)
    ref = IsotonicRegression(out_of_bounds="clip").fit(p, y, sample_weight=w)
    grid = np.r_[np.linspace(0, 1, 20_001), p]
    np.testing.assert_allclose(cal.transform(grid), ref.predict(grid), atol=1e-12)
    assert cal.X_thresholds_.size < np.unique(p).size  # steps, not every point


def test_pool_adjacent_violators_textbook_example():
    # Barlow et al. style: 1, 3, 2, 4 with weights 1, 1, 3, 1 -> (3 + 6) / 4 = 2.25
    out = pool_adjacent_violators(np.array([1.0, 3.0, 2.0, 4.0]), np.array([1.0, 1.0, 3.0, 1.0]))
    assert out.tolist() == [1.0, 2.25, 2.25, 4.0]


def test_sample_weight_equals_repetition():
    p, y = distorted(6, n=1500)
    reps = np.random.default_rng(7).integers(1, 4, p.size)
    for cls in (LogisticCalibration, BetaCalibration, IsotonicCalibration):
        weighted = cls().fit(p, y, sample_weight=reps).transform(p)
        repeated = cls().fit(np.repeat(p, reps), np.repeat(y, reps)).transform(p)
        np.testing.assert_allclose(weighted, repeated, atol=1e-8)


# -- properties ------------------------------------------------------------------------------------

distortion = st.tuples(
    st.integers(0, 10_000),
    st.one_of(st.floats(0.3, 0.7), st.floats(1.5, 3.0)),  # over- or under-confident
    st.floats(-1.5, 1.5),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(distortion)
def test_calibrated_brier_and_log_loss_never_worse_on_the_fit_data(args):
    seed, slope, shift = args
    p, y = distorted(seed, n=2000, slope=slope, shift=shift)
    raw_brier, raw_ll = np.mean((p - y) ** 2), log_loss(y, p)
    for cls in (LogisticCalibration, BetaCalibration, IsotonicCalibration):
        q = cls().fit_transform(p, y)
        assert np.mean((q - y) ** 2) <= raw_brier, cls.__name__
    for cls in (InTheLarge, LogisticCalibration, BetaCalibration):
        assert log_loss(y, cls().fit_transform(p, y)) <= raw_ll + 1e-12, cls.__name__


@settings(max_examples=25, deadline=None)
@given(distortion)
def test_outputs_are_monotone_and_within_0_1(args):
    seed, slope, shift = args
    p, y = distorted(seed, n=1500, slope=slope, shift=shift)
    grid = np.r_[0.0, np.sort(np.random.default_rng(seed).random(500)), 1.0]
    for cls in ALL:
        q = cls().fit(p, y).transform(grid)
        assert np.all(np.diff(q) >= -1e-15), cls.__name__
        assert q.min() >= 0.0 and q.max() <= 1.0


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(ALL))
def test_to_dict_from_dict_round_trip_through_json(seed, cls):
    p, y = distorted(seed, n=1200)
    cal = cls().fit(p, y)
    again = calibrator_from_dict(json.loads(json.dumps(cal.to_dict())))
    assert type(again) is cls
    assert again.get_params() == cal.get_params()
    grid = np.linspace(0, 1, 1001)
    np.testing.assert_array_equal(again.transform(grid), cal.transform(grid))


# -- contracts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_not_fitted_error_before_fit(cls):
    cal = cls()
    with pytest.raises(NotFittedError, match=f"{cls.__name__} is not fitted yet"):
        cal.transform([0.1])
    with pytest.raises(NotFittedError):
        cal.to_dict()
    assert isinstance(NotFittedError("x"), ValueError)


@pytest.mark.parametrize("cls", ALL)
def test_init_only_stores_keyword_only_params(cls):
    with pytest.raises(TypeError):
        cls(5)
    cal = cls(min_events=3)
    assert cal.get_params() == {"min_events": 3}
    assert not [k for k in vars(cal) if k.endswith("_")]


@pytest.mark.parametrize(("cls", "need"), [(InTheLarge, 10), (LogisticCalibration, 20),
                                           (BetaCalibration, 30), (IsotonicCalibration, 10)])
def test_minimum_events_rule_is_an_error(cls, need):
    p = np.linspace(0.01, 0.99, 2000)
    y = np.zeros(p.size, dtype=int)
    y[-(need - 1):] = 1
    message = f"at least {need} rows of each outcome.*got {need - 1} positive"
    with pytest.raises(DataError, match=message):
        cls().fit(p, y)
    y[-need:] = 1
    y[[0, -1]] = 1, 0  # one positive among the lowest scores: not separated
    cls().fit(p, y)  # exactly at the rule: fine
    with pytest.raises(DataError, match=f"at least {need + 5}"):
        cls(min_events=need + 5).fit(p, y)


def test_isotonic_warns_below_1000_samples():
    p, y = distorted(8, n=999, base=-1.0)
    with pytest.warns(CalibrationWarning, match="fitted on 999 rows, fewer than the 1000"):
        IsotonicCalibration().fit(p, y)
    p, y = distorted(8, n=1000, base=-1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        IsotonicCalibration().fit(p, y)


def test_logistic_with_an_anti_informative_model_warns_and_is_constant():
    p, y = distorted(9)
    with pytest.warns(CalibrationWarning, match="not positively associated"):
        cal = LogisticCalibration().fit(1 - p, y)
    assert cal.slope_ == 0.0
    assert np.ptp(cal.transform(np.linspace(0, 1, 11))) == 0.0


@pytest.mark.parametrize(("scores", "labels", "match"), [
    ([0.1, 1.2], [0, 1], r"probabilities in \[0, 1\]"),
    ([0.1, np.nan], [0, 1], r"probabilities in \[0, 1\]"),
    ([[0.1, 0.2]], [0, 1], r"shape \(n_samples,\)"),
    ([0.1, 0.2], [0, 2], "0 or 1"),
    ([0.1, 0.2], [0, 1, 1], r"labels of shape \(2,\)"),
])
def test_bad_inputs_are_data_errors(scores, labels, match):
    with pytest.raises(DataError, match=match):
        LogisticCalibration().fit(scores, labels)


def test_invalid_parameter_message_follows_the_template():
    message = "The 'min_events' parameter of BetaCalibration must be an int >= 1 or None. Got -1"
    with pytest.raises(ConfigError, match=message):
        BetaCalibration(min_events=-1).fit([0.1, 0.2], [0, 1])


def test_unknown_method_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'isotonic'"):
        parse_method("isotonik")
    assert type(make_calibrator("beta")) is BetaCalibration


def test_from_dict_refuses_another_method_or_missing_state():
    cal = LogisticCalibration().fit(*distorted(10))
    with pytest.raises(ConfigError, match="expected a 'beta' calibration, got 'logistic'"):
        BetaCalibration.from_dict(cal.to_dict())
    broken = cal.to_dict()
    del broken["state"]["slope_"]
    with pytest.raises(ConfigError, match="lacks slope_"):
        calibrator_from_dict(broken)


def test_separated_is_no_negative_above_a_positive():
    from vigil.calibration._logistic import separated

    assert separated(np.array([0.1, 0.2, 0.2, 0.9]), np.array([0, 0, 1, 1]))  # quasi-complete
    assert not separated(np.array([0.1, 0.3, 0.2, 0.9]), np.array([0, 0, 1, 1]))
    assert separated(np.array([0.1, 0.3, 0.2, 0.9]), np.array([0, 0, 1, 1]),
                     np.array([1.0, 0.0, 1.0, 1.0]))  # the overlapping row has no weight
    assert not separated(np.array([0.1, 0.9]), np.array([1, 1]))  # one outcome only
    assert not separated(np.array([0.9, 0.1]), np.array([0, 1]))  # reversed: slope 0, not a step


def test_separated_each_is_separated_for_every_weighting():
    from vigil.calibration import separated, separated_each

    rng = np.random.default_rng(5)
    score, y = rng.uniform(size=12), np.r_[np.zeros(6, dtype=np.int8), np.ones(6, dtype=np.int8)]
    score[6:] += 0.4  # overlapping classes: some resamples separate them, some do not
    weights = rng.poisson(1.0, size=(300, 12)).astype(np.float64)
    weights[0, 6:] = 0.0  # a resample without a positive: not separated
    got = separated_each(score, y, weights)
    assert got.shape == (300,) and not got[0] and 0 < got.sum() < 300
    assert got.tolist() == [separated(score, y, w) for w in weights]


@pytest.mark.parametrize("cls", [LogisticCalibration, BetaCalibration])
def test_logistic_maps_on_separated_data_warn_of_a_near_step(cls):
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(60, dtype=np.int8), np.ones(60, dtype=np.int8)]
    p = np.r_[rng.uniform(0.05, 0.45, 60), rng.uniform(0.55, 0.95, 60)]
    with pytest.warns(CalibrationWarning, match="separate the outcomes of the fit data"):
        cal = cls().fit(p, y)
    step = cal.transform(np.array([0.46, 0.54]))
    assert step[0] < 0.01 and step[1] > 0.99  # the near step the warning names
    p[0] = 0.6  # one negative above a positive: a finite fit, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls().fit(p, y)
