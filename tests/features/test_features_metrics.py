import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from vigil.features.metrics import auprc, auroc, evaluate_by_hospital


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_auprc_match_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(5000) < 0.05
    s = np.round(rng.random(5000) + 0.3 * y, 2)  # rounding makes many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_single_class_warns_and_is_nan():
    with pytest.warns(RuntimeWarning, match="AUROC: labels are all 0"):
        assert np.isnan(auroc(np.zeros(4), np.arange(4.0)))


def test_by_hospital_splits_patients():
    labels = np.array([0, 0, 1, 0, 0, 0, 1, 1])
    prob = np.array([0.1, 0.2, 0.9, 0.3, 0.1, 0.4, 0.8, 0.7])
    starts = np.array([0, 3, 5, 8])
    hosp = np.array(["A"] * 5 + ["B"] * 3)
    out = evaluate_by_hospital(labels, prob, (prob >= 0.5).astype(int), starts, hosp, threshold=0.5)
    assert out["n_patients"] == 3 and out["n_rows"] == 8
    assert out["by_hospital"]["A"]["n_patients"] == 2
    assert out["by_hospital"]["B"]["n_rows"] == 3
    assert out["sensitivity"] == 1.0 and out["ppv"] == 1.0
    assert set(out) >= {
        "auroc",
        "auprc",
        "utility",
        "threshold",
        "sensitivity",
        "specificity",
        "ppv",
    }
