import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vigil.core.errors import DataError
from vigil.features.bootstrap import (
    metric_intervals,
    metric_intervals_by_hospital,
    patient_utility_terms,
    weighted_auroc,
)
from vigil.features.metrics import auroc
from vigil.features.utility import normalized_utility
from vigil.runtime import offline


def _patients(seed: int, n_pat: int = 300):
    """Random stays of 5-60 hours; a fifth of the patients septic from a random hour."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 60, n_pat)
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    labels = np.zeros(starts[-1], dtype=np.int8)
    for p in np.flatnonzero(rng.random(n_pat) < 0.2):
        labels[starts[p] + rng.integers(0, lengths[p]) : starts[p + 1]] = 1
    score_a = np.round(rng.random(labels.size) + 0.4 * labels, 2)  # rounding: many ties
    score_b = np.round(rng.random(labels.size) + 0.2 * labels, 2)
    return labels, starts, score_a, score_b


@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_auroc_matches_scikit_learn_sample_weights(seed):
    labels, _, score, _ = _patients(seed)
    weights = np.random.default_rng(seed).integers(0, 4, labels.size).astype(float)
    expected = roc_auc_score(labels, score, sample_weight=weights)
    assert weighted_auroc(labels, score, weights) == pytest.approx(expected, abs=1e-12)
    assert weighted_auroc(labels, score, np.ones(labels.size)) == pytest.approx(
        auroc(labels, score), abs=1e-12)


def test_patient_utility_terms_sum_to_the_normalized_utility():
    labels, starts, score, _ = _patients(3)
    prediction = (score >= 0.7).astype(np.int8)
    gain, best = patient_utility_terms(labels, prediction, starts).sum(axis=0)
    expected = normalized_utility(labels, prediction, starts).normalized
    assert gain / best == pytest.approx(expected, abs=1e-12)


def test_the_point_difference_is_the_difference_of_the_metrics():
    labels, starts, a, b = _patients(4)
    alerts_a, alerts_b = (a >= 0.8).astype(np.int8), (b >= 0.7).astype(np.int8)
    out = metric_intervals(labels, starts, (a, alerts_a), (b, alerts_b), n_boot=0)
    assert out["auroc"].value == pytest.approx(auroc(labels, a) - auroc(labels, b), abs=1e-12)
    u_a = normalized_utility(labels, alerts_a, starts).normalized
    u_b = normalized_utility(labels, alerts_b, starts).normalized
    assert out["utility"].value == pytest.approx(u_a - u_b, abs=1e-12)
    assert np.isnan(out["auroc"].low) and np.isnan(out["utility"].high)


def test_a_resample_equals_the_metrics_of_the_patients_repeated():
    """One bootstrap replicate, recomputed by duplicating the drawn patients' rows."""
    labels, starts, a, b = _patients(5, n_pat=120)
    alerts_a, alerts_b = (a >= 0.8).astype(np.int8), (b >= 0.7).astype(np.int8)
    out = metric_intervals(labels, starts, (a, alerts_a), (b, alerts_b), n_boot=1, seed=11)
    n_pat = starts.size - 1
    drawn = np.random.default_rng(11).integers(0, n_pat, n_pat)
    rows = np.concatenate([np.arange(starts[p], starts[p + 1]) for p in drawn])
    new_starts = np.concatenate([[0], np.cumsum(np.diff(starts)[drawn])])
    y = labels[rows]
    expected_auroc = auroc(y, a[rows]) - auroc(y, b[rows])
    expected_utility = (normalized_utility(y, alerts_a[rows], new_starts).normalized
                        - normalized_utility(y, alerts_b[rows], new_starts).normalized)
    # with one replicate every percentile is that replicate
    assert out["auroc"].low == pytest.approx(expected_auroc, abs=1e-12)
    assert out["utility"].high == pytest.approx(expected_utility, abs=1e-12)


def test_one_model_alone_gets_intervals_of_its_own_metrics():
    labels, starts, a, _ = _patients(9, n_pat=150)
    alerts = (a >= 0.8).astype(np.int8)
    out = metric_intervals(labels, starts, (a, alerts), n_boot=1, seed=5)
    assert out["auroc"].value == pytest.approx(auroc(labels, a), abs=1e-12)
    assert out["utility"].value == pytest.approx(
        normalized_utility(labels, alerts, starts).normalized, abs=1e-12)
    n_pat = starts.size - 1
    drawn = np.random.default_rng(5).integers(0, n_pat, n_pat)
    rows = np.concatenate([np.arange(starts[p], starts[p + 1]) for p in drawn])
    new_starts = np.concatenate([[0], np.cumsum(np.diff(starts)[drawn])])
    assert out["auroc"].low == pytest.approx(auroc(labels[rows], a[rows]), abs=1e-12)
    assert out["utility"].high == pytest.approx(
        normalized_utility(labels[rows], alerts[rows], new_starts).normalized, abs=1e-12)
    wide = metric_intervals(labels, starts, (a, alerts), n_boot=300)
    paired = metric_intervals(labels, starts, (a, alerts), (a + 0.01, alerts), n_boot=300)
    # the same model shifted: the paired interval of the difference collapses, its own does not
    assert wide["auroc"].high - wide["auroc"].low > 0.01
    assert paired["auroc"].high - paired["auroc"].low == pytest.approx(0.0, abs=1e-12)


def test_identical_models_differ_by_exactly_zero():
    labels, starts, a, _ = _patients(6)
    alerts = (a >= 0.8).astype(np.int8)
    out = metric_intervals(labels, starts, (a, alerts), (a, alerts), n_boot=200)
    for est in out.values():
        assert (est.value, est.low, est.high) == (0.0, 0.0, 0.0)


def test_swapping_the_models_negates_the_difference_and_its_interval():
    labels, starts, a, b = _patients(7)
    first, second = (a, (a >= 0.8).astype(np.int8)), (b, (b >= 0.7).astype(np.int8))
    ab = metric_intervals(labels, starts, first, second, n_boot=300, seed=2)
    ba = metric_intervals(labels, starts, second, first, n_boot=300, seed=2)
    for k in ab:
        assert ab[k].value == pytest.approx(-ba[k].value, abs=1e-12)
        assert ab[k].low == pytest.approx(-ba[k].high, abs=1e-12)
        assert ab[k].low < ab[k].value < ab[k].high
    # model a's scores separate the classes better by construction
    assert ab["auroc"].low > 0


def test_rule_baselines_compared_by_hospital_on_real_patients(sample):
    table = sample
    news2 = offline.rule_scores("news2", table).astype(float)
    sirs = offline.rule_scores("sirs", table).astype(float)
    first = (news2, (news2 >= offline.rule_threshold("news2")).astype(np.int8))
    second = (sirs, (sirs >= offline.rule_threshold("sirs")).astype(np.int8))
    out = metric_intervals_by_hospital(table.labels, table.grid.starts, table.hospital, first,
                                        second, n_boot=100)
    assert set(out["by_hospital"]) == {"A", "B"} and out["n_boot"] == 100
    rows = table.hospital == "A"
    lengths = np.diff(table.grid.starts)[table.hospital[table.grid.starts[:-1]] == "A"]
    only_a = metric_intervals(table.labels[rows], np.concatenate([[0], np.cumsum(lengths)]),
                               (first[0][rows], first[1][rows]),
                               (second[0][rows], second[1][rows]), n_boot=100)
    assert out["by_hospital"]["A"] == {k: v.to_dict() for k, v in only_a.items()}
    whole = out["all"]["auroc"]
    assert whole["low"] <= whole["value"] <= whole["high"]


def test_arrays_of_the_wrong_length_are_refused():
    labels, starts, a, b = _patients(8)
    expected = rf"expected probability_versus of shape \({labels.size},\), got"
    with pytest.raises(DataError, match=expected):
        metric_intervals(labels, starts, (a, a > 0.5), (b[:-1], b[:-1] > 0.5))
    with pytest.raises(DataError, match="expected patient offsets from 0"):
        metric_intervals(labels, starts[:-1], (a, a > 0.5), (b, b > 0.5))


@pytest.mark.parametrize(("paired", "seed", "expected"), [
    (False, 5, {"auroc": (0.8049494013927481, 0.7836313299937524, 0.8286660821986213),
                "utility": (0.4026850120224416, 0.2895621562750814, 0.4746911655675417)}),
    (True, 6, {"auroc": (0.12644128846351754, 0.10208157925210459, 0.1523780198197852),
               "utility": (0.15084157093240697, 0.08491154983571103, 0.2251460295222273)}),
])
def test_intervals_are_those_of_the_code_before_the_shared_bootstrap_helper(
        paired, seed, expected):
    """Golden values printed by ``metric_intervals`` when it still drew its own resamples
    (commit 985d8af): :func:`bootstrap_estimates` must not move them, to the last bit."""
    labels, starts, a, b = _patients(3, 200)
    versus = (b, (b > 0.7).astype(int)) if paired else None
    got = metric_intervals(labels, starts, (a, (a > 0.7).astype(int)), versus,
                           n_boot=200, seed=seed)
    assert {k: (e.value, e.low, e.high) for k, e in got.items()} == expected
