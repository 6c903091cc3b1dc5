"""Site calibration of an imaging model: the same maps and policies, with the study as the unit.

Sepsis calibrates hourly rows grouped by patient; an imaging site calibrates studies. A
study's probability is the highest of its image instances (as
:attr:`vigil.runtime.study_contracts.StudyScore.study_probability`), its label the highest
of its labelled instances (a study with any pneumonia image is positive). Each study
becomes one "patient" with one row of :class:`~vigil.calibration.site.ScoredHours`, so
:func:`~vigil.calibration.site.calibrate_site` fits, chooses and reports unchanged:
hour-level sensitivity, specificity and PPV become study-level, and the patient
bootstrap resamples studies. "Earlier" studies are ordered by StudyDate + StudyTime, ties by
StudyInstanceUID; the first ``fit_fraction`` are fitted on, the rest reported on.

Only the policies that mean something for studies are accepted: ``sensitivity=S`` and
``ppv=P`` (patient sensitivity, alert budgets per patient-day and the PhysioNet utility are
about hours of an ICU stay).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.calibration._base import check_probabilities
from vigil.calibration.methods import Method
from vigil.calibration.policies import PolicyKey, ThresholdPolicy
from vigil.calibration.site import ScoredHours, SiteCalibration, calibrate_site
from vigil.core.errors import ConfigError, DataError

__all__ = ["STUDY_POLICIES", "calibrate_studies", "study_scores"]

STUDY_POLICIES = frozenset({PolicyKey.SENSITIVITY, PolicyKey.PPV})
"""Threshold policies an imaging calibration accepts."""

_ORDERING = ("StudyDate + StudyTime, then StudyInstanceUID; the first fit_fraction of the "
             "studies are earlier")


def study_scores(
    study_uids: Sequence[str], study_times: Sequence[str],
    probability: NDArray[np.floating], labels: NDArray[np.floating],
) -> tuple[ScoredHours, list[str]]:
    """Group image instances into labelled studies, in time order.

    Parameters
    ----------
    study_uids, study_times : sequence of str, length n_images
        Each image's StudyInstanceUID and StudyDate + StudyTime.
    probability : ndarray of shape (n_images,)
        Raw model probabilities.
    labels : ndarray of shape (n_images,)
        0/1, NaN where unknown.

    Returns
    -------
    studies : ScoredHours
        One "patient" and one row per study with a known label, ``patient_ids`` its rank
        (zero-padded, so they sort in time order), probability the highest instance's.
    uids : list of str
        The studies' UIDs in the same order (never logged).

    Raises
    ------
    DataError
        If the lengths differ or no study has a label.
    """
    p = check_probabilities(probability, name="probability")
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if not (len(study_uids) == len(study_times) == p.size == y.size):
        raise DataError(f"expected one study UID, time, probability and label per image; got "
                        f"{len(study_uids)}, {len(study_times)}, {p.size} and {y.size}")
    uids = np.asarray(study_uids, dtype=object)
    if uids.size and np.any(uids == ""):
        raise DataError("expected a StudyInstanceUID on every image; some have none")
    names, inverse = np.unique(uids.astype(str), return_inverse=True)
    best = np.full(names.size, -np.inf)
    np.maximum.at(best, inverse, p)
    known = np.isfinite(y)
    label = np.full(names.size, -1.0)
    np.maximum.at(label, inverse[known], y[known])
    when = np.empty(names.size, dtype=object)
    when[inverse[::-1]] = np.asarray(study_times, dtype=object)[::-1]  # first image's time
    keep = np.flatnonzero(label >= 0)
    if keep.size == 0:
        raise DataError("expected labelled studies (labels.csv beside the DICOM files); none "
                        "of the scored images has a label")
    order = keep[np.lexsort((names[keep], when[keep].astype(str)))]
    width = len(str(order.size))
    return ScoredHours(
        patient_ids=tuple(f"{i:0{width}d}" for i in range(order.size)),
        hospital=np.full(order.size, "site"),
        starts=np.arange(order.size + 1, dtype=np.int64),
        labels=label[order].astype(np.int8),
        probability=best[order],
    ), [str(names[i]) for i in order]


def _window(part: ScoredHours, uids: Sequence[str]) -> dict[str, Any]:
    chosen = sorted(uids[int(i)] for i in part.patient_ids)
    return {"studies": len(part.patient_ids), "positive_studies": int(part.labels.sum()),
            "studies_sha256": hashlib.sha256("\n".join(chosen).encode()).hexdigest()}


def calibrate_studies(
    studies: ScoredHours, uids: Sequence[str], *, method: Method | str, policy: ThresholdPolicy,
    model_threshold: float, fit_fraction: float = 0.5, n_boot: int = 1000, seed: int = 0,
    min_events: int | None = None, source: str = "",
) -> SiteCalibration:
    """Fit a recalibration map and a threshold on earlier studies; measure on later ones.

    Parameters
    ----------
    studies : ScoredHours
        :func:`study_scores`.
    uids : sequence of str
        Its study UIDs (hashed into the data window, never written).
    method : Method or str
    policy : ThresholdPolicy
        ``sensitivity`` or ``ppv`` (:data:`STUDY_POLICIES`).
    model_threshold : float
        The package's threshold (the "before" operating point).
    fit_fraction, n_boot, seed, min_events, source
        As :func:`~vigil.calibration.site.calibrate_site`.

    Returns
    -------
    SiteCalibration
        Its ``data_window`` counts studies.

    Raises
    ------
    ConfigError
        For a policy that has no meaning for studies.
    """
    if policy.key not in STUDY_POLICIES:
        raise ConfigError(
            f"expected --policy sensitivity=S or ppv=P for an imaging model (a study has no "
            f"hours or patient-days); got {policy}", key="policy")
    result = calibrate_site(studies, method=method, policy=policy,
                            model_threshold=model_threshold, fit_fraction=fit_fraction,
                            n_boot=n_boot, seed=seed, min_events=min_events, source=source)
    window = {"source": source, "unit": "study", "ordering": _ORDERING,
              "fit_fraction": fit_fraction, "fit": _window(result.fit, uids),
              "report": _window(result.report, uids)}
    return dataclasses.replace(result, data_window=window)
