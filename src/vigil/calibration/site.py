"""A site's recalibration: time-ordered split, fit, threshold, before/after metrics.

PhysioNet 2019 has no dates, so "earlier" is defined deterministically:
within each hospital, patients are ordered by ``patient_id`` (the Challenge
numbered records in sequence) and the first ``fit_fraction`` of them are the
fit patients; the rest are the report patients, on which everything is
measured. The calibration map and the threshold never see a report patient.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.calibration._base import Calibrator, check_probabilities
from vigil.calibration.alerts import DEFAULT_SUPPRESSION_HOURS
from vigil.calibration.methods import Method, make_calibrator
from vigil.calibration.metrics import CalibrationMetrics, calibration_metrics
from vigil.calibration.operating import OperatingPoint, operating_point
from vigil.calibration.policies import PolicyKey, ThresholdPolicy, choose_threshold
from vigil.calibration.record import CalibrationRecord, ModelRef
from vigil.core.errors import ConfigError, DataError
from vigil.data.loader import PhysioNetTable

__all__ = ["TIE_TOLERANCE", "ScoredHours", "SiteCalibration", "calibrate_site", "tie_warning",
           "time_ordered_split"]

TIE_TOLERANCE = 0.02
"""Overshoot of a sensitivity target on the fit patients that the report and CLI flag."""
_SHARE_POLICIES = frozenset({PolicyKey.SENSITIVITY, PolicyKey.PATIENT_SENSITIVITY})


@dataclass(frozen=True, eq=False)
class ScoredHours:
    """Hourly model probabilities with their outcomes, grouped by patient.

    Attributes
    ----------
    patient_ids : tuple of str
        One per patient (never logged).
    hospital : ndarray of shape (n_patients,)
    starts : ndarray of shape (n_patients + 1,)
    labels : ndarray of shape (n_rows,)
        ``SepsisLabel``.
    probability : ndarray of shape (n_rows,)
        The raw model probability.
    """

    patient_ids: tuple[str, ...]
    hospital: NDArray[np.str_]
    starts: NDArray[np.int64]
    labels: NDArray[np.int8]
    probability: NDArray[np.float64]

    def __repr__(self) -> str:
        return f"ScoredHours(n_patients={len(self.patient_ids)}, n_rows={self.labels.size})"

    @classmethod
    def from_table(cls, table: PhysioNetTable, probability: NDArray[np.floating]) -> ScoredHours:
        """From a PhysioNet table and one probability per row, shape (n_rows,)."""
        p = check_probabilities(probability, name="probability")
        if p.size != table.grid.n_rows:
            raise DataError(
                f"expected {table.grid.n_rows} probabilities, one per row; got {p.size}"
            )
        return cls(table.grid.patient_ids, table.patient_hospital, table.grid.starts,
                   table.labels, p)

    @classmethod
    def from_scores(cls, outcomes: pd.DataFrame, scores: pd.DataFrame) -> ScoredHours:
        """Join stored scores to known outcomes (the runtime's own scores, or `vigil evaluate`'s).

        Parameters
        ----------
        outcomes : DataFrame
            ``patient_id, hospital, ICULOS, SepsisLabel`` (a PhysioNet table).
        scores : DataFrame
            ``patient_id``, ``ICULOS`` (or the runtime's ``iculos``), ``probability``
            and optionally ``scored_at``. Several scores of one hour (15-minute
            ticks) keep the latest; hours without a score are left out (the alert
            replay then treats a patient's remaining rows as consecutive hours).

        Returns
        -------
        ScoredHours

        Raises
        ------
        DataError
            If columns are missing or no score matches an outcome.
        """
        s = scores.rename(columns={"iculos": "ICULOS"})
        missing = [c for c in ("patient_id", "ICULOS", "probability") if c not in s.columns]
        if missing:
            raise DataError(
                f"expected score columns patient_id, ICULOS (or iculos), probability; missing "
                f"{', '.join(missing)}"
            )
        if "scored_at" in s.columns:
            s = s.sort_values("scored_at", kind="stable")
        s = s.drop_duplicates(["patient_id", "ICULOS"], keep="last")
        s = s.loc[:, ["patient_id", "ICULOS", "probability"]].astype({"ICULOS": np.int64})
        o = outcomes.loc[:, ["patient_id", "hospital", "ICULOS", "SepsisLabel"]]
        merged = o.astype({"ICULOS": np.int64}).merge(s, on=["patient_id", "ICULOS"], how="inner")
        if merged.empty:
            raise DataError(
                "expected scores for hours of the outcome data; none of the scored "
                "(patient_id, ICULOS) pairs is in it"
            )
        merged = merged.sort_values(["patient_id", "ICULOS"], kind="stable")
        pid = merged["patient_id"].to_numpy()
        first = np.r_[True, pid[1:] != pid[:-1]]
        starts = np.r_[np.flatnonzero(first), pid.size].astype(np.int64)
        return cls(
            patient_ids=tuple(str(x) for x in pid[first]),
            hospital=merged["hospital"].to_numpy(dtype=str)[first],
            starts=starts,
            labels=merged["SepsisLabel"].to_numpy(dtype=np.int8),
            probability=check_probabilities(merged["probability"].to_numpy(), name="probability"),
        )

    def select(self, patients: NDArray[np.int64]) -> ScoredHours:
        """Return the given patients (by position), in order."""
        idx = np.asarray(patients, dtype=np.int64)
        lengths = np.diff(self.starts)[idx]
        rows = (np.concatenate([np.arange(self.starts[i], self.starts[i + 1]) for i in idx])
                if idx.size else np.zeros(0, dtype=np.int64))
        return ScoredHours(
            patient_ids=tuple(self.patient_ids[i] for i in idx),
            hospital=self.hospital[idx],
            starts=np.r_[0, np.cumsum(lengths)].astype(np.int64),
            labels=self.labels[rows],
            probability=self.probability[rows],
        )

    def summary(self) -> dict[str, Any]:
        """Return counts and a hash of the patient set (no identifiers), for the data window."""
        septic = np.maximum.reduceat(self.labels, self.starts[:-1]) if self.labels.size else []
        digest = hashlib.sha256("\n".join(sorted(self.patient_ids)).encode()).hexdigest()
        return {
            "patients": len(self.patient_ids),
            "rows": int(self.labels.size),
            "septic_patients": int(np.sum(septic)),
            "positive_rows": int(self.labels.sum()),
            "hospitals": sorted(set(self.hospital.tolist())),
            "patients_sha256": digest,
        }


def time_ordered_split(
    patient_ids: tuple[str, ...], hospital: NDArray[np.str_], *, fit_fraction: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Earlier (fit) and later (report) patients, by ``patient_id`` order within each hospital.

    Parameters
    ----------
    patient_ids : tuple of str
    hospital : ndarray of shape (n_patients,)
    fit_fraction : float
        In (0, 1): the share of each hospital's patients that are fit patients.

    Returns
    -------
    fit, report : ndarray of int
        Patient positions, ascending.

    Examples
    --------
    >>> fit, rep = time_ordered_split(("p3", "p1", "p2", "p4"), np.array(list("AAAA")),
    ...                               fit_fraction=0.5)
    >>> fit.tolist(), rep.tolist()
    ([1, 2], [0, 3])
    """
    if not 0.0 < fit_fraction < 1.0:
        raise ConfigError(f"expected fit_fraction in (0, 1), got {fit_fraction!r}",
                          key="fit_fraction")
    ids = np.asarray(patient_ids, dtype=str)
    fit: list[NDArray[np.int64]] = []
    for h in np.unique(hospital):
        members = np.flatnonzero(hospital == h)
        ordered = members[np.argsort(ids[members], kind="stable")]
        fit.append(ordered[: int(np.floor(fit_fraction * ordered.size))])
    fit_idx = np.sort(np.concatenate(fit)) if fit else np.zeros(0, dtype=np.int64)
    report_idx = np.setdiff1d(np.arange(ids.size), fit_idx)
    return fit_idx.astype(np.int64), report_idx.astype(np.int64)


@dataclass(frozen=True, eq=False)
class SiteCalibration:
    """Everything a site calibration produced.

    Attributes
    ----------
    calibrator : Calibrator
        Fitted on the fit patients.
    policy : ThresholdPolicy
    threshold : float
        Chosen on the fit patients' calibrated probabilities.
    fit_achieved : float
        The policy's metric at that threshold on the fit patients: the target itself but for
        ties among the calibrated probabilities (a step of an isotonic map, tied raw
        scores), which can put the nearest reachable value well past the target.
    model_threshold : float
        The package's own threshold (the "before" operating point).
    fit, report : ScoredHours
        Earlier and later patients.
    report_calibrated : ndarray of shape (report.n_rows,)
    calibration : dict of str to CalibrationMetrics
        ``before`` / ``after`` on the report patients.
    operating : dict of str to OperatingPoint
        ``before`` (raw, model threshold) / ``after`` (calibrated, chosen threshold)
        on the report patients, with bootstrap intervals.
    alert_policy : dict
        ``suppression_hours``, ``hysteresis``.
    data_window : dict
    """

    calibrator: Calibrator
    policy: ThresholdPolicy
    threshold: float
    fit_achieved: float
    model_threshold: float
    fit: ScoredHours
    report: ScoredHours
    report_calibrated: NDArray[np.float64]
    calibration: dict[str, CalibrationMetrics]
    operating: dict[str, OperatingPoint]
    alert_policy: dict[str, Any]
    data_window: dict[str, Any]

    def __repr__(self) -> str:
        return (f"SiteCalibration(method={self.calibrator.method!r}, policy='{self.policy}', "
                f"threshold={self.threshold:.4g})")

    @property
    def overshoot(self) -> float:
        """How far past a sensitivity target the fit patients' ties forced the threshold.

        ``fit_achieved - target`` for ``sensitivity`` and ``patient-sensitivity`` (0 for
        other policies, whose thresholds are not bounded below by a share of cases).
        Above :data:`TIE_TOLERANCE` the target could not be approached on the fit data.
        """
        if self.policy.key not in _SHARE_POLICIES or self.policy.target is None:
            return 0.0
        return max(0.0, self.fit_achieved - self.policy.target)

    def metrics(self) -> dict[str, Any]:
        """``before`` / ``after``: calibration metrics and operating point, as plain dicts."""
        return {
            when: {"calibration": self.calibration[when].to_dict(),
                   "operating": self.operating[when].to_dict()}
            for when in ("before", "after")
        }

    def to_record(self, *, site: str, model: ModelRef) -> CalibrationRecord:
        """Return the calibration record of this result."""
        achieved = self.operating["after"].metrics[self.policy.metric]
        return CalibrationRecord(
            site=site,
            model=model,
            method=self.calibrator.method,
            calibrator=self.calibrator.to_dict(),
            policy=self.policy.to_dict(),
            threshold=self.threshold,
            alert_policy=self.alert_policy,
            achieved={"metric": self.policy.metric, "target": self.policy.target,
                      **achieved.to_dict(), "level": self.operating["after"].level,
                      "on_fit": self.fit_achieved},
            metrics=self.metrics(),
            data_window=self.data_window,
        )


def tie_warning(result: SiteCalibration) -> str:
    """Say why a sensitivity target was overshot on the fit patients (see ``overshoot``)."""
    target = result.policy.target
    return (
        f"{result.policy.metric.replace('_', ' ')} {target:g} was asked for, but on the fit "
        f"patients the nearest threshold reaching it gives {result.fit_achieved:.3f}: the "
        f"{result.calibrator.method} map gives many of their hours the same probability (a "
        "step), so no threshold lies closer; a continuous method (logistic, beta) avoids that"
    )


def calibrate_site(
    hours: ScoredHours,
    *,
    method: Method | str,
    policy: ThresholdPolicy,
    model_threshold: float,
    fit_fraction: float = 0.5,
    suppression_hours: float = DEFAULT_SUPPRESSION_HOURS,
    hysteresis: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    min_events: int | None = None,
    source: str = "",
) -> SiteCalibration:
    """Fit a recalibration map and a threshold on earlier patients; measure on later ones.

    Parameters
    ----------
    hours : ScoredHours
        The site's labeled history, scored by the raw model.
    method : Method or str
    policy : ThresholdPolicy
    model_threshold : float
        The package's threshold, for the "before" operating point.
    fit_fraction : float, optional
        Share of each hospital's patients (in ``patient_id`` order) used to fit.
    suppression_hours, hysteresis : float, optional
        Of the alert policy.
    n_boot, seed : int, optional
        Patient-level bootstrap of the report metrics.
    min_events : int or None, optional
        Override of the method's minimum-sample rule.
    source : str, optional
        Name of the data, written into the data window.

    Returns
    -------
    SiteCalibration
    """
    fit_idx, report_idx = time_ordered_split(hours.patient_ids, hours.hospital,
                                             fit_fraction=fit_fraction)
    if report_idx.size == 0 or fit_idx.size == 0:
        raise DataError(
            f"expected patients both to fit and to report on; got {fit_idx.size} and "
            f"{report_idx.size} of {len(hours.patient_ids)} (use more data or another fit_fraction)"
        )
    fit, report = hours.select(fit_idx), hours.select(report_idx)
    calibrator = make_calibrator(method, min_events=min_events).fit(fit.probability, fit.labels)
    fit_calibrated = calibrator.transform(fit.probability)
    threshold = choose_threshold(policy, fit.labels, fit_calibrated, fit.starts,
                                 suppression_hours=suppression_hours, hysteresis=hysteresis)
    calibrated = calibrator.transform(report.probability)
    alerting = {"suppression_hours": suppression_hours, "hysteresis": hysteresis}
    on_fit = operating_point(fit.labels, fit_calibrated, fit.starts, threshold=threshold,
                             n_boot=0, **alerting)
    ops = {
        when: operating_point(report.labels, prob, report.starts, threshold=cut, n_boot=n_boot,
                              seed=seed, **alerting)
        for when, prob, cut in (("before", report.probability, model_threshold),
                                ("after", calibrated, threshold))
    }
    return SiteCalibration(
        calibrator=calibrator,
        policy=policy,
        threshold=threshold,
        fit_achieved=on_fit.metrics[policy.metric].value,
        model_threshold=float(model_threshold),
        fit=fit,
        report=report,
        report_calibrated=calibrated,
        calibration={"before": calibration_metrics(report.labels, report.probability),
                     "after": calibration_metrics(report.labels, calibrated)},
        operating=ops,
        alert_policy=alerting,
        data_window={
            "source": source,
            "ordering": "patient_id within each hospital; the first fit_fraction are earlier",
            "fit_fraction": fit_fraction,
            "fit": fit.summary(),
            "report": report.summary(),
        },
    )
