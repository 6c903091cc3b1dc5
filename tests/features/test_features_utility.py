import numpy as np
import pytest

from vigil.features.utility import best_utility_threshold, normalized_utility, row_utilities


def one(labels, preds):
    labels, preds = np.asarray(labels), np.asarray(preds)
    return normalized_utility(labels, preds, np.array([0, labels.size]))


def test_worked_example_from_the_specification():
    # research/physionet2019.md: labels [0,0,0,0,1,1], predictions [0,0,1,1,1,1] -> 3.3889
    r = one([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1])
    assert r.observed == pytest.approx(3.388889, abs=1e-6)


def septic(n_before: int, n_after: int):
    """Labels of a septic patient: n_before zeros then n_after ones; t_sepsis = n_before + 6."""
    return np.r_[np.zeros(n_before, int), np.ones(n_after, int)]


@pytest.mark.parametrize(
    ("d", "u_pos", "u_neg"),
    [
        (-20, -0.05, 0.0),  # very early positive: floored at u_fp
        (-13, -0.05, 0.0),  # (d + 12) / 6 = -1/6, floored at -0.05
        (-12, 0.0, 0.0),
        (-9, 0.5, 0.0),
        (-6, 1.0, 0.0),
        (-3, 2 / 3, -2 / 3),  # 1/3 - d/9 ; -2 (d + 6) / 9
        (0, 1 / 3, -4 / 3),
        (3, 0.0, -2.0),
        (4, 0.0, 0.0),  # after t_sepsis + 3: ignored
    ],
)
def test_each_branch_hand_computed(d, u_pos, u_neg):
    labels = septic(30, 20)  # first positive at index 30 -> t_sepsis = 36
    t = 36 + d
    up, un = row_utilities(labels, np.array([0, labels.size]))
    assert up[t] == pytest.approx(u_pos, abs=1e-12)
    assert un[t] == pytest.approx(u_neg, abs=1e-12)


def test_non_septic_patient():
    up, un = row_utilities(np.zeros(5, int), np.array([0, 5]))
    assert up.tolist() == [-0.05] * 5
    assert un.tolist() == [0.0] * 5


def test_best_and_inaction_and_normalization():
    # one septic patient labelled from index 2 (t_sepsis = 8) over 12 rows, one non-septic of 4 rows
    labels = np.r_[septic(2, 10), np.zeros(4, int)]
    starts = np.array([0, 12, 16])
    # inaction: rows d in (-6, 3] of the septic patient: t = 3..11 -> d = -5..3
    inaction = sum(-2 * (d + 6) / 9 for d in range(-5, 4))
    # best: predict 1 for d in [-12, 3] (all 12 rows: d = -8..3)
    best = sum((d + 12) / 6 for d in range(-8, -5)) + sum(1 / 3 - d / 9 for d in range(-5, 4))
    r = normalized_utility(labels, labels, starts)
    assert r.inaction == pytest.approx(inaction)
    assert r.best == pytest.approx(best)
    assert normalized_utility(labels, np.zeros(16, int), starts).normalized == 0.0
    ideal = np.r_[np.ones(12, int), np.zeros(4, int)]
    assert normalized_utility(labels, ideal, starts).normalized == pytest.approx(1.0)
    # all ones: the non-septic patient costs 4 * 0.05
    allpos = normalized_utility(labels, np.ones(16, int), starts)
    assert allpos.observed == pytest.approx(best - 0.2)


def test_first_row_positive_patient_counts_rows_not_iculos():
    # labelled from the first row: t_sepsis = 6, rows 0..2 have d = -6..-4
    up, _ = row_utilities(np.ones(3, int), np.array([0, 3]))
    assert up.tolist() == pytest.approx([1.0, 1 / 3 + 5 / 9, 1 / 3 + 4 / 9])


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(3)
    labels = np.r_[septic(10, 8), np.zeros(30, int), septic(4, 12), np.zeros(20, int)]
    starts = np.array([0, 18, 48, 64, 84])
    scores = np.round(rng.random(labels.size) + labels * 0.4, 2)
    th, u = best_utility_threshold(labels, scores, starts)
    brute = max(
        (normalized_utility(labels, (scores >= c).astype(int), starts).normalized, c)
        for c in np.unique(scores)
    )
    assert u == pytest.approx(brute[0])
    assert normalized_utility(
        labels, (scores >= th).astype(int), starts
    ).normalized == pytest.approx(u)
