"""Paired bootstrap intervals of the imaging comparison, on synthetic kept predictions."""

import numpy as np
import pytest

from vigil.core.errors import DataError
from vigil.features.bootstrap import weighted_auroc
from vigil.federation.image_intervals import (
    comparison_markdown,
    paired_interval,
    resampled_auroc,
    standard_comparisons,
)


def test_resampled_auroc_equals_the_weighted_auroc_of_each_resample():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 60) > 0
    p = np.round(rng.random(60), 1)  # many ties
    counts = rng.multinomial(60, np.full(60, 1 / 60), size=30).astype(float)
    counts[0] = np.where(y, 0, counts[0])  # a resample without positives
    got = resampled_auroc(y, p, counts)
    assert np.isnan(got[0])
    np.testing.assert_allclose(got[1:], [weighted_auroc(y, p, c) for c in counts[1:]])


def _run(rng, labels, quality):
    """One seed's compare_images result: arm -> site -> kept threshold and probabilities."""
    out = {}
    for arm, q in quality.items():
        out[arm] = {}
        for site, y in labels.items():
            p = 1 / (1 + np.exp(-(q * (2 * y - 1) + rng.normal(size=y.size))))
            out[arm][site] = {"threshold": 0.5, "probability": list(p)}
    return out


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = {"site-a": rng.integers(0, 2, 150), "site-b": rng.integers(0, 2, 170)}
    runs = [_run(rng, labels, {"good": 2.0, "same": 2.0, "poor": 0.3}) for _ in range(3)]
    return labels, runs


def test_an_arms_value_is_its_seed_mean_and_its_interval_that_of_a_proportion(data):
    labels, runs = data
    est = paired_interval(labels, runs, "good", site="site-a", n_boot=200)
    y = labels["site-a"]
    p = [np.array(r["good"]["site-a"]["probability"]) for r in runs]
    one_auc = [weighted_auroc(y, q, np.ones(y.size)) for q in p]
    assert est["auc"].value == pytest.approx(np.mean(one_auc))
    acc = np.mean([((q >= 0.5) == (y > 0)).mean() for q in p])
    assert est["accuracy"].value == pytest.approx(acc)
    # one seed's accuracy is a proportion of n = 150: its percentile interval is
    # close to the normal one, +-1.96 SE
    one = paired_interval(labels, runs[:1], "good", site="site-a", n_boot=2000)["accuracy"]
    se = np.sqrt(one.value * (1 - one.value) / y.size)
    assert one.high - one.low == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert one.low < one.value < one.high


def test_a_paired_difference_separates_a_clear_gap_and_not_an_equal_arm(data):
    labels, runs = data
    gap = paired_interval(labels, runs, "good", "poor", n_boot=500)
    assert gap["auc"].low > 0.1 and gap["accuracy"].low > 0.05
    tie = paired_interval(labels, runs, "good", "same", n_boot=500)
    assert tie["auc"].low < 0 < tie["auc"].high and abs(tie["auc"].value) < 0.05
    # pairing: the difference of an arm with itself is exactly 0 on every resample
    self_ = paired_interval(labels, runs, "good", "good", n_boot=200)
    assert (self_["auc"].low, self_["auc"].high) == (0.0, 0.0)
    scaled = paired_interval(labels, runs, "good", "good", factor=0.98, n_boot=200)
    whole = paired_interval(labels, runs, "good", n_boot=200)
    assert scaled["auc"].value == pytest.approx(0.02 * whole["auc"].value)


def test_missing_predictions_are_a_clear_error(data):
    labels, runs = data
    stripped = [{"good": {"site-a": {"auc": 0.9}}, "poor": runs[0]["poor"]}]
    with pytest.raises(DataError, match="expected kept test predictions of arm 'good'"):
        paired_interval(labels, stripped, "good", "poor", site="site-a")


def test_standard_comparisons_skip_absent_arms_and_render():
    rng = np.random.default_rng(1)
    labels = {"site-a": rng.integers(0, 2, 40), "site-b": rng.integers(0, 2, 40)}
    runs = [_run(rng, labels, {"fedavg": 1.0, "alone": 1.0, "centralized": 1.2})]
    rows = standard_comparisons(labels, runs, n_boot=50)
    got = {(r["arm"], r["versus"]) for r in rows}
    assert got == {("fedavg", None), ("fedavg", "alone"), ("fedavg", "centralized")}
    assert len(rows) == 3 * 3  # two sites and pooled
    table = comparison_markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "fedavg − 0.98 × centralized" in table


@pytest.mark.parametrize(("arms", "options", "expected"), [
    (("good", "poor"), {"n_boot": 300, "seed": 7},
     {"auc": (0.33184190902311705, 0.2980238699993952, 0.3695513601230153),
      "accuracy": (0.35833333333333334, 0.324453125, 0.3885416666666666)}),
    (("good",), {"site": "site-b", "n_boot": 300, "seed": 1},
     {"auc": (0.999260901699926, 0.9981816347597597, 0.9999538575119971),
      "accuracy": (0.9784313725490197, 0.9647058823529412, 0.9921568627450981)}),
    (("good", "same"), {"factor": 0.98, "n_boot": 300, "seed": 2},
     {"auc": (0.020473069325065058, 0.018310227838938337, 0.023373928038187327),
      "accuracy": (0.018520833333333358, 0.00708333333333333, 0.03196927083333334)}),
])
def test_intervals_are_those_of_the_code_before_the_shared_bootstrap_helper(
        data, arms, options, expected):
    """Golden values printed by ``paired_interval`` when it still drew its own resamples
    (commit 985d8af): calling :func:`vigil.features.bootstrap.bootstrap_estimates` must
    not move them, to the last bit."""
    labels, runs = data
    got = paired_interval(labels, runs, *arms, **options)
    assert {k: (e.value, e.low, e.high) for k, e in got.items()} == expected


def _with_validation(rng, labels, n_valid, quality):
    """Runs whose kept thresholds are each site's validation-best score-bin edge."""
    from vigil.federation.evaluation import SCORE_EDGES

    valid_labels = {s: rng.integers(0, 2, n_valid) for s in labels}
    runs, held = [], []
    for _ in range(2):
        test, valid = _run(rng, labels, quality), _run(rng, valid_labels, quality)
        for arm in quality:
            for s, y in valid_labels.items():
                p = np.asarray(valid[arm][s]["probability"])
                acc = ((p[:, None] >= SCORE_EDGES[None, :]) == (y[:, None] > 0)).mean(axis=0)
                test[arm][s]["threshold"] = float(SCORE_EDGES[int(np.argmax(acc))])
        runs.append(test)
        held.append(valid)
    return valid_labels, runs, held


def test_rechosen_thresholds_widen_the_accuracy_interval_and_keep_the_value():
    rng = np.random.default_rng(5)
    labels = {"site-a": rng.integers(0, 2, 150), "site-b": rng.integers(0, 2, 160)}
    valid_labels, runs, held = _with_validation(rng, labels, 20, {"good": 1.5, "same": 1.5})
    fixed = paired_interval(labels, runs, "good", "same", n_boot=400)["accuracy"]
    again = paired_interval(labels, runs, "good", "same", n_boot=400, valid_labels=valid_labels,
                            valid_runs=held)["accuracy"]
    # unresampled, the re-chosen thresholds are the kept ones: the same value
    assert again.value == pytest.approx(fixed.value)
    # with 20 validation images per site the threshold's own noise shows in the interval
    # (about twice as wide here; 1.7 to 2.2 times over other data seeds)
    assert again.high - again.low > 1.5 * (fixed.high - fixed.low)
    one = paired_interval(labels, runs, "good", site="site-a", n_boot=200,
                          valid_labels=valid_labels, valid_runs=held)["accuracy"]
    assert one.value == pytest.approx(paired_interval(labels, runs, "good", site="site-a",
                                                      n_boot=200)["accuracy"].value)
    assert one.low <= one.value <= one.high


def test_rechosen_interval_needs_the_validation_predictions():
    rng = np.random.default_rng(6)
    labels = {"site-a": rng.integers(0, 2, 40)}
    valid_labels, runs, held = _with_validation(rng, labels, 20, {"good": 1.0, "poor": 0.2})
    del held[0]["poor"]["site-a"]["probability"]
    with pytest.raises(DataError, match="expected kept test and validation predictions"):
        paired_interval(labels, runs, "good", "poor", valid_labels=valid_labels, valid_runs=held)
    with pytest.raises(DataError, match="for each of the 2 runs"):
        paired_interval(labels, runs, "good", valid_labels=valid_labels, valid_runs=held[:1])


def test_rechosen_accuracy_resamples_the_test_images_as_paired_interval_does():
    """Pins ``_rechosen_accuracy``'s test draws to ``bootstrap_estimates``' (via
    ``paired_interval``): with validation images separated far apart every resample
    re-chooses the kept threshold, so the two intervals must be the same to the bit."""
    from vigil.federation.evaluation import SCORE_EDGES

    rng = np.random.default_rng(9)
    labels = {"site-a": rng.integers(0, 2, 70), "site-b": rng.integers(0, 2, 90)}
    y_v = np.array([0] * 40 + [1] * 40)
    valid_labels = {s: y_v for s in labels}
    # every resample keeps a negative at 0.01 (P(none) = 2**-80): the first edge above it
    # is the first maximum of every resampled validation accuracy
    edge = float(SCORE_EDGES[np.searchsorted(SCORE_EDGES, 0.01, side="right")])
    held, runs = [], []
    for _ in range(2):
        held.append({arm: {s: {"probability": list(np.where(y_v > 0, 0.99, 0.01))}
                           for s in labels} for arm in ("a", "b")})
        # test scores around the edge, so that the decisions, hence the resamples, matter
        runs.append({arm: {s: {"threshold": edge, "probability": list(0.02 * rng.random(y.size))}
                           for s, y in labels.items()} for arm in ("a", "b")})
    for site, arms in (("site-b", ("a",)), ("pooled", ("a",)), ("pooled", ("a", "b"))):
        fixed = paired_interval(labels, runs, *arms, site=site, n_boot=300, seed=3)["accuracy"]
        again = paired_interval(labels, runs, *arms, site=site, n_boot=300, seed=3,
                                valid_labels=valid_labels, valid_runs=held)["accuracy"]
        assert again.value == pytest.approx(fixed.value, abs=1e-12)
        assert (again.low, again.high) == pytest.approx((fixed.low, fixed.high), abs=1e-12)
        assert fixed.high - fixed.low > 0.05
    # and a different seed's draws are not the same interval
    fixed = paired_interval(labels, runs, "a", n_boot=300, seed=3)["accuracy"]
    other = paired_interval(labels, runs, "a", n_boot=300, seed=4, valid_labels=valid_labels,
                            valid_runs=held)["accuracy"]
    assert (other.low, other.high) != pytest.approx((fixed.low, fixed.high), abs=1e-12)
