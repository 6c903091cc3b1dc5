"""Multi-class metrics (macro one-vs-rest AUC, arg-max accuracy) vs scikit-learn and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from vigil.core.errors import DataError
from vigil.features.multiclass import accuracy, class_counts, cross_entropy, macro_ovr_auroc


def test_hand_computed_example():
    y = np.array([0, 0, 1, 2])
    p = np.array([[.6, .3, .1], [.2, .5, .3], [.3, .4, .3], [.1, .2, .7]])
    # class 0: positives {.6, .2} vs negatives {.3, .1}: pairs won 3 of 4 → 0.75
    # class 1: positive {.4} vs {.3, .5, .2}: 2 of 3 → 2/3; class 2: {.7} vs {.1, .3, .3}: 1
    assert macro_ovr_auroc(y, p) == pytest.approx((0.75 + 2 / 3 + 1.0) / 3)
    assert accuracy(y, p) == 0.75  # arg-max 0, 1, 1, 2 against 0, 0, 1, 2
    assert class_counts(y, 5) == [2, 1, 1, 0, 0]
    assert cross_entropy(y, p) == pytest.approx(-np.mean(np.log([.6, .2, .4, .7])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 300)
    p = rng.dirichlet(np.ones(5), 300)
    p[np.arange(300), y] += rng.uniform(0, 0.5, 300)  # some signal
    p /= p.sum(axis=1, keepdims=True)
    p = np.round(p, 2)  # ties, counted one half by both
    p /= p.sum(axis=1, keepdims=True)
    expected = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert macro_ovr_auroc(y, p) == pytest.approx(expected, abs=1e-12)
    assert accuracy(y, p) == pytest.approx(accuracy_score(y, p.argmax(axis=1)))
    assert cross_entropy(y, p) == pytest.approx(log_loss(y, p, labels=range(5)), rel=1e-9)


def test_an_absent_class_is_left_out_of_the_mean():
    y = np.array([0, 1, 0, 1])
    p = np.array([[.7, .2, .1], [.2, .7, .1], [.4, .5, .1], [.5, .4, .1]])
    # class 2 has no image: mean of classes 0 and 1 only
    expected = np.mean([roc_auc_score(y == k, p[:, k]) for k in (0, 1)])
    assert macro_ovr_auroc(y, p) == pytest.approx(expected)
    assert np.isnan(macro_ovr_auroc(np.zeros(3, int), np.full((3, 3), 1 / 3)))


@pytest.mark.parametrize(("y", "p", "message"), [
    (np.array([0, 1]), np.ones(2), "expected probabilities (n, classes >= 2) and n labels"),
    (np.array([0, 1, 2]), np.ones((2, 3)), "expected probabilities (n, classes >= 2)"),
    (np.array([0, 5]), np.ones((2, 3)), "expected integer labels in [0, 2]"),
])
def test_bad_shapes_and_labels_are_refused(y, p, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        macro_ovr_auroc(y, p)
