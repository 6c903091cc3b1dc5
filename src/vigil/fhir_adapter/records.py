"""What the FHIR adapter hands to the runtime: mapped observations, quarantine, counters, stays.

Every result is immutable. Mapped observations come column-wise
(:class:`ObservationBatch`, numpy arrays, fast to filter and to load into a
store) and can be viewed row-wise (:meth:`ObservationBatch.records` yields
frozen :class:`MappedObservation`).

Times are integer microseconds since 1970-01-01T00:00:00Z in the columns
(:data:`NO_TIME` where unknown) and tz-aware UTC datetimes in the row view.

Patient ids and resource ids (which may embed a patient id, as the synthetic
ones do) are left out of every ``repr``; treat both as patient keys, never log them.

Versions and deletions: every FHIR resource read gets a sequence number
``seq`` in reading order, and keeps what tells its versions apart: ``meta.versionId``
(:attr:`ObservationBatch.version`, when it is an integer), ``meta.lastUpdated`` and
``issued``. The newest version of a resource (same resource id) replaces every
value of the others, whatever order they were read in; a :class:`Deletion` (an
``entered-in-error`` resource) removes the values of its resource when it is the
newest version. The rule is :func:`vigil.fhir_adapter.versions.newest`;
:func:`vigil.fhir_adapter.grid_from_observations` and the state store apply it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.core.catalog import MEASURED, variable

__all__ = [
    "MAX_IGNORED_CODES",
    "NO_TIME",
    "NO_VERSION",
    "SOURCE_UNITS",
    "Census",
    "Deletion",
    "IngestCounts",
    "IngestResult",
    "MappedObservation",
    "ObservationBatch",
    "Quarantine",
    "Stay",
    "from_micros",
    "to_micros",
    "top_codes",
]

NO_TIME = np.iinfo(np.int64).min
"""Column value of an unknown time (``meta.lastUpdated`` absent)."""
NO_VERSION = np.iinfo(np.int64).min
"""Column value of an unknown version (``meta.versionId`` absent or not an integer)."""
SOURCE_UNITS: tuple[str, ...] = tuple(sorted(
    {variable(n).unit for n in MEASURED}
    | {c.unit for n in MEASURED for c in variable(n).conversions}
))
"""Every unit the mapping accepts (canonical or convertible), sorted; the codes of
:attr:`ObservationBatch.unit`."""

_UNKNOWN = {"version": NO_VERSION, "issued": NO_TIME}
"""The optional version columns of :class:`ObservationBatch` and their "unknown" value."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def to_micros(when: datetime) -> int:
    """Microseconds since the Unix epoch of a tz-aware datetime (exact integer arithmetic)."""
    if when.tzinfo is None:
        raise ValueError(f"expected a tz-aware datetime, got naive {when.isoformat()}")
    return (when - _EPOCH) // _US


def from_micros(micros: int) -> datetime:
    """Return the tz-aware UTC datetime of a microsecond timestamp."""
    return _EPOCH + timedelta(microseconds=int(micros))


@dataclass(frozen=True, slots=True)
class MappedObservation:
    """One clinical value from one FHIR Observation (row view of :class:`ObservationBatch`).

    Attributes
    ----------
    patient : str
        The FHIR Patient id (opaque key; never log it).
    variable : str
        Catalog name (one of :data:`vigil.core.catalog.MEASURED`).
    effective : datetime
        When the value was measured, tz-aware UTC.
    value : float
        The value in the variable's canonical unit.
    resource_id : str
        The Observation id (a blood-pressure panel gives two values with one id).
    last_updated : datetime or None
        ``meta.lastUpdated`` of the resource, tz-aware UTC.
    """

    patient: str = field(repr=False)
    variable: str
    effective: datetime
    value: float
    resource_id: str = field(repr=False)
    last_updated: datetime | None


@dataclass(frozen=True, slots=True)
class Deletion:
    """An ``entered-in-error`` Observation: remove every value read before from this resource.

    Attributes
    ----------
    resource_id : str
        The Observation id.
    patient : str or None
        The Patient id, when the resource names one.
    seq : int
        Reading order, comparable with :attr:`ObservationBatch.seq`.
    last_updated : int
        ``meta.lastUpdated`` in microseconds, or :data:`NO_TIME`.
    version : int
        ``meta.versionId`` when it is an integer, else :data:`NO_VERSION`.
    issued : int
        ``issued`` in microseconds, or :data:`NO_TIME`.
    """

    resource_id: str = field(repr=False)
    patient: str | None = field(repr=False)
    seq: int
    last_updated: int = NO_TIME
    version: int = NO_VERSION
    issued: int = NO_TIME


@dataclass(frozen=True, slots=True)
class Quarantine:
    """A resource (or one value of it) that was rejected, and why.

    Attributes
    ----------
    resource_type : str
        ``resourceType`` of the rejected resource (``"?"`` if it had none).
    resource_id : str
        Its id (``""`` if it had none). An opaque key, not a patient identifier.
    reason : str
        Why it was rejected; never contains a patient identifier.
    last_updated : int
        ``meta.lastUpdated`` in microseconds, or :data:`NO_TIME`.
    """

    resource_type: str
    resource_id: str = field(repr=False)
    reason: str
    last_updated: int = NO_TIME


@dataclass(frozen=True, slots=True)
class IngestCounts:
    """Counters of one ingestion.

    Attributes
    ----------
    resources : int
        Observation resources read.
    values : int
        Values mapped (a blood-pressure panel counts two).
    ignored_unknown_code : int
        Observations with no catalog LOINC code (ignored, not an error).
    skipped_status : int
        Observations whose status is not used (``registered``, ``cancelled``,
        ``unknown``, and ``preliminary`` unless accepted).
    absent : int
        Values replaced by a ``dataAbsentReason``.
    quarantined : int
        Quarantine entries (malformed resources, unknown units, implausible values).
    deleted : int
        ``entered-in-error`` Observations (each emits a :class:`Deletion`).
    ignored_codes : tuple of (str, int)
        The codes (``system|code`` of the first coding; never patient data) of the
        ignored Observations and how many came with each, most frequent first; at
        most :data:`MAX_IGNORED_CODES` codes, the rest counted under ``"other"``.
    """

    resources: int = 0
    values: int = 0
    ignored_unknown_code: int = 0
    skipped_status: int = 0
    absent: int = 0
    quarantined: int = 0
    deleted: int = 0
    ignored_codes: tuple[tuple[str, int], ...] = ()

    def __add__(self, other: IngestCounts) -> IngestCounts:
        summed: dict[str, Any] = {f.name: getattr(self, f.name) + getattr(other, f.name)
                                  for f in fields(self) if f.name != "ignored_codes"}
        merged = dict(self.ignored_codes)
        for code, n in other.ignored_codes:
            merged[code] = merged.get(code, 0) + n
        return IngestCounts(**summed, ignored_codes=top_codes(merged))

    def as_dict(self) -> dict[str, int]:
        """Return the integer counters as a plain dict (``ignored_codes`` apart)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ignored_codes"}

    def top_ignored(self, n: int = 10) -> dict[str, int]:
        """Return the ``n`` codes ignored most often, with their counts."""
        return dict(self.ignored_codes[:n])

    def unmapped(self) -> str | None:
        """Say why a feed that delivered Observations but mapped none is unusable (else None).

        Examples
        --------
        >>> c = IngestCounts(resources=3, ignored_unknown_code=3, ignored_codes=(("urn:x|HR", 3),))
        >>> c.unmapped().endswith("none mapped to a catalog variable (codes ignored most often: "
        ...                       "urn:x|HR (3))")
        True
        """
        if self.resources == 0 or self.values > 0:
            return None
        codes = ", ".join(f"{c} ({n})" for c, n in self.ignored_codes[:5]) or "none"
        return (f"the feed delivered {self.resources} Observations but none mapped to a catalog "
                f"variable (codes ignored most often: {codes})")


MAX_IGNORED_CODES = 200
"""Distinct ignored codes an :class:`IngestCounts` keeps (the rest count as ``"other"``)."""


def top_codes(counts: dict[str, int]) -> tuple[tuple[str, int], ...]:
    """Bound a code -> count mapping to :data:`MAX_IGNORED_CODES` entries, most frequent first.

    Codes beyond the bound are added to ``"other"``, so the total is kept.
    """
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= MAX_IGNORED_CODES:
        return tuple(ranked)
    keep = [kv for kv in ranked if kv[0] != "other"][:MAX_IGNORED_CODES - 1]
    rest = sum(counts.values()) - sum(n for _, n in keep)
    return tuple(sorted([*keep, ("other", rest)], key=lambda kv: (-kv[1], kv[0])))


def _empty(dtype: type | str) -> NDArray:
    return np.zeros(0, dtype=dtype)


@dataclass(frozen=True, eq=False)
class ObservationBatch:
    """Mapped observations, column-wise. All arrays have shape (n,).

    Attributes
    ----------
    patient : ndarray of object (str)
        FHIR Patient ids.
    variable : ndarray of int8
        Index into :data:`vigil.core.catalog.MEASURED`.
    effective : ndarray of int64
        Effective time, microseconds since the epoch (UTC).
    value : ndarray of float64
        Value in the canonical unit.
    resource_id : ndarray of object (str)
        Observation id.
    last_updated : ndarray of int64
        ``meta.lastUpdated`` in microseconds, :data:`NO_TIME` when absent.
    seq : ndarray of int64
        Reading order of the resource (see the module docstring).
    deletions : tuple of Deletion
        ``entered-in-error`` resources met in the same read.
    unit : ndarray of int8 or None
        The unit each value came in, before conversion: an index into
        :data:`SOURCE_UNITS` (-1 when not known). None when not recorded (values read
        back from a store); :meth:`unit_counts` summarizes it.
    version : ndarray of int64 or None
        ``meta.versionId`` when it is an integer, else :data:`NO_VERSION`; None when no
        value has one (see :meth:`column`).
    issued : ndarray of int64 or None
        ``issued`` in microseconds, else :data:`NO_TIME`; None when no value has one.
    """

    patient: NDArray[np.object_] = field(default_factory=lambda: _empty(object))
    variable: NDArray[np.int8] = field(default_factory=lambda: _empty(np.int8))
    effective: NDArray[np.int64] = field(default_factory=lambda: _empty(np.int64))
    value: NDArray[np.float64] = field(default_factory=lambda: _empty(np.float64))
    resource_id: NDArray[np.object_] = field(default_factory=lambda: _empty(object))
    last_updated: NDArray[np.int64] = field(default_factory=lambda: _empty(np.int64))
    seq: NDArray[np.int64] = field(default_factory=lambda: _empty(np.int64))
    deletions: tuple[Deletion, ...] = ()
    unit: NDArray[np.int8] | None = None
    version: NDArray[np.int64] | None = None
    issued: NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return int(self.value.shape[0])

    def __repr__(self) -> str:
        return f"ObservationBatch(n={len(self)}, deletions={len(self.deletions)})"

    @property
    def variable_names(self) -> NDArray[np.object_]:
        """Catalog name of each value, shape (n,)."""
        return np.asarray(MEASURED, dtype=object)[self.variable]

    def column(self, name: str) -> NDArray[np.int64]:
        """Return the ``version`` or ``issued`` column, filled with its "unknown" value if None."""
        got = getattr(self, name)
        if got is not None:
            return np.asarray(got)
        return np.full(len(self), _UNKNOWN[name], dtype=np.int64)

    def take(self, mask: NDArray[np.bool_] | NDArray[np.int64]) -> ObservationBatch:
        """Select values by a boolean mask or index array (deletions kept)."""
        return ObservationBatch(
            patient=self.patient[mask], variable=self.variable[mask],
            effective=self.effective[mask], value=self.value[mask],
            resource_id=self.resource_id[mask], last_updated=self.last_updated[mask],
            seq=self.seq[mask], deletions=self.deletions,
            unit=None if self.unit is None else self.unit[mask],
            version=None if self.version is None else self.version[mask],
            issued=None if self.issued is None else self.issued[mask],
        )

    def unit_counts(self) -> dict[str, dict[str, int]]:
        """Per variable, how many values came in each source unit.

        Returns
        -------
        dict of str to (dict of str to int)
            ``{variable: {UCUM unit: count}}``, e.g. ``{"Temp": {"Cel": 1, "[degF]": 2}}``;
            empty when the batch does not record units.
        """
        if self.unit is None or not len(self):
            return {}
        known = self.unit >= 0
        width = len(SOURCE_UNITS)
        pairs = self.variable[known].astype(np.int64) * width + self.unit[known]
        out: dict[str, dict[str, int]] = {}
        for pair, n in zip(*np.unique(pairs, return_counts=True), strict=True):
            var, unit = divmod(int(pair), width)
            out.setdefault(MEASURED[var], {})[SOURCE_UNITS[unit]] = int(n)
        return out

    def records(self) -> Iterator[MappedObservation]:
        """Row view: one :class:`MappedObservation` per value, in column order."""
        names = MEASURED
        for i in range(len(self)):
            lu = int(self.last_updated[i])
            yield MappedObservation(
                patient=str(self.patient[i]),
                variable=names[int(self.variable[i])],
                effective=from_micros(int(self.effective[i])),
                value=float(self.value[i]),
                resource_id=str(self.resource_id[i]),
                last_updated=None if lu == NO_TIME else from_micros(lu),
            )

    def to_frame(self) -> pd.DataFrame:
        """Return a DataFrame with one row per value (times as ``datetime64[us, UTC]``)."""
        lu = pd.to_datetime(np.where(self.last_updated == NO_TIME, np.int64(0), self.last_updated),
                            unit="us", utc=True)
        frame = pd.DataFrame({
            "patient": self.patient.astype(str),
            "variable": self.variable_names.astype(str),
            "effective": pd.to_datetime(self.effective, unit="us", utc=True),
            "value": self.value,
            "resource_id": self.resource_id.astype(str),
            "last_updated": lu,
            "seq": self.seq,
        })
        frame.loc[self.last_updated == NO_TIME, "last_updated"] = pd.NaT
        return frame

    @staticmethod
    def concat(batches: Sequence[ObservationBatch],
               masks: Sequence[NDArray[np.bool_]] | None = None) -> ObservationBatch:
        """Join batches read one after another; ``seq`` is shifted so reading order is kept.

        ``masks`` (one boolean mask per batch) selects values while joining: the result
        equals ``concat([b.take(m) for b, m in zip(batches, masks)])`` with each column
        copied once instead of twice (deletions are kept whole, as ``take`` keeps them).
        """
        if not batches:
            return ObservationBatch()
        if masks is not None and len(masks) != len(batches):
            raise ValueError(f"expected one mask per batch ({len(batches)}), got {len(masks)}")
        picks: Sequence[NDArray[np.bool_] | slice] = (
            [slice(None)] * len(batches) if masks is None else masks)
        shift, seqs, dels = 0, [], []
        for b, m in zip(batches, picks, strict=True):
            seq = b.seq[m]
            seqs.append(seq + shift)
            dels.extend(replace(d, seq=d.seq + shift) for d in b.deletions)
            top = max([int(seq.max()) if len(seq) else -1] + [d.seq for d in b.deletions])
            shift += top + 1

        def joined(column: str) -> NDArray[Any]:
            return np.concatenate([getattr(b, column)[m] for b, m in zip(batches, picks,
                                                                         strict=True)])

        return ObservationBatch(
            patient=joined("patient"), variable=joined("variable"),
            effective=joined("effective"), value=joined("value"),
            resource_id=joined("resource_id"), last_updated=joined("last_updated"),
            seq=np.concatenate(seqs),
            deletions=tuple(dels),
            unit=None if all(b.unit is None for b in batches) else np.concatenate([
                np.full(len(s), -1, np.int8) if b.unit is None else b.unit[m]
                for b, m, s in zip(batches, picks, seqs, strict=True)
            ]),
            **{name: None if all(getattr(b, name) is None for b in batches) else np.concatenate([
                b.column(name)[m] for b, m in zip(batches, picks, strict=True)
            ]) for name in _UNKNOWN},
        )


@dataclass(frozen=True, eq=False)
class IngestResult:
    """Mapped observations with their quarantine, counters and (for a source) a new watermark.

    Attributes
    ----------
    observations : ObservationBatch
    quarantine : tuple of Quarantine
    counts : IngestCounts
    watermark : datetime or None
        The ``since`` to pass to the next incremental fetch (None when not from a source).
    """

    observations: ObservationBatch
    quarantine: tuple[Quarantine, ...]
    counts: IngestCounts
    watermark: datetime | None = None

    def __repr__(self) -> str:
        return (f"IngestResult(values={len(self.observations)}, "
                f"quarantined={len(self.quarantine)}, watermark={self.watermark})")


@dataclass(frozen=True, slots=True)
class Stay:
    """One in-progress ICU stay of the census.

    Attributes
    ----------
    patient : str
        FHIR Patient id (the grid's patient key).
    encounter : str
        FHIR Encounter id.
    icu_admission : datetime
        Start of the ICU location period (tz-aware UTC): ICU hour ``h`` covers
        ``(icu_admission + (h - 1) h, icu_admission + h h]``.
    unit : str or None
        ``"MICU"``, ``"SICU"`` or None when the location does not say.
    gender : str or None
        FHIR administrative gender.
    birth_date : date or None
        ``Patient.birthDate`` (day precision or better; a year-only birth date is None).
    hospital_admission : datetime or None
        ``Encounter.period.start`` (tz-aware UTC).
    """

    patient: str
    encounter: str
    icu_admission: datetime
    unit: str | None
    gender: str | None
    birth_date: date | None
    hospital_admission: datetime | None

    def __repr__(self) -> str:
        return f"Stay(unit={self.unit}, icu_admission={self.icu_admission.isoformat()})"

    @property
    def age(self) -> float:
        """Age in years at ICU admission, PhysioNet style (NaN if unknown).

        ``days / 365.25`` between the birth date and the UTC date of ICU
        admission, rounded to 2 decimals; 90 or older is reported as 100, as
        in the PhysioNet 2019 data (Reyna et al. 2020).
        """
        if self.birth_date is None:
            return float("nan")
        years = round((self.icu_admission.date() - self.birth_date).days / 365.25, 2)
        return 100.0 if years >= 90.0 else years

    @property
    def hosp_adm_time(self) -> float:
        """Hours from hospital to ICU admission (negative when earlier; NaN if unknown)."""
        if self.hospital_admission is None:
            return float("nan")
        return (self.hospital_admission - self.icu_admission).total_seconds() / 3600.0

    def static_values(self) -> tuple[float, float, float, float, float]:
        """``(Age, Gender, Unit1, Unit2, HospAdmTime)`` as the grid holds them (NaN = unknown)."""
        nan = float("nan")
        gender = {"male": 1.0, "female": 0.0}.get(self.gender or "", nan)
        unit1, unit2 = {"MICU": (1.0, 0.0), "SICU": (0.0, 1.0)}.get(self.unit or "", (nan, nan))
        return (self.age, gender, unit1, unit2, self.hosp_adm_time)


@dataclass(frozen=True, eq=False)
class Census:
    """The in-progress ICU stays, one per patient, and what could not be used.

    Attributes
    ----------
    stays : tuple of Stay
        Sorted by patient id. A patient with several in-progress ICU
        encounters keeps the one with the latest ICU admission.
    quarantine : tuple of Quarantine
        Encounters without an ICU admission time, or naming no Patient.
    """

    stays: tuple[Stay, ...]
    quarantine: tuple[Quarantine, ...] = ()

    def __repr__(self) -> str:
        return f"Census(stays={len(self.stays)}, quarantined={len(self.quarantine)})"

    def __len__(self) -> int:
        return len(self.stays)

    @property
    def patients(self) -> tuple[str, ...]:
        """Patient ids in stay order."""
        return tuple(s.patient for s in self.stays)
