"""Pooled validation metrics from site histograms vs the exact row-level computation."""

import numpy as np
import pytest

from vigil.features.metrics import auroc
from vigil.features.utility import best_utility_threshold, normalized_utility
from vigil.federation.evaluation import (
    SCORE_EDGES,
    binned_auroc,
    evaluate_scores,
    pool_evaluations,
    site_utility,
)


def synthetic_site(rng, n_patients):
    """Patients of random length; a third septic, their labels 1 from some hour on."""
    lengths = rng.integers(8, 60, size=n_patients)
    starts = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    labels = np.zeros(starts[-1], np.int8)
    risk = np.zeros(starts[-1])
    for i in range(n_patients):
        if rng.random() < 0.3:
            onset = rng.integers(0, lengths[i])
            labels[starts[i] + onset : starts[i + 1]] = 1
            risk[starts[i] + max(onset - 8, 0) : starts[i + 1]] += 1.2
    prob = 1 / (1 + np.exp(-(risk - 3 + rng.normal(size=risk.size))))
    return labels, prob, starts


def test_binned_auroc_matches_the_exact_auroc():
    rng = np.random.default_rng(0)
    y, p, starts = synthetic_site(rng, 400)
    e = evaluate_scores("x", y, p, starts)
    assert e.auroc == pytest.approx(auroc(y, p), abs=1e-12)
    assert binned_auroc(e.positive_hist, e.negative_hist) == pytest.approx(auroc(y, p), abs=2e-3)


def test_pooling_sites_equals_evaluating_all_rows_at_once():
    rng = np.random.default_rng(1)
    parts = [synthetic_site(rng, n) for n in (150, 300, 90)]
    evals = [evaluate_scores(f"s{i}", *part) for i, part in enumerate(parts)]
    y = np.concatenate([p[0] for p in parts])
    prob = np.concatenate([p[1] for p in parts])
    offsets = np.cumsum([0] + [p[2][-1] for p in parts])
    starts = np.concatenate([parts[0][2]] + [p[2][1:] + o for p, o in zip(parts[1:], offsets[1:-1],
                                                                          strict=True)])
    whole = evaluate_scores("all", y, prob, starts)
    pooled = pool_evaluations(evals)
    assert pooled.n_rows == y.size
    np.testing.assert_allclose(np.sum([e.utility_gain for e in evals], axis=0), whole.utility_gain,
                               atol=1e-9)
    assert pooled.auroc == pytest.approx(binned_auroc(whole.positive_hist, whole.negative_hist))
    # the pooled threshold's utility is exactly the row-level utility at that threshold ...
    direct = normalized_utility(y, (prob >= pooled.threshold).astype(np.int8), starts).normalized
    assert pooled.utility == pytest.approx(direct, abs=1e-9)
    # ... and within the bin resolution of the best row-level threshold
    _, best = best_utility_threshold(y, prob, starts)
    assert best - 0.02 <= pooled.utility <= best + 1e-9
    assert pooled.threshold in SCORE_EDGES
    for e, (yy, pp, ss) in zip(evals, parts, strict=True):
        own = normalized_utility(yy, (pp >= pooled.threshold).astype(np.int8), ss).normalized
        assert site_utility(e, pooled.threshold) == pytest.approx(own, abs=1e-9)


def test_site_evaluation_sends_only_fixed_size_summaries():
    rng = np.random.default_rng(2)
    small, large = evaluate_scores("a", *synthetic_site(rng, 20)), \
        evaluate_scores("b", *synthetic_site(rng, 500))
    for key, value in small.payload().items():
        other = large.payload()[key]
        assert np.shape(value) == np.shape(other), key  # independent of the number of rows
        assert np.ndim(value) <= 1


def _image_site(rng, n, prevalence, shift):
    """Binary images' probabilities of one site, its scores on a site-specific scale."""
    from vigil.federation.image_task import image_evaluation

    y = (rng.random(n) < prevalence).astype(np.int8)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 2.0 * y + shift)))
    return y, p, image_evaluation(f"s{shift}", y, p)


def test_site_calibrated_utility_is_the_accuracy_after_each_site_picks_its_threshold():
    from vigil.federation.evaluation import site_calibrated_utility

    rng = np.random.default_rng(11)
    sites = [_image_site(rng, n, prev, shift)
             for n, prev, shift in ((150, 0.4, -2.0), (120, 0.75, 0.0), (90, 0.85, 2.5))]
    correct = sum(max(int(((p >= t) == (y > 0)).sum()) for t in SCORE_EDGES)
                  for y, p, _ in sites)
    n_pos = sum(int(y.sum()) for y, _, _ in sites)
    n_neg = sum(int((y == 0).sum()) for y, _, _ in sites)
    evaluations = [e for _, _, e in sites]
    got = site_calibrated_utility(evaluations)
    assert got == pytest.approx((correct - n_neg) / n_pos)  # utility = (correct - n_neg) / n_pos
    # the sites' scales differ: one pooled threshold does strictly worse here
    assert pool_evaluations(evaluations).utility < got
    assert site_calibrated_utility(evaluations[:1]) == pytest.approx(
        pool_evaluations(evaluations[:1]).utility)
    assert np.isnan(site_calibrated_utility([]))
