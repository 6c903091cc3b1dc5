"""Recorded FHIR data served on a simulated clock (what ``vigil replay`` reads).

A :class:`ClockedSource` holds every ICU stay (with its end) and every mapped
observation of a recorded data set, e.g. the NDJSON that ``vigil fhir synth``
writes, and answers as the FHIR server would have at each simulated tick: the
census is the stays in progress, and an observation becomes visible at its
effective time. :func:`load_ndjson` reads a Bulk Data directory and
:func:`load_fhir` a FHIR server, both with the FHIR adapter's census and
Observation mapping.

A recorded stay has no end (``vigil fhir synth`` writes in-progress encounters);
it ends one hour after its last observation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from vigil.core.errors import DataError
from vigil.fhir_adapter.records import (
    NO_TIME,
    Census,
    IngestCounts,
    IngestResult,
    ObservationBatch,
    Quarantine,
    Stay,
    from_micros,
    to_micros,
)
from vigil.runtime.coverage import Coverage, coverage_findings, measure_coverage
from vigil.runtime.settings import ScoringSettings

__all__ = ["ClockedSource", "clocked", "load_fhir", "load_ndjson", "require_coverage"]

_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US


@dataclass(frozen=True, eq=False)
class ClockedSource:
    """Recorded data served as it would have been seen at each tick.

    Parameters
    ----------
    stays : sequence of (Stay, datetime or None)
        Every ICU stay and its end (None: still in the ICU at the end).
    recorded : ObservationBatch
        Every mapped observation.
    name : str, optional
        The watermark's key in the store.
    quarantine : sequence of Quarantine, optional
        Rejected resources, served at their ``meta.lastUpdated`` (those without one never).
    counts : IngestCounts, optional
        What mapping the recorded Observations counted (read, used, ignored by code, ...).
    """

    stays: Sequence[tuple[Stay, datetime | None]]
    recorded: ObservationBatch
    name: str = "replay"
    quarantine: Sequence[Quarantine] = ()
    counts: IngestCounts = IngestCounts()

    def __post_init__(self) -> None:
        # Sorted by effective time, with integer patient codes: each fetch is a slice and a
        # lookup, not a scan of every value.
        order = np.argsort(self.recorded.effective, kind="stable")
        batch = self.recorded.take(order)
        codes, names = pd.factorize(batch.patient.astype(str))
        object.__setattr__(self, "_sorted", batch)
        object.__setattr__(self, "_codes", codes)
        object.__setattr__(self, "_names", pd.Index(names))

    def __repr__(self) -> str:
        return f"ClockedSource(stays={len(self.stays)}, values={len(self.recorded)})"

    def census(self, tick: datetime) -> Census:
        """Stays with ``icu_admission <= tick < end``, sorted by patient."""
        current: dict[str, Stay] = {}
        for stay, end in self.stays:
            if stay.icu_admission <= tick and (end is None or tick < end):
                held = current.get(stay.patient)
                if held is None or held.icu_admission < stay.icu_admission:
                    current[stay.patient] = stay
        return Census(stays=tuple(current[k] for k in sorted(current)))

    def observations(
        self, since: datetime | None, until: datetime, *, patients: Sequence[str] | None = None
    ) -> IngestResult:
        """Observations with ``since < effective <= until``; the watermark is ``until``."""
        sorted_: ObservationBatch = self._sorted  # type: ignore[attr-defined]
        eff = sorted_.effective
        lo = 0 if since is None else int(np.searchsorted(eff, to_micros(since), "right"))
        hi = int(np.searchsorted(eff, to_micros(until), "right"))
        index = np.arange(lo, hi)
        if patients is not None:
            wanted = np.zeros(len(self._names) + 1, dtype=bool)  # type: ignore[attr-defined]
            codes = self._names.get_indexer(list(patients))  # type: ignore[attr-defined]
            wanted[codes[codes >= 0]] = True
            index = index[wanted[self._codes[lo:hi]]]  # type: ignore[attr-defined]
        batch = sorted_.take(index)
        rejected = tuple(q for q in self.quarantine if q.last_updated != NO_TIME
                         and (since is None or q.last_updated > to_micros(since))
                         and q.last_updated <= to_micros(until))
        return IngestResult(
            observations=batch, quarantine=rejected, counts=IngestCounts(values=len(batch)),
            watermark=until,
        )

    @property
    def span(self) -> tuple[datetime, datetime]:
        """First ICU admission and last end.

        Raises
        ------
        DataError
            If there is no stay.
        """
        if not self.stays:
            raise DataError("the recorded data holds no ICU stay; nothing to replay")
        start = min(s.icu_admission for s, _ in self.stays)
        ends = [e for _, e in self.stays if e is not None]
        if len(self.recorded):
            ends.append(from_micros(int(self.recorded.effective.max())))
        return start, max(ends) if ends else start


def clocked(census: Census, batch: ObservationBatch, *, stack_admissions: bool = False,
            quarantine: Sequence[Quarantine] = (), stack_days: int = 1,
            counts: IngestCounts | None = None) -> ClockedSource:
    """Build a clocked source from a census and every observation.

    Parameters
    ----------
    census : Census
        Every recorded ICU stay.
    batch : ObservationBatch
        Every mapped observation (those of other patients are dropped).
    stack_admissions : bool, optional
        Move each stay by whole days so that every ICU admission falls on the day
        of the earliest one (``vigil fhir synth`` spreads admissions over a year,
        so few patients would share a replayed day). Times within a stay, and
        ages, do not change, so neither does the grid.
    stack_days : int, optional
        With ``stack_admissions``, the admissions fall on this many consecutive
        days instead of one: a stay admitted ``d`` days after the earliest one
        moves to day ``d mod stack_days``.
    quarantine : sequence of Quarantine, optional
        Rejected resources to serve at their time (not when stacking: a rejected
        resource names no patient, so it cannot be moved with its stay).
    counts : IngestCounts, optional
        The mapping's counters, kept on the source.

    Returns
    -------
    ClockedSource
    """
    stays = list(census.stays)
    shift = np.zeros(len(stays), dtype=np.int64)
    if stack_admissions and stays:
        anchor = min(s.icu_admission for s in stays).astimezone(UTC).replace(
            hour=0, minute=0, second=0, microsecond=0)
        days = np.array([(s.icu_admission - anchor).days for s in stays], dtype=np.int64)
        shift = days - days % max(1, stack_days)
        stays = [_shift_stay(s, int(k)) for s, k in zip(stays, shift, strict=True)]
    where = (pd.Index([s.patient for s in stays]).get_indexer(batch.patient.astype(str))
             if len(batch) else np.zeros(0, dtype=np.int64))
    batch = batch.take(where >= 0)
    where = where[where >= 0]
    if stack_admissions:
        back = shift[where] * _DAY_US
        lu = batch.last_updated
        batch = replace(batch, effective=batch.effective - back,
                        last_updated=np.where(lu == NO_TIME, lu, lu - back))
    last = np.full(len(stays), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, where, batch.effective)
    ends = [from_micros(max(int(e), to_micros(s.icu_admission)) + _HOUR_US)
            for s, e in zip(stays, last, strict=True)]
    return ClockedSource(stays=list(zip(stays, ends, strict=True)), recorded=batch,
                         quarantine=() if stack_admissions else tuple(quarantine),
                         counts=counts or IngestCounts())


def _shift_stay(stay: Stay, days: int) -> Stay:
    d = timedelta(days=days)
    return replace(
        stay,
        icu_admission=stay.icu_admission - d,
        hospital_admission=stay.hospital_admission - d if stay.hospital_admission else None,
        birth_date=stay.birth_date - d if stay.birth_date else None,
    )


def load_ndjson(
    path: str | Path, *, stack_admissions: bool = False, stack_days: int = 1
) -> tuple[ClockedSource, int]:
    """Read recorded data from a Bulk Data directory (``vigil fhir synth`` output).

    Returns
    -------
    ClockedSource, int
        The source, and how many resources or values the mapping quarantined.

    Raises
    ------
    DataError
        If the directory holds no Encounter or Observation file, or its Observations
        map to no catalog variable (:meth:`IngestCounts.unmapped`).
    """
    from vigil.fhir_adapter.bulk import ndjson_census, ndjson_files
    from vigil.fhir_adapter.fast import parse_ndjson

    root = Path(path)
    files = ndjson_files(root) if root.is_dir() else {}
    if not files.get("Encounter") or not files.get("Observation"):
        raise DataError(
            f"expected Encounter and Observation NDJSON in {root} (e.g. from `vigil fhir synth`); "
            "found none", source=str(root),
        )
    # The census from the Encounter, Patient and Location files only (NDJSONSource.census
    # would decode the Observation files too).
    census = ndjson_census(files)
    # Every value at once: the mapping of each file, without the source's time index.
    results = [parse_ndjson(path) for path in files["Observation"]]
    batch = ObservationBatch.concat([r.observations for r in results])
    rejected = tuple(q for r in results for q in r.quarantine)
    quarantined = len(census.quarantine) + len(rejected)
    counts = sum((r.counts for r in results), IngestCounts())
    _require_mapped(counts, str(root), stays=len(census.stays))
    return clocked(census, batch, stack_admissions=stack_admissions, stack_days=stack_days,
                   quarantine=rejected, counts=counts), quarantined


def _require_mapped(counts: IngestCounts, where: str, *, stays: int) -> None:
    """Refuse recorded data whose Observations give nothing to score (no silent zero scores)."""
    reason = counts.unmapped()
    if reason is None and stays and counts.resources == 0:
        reason = (f"the census has {stays} ICU stays but the feed delivered no Observation "
                  "(a category filter, or a search the server does not answer?)")
    if reason is not None:
        raise DataError(f"{reason}: nothing to score; map the site's codes to LOINC "
                        "(docs/fhir.md, 'What is counted, ignored, quarantined')", source=where)


def require_coverage(source: ClockedSource, rates: Mapping[str, float], *, where: str,
                     settings: ScoringSettings | None = None) -> Coverage:
    """Refuse recorded data that maps far fewer values than the model's profile expects.

    The whole recording is judged as one window (every stay from its ICU admission to
    its end) with the cycle's rules (:mod:`vigil.runtime.coverage`): coverage below
    ``min_coverage``, or a variable expected ``min_expected`` times with no value, is an
    error. Without ``rates`` (a package with no profile) nothing is judged.

    Returns
    -------
    Coverage

    Raises
    ------
    DataError
        Naming the counts, the absent variables and the codes ignored most often.
    """
    settings = settings or ScoringSettings()
    hours = sum((e - s.icu_admission).total_seconds() / 3600 for s, e in source.stays
                if e is not None)
    coverage = measure_coverage(source.recorded, patients=len(source.stays),
                                patient_hours=hours, rates=rates)
    if not rates or not coverage_findings(coverage, min_coverage=settings.min_coverage,
                                          min_expected=settings.min_expected,
                                          min_patients=settings.coverage_min_patients,
                                          min_rate=settings.absent_min_rate):
        return coverage
    absent = coverage.absent(settings.min_expected, settings.absent_min_rate)
    ignored = ", ".join(f"{c} ({n:,})" for c, n in source.counts.top_ignored(5).items())
    raise DataError(
        f"the feed maps far fewer values than the model's reference profile expects: "
        f"{coverage.summary()}; no value of {', '.join(absent) or 'none'}; codes ignored most "
        f"often: {ignored or 'none'}; map the site's codes to LOINC (docs/fhir.md, 'What is "
        "counted, ignored, quarantined')", source=where)


def load_fhir(
    settings: object, *, stack_admissions: bool = False, stack_days: int = 1
) -> tuple[ClockedSource, int]:
    """Read recorded data from a FHIR server: every in-progress ICU stay and its values.

    Parameters
    ----------
    settings : vigil.fhir_adapter.FHIRSettings
    stack_admissions : bool, optional
    stack_days : int, optional
        See :func:`clocked`.
    """
    from vigil.fhir_adapter.rest import RESTSource

    source = RESTSource(settings)  # type: ignore[arg-type]
    try:
        source.check()
        census = source.census()
        result = source.observations(None, None, patients=list(census.patients))
    finally:
        source.close()
    quarantined = len(census.quarantine) + len(result.quarantine)
    _require_mapped(result.counts, str(getattr(settings, "base_url", "the FHIR server")),
                    stays=len(census.stays))
    return clocked(census, result.observations, stack_admissions=stack_admissions,
                   stack_days=stack_days, quarantine=result.quarantine,
                   counts=result.counts), quarantined
