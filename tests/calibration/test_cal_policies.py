"""Threshold policies and the operating point with its patient bootstrap."""

import numpy as np
import pytest

from vigil.calibration import (
    PolicyKey,
    alert_events,
    alerts_per_patient_day,
    choose_threshold,
    operating_point,
    parse_policy,
)
from vigil.core.errors import ConfigError, DataError
from vigil.features.metrics import evaluate
from vigil.features.utility import best_utility_threshold, normalized_utility


def cohort(seed, n_patients=300):
    """Hourly rows of patients; 20% become septic, their scores rise before the labels."""
    rng = np.random.default_rng(seed)
    labels, scores, lengths = [], [], []
    for _ in range(n_patients):
        n = int(rng.integers(8, 60))
        y = np.zeros(n, dtype=np.int8)
        drift = np.zeros(n)
        if rng.random() < 0.2:
            onset = int(rng.integers(0, n))
            y[onset:] = 1
            drift = np.clip(np.arange(n) - onset + 8, 0, None) * 0.15
        z = -3.0 + drift + np.cumsum(rng.normal(0, 0.3, n))
        labels.append(y)
        scores.append(np.round(1 / (1 + np.exp(-z)), 4))
        lengths.append(n)
    return np.concatenate(labels), np.concatenate(scores), np.r_[0, np.cumsum(lengths)]


@pytest.fixture(scope="module")
def data():
    return cohort(0)


def at(y, p, starts, t, metric):
    return operating_point(y, p, starts, threshold=t, n_boot=0).metrics[metric].value


@pytest.mark.parametrize(("text", "key", "target"), [
    ("sensitivity=0.8", PolicyKey.SENSITIVITY, 0.8),
    (" patient-sensitivity = 0.9", PolicyKey.PATIENT_SENSITIVITY, 0.9),
    ("alerts-per-patient-day=1.5", PolicyKey.ALERTS_PER_PATIENT_DAY, 1.5),
    ("ppv=0.2", PolicyKey.PPV, 0.2),
    ("utility", PolicyKey.UTILITY, None),
])
def test_parse(text, key, target):
    policy = parse_policy(text)
    assert (policy.key, policy.target) == (key, target)
    assert parse_policy(str(policy)) == policy


@pytest.mark.parametrize(("text", "match"), [
    ("sensitivty=0.8", "Did you mean 'sensitivity'"),
    ("sensitivity", "expected sensitivity=NUMBER"),
    ("sensitivity=1.2", r"target in \(0, 1\], got 1.2"),
    ("ppv=0", r"target in \(0, 1\], got 0"),
    ("alerts-per-patient-day=-1", "budget > 0"),
    ("utility=3", "takes no value"),
])
def test_parse_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_policy(text)


@pytest.mark.parametrize(("key", "metric"), [("sensitivity", "sensitivity"),
                                             ("patient-sensitivity", "patient_sensitivity")])
@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_sensitivity_policies_pick_the_largest_threshold_meeting_the_target(data, key, metric,
                                                                            target):
    y, p, starts = data
    t = choose_threshold(parse_policy(f"{key}={target}"), y, p, starts)
    assert at(y, p, starts, t, metric) >= target
    higher = np.unique(p[p > t])
    assert higher.size == 0 or at(y, p, starts, higher[0], metric) < target


def test_ppv_policy_picks_the_smallest_threshold_meeting_the_target(data):
    y, p, starts = data
    t = choose_threshold(parse_policy("ppv=0.5"), y, p, starts)
    assert at(y, p, starts, t, "ppv") >= 0.5
    lower = np.unique(p[p < t])
    ppv_lower = [y[p >= u].mean() for u in lower]  # plain definition, every lower threshold
    assert lower.size > 100 and max(ppv_lower) < 0.5


@pytest.mark.parametrize("budget", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("suppression", [0.0, 6.0])
def test_alert_budget_replays_the_alert_policy(data, budget, suppression):
    y, p, starts = data
    t = choose_threshold(parse_policy(f"alerts-per-patient-day={budget}"), y, p, starts,
                         suppression_hours=suppression)

    def rate(u):
        return alerts_per_patient_day(alert_events(p, starts, threshold=u,
                                                   suppression_hours=suppression))

    assert rate(t) <= budget
    lower = np.unique(p[p < t])
    assert lower.size == 0 or rate(lower[-1]) > budget
    if suppression > 0:  # suppression lets a lower threshold through than the share of rows does
        plain = choose_threshold(parse_policy(f"alerts-per-patient-day={budget}"), y, p, starts,
                                 suppression_hours=0.0)
        assert t < plain


def test_utility_policy_is_best_utility_threshold(data):
    y, p, starts = data
    t = choose_threshold(parse_policy("utility"), y, p, starts)
    assert t == best_utility_threshold(y, p, starts)[0]


def test_unreachable_targets_are_data_errors(data):
    y, p, starts = data
    with pytest.raises(DataError, match="no threshold reaches PPV 1"):
        choose_threshold(parse_policy("ppv=1"), y, np.full(p.size, 0.5), starts)
    with pytest.raises(DataError, match="above the budget 0.001"):
        choose_threshold(parse_policy("alerts-per-patient-day=0.001"), y, np.full(p.size, 0.5),
                         starts)
    with pytest.raises(DataError, match="no row with SepsisLabel = 1"):
        choose_threshold(parse_policy("sensitivity=0.8"), np.zeros_like(y), p, starts)


def test_operating_point_matches_the_shared_metrics(data):
    y, p, starts = data
    t = 0.2
    op = operating_point(y, p, starts, threshold=t, n_boot=200, seed=1)
    ref = evaluate(y, p, (p >= t).astype(np.int8), starts, threshold=t)
    m = {k: v.value for k, v in op.metrics.items()}
    assert m["sensitivity"] == pytest.approx(ref.sensitivity)
    assert m["specificity"] == pytest.approx(ref.specificity)
    assert m["false_positive_rate"] == pytest.approx(1 - ref.specificity)
    assert m["ppv"] == pytest.approx(ref.ppv)
    assert m["utility"] == pytest.approx(
        normalized_utility(y, (p >= t).astype(np.int8), starts).normalized)
    events = alert_events(p, starts, threshold=t, suppression_hours=6.0)
    assert m["alerts_per_patient_day"] == pytest.approx(alerts_per_patient_day(events))
    for e in op.metrics.values():
        assert e.low <= e.value <= e.high
    again = operating_point(y, p, starts, threshold=t, n_boot=200, seed=1)
    assert again.to_dict() == op.to_dict()
    assert (op.n_patients, op.n_rows) == (starts.size - 1, y.size)


def test_bootstrap_interval_shrinks_with_more_patients():
    small, large = cohort(1, 100), cohort(1, 1600)
    width = [operating_point(*c, threshold=0.2, n_boot=300).metrics["sensitivity"]
             for c in (small, large)]
    assert (width[1].high - width[1].low) < 0.5 * (width[0].high - width[0].low)


def test_patient_detected_only_by_a_positive_up_to_onset():
    # first SepsisLabel at hour 2 -> onset at hour 8
    y = np.array([0, 0] + [1] * 10, dtype=np.int8)
    starts = np.array([0, 12])
    for hour, detected in ((8, 1.0), (9, 0.0)):
        p = np.zeros(12)
        p[hour] = 0.9
        op = operating_point(y, p, starts, threshold=0.5, n_boot=0)
        assert op.metrics["patient_sensitivity"].value == detected
        assert np.isnan(op.metrics["patient_sensitivity"].low)
