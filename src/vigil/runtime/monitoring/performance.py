"""Performance once outcomes arrive: rolling discrimination and calibration, and a detector.

Sepsis labels come days after the scores (chart review, coding), so this
monitor is fed the scored patient-hours whose outcome became known in a
cycle. It keeps the last ``window_hours`` of them and measures:

- AUROC (Hanley & McNeil, Radiology 143:29-36, 1982) against a reference
  AUROC (the package's validation AUROC, else the first full window at the
  site); a drop larger than ``auroc_margin`` whose z statistic exceeds
  ``z_alarm`` raises a *discrimination* alarm. The standard error is Hanley and
  McNeil's eq. 2 with the numbers of distinct positive and negative patients
  (hours of one patient are not independent), so it is conservative.
- observed/expected events, calibration intercept and slope
  (:func:`vigil.calibration.metrics.calibration_intercept_slope`, Van Calster
  et al. 2019), charted every cycle.
- a sequential detector on calibration error, after Davis et al. (J Biomed
  Inform 108:103493, 2020): ADWIN (:class:`~vigil.runtime.monitoring.detectors.Adwin`)
  on the stream of per-hour calibration residuals ``(y - p + 1) / 2``. A cut
  means the observed-minus-expected rate changed; the alarm says
  "recalibration recommended" and how many recent hours to recalibrate on,
  and stays open until another model or calibration is installed (a new
  :class:`PerformanceMonitor`).
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.calibration.metrics import calibration_intercept_slope
from vigil.core.errors import DataError
from vigil.features.metrics import auroc
from vigil.runtime.monitoring.alarms import AlarmKind, Finding, Severity
from vigil.runtime.monitoring.detectors import Adwin

__all__ = ["FrameLabels", "LabelSource", "PerformanceMonitor", "WindowMetrics", "hanley_mcneil_se"]


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


def hanley_mcneil_se(area: float, *, n_pos: int, n_neg: int) -> float:
    """Return the standard error of an AUROC (Hanley & McNeil 1982, eq. 2).

    Examples
    --------
    >>> round(hanley_mcneil_se(0.8, n_pos=50, n_neg=50), 4)
    0.0432
    """
    if n_pos < 1 or n_neg < 1:
        return math.inf
    a = area
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


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
        Fewest distinct positive patients before discrimination is judged.
    auroc_margin : float, optional
        Smallest AUROC drop that matters.
    z_alarm : float, optional
        One-sided z of the drop needed for an alarm.
    adwin_delta : float, optional
        Confidence of the calibration-drift detector.
    """

    def __init__(
        self,
        *,
        reference_auroc: float | None,
        window_hours: float = 72.0,
        min_patients: int = 10,
        auroc_margin: float = 0.05,
        z_alarm: float = 2.33,
        adwin_delta: float = 0.002,
    ) -> None:
        self.reference_auroc = reference_auroc
        self.window_hours, self.min_patients = window_hours, min_patients
        self.auroc_margin, self.z_alarm = auroc_margin, z_alarm
        self.adwin = Adwin(delta=adwin_delta)
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
        for pi, yi in zip(p.tolist(), y.tolist(), strict=True):
            change = self.adwin.update((yi - pi + 1.0) / 2.0)
            if change is not None:
                # residual means are (y - p + 1) / 2: back to observed-minus-expected per hour
                self._recalibrate = (change.width_after,
                                     2.0 * (change.mean_after - change.mean_before))
        while self._batches and self._batches[0][0] < now - self.window_hours * 3600.0:
            self._batches.popleft()

    def metrics(self) -> WindowMetrics | None:
        """Metrics of the current window (None before any labelled hour)."""
        if not self._batches:
            return None
        ka = np.concatenate([b[1] for b in self._batches])
        pa = np.concatenate([b[2] for b in self._batches])
        ya = np.concatenate([b[3] for b in self._batches])
        patients = np.unique(ka)
        pos = np.unique(ka[ya == 1])
        n_pos, n_neg = int(pos.size), int(patients.size - pos.size)
        two_classes = 0 < ya.sum() < ya.size
        area, intercept, slope = math.nan, math.nan, math.nan
        if two_classes:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                area = auroc(ya, pa)
                try:
                    intercept, slope = calibration_intercept_slope(ya, pa)
                except DataError:  # separated outcomes: no finite fit, chart a gap
                    pass
        return WindowMetrics(
            n=int(ya.size), events=int(ya.sum()), patients_pos=n_pos, patients_neg=n_neg,
            auroc=area,
            auroc_se=hanley_mcneil_se(area, n_pos=n_pos, n_neg=n_neg) if two_classes else math.inf,
            observed_expected=float(ya.sum() / pa.sum()) if pa.sum() > 0 else math.nan,
            intercept=intercept, slope=slope,
        )

    def check(self, *, now: float) -> tuple[list[Finding], list[tuple[str, str, str, float]]]:
        """Judge the window after this cycle's :meth:`add`: findings and statistics to chart."""
        m = self.metrics()
        if m is None:
            return [], []
        kind = str(AlarmKind.DISCRIMINATION)
        stats = [
            (kind, "score", "auroc", m.auroc),
            (kind, "score", "labelled_hours", float(m.n)),
            (str(AlarmKind.CALIBRATION), "score", "observed_expected", m.observed_expected),
            (str(AlarmKind.CALIBRATION), "score", "intercept", m.intercept),
            (str(AlarmKind.CALIBRATION), "score", "slope", m.slope),
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
            stats.append((kind, "score", "auroc_drop_z", z))
            if drop > self.auroc_margin and z > self.z_alarm:
                severity = Severity.CRITICAL if drop > 2 * self.auroc_margin else Severity.WARNING
                findings.append(Finding(
                    AlarmKind.DISCRIMINATION, "score", severity, m.auroc, ref - self.auroc_margin,
                    f"AUROC {m.auroc:.3f} over the last {m.n} labelled hours "
                    f"({m.patients_pos} septic patients) against {ref:.3f} expected "
                    f"(drop {drop:.3f}, z = {z:.1f}); the model ranks patients worse here",
                ))
        if self._recalibrate is not None:
            width, shift = self._recalibrate
            findings.append(Finding(
                AlarmKind.CALIBRATION, "score", Severity.WARNING, shift, 0.0,
                f"calibration drift: observed minus expected sepsis hours changed by {shift:+.4f} "
                f"per hour (O/E now {m.observed_expected:.2f}, slope {m.slope:.2f}); "
                f"recalibration recommended, on the last {width} labelled hours",
            ))
        return findings, stats
