"""Performance once outcomes arrive: rolling discrimination and calibration, and a detector.

Sepsis labels come days after the scores (chart review, coding), so this
monitor is fed the scored patient-hours whose outcome became known in a
cycle. It keeps the last ``window_hours`` of them and measures:

- AUROC against a reference AUROC (the package's validation AUROC, else the
  first full window at the site); a drop larger than ``auroc_margin`` whose z
  statistic exceeds ``z_alarm`` raises a *discrimination* alarm. Hours of one
  patient are correlated, so the standard error is Obuchowski's for clustered
  data (:func:`clustered_auroc`), patients being the clusters.
- observed/expected events, calibration intercept and slope
  (:func:`vigil.calibration.metrics.calibration_intercept_slope`, Van Calster
  et al. 2019), charted every cycle.
- a sequential detector on calibration error, after Davis et al. (J Biomed
  Inform 108:103493, 2020): on the first full window with enough events the
  site's calibration curve is fitted (logistic, ``logit p' = a + b logit p``,
  :class:`vigil.calibration.LogisticCalibration`), and from then on ADWIN
  (:class:`~vigil.runtime.monitoring.detectors.Adwin`) watches the stream of
  per-hour residuals against it, ``(y - p' + 1) / 2``. The curve absorbs a raw
  model's miscalibration and a changing case mix (the mean risk moves, the
  curve holds); a cut means the curve itself moved: the alarm says
  "recalibration recommended" and how many recent hours to recalibrate on,
  and stays open until another model or calibration is installed (a new
  :class:`PerformanceMonitor`).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.calibration import CalibrationWarning, LogisticCalibration
from vigil.calibration.metrics import calibration_intercept_slope
from vigil.core.errors import DataError
from vigil.runtime.monitoring.alarms import AlarmKind, Finding, Severity
from vigil.runtime.monitoring.detectors import Adwin

_log = logging.getLogger(__name__)

__all__ = ["SEPSIS_WORDING", "FrameLabels", "LabelSource", "PerformanceMonitor", "WindowMetrics",
           "Wording", "clustered_auroc"]


@dataclass(frozen=True)
class Wording:
    """How a performance alarm names its rows, clusters and events (sepsis hours, studies).

    Attributes
    ----------
    variable : str
        The alarms' variable (``score``; ``image_score`` for the imaging model).
    rows, row : str
        Plural and singular of a labelled row (``labelled hours``, ``hour``).
    positives : str
        Clusters with a positive row (``septic patients``).
    events : str
        Positive rows (``sepsis hours``).
    clusters : str
        What the rows come in (``patients``).
    """

    variable: str
    rows: str
    row: str
    positives: str
    events: str
    clusters: str


SEPSIS_WORDING = Wording("score", "labelled hours", "hour", "septic patients", "sepsis hours",
                         "patients")
"""The sepsis runtime's wording (one row per patient-hour, patients as clusters)."""


class LabelSource(Protocol):
    """Where outcomes come from, and how late.

    Attributes
    ----------
    delay_hours : float
        A patient-hour scored at ``t`` has its outcome known at ``t + delay_hours``.
    """

    delay_hours: float

    def labels(self, patient_keys: NDArray[np.object_], iculos: NDArray[np.integer]) -> NDArray[
        np.float64
    ]:
        """Return the outcome (0/1) of each patient-hour, NaN where unknown; shape (n,)."""
        ...


class FrameLabels:
    """Outcomes from a table ``(patient_key, iculos, label)``, e.g. PhysioNet ``SepsisLabel``.

    Parameters
    ----------
    frame : DataFrame
        Columns ``patient_key``, ``iculos``, ``label``.
    delay_hours : float, keyword-only
    """

    def __init__(self, frame: pd.DataFrame, *, delay_hours: float) -> None:
        missing = {"patient_key", "iculos", "label"} - set(frame.columns)
        if missing:
            raise ValueError(
                f"expected label columns patient_key, iculos, label; missing {sorted(missing)}"
            )
        if delay_hours < 0:
            raise ValueError(f"delay_hours must be >= 0, got {delay_hours}")
        self.delay_hours = float(delay_hours)
        index = pd.MultiIndex.from_arrays([
            frame["patient_key"].astype(str).to_numpy(), frame["iculos"].astype(np.int64).to_numpy()
        ])
        self._labels = pd.Series(frame["label"].astype(np.float64).to_numpy(), index=index)
        self._labels = self._labels[~self._labels.index.duplicated(keep="last")]

    def labels(self, patient_keys: NDArray[np.object_], iculos: NDArray[np.integer]) -> NDArray[
        np.float64
    ]:
        """Look the patient-hours up; NaN for those not in the table."""
        index = pd.MultiIndex.from_arrays(
            [np.asarray(patient_keys, dtype=object).astype(str), np.asarray(iculos, dtype=np.int64)]
        )
        return self._labels.reindex(index).to_numpy(dtype=np.float64)


def clustered_auroc(
    labels: NDArray[np.integer], scores: NDArray[np.floating], clusters: NDArray[np.integer]
) -> tuple[float, float]:
    """AUROC and its standard error when rows come in correlated clusters (patients).

    Obuchowski's nonparametric estimator (Biometrics 53:567-578, 1997): the
    structural components ``V10(x) = mean_y psi(x, y)`` over negatives and
    ``V01(y) = mean_x psi(x, y)`` over positives (``psi`` 1, 1/2 on ties, 0)
    are summed per cluster, and

    ``var = S10 / M + S01 / N + 2 S11 / (M N)``, with
    ``S10 = I10 / ((I10 - 1) M) sum_i (V10_i - m_i A)^2``,
    ``S01 = I01 / ((I01 - 1) N) sum_i (V01_i - n_i A)^2``,
    ``S11 = I / (I - 1) sum_i (V10_i - m_i A)(V01_i - n_i A)``

    for ``M`` positive and ``N`` negative rows, ``m_i``/``n_i`` of them in
    cluster ``i``, ``I10``/``I01`` clusters with positives/negatives. With one row
    per cluster it is DeLong's variance (DeLong et al., Biometrics 44:837-845, 1988).

    Parameters
    ----------
    labels : ndarray of shape (n,)
        0/1 outcomes.
    scores : ndarray of shape (n,)
    clusters : ndarray of shape (n,)
        Integer cluster (patient) code of each row, in ``[0, n_clusters)``.

    Returns
    -------
    auroc, se : float
        NaN and inf when a class is missing; se inf with fewer than two clusters of a class.
    """
    y = np.asarray(labels) > 0
    x = np.asarray(scores, dtype=np.float64)
    c = np.asarray(clusters, dtype=np.int64)
    pos, neg = x[y], x[~y]
    m_rows, n_rows = pos.size, neg.size
    if m_rows == 0 or n_rows == 0:
        return math.nan, math.inf
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    v10 = (np.searchsorted(neg_sorted, pos, "left")
           + np.searchsorted(neg_sorted, pos, "right")) / (2.0 * n_rows)
    v01 = (m_rows - (np.searchsorted(pos_sorted, neg, "left")
                     + np.searchsorted(pos_sorted, neg, "right")) / 2.0) / m_rows
    area = float(v10.mean())
    k = int(c.max()) + 1
    v10_i = np.bincount(c[y], weights=v10, minlength=k)
    v01_i = np.bincount(c[~y], weights=v01, minlength=k)
    m_i = np.bincount(c[y], minlength=k)
    n_i = np.bincount(c[~y], minlength=k)
    i10, i01, i_all = int((m_i > 0).sum()), int((n_i > 0).sum()), int(((m_i + n_i) > 0).sum())
    if i10 < 2 or i01 < 2:
        return area, math.inf
    d10, d01 = v10_i - m_i * area, v01_i - n_i * area
    s10 = i10 / ((i10 - 1) * m_rows) * float(np.sum(d10 * d10))
    s01 = i01 / ((i01 - 1) * n_rows) * float(np.sum(d01 * d01))
    s11 = i_all / (i_all - 1) * float(np.sum(d10 * d01))
    var = s10 / m_rows + s01 / n_rows + 2.0 * s11 / (m_rows * n_rows)
    return area, math.sqrt(max(var, 0.0))


@dataclass(frozen=True)
class WindowMetrics:
    """Performance over the labelled window.

    Attributes
    ----------
    n, events : int
        Labelled hours and positive hours.
    patients_pos, patients_neg : int
        Distinct patients with a positive hour, and with none.
    auroc, auroc_se : float
        AUROC and its clustered standard error.
    observed_expected, intercept, slope : float
    """

    n: int
    events: int
    patients_pos: int
    patients_neg: int
    auroc: float
    auroc_se: float
    observed_expected: float
    intercept: float
    slope: float


class PerformanceMonitor:
    """Rolling performance of labelled hours and the calibration-drift detector.

    Parameters
    ----------
    reference_auroc : float or None, keyword-only
        Expected AUROC (the package's validation AUROC); None: the first full window's.
    window_hours : float, optional
        Hours of labelled scores kept.
    min_patients : int, optional
        Fewest distinct patients with a positive hour before discrimination is judged.
    auroc_margin : float, optional
        Smallest AUROC drop that matters.
    z_alarm : float, optional
        One-sided z of the drop needed for an alarm.
    adwin_delta : float, optional
        Confidence of the calibration-drift detector.
    min_events : int, optional
        Events per parameter of the site's calibration map (it has two).
    wording : Wording, optional
        How the alarms name rows and events (:data:`SEPSIS_WORDING`).
    """

    def __init__(
        self,
        *,
        reference_auroc: float | None,
        window_hours: float = 72.0,
        min_patients: int = 5,
        auroc_margin: float = 0.05,
        z_alarm: float = 2.33,
        adwin_delta: float = 0.002,
        min_events: int = 10,
        wording: Wording = SEPSIS_WORDING,
    ) -> None:
        self.reference_auroc = reference_auroc
        self.wording = wording
        self.window_hours, self.min_patients = window_hours, min_patients
        self.auroc_margin, self.z_alarm, self.min_events = auroc_margin, z_alarm, min_events
        self.adwin = Adwin(delta=adwin_delta)
        self.site_map: LogisticCalibration | None = None
        self._batches: deque[tuple[float, NDArray[np.object_], NDArray[np.float64],
                                   NDArray[np.int64]]] = deque()
        self._started: float | None = None
        self._recalibrate: tuple[int, float] | None = None

    def add(
        self, *, now: float, patient_keys: NDArray[np.object_], probability: NDArray[np.floating],
        labels: NDArray[np.floating],
    ) -> None:
        """Feed newly labelled hours (rows with a NaN label are skipped), in time order."""
        keep = np.isfinite(labels)
        p = np.clip(np.asarray(probability, dtype=np.float64)[keep], 0.0, 1.0)
        y = np.asarray(labels, dtype=np.float64)[keep].astype(np.int64)
        keys = np.asarray(patient_keys, dtype=object)[keep]
        if p.size:
            if self._started is None:
                self._started = now
            self._batches.append((now, keys, p, y))
        if self.site_map is None:
            self._fit_site_map(now)
        elif p.size:
            expected = self.site_map.transform(p)
            for pi, yi in zip(expected.tolist(), y.tolist(), strict=True):
                change = self.adwin.update((yi - pi + 1.0) / 2.0)
                if change is not None:
                    # residual means are (y - p + 1) / 2: back to observed-minus-expected per hour
                    self._recalibrate = (change.width_after,
                                         2.0 * (change.mean_after - change.mean_before))
        while self._batches and self._batches[0][0] < now - self.window_hours * 3600.0:
            self._batches.popleft()

    def _fit_site_map(self, now: float) -> None:
        """Fit the site's calibration map on the first full window with enough events."""
        if self._started is None or now - self._started < self.window_hours * 3600.0:
            return
        p = np.concatenate([b[2] for b in self._batches])
        y = np.concatenate([b[3] for b in self._batches])
        if min(int(y.sum()), int(y.size - y.sum())) < 2 * self.min_events:
            return
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CalibrationWarning)
            self.site_map = LogisticCalibration().fit(p, y)
        if caught:  # e.g. a first window the scores separate: the map is a near step
            _log.warning("performance monitor: the site's reference map on its first labelled "
                         "window: %s", caught[0].message)

    def metrics(self) -> WindowMetrics | None:
        """Metrics of the current window (None before any labelled hour)."""
        if not self._batches:
            return None
        ka = np.concatenate([b[1] for b in self._batches])
        pa = np.concatenate([b[2] for b in self._batches])
        ya = np.concatenate([b[3] for b in self._batches])
        patients, codes = np.unique(ka, return_inverse=True)
        pos = np.unique(codes[ya == 1])
        n_pos, n_neg = int(pos.size), int(patients.size - pos.size)
        two_classes = 0 < ya.sum() < ya.size
        area, se, intercept, slope = math.nan, math.inf, math.nan, math.nan
        if two_classes:
            area, se = clustered_auroc(ya, pa, codes)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    intercept, slope = calibration_intercept_slope(ya, pa)
                except DataError:  # separated outcomes: no finite fit, chart a gap
                    pass
        return WindowMetrics(
            n=int(ya.size), events=int(ya.sum()), patients_pos=n_pos, patients_neg=n_neg,
            auroc=area, auroc_se=se,
            observed_expected=float(ya.sum() / pa.sum()) if pa.sum() > 0 else math.nan,
            intercept=intercept, slope=slope,
        )

    def check(self, *, now: float) -> tuple[list[Finding], list[tuple[str, str, str, float]]]:
        """Judge the window after this cycle's :meth:`add`: findings and statistics to chart."""
        m = self.metrics()
        if m is None:
            return [], []
        kind, w = str(AlarmKind.DISCRIMINATION), self.wording
        var = w.variable
        stats = [
            (kind, var, "auroc", m.auroc),
            (kind, var, w.rows.replace(" ", "_"), float(m.n)),
            (str(AlarmKind.CALIBRATION), var, "observed_expected", m.observed_expected),
            (str(AlarmKind.CALIBRATION), var, "intercept", m.intercept),
            (str(AlarmKind.CALIBRATION), var, "slope", m.slope),
        ]
        findings: list[Finding] = []
        full = self._started is not None and now - self._started >= self.window_hours * 3600.0
        if self.reference_auroc is None and full and np.isfinite(m.auroc) \
                and m.patients_pos >= self.min_patients:
            self.reference_auroc = m.auroc
        ref = self.reference_auroc
        if ref is not None and np.isfinite(m.auroc) and m.patients_pos >= self.min_patients:
            drop = ref - m.auroc
            z = drop / m.auroc_se if m.auroc_se > 0 else math.inf
            stats.append((kind, var, "auroc_drop_z", z))
            if drop > self.auroc_margin and z > self.z_alarm:
                severity = Severity.CRITICAL if drop > 2 * self.auroc_margin else Severity.WARNING
                findings.append(Finding(
                    AlarmKind.DISCRIMINATION, var, severity, m.auroc, ref - self.auroc_margin,
                    f"AUROC {m.auroc:.3f} over the last {m.n} {w.rows} "
                    f"({m.patients_pos} {w.positives}) against {ref:.3f} expected "
                    f"(drop {drop:.3f}, z = {z:.1f}); the model ranks {w.clusters} "
                    "worse here",
                ))
        if self._recalibrate is not None:
            width, shift = self._recalibrate
            findings.append(Finding(
                AlarmKind.CALIBRATION, var, Severity.WARNING, shift, 0.0,
                f"calibration drift: observed minus expected {w.events} changed by {shift:+.4f} "
                f"per {w.row} (O/E now {m.observed_expected:.2f}, slope {m.slope:.2f}); "
                f"recalibration recommended, on the last {width} {w.rows}",
            ))
        return findings, stats
