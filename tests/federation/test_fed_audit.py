"""Membership-inference audit: golden values against scikit-learn, properties, error contracts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from vigil.core.errors import DataError
from vigil.federation.audit import (
    attack_result,
    confidence_logit,
    group_mean,
    lira_offline,
    loss_scores,
    tpr_at_fpr,
)


def test_attack_auc_and_low_fpr_tpr_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.3, 1, 3000), rng.normal(0, 1, 5000)
    r = attack_result(members, nonmembers)
    y = np.r_[np.ones(3000), np.zeros(5000)]
    s = np.r_[members, nonmembers]
    assert r.auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert r.tpr_at_1pct_fpr == pytest.approx(tpr[fpr <= 0.01].max(), abs=1e-12)
    assert r.tpr_at_01pct_fpr == pytest.approx(tpr[fpr <= 0.001].max(), abs=1e-12)
    assert r.advantage == pytest.approx((tpr - fpr).max(), abs=1e-12)


def test_an_attack_on_a_model_that_leaks_nothing_is_a_coin() -> None:
    rng = np.random.default_rng(1)
    r = attack_result(rng.normal(size=20000), rng.normal(size=20000))
    assert abs(r.auc - 0.5) < 0.01 and abs(r.tpr_at_1pct_fpr - 0.01) < 0.004
    assert attack_result(np.array([2.0, 3.0]), np.array([0.0, 1.0])).tpr_at_1pct_fpr == 1.0


def test_loss_scores_are_minus_mean_patient_cross_entropy() -> None:
    p = np.array([0.9, 0.2, 0.5])
    y = np.array([1, 0, 1])
    got = loss_scores(p, y, np.array([0, 2, 3]))
    want = [-(-np.log(0.9) - np.log(0.8)) / 2, np.log(0.5)]
    assert got == pytest.approx(want)
    assert group_mean(np.array([1.0, 3.0, 5.0]), np.array([0, 2, 3])).tolist() == [2.0, 5.0]
    assert confidence_logit(np.array([0.75]), np.array([1]))[0] == pytest.approx(np.log(3))


def test_lira_removes_record_difficulty_that_blinds_the_raw_confidence() -> None:
    rng = np.random.default_rng(2)
    n, k = 4000, 16
    difficulty = rng.normal(0, 2.0, n)  # some records are hard for every model
    member = rng.random(n) < 0.5
    out = difficulty + rng.normal(0, 0.5, (k, n))
    target = difficulty + rng.normal(0, 0.5, n) + np.where(member, 1.0, 0.0)
    raw = attack_result(target[member], target[~member])
    lira = lira_offline(target, out)
    assert raw.auc < 0.7
    assert attack_result(lira[member], lira[~member]).auc > 0.85
    per_record = lira_offline(target, out, fixed_variance=False)
    assert attack_result(per_record[member], per_record[~member]).auc > 0.85


def test_lira_ignores_in_values_and_needs_two_out_values() -> None:
    out = np.array([[0.0, np.nan], [2.0, 1.0], [np.nan, 3.0]])
    s = lira_offline(np.array([1.0, 2.0]), out, fixed_variance=False)
    assert s == pytest.approx([0.5, 0.5])  # each target sits on its OUT mean
    with pytest.raises(DataError, match="at least 2 OUT shadow values"):
        lira_offline(np.array([1.0, 2.0]), np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(DataError, match=r"shape \(k, 2\)"):
        lira_offline(np.array([1.0, 2.0]), np.zeros((3, 3)))


def test_errors_say_what_was_expected() -> None:
    with pytest.raises(DataError, match="expected members and non-members, got 0 and 1"):
        attack_result(np.array([]), np.array([1.0]))
    with pytest.raises(DataError, match="non-empty groups"):
        group_mean(np.array([1.0, 2.0]), np.array([0, 0, 2]))
    assert tpr_at_fpr(np.array([1.0]), np.array([0.0]), 0.01) == 1.0


def test_auc_interval_covers_the_truth_at_about_95_percent() -> None:
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    shift = 0.3
    truth = norm.cdf(shift / np.sqrt(2))  # AUC of N(shift, 1) vs N(0, 1)
    hits = 0
    for _ in range(200):
        r = attack_result(rng.normal(shift, 1, 300), rng.normal(0, 1, 700))
        hits += r.auc_low <= truth <= r.auc_high
    assert 0.90 <= hits / 200 <= 0.99
