"""Performance with delayed labels: AUROC standard error, label lookup, the two alarms."""

import numpy as np
import pandas as pd
import pytest

from vigil.features.metrics import auroc
from vigil.runtime.monitoring.alarms import AlarmKind
from vigil.runtime.monitoring.performance import FrameLabels, PerformanceMonitor, clustered_auroc

H = 3600.0


def delong_se(y, x):
    """DeLong et al. (1988) by its definition: an O(M N) double loop."""
    pos, neg = x[y == 1], x[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return np.sqrt(psi.mean(1).var(ddof=1) / pos.size + psi.mean(0).var(ddof=1) / neg.size)


def test_clustered_auroc_with_one_row_per_patient_is_delong():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(int)
    x = np.round(rng.normal(y * 1.0, 1.0), 1)  # ties included
    area, se = clustered_auroc(y, x, np.arange(300))
    assert area == pytest.approx(auroc(y, x), abs=1e-12)
    assert se == pytest.approx(delong_se(y, x), rel=1e-9)


def test_clustered_auroc_se_matches_the_patient_bootstrap():
    # 80 patients with 12 hours each; a patient's hours share its level (strong correlation)
    rng = np.random.default_rng(1)
    n, hours = 80, 12
    septic = rng.random(n) < 0.3
    level = rng.normal(septic * 1.0, 1.0)
    codes = np.repeat(np.arange(n), hours)
    y = np.repeat(septic, hours).astype(int)
    x = level[codes] + rng.normal(0, 0.3, n * hours)
    area, se = clustered_auroc(y, x, codes)
    boot = []
    for _ in range(400):
        pick = rng.integers(0, n, n)
        rows = (pick[:, None] * hours + np.arange(hours)).ravel()
        boot.append(auroc(y[rows], x[rows]))
    assert se == pytest.approx(np.std(boot), rel=0.2)
    assert se > 2 * delong_se(y, x)  # treating the hours as independent would be far too sure
    one_class = clustered_auroc(np.zeros(5), np.ones(5), np.arange(5))
    assert np.isnan(one_class[0]) and one_class[1] == np.inf


def test_frame_labels_look_up_patient_hours():
    labels = FrameLabels(pd.DataFrame({"patient_key": ["p1", "p1", "p2"], "iculos": [1, 2, 1],
                                       "label": [0, 1, 0]}), delay_hours=6)
    got = labels.labels(np.array(["p1", "p2", "p3"], dtype=object), np.array([2, 1, 1]))
    assert got[:2].tolist() == [1.0, 0.0] and np.isnan(got[2])
    with pytest.raises(ValueError, match="missing \\['label'\\]"):
        FrameLabels(pd.DataFrame({"patient_key": [], "iculos": []}), delay_hours=1)


def stream(monitor, rng, *, hours, start, probability, risk_scale=1.0):
    """40 labelled patient-hours per hour; 1 in 10 patients is septic (risk 0.3, else 0.02)."""
    for h in range(hours):
        keys = np.array([f"p{(start + h) // 24}-{i}" for i in range(40)], dtype=object)
        septic = np.array([i % 10 == 0 for i in range(40)])
        risk = np.where(septic, 0.3, 0.02)
        y = (rng.random(40) < np.minimum(risk * risk_scale, 0.9)).astype(float)
        monitor.add(now=(start + h) * H, patient_keys=keys, probability=probability(risk, rng),
                    labels=y)


def test_a_calibrated_stable_model_raises_nothing():
    rng = np.random.default_rng(1)
    mon = PerformanceMonitor(reference_auroc=None, window_hours=72)
    stream(mon, rng, hours=240, start=0, probability=lambda r, g: r)
    found, stats = mon.check(now=240 * H)
    assert found == []
    m = mon.metrics()
    assert m is not None and m.observed_expected == pytest.approx(1.0, abs=0.25)
    assert mon.reference_auroc is not None  # learned from the first full window
    assert {s[2] for s in stats} >= {"auroc", "observed_expected", "intercept", "slope"}


def test_noise_on_the_output_raises_a_discrimination_alarm():
    rng = np.random.default_rng(2)
    mon = PerformanceMonitor(reference_auroc=0.8, window_hours=72, min_patients=5)
    noisy = lambda r, g: 1 / (1 + np.exp(-(np.log(r / (1 - r)) + g.normal(0, 3, r.size))))  # noqa: E731
    stream(mon, rng, hours=96, start=0, probability=noisy)
    found, _ = mon.check(now=96 * H)
    kinds = {f.kind for f in found}
    assert AlarmKind.DISCRIMINATION in kinds
    (disc,) = [f for f in found if f.kind is AlarmKind.DISCRIMINATION]
    assert disc.value < 0.75 and "ranks patients worse" in disc.message


def test_a_calibration_shift_recommends_recalibration_on_the_recent_window():
    # a common outcome (the residual of a rare one moves too little for ADWIN's bound in a few
    # days); after the first full window the site's curve is fitted, then the outcome rate
    # doubles against the model's output (Davis et al. 2017: drift follows the event rate)
    rng = np.random.default_rng(3)
    mon = PerformanceMonitor(reference_auroc=None, window_hours=72)
    common = lambda r, g: np.minimum(5 * r, 0.9)  # noqa: E731
    stream(mon, rng, hours=120, start=0, probability=common, risk_scale=5)
    assert mon.site_map is not None and mon.check(now=120 * H)[0] == []
    stream(mon, rng, hours=72, start=120, probability=lambda r, g: common(r, g) / 2, risk_scale=5)
    found, _ = mon.check(now=192 * H)
    (cal,) = [f for f in found if f.kind is AlarmKind.CALIBRATION]
    assert cal.value > 0  # more observed than expected
    assert "recalibration recommended" in cal.message
    width = int(cal.message.rsplit("on the last ", 1)[1].split()[0])
    assert width < 72 * 40  # the window to recalibrate on starts after the change
