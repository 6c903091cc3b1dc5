"""Confirmed sepsis outcomes for the monitor: a file drop, or FHIR ``Condition`` resources.

A hospital knows a patient's outcome days after the scores: a sepsis onset time
(chart review, a coded diagnosis), or no sepsis by discharge. :class:`OutcomeFeed`
turns those onsets into the hourly labels the model was trained on and is the
monitor's :class:`~vigil.runtime.monitoring.performance.LabelSource`, so
``vigil serve`` feeds the performance checks exactly as ``vigil replay --labels`` does.

Hourly label (PhysioNet 2019, Reyna et al., Crit Care Med 48:210-217, 2020): hour
``t`` of a septic stay is positive from ``t_sepsis - 6`` h on. The runtime's hour
``h`` of a stay admitted at ``A`` covers ``(A + (h-1) h, A + h h]``, so

``label(h) = 1  if  A + h * 1 h >= onset - lead_hours,  else 0``

and a patient without onset is 0 in every hour; an outcome not known (the patient
is not in the feed yet) is NaN, and the hour is skipped.

Sources:

* **File drop** (:class:`FileOutcomes`): CSV or parquet with ``patient_id`` (the
  FHIR Patient id) and ``onset`` (ISO 8601 with a zone; empty = no sepsis by
  discharge). Re-read when the file changes; a patient listed twice keeps the
  earliest onset.
* **FHIR** (:class:`FHIRConditionOutcomes`): ``Condition?code=http://snomed.info/sct|91302008``
  (Sepsis), read incrementally by ``_lastUpdated``; the onset is
  ``onsetDateTime`` (else ``onsetPeriod.start``, else ``recordedDate``); refuted
  and entered-in-error Conditions are dropped, and a later version of a Condition
  replaces the earlier one (a diagnosis refuted after review no longer counts).
  A patient who left the ICU census
  with no such Condition is a negative.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.core.errors import DataError, FHIRError

__all__ = [
    "NO_SEPSIS",
    "SEPSIS_SNOMED",
    "FHIRConditionOutcomes",
    "FileOutcomes",
    "OutcomeFeed",
    "hourly_labels",
    "read_onsets",
    "store_stays",
]

log = logging.getLogger(__name__)

NO_SEPSIS = math.inf
"""Onset of a patient without sepsis by discharge."""
SEPSIS_SNOMED = ("http://snomed.info/sct", "91302008")
"""SNOMED CT 91302008 |Sepsis (disorder)|."""
_ZONED = re.compile(r"T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})$")

Onsets = Mapping[str, float]
"""Patient key -> onset (UTC seconds), :data:`NO_SEPSIS` for none; absent = not known."""
Stays = Callable[[NDArray[np.object_]], tuple[NDArray[np.float64], NDArray[np.bool_]]]
"""Patient keys -> (ICU admission in UTC seconds, NaN if unknown; left the ICU census)."""


def hourly_labels(
    onset: NDArray[np.floating], admission: NDArray[np.floating], iculos: NDArray[np.integer],
    *, lead_hours: float = 6.0,
) -> NDArray[np.float64]:
    """Label patient-hours from onset times (PhysioNet 2019, Reyna et al. 2020).

    Parameters
    ----------
    onset : ndarray of shape (n,)
        Sepsis onset in UTC seconds; ``inf`` for no sepsis, NaN when not known.
    admission : ndarray of shape (n,)
        ICU admission of the stay in UTC seconds (NaN when not known).
    iculos : ndarray of shape (n,)
        The ICU hour ``h`` scored.
    lead_hours : float, optional
        Hours before onset from which hours are positive (6 in PhysioNet 2019).

    Returns
    -------
    ndarray of float64, shape (n,)
        1 where ``admission + h * 3600 >= onset - lead_hours * 3600``, else 0; NaN where
        the onset or the admission is not known.
    """
    onset = np.asarray(onset, dtype=np.float64)
    admission = np.asarray(admission, dtype=np.float64)
    end = admission + np.asarray(iculos, dtype=np.float64) * 3600.0
    with np.errstate(invalid="ignore"):
        out = (end >= onset - lead_hours * 3600.0).astype(np.float64)
    out[np.isnan(onset) | np.isnan(admission)] = np.nan
    return out


def _seconds(text: pd.Series, *, where: str) -> NDArray[np.float64]:
    """Parse ISO 8601 times with a zone to UTC seconds; empty -> :data:`NO_SEPSIS`."""
    s = text.astype("string").str.strip().fillna("")
    given = s != ""
    bad = given & ~s.str.contains(_ZONED, regex=True)
    if bad.any():
        raise DataError(
            f"{where}: expected onset as an ISO 8601 time with a zone (2024-03-01T10:20:00Z), "
            f"got {s[bad].iloc[0]!r} in {int(bad.sum())} row(s); fix the export or leave the "
            "onset empty for no sepsis", source=where,
        )
    out = np.full(len(s), NO_SEPSIS)
    if given.any():
        stamps = pd.to_datetime(s[given], utc=True, format="ISO8601")
        out[given.to_numpy()] = stamps.astype("datetime64[us, UTC]").astype("int64") / 1e6
    return out


def read_onsets(path: str | Path) -> dict[str, float]:
    """Read a file drop of outcomes.

    Parameters
    ----------
    path : str or Path
        ``.csv`` or ``.parquet`` with columns ``patient_id`` and ``onset``.

    Returns
    -------
    dict of str to float
        Patient key -> onset in UTC seconds (:data:`NO_SEPSIS` for an empty onset).

    Raises
    ------
    DataError
        For a missing column or an onset without a zone.
    """
    p = Path(path)
    if p.suffix == ".parquet":
        frame = pd.read_parquet(p)
    else:
        frame = pd.read_csv(p, dtype={"patient_id": "string", "onset": "string"},
                            keep_default_na=False)
    missing = {"patient_id", "onset"} - set(frame.columns)
    if missing:
        raise DataError(f"{p.name}: expected columns patient_id, onset; missing "
                        f"{sorted(missing)} (found {sorted(frame.columns)})", source=str(p))
    onset = _seconds(frame["onset"], where=p.name)
    keys = frame["patient_id"].astype(str).to_numpy()
    earliest = pd.Series(onset).groupby(keys, sort=False).min()
    return dict(zip(earliest.index.astype(str).tolist(), earliest.tolist(), strict=True))


class FileOutcomes:
    """Onsets from a file the hospital drops (re-read when it changes; none while absent).

    Parameters
    ----------
    path : Path
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._onsets: dict[str, float] = {}
        self._warned = False

    def __call__(self) -> dict[str, float]:
        """Return the onsets of the current file."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if not self._warned:
                log.warning("no outcome file at %s yet; performance checks wait for it", self.path)
                self._warned = True
            return self._onsets
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._onsets = read_onsets(self.path)
            except DataError as exc:  # keep the last good file; the next change is read again
                log.error("outcome file not read: %s", exc)
            else:
                log.info("outcome file read: %d patients", len(self._onsets))
            self._stamp = stamp
        return self._onsets


class FHIRConditionOutcomes:
    """Onsets from FHIR ``Condition`` resources coded SNOMED CT 91302008 (Sepsis).

    Parameters
    ----------
    http : vigil.fhir_adapter.http.FHIRHttp
        The REST client (its ``search`` follows paging).
    """

    def __init__(self, http: Any) -> None:
        self.http = http
        self._onsets: dict[str, float] = {}
        self._by_condition: dict[str, tuple[str, float]] = {}
        self._since: tuple[int, str] | None = None

    def __call__(self) -> dict[str, float]:
        """Read the Conditions written since the last call; return every onset known.

        A failed read is logged and the onsets known so far are returned (the next call
        reads from the same point again).
        """
        from vigil.fhir_adapter.fast import parse_stamp
        from vigil.fhir_adapter.rest import bundle_resources

        system, code = SEPSIS_SNOMED
        params = [("code", f"{system}|{code}")]
        if self._since is not None:
            params.append(("_lastUpdated", f"ge{self._since[1]}"))
        try:
            bundles = list(self.http.search("Condition", params))
        except FHIRError as exc:
            log.warning("sepsis Conditions not read (%s); outcomes so far are used", exc)
            return self._onsets
        newest = self._since
        for c in bundle_resources(bundles):
            if c.get("resourceType") != "Condition":
                continue
            stamp = (c.get("meta") or {}).get("lastUpdated")
            t = parse_stamp(stamp) if isinstance(stamp, str) else None
            if isinstance(t, int) and (newest is None or t > newest[0]):
                newest = (t, stamp)
            self._update(c)
        self._since = newest
        self._onsets = {}
        for patient, onset in self._by_condition.values():
            self._onsets[patient] = min(self._onsets.get(patient, onset), onset)
        return self._onsets

    def _update(self, c: dict[str, Any]) -> None:
        """Keep this version of a Condition: its onset, or none if refuted or unusable."""
        from vigil.fhir_adapter.mapping import parse_time, reference_id

        key = str(c.get("id") or id(c))
        self._by_condition.pop(key, None)  # a later version replaces the earlier one
        status = {x.get("code") for x in ((c.get("verificationStatus") or {}).get("coding") or ())}
        patient = reference_id((c.get("subject") or {}).get("reference"), "Patient")
        when = (c.get("onsetDateTime") or (c.get("onsetPeriod") or {}).get("start")
                or c.get("recordedDate"))
        if patient is None or status & {"refuted", "entered-in-error"} or not isinstance(when, str):
            return
        t = parse_time(when, "onsetDateTime")
        if isinstance(t, int):
            self._by_condition[key] = (patient, t / 1e6)

    def close(self) -> None:
        """Release the client's connections."""
        self.http.close()


def store_stays(conn: sqlite3.Connection) -> Stays:
    """ICU admissions and census state of patients, read from the state store's ``patients``."""

    def stays(keys: NDArray[np.object_]) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        rows = dict(((k, (a, c)) for k, a, c in conn.execute(
            "SELECT patient_key, icu_admission, in_census FROM patients")))
        admission = np.array([rows[k][0] / 1e6 if k in rows else np.nan for k in keys.tolist()],
                             dtype=np.float64)
        gone = np.array([k in rows and not rows[k][1] for k in keys.tolist()], dtype=bool)
        return admission, gone

    return stays


class OutcomeFeed:
    """Hourly labels from onsets: the monitor's label source in ``vigil serve``.

    Parameters
    ----------
    onsets : callable returning a mapping of str to float
        :class:`FileOutcomes` or :class:`FHIRConditionOutcomes`.
    stays : callable
        Patient keys -> (ICU admission in UTC seconds, whether the patient left the census)
        (:func:`store_stays`).
    delay_hours : float, keyword-only
        A patient-hour's outcome is looked up this long after the hour.
    lead_hours : float, optional
        See :func:`hourly_labels`.
    negatives_on_discharge : bool, optional
        A patient with no onset who left the census is a negative (a FHIR feed lists only
        the septic patients); a file lists its negatives.
    """

    def __init__(
        self, onsets: Callable[[], Onsets], stays: Stays, *, delay_hours: float,
        lead_hours: float = 6.0, negatives_on_discharge: bool = False,
    ) -> None:
        if delay_hours < 0:
            raise ValueError(f"delay_hours must be >= 0, got {delay_hours}")
        self.onsets, self.stays = onsets, stays
        self.delay_hours, self.lead_hours = float(delay_hours), float(lead_hours)
        self.negatives_on_discharge = negatives_on_discharge

    def labels(self, patient_keys: NDArray[np.object_], iculos: NDArray[np.integer]) -> NDArray[
        np.float64
    ]:
        """Label the patient-hours; NaN where the outcome is not known (yet)."""
        keys = np.asarray(patient_keys, dtype=object).astype(str).astype(object)
        known = self.onsets()
        onset = np.array([known.get(k, np.nan) for k in keys.tolist()], dtype=np.float64)
        admission, gone = self.stays(keys)
        if self.negatives_on_discharge:
            onset[np.isnan(onset) & gone] = NO_SEPSIS
        return hourly_labels(onset, admission, iculos, lead_hours=self.lead_hours)

    def close(self) -> None:
        """Release the source's connections (a FHIR client)."""
        close = getattr(self.onsets, "close", None)
        if close is not None:
            close()

