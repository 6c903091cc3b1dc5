"""Honest cycle status: is what a cycle read enough to score on? (pure; docs/runtime.md).

A cycle is **degraded** (not ``ok``), raises a critical ``cycle_inputs`` alarm
per cause, and writes no RiskAssessment at all, when:

- ``census``: the census is empty while the latest non-empty census of a
  committed cycle had patients (so it stays degraded until patients come
  back), or it shrank by more than ``census_drop`` of such a census of at least
  ``census_drop_min`` patients (ICUs do not empty in 15 minutes; interfaces do);
- ``mapping``: the fetch delivered Observations but none mapped to a catalog
  variable (a feed coded in codes vigil does not know: the reason names the
  codes ignored most often);
- ``recent_values``: more than ``max_missing_share`` of the patients due a
  score, and in the ICU for at least ``recent_hours``, have no value in the
  last ``recent_hours`` (a fetch that returns nothing for every patient leaves
  them all so within hours; one empty 15-minute fetch is normal, as values are
  charted hourly, and so is a patient just admitted with nothing charted yet);
- ``coverage``: over the last ``coverage_hours``, the census's hourly values are
  fewer than ``min_coverage`` of what the reference profile expects
  (:mod:`vigil.runtime.coverage`; e.g. a feed that carries one vital sign).

A measured variable the reference expects often but that has no value at all
in the window raises a critical ``feed_coverage`` finding naming it (e.g. every
lab coded locally); it does not degrade the cycle: the vitals still score.

A value whose effective time is more than :data:`FUTURE_SKEW` after the time of
reading (the tick, or the source's watermark when later) has a bad clock: it is
quarantined with that reason (:func:`split_future`) rather than stored, so it
can neither wait in the store for years nor count as a recent value.

In any cycle, a patient with no value in the last ``recent_hours`` has empty
inputs: the score is stored (the monitor and ``/patients`` see it) but no
RiskAssessment is written and the alert policy neither alerts nor updates its
state for that patient.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from vigil.fhir_adapter.records import IngestCounts, ObservationBatch, Quarantine, to_micros
from vigil.runtime.monitoring.alarms import AlarmKind, Finding, Severity
from vigil.runtime.settings import ScoringSettings

__all__ = ["FUTURE_SKEW", "InputHealth", "check_inputs", "has_recent_values", "split_future"]

FUTURE_SKEW = timedelta(hours=1)
"""How far after the time of reading an effective time may lie (clock skew)."""


@dataclass(frozen=True)
class InputHealth:
    """The verdict on one cycle's inputs.

    Attributes
    ----------
    findings : tuple of Finding
        One critical ``cycle_inputs`` finding per cause (empty when the inputs are fine),
        then the ``feed_coverage`` findings (absent variables; they do not degrade).
    empty : ndarray of bool, shape (n_scored,)
        Patients (in score order) with no value in the last ``recent_hours``.
    """

    findings: tuple[Finding, ...]
    empty: NDArray[np.bool_] = field(repr=False)

    @property
    def degraded(self) -> bool:
        """Whether the cycle must not be ``ok``."""
        return any(f.kind is AlarmKind.CYCLE_INPUTS for f in self.findings)

    @property
    def reason(self) -> str | None:
        """The causes in one line (None when not degraded)."""
        return "; ".join(f.message for f in self.findings
                         if f.kind is AlarmKind.CYCLE_INPUTS) or None

    def withheld(self) -> NDArray[np.bool_]:
        """Patients whose RiskAssessment is not written (all of them when degraded)."""
        return np.ones_like(self.empty) if self.degraded else self.empty


def has_recent_values(keys: Sequence[str], values: ObservationBatch, *, since: int,
                      until: int) -> NDArray[np.bool_]:
    """Whether each patient has a value with ``since < effective <= until`` (microseconds).

    Returns
    -------
    ndarray of bool, shape (len(keys),)
    """
    eff = values.effective
    recent = values.patient[(eff > since) & (eff <= until)]
    seen = set(recent.tolist())
    return np.fromiter((k in seen for k in keys), dtype=bool, count=len(keys))


def split_future(values: ObservationBatch, read_at: datetime
                 ) -> tuple[ObservationBatch, tuple[Quarantine, ...]]:
    """Keep the values not after ``read_at + FUTURE_SKEW``; quarantine the others.

    Returns
    -------
    kept : ObservationBatch
    quarantine : tuple of Quarantine
        One per value dropped (resource id and reason; no patient identifier).
    """
    late = values.effective > to_micros(read_at + FUTURE_SKEW)
    if not late.any():
        return values, ()
    reason = (f"effective time more than {FUTURE_SKEW.total_seconds() / 3600:g} h after it "
              "was read (a bad clock); not used")
    bad = tuple(Quarantine("Observation", str(rid), reason, int(lu)) for rid, lu in zip(
        values.resource_id[late].tolist(), values.last_updated[late].tolist(), strict=True))
    return values.take(~late), bad


def _finding(variable: str, value: float, threshold: float, message: str) -> Finding:
    return Finding(AlarmKind.CYCLE_INPUTS, variable, Severity.CRITICAL, value, threshold, message)


def check_inputs(
    *,
    census: int,
    previous_census: int | None,
    read: int,
    mapped: int,
    ignored: Mapping[str, int],
    recent: NDArray[np.bool_],
    settled: NDArray[np.bool_] | None = None,
    coverage: Sequence[Finding] = (),
    settings: ScoringSettings,
) -> InputHealth:
    """Judge one cycle's inputs (see the module docstring).

    Parameters
    ----------
    census : int
        Patients in this cycle's census.
    previous_census : int or None
        Patients in the latest non-empty census of a committed cycle (None: none).
    read, mapped : int
        Observation resources the fetch delivered, and values mapped from them.
    ignored : mapping of str to int
        The codes ignored most often (``system|code`` -> count).
    recent : ndarray of bool, shape (n_scored,)
        Whether each patient due a score has a value in the last ``recent_hours``.
    settled : ndarray of bool, shape (n_scored,), optional
        Whether each has been in the ICU for at least ``recent_hours`` (all when None);
        only those count for ``recent_values``.
    coverage : sequence of Finding, optional
        :func:`vigil.runtime.coverage.coverage_findings` of the cycle's window.
    settings : ScoringSettings

    Returns
    -------
    InputHealth
    """
    found: list[Finding] = []
    before = previous_census or 0
    if census == 0 and before > 0:
        found.append(_finding("census", 0.0, float(before),
                              f"the census is empty (it had {before} patients)"))
    elif before >= settings.census_drop_min and census < before * (1 - settings.census_drop):
        found.append(_finding(
            "census", float(census), before * (1 - settings.census_drop),
            f"the census shrank from {before} to {census} patients in one cycle"))
    unmapped = IngestCounts(resources=read, values=mapped,
                            ignored_codes=tuple(ignored.items())).unmapped()
    if unmapped is not None:
        found.append(_finding("mapping", 0.0, 1.0, unmapped))
    judged = recent if settled is None else recent[settled]
    n = len(judged)
    missing = int(n - judged.sum())
    if n and missing / n > settings.max_missing_share:
        found.append(_finding(
            "recent_values", missing / n, settings.max_missing_share,
            f"{missing} of {n} patients have no value in the last "
            f"{settings.recent_hours:g} h"))
    found += [f for f in coverage if f.kind is AlarmKind.CYCLE_INPUTS]
    found += [f for f in coverage if f.kind is not AlarmKind.CYCLE_INPUTS]
    return InputHealth(findings=tuple(found), empty=~recent)
