"""Replay: the runtime's own cycle on a simulated clock over recorded FHIR data.

A :class:`ClockedSource` holds every stay (with its ICU discharge time) and
every observation of a recorded data set (e.g. the NDJSON written by ``vigil
fhir synth``) and answers as the FHIR server would have at each simulated tick:
the census is the stays in progress, and an observation becomes visible at its
effective time. :func:`replay` then runs :class:`~vigil.runtime.cycle.CycleRunner`
every 15 simulated minutes, with the same store, models, alert policy and
write-back as ``vigil serve``.

A replay with a persistent store resumes: ticks already committed are skipped,
so a replay killed at any point and started again ends with the same scores and
the same RiskAssessments as one that was never interrupted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vigil.core.errors import DataError
from vigil.fhir_adapter.records import (
    NO_TIME,
    Census,
    IngestCounts,
    IngestResult,
    ObservationBatch,
    Stay,
    from_micros,
    to_micros,
)
from vigil.runtime.cycle import CycleResult, CycleRunner
from vigil.runtime.store import StateStore

__all__ = [
    "COMMITTED",
    "OUTPUT_COLUMNS",
    "ClockedSource",
    "ReplayResult",
    "hourly",
    "load_ndjson",
    "replay",
    "replay_ticks",
    "scores_output",
    "summarize",
]

COMMITTED = ("scored", "ok", "writeback_failed")
"""Cycle statuses whose scores are in the store."""
OUTPUT_COLUMNS = ("patient_id", "iculos", "scored_at", "probability", "alert")
TICK = timedelta(minutes=15)


@dataclass(frozen=True, eq=False)
class ClockedSource:
    """Recorded data served as it would have been seen at each tick.

    Parameters
    ----------
    stays : sequence of (Stay, datetime or None)
        Every ICU stay and its discharge time (None: still in the ICU at the end).
    recorded : ObservationBatch
        Every mapped observation.
    name : str, optional
        The watermark's key in the store.
    """

    stays: Sequence[tuple[Stay, datetime | None]]
    recorded: ObservationBatch
    name: str = "replay"

    def census(self, tick: datetime) -> Census:
        """Stays with ``icu_admission <= tick < discharge``, sorted by patient."""
        current: dict[str, Stay] = {}
        for stay, end in self.stays:
            if stay.icu_admission <= tick and (end is None or tick < end):
                held = current.get(stay.patient)
                if held is None or held.icu_admission < stay.icu_admission:
                    current[stay.patient] = stay
        return Census(stays=tuple(current[k] for k in sorted(current)))

    def observations_between(self, since: datetime | None, until: datetime) -> ObservationBatch:
        """Observations with ``since < effective <= until``."""
        eff = self.recorded.effective
        mask = eff <= to_micros(until)
        if since is not None:
            mask &= eff > to_micros(since)
        return self.recorded.take(mask)

    def observations(self, *, since: datetime | None, until: datetime) -> IngestResult:
        """What an incremental fetch at ``until`` returns; the watermark is ``until``."""
        batch = self.observations_between(since, until)
        return IngestResult(
            observations=batch, quarantine=(), counts=IngestCounts(values=len(batch)), watermark=until
        )

    @property
    def span(self) -> tuple[datetime, datetime]:
        """First ICU admission and last discharge (or last observation)."""
        if not self.stays:
            raise DataError("the recorded data holds no ICU stay; nothing to replay")
        start = min(s.icu_admission for s, _ in self.stays)
        ends = [e for _, e in self.stays if e is not None]
        if len(self.recorded):
            ends.append(datetime.fromtimestamp(int(self.recorded.effective.max()) / 1e6, UTC))
        return start, max(ends) if ends else start


def _decode(files: Sequence[Path]) -> list[dict[str, Any]]:
    import orjson

    out = []
    for f in files:
        out.extend(orjson.loads(line) for line in f.read_bytes().splitlines() if line.strip())
    return out


def load_ndjson(path: str | Path, *, stack_admissions: bool = False) -> tuple[ClockedSource, int]:
    """Recorded data from a Bulk Data directory (``vigil fhir synth`` output).

    Reads ``Encounter*.ndjson``, ``Patient*.ndjson``, ``Location*.ndjson`` (the
    census, :func:`vigil.fhir_adapter.census.build_census`) and
    ``Observation*.ndjson`` (:func:`vigil.fhir_adapter.fast.parse_ndjson`). A stay
    ends one hour after its last observation.

    Parameters
    ----------
    path : str or Path
        The directory.
    stack_admissions : bool, optional
        Move each stay by whole days so that every ICU admission falls on the day
        of the earliest one (``vigil fhir synth`` spreads admissions over a year).
        Times within a stay, and ages, are unchanged, so the grid is too.

    Returns
    -------
    ClockedSource, int
        The source, and how many resources or values the mapping quarantined.

    Raises
    ------
    DataError
        If the directory holds no Encounter or Observation file.
    """
    from vigil.fhir_adapter.census import build_census
    from vigil.fhir_adapter.fast import parse_ndjson

    root = Path(path)
    files = {t: sorted(root.glob(f"{t}*.ndjson")) for t in ("Encounter", "Patient", "Location",
                                                           "Observation")}
    if not files["Encounter"] or not files["Observation"]:
        raise DataError(
            f"expected Encounter*.ndjson and Observation*.ndjson in {root} (e.g. from `vigil fhir "
            "synth`); found none", source=str(root),
        )
    census = build_census(_decode(files["Encounter"]), _decode(files["Patient"]),
                          _decode(files["Location"]))
    results = [parse_ndjson(f) for f in files["Observation"]]
    batch = ObservationBatch.concat([r.observations for r in results])
    quarantined = len(census.quarantine) + sum(len(r.quarantine) for r in results)
    stays = list(census.stays)
    shift = np.zeros(len(stays), dtype=np.int64)
    if stack_admissions and stays:
        anchor = min(s.icu_admission for s in stays).replace(hour=0, minute=0, second=0,
                                                            microsecond=0)
        shift = np.array([(s.icu_admission - anchor).days for s in stays], dtype=np.int64)
        stays = [_shift_stay(s, int(k)) for s, k in zip(stays, shift, strict=True)]
    index = pd.Index([s.patient for s in stays])
    where = index.get_indexer(batch.patient) if len(batch) else np.zeros(0, dtype=np.int64)
    batch = batch.take(where >= 0)
    where = where[where >= 0]
    day_us = np.int64(86_400_000_000)
    if stack_admissions:
        lu = batch.last_updated
        batch = replace(batch, effective=batch.effective - shift[where] * day_us,
                        last_updated=np.where(lu == NO_TIME, lu, lu - shift[where] * day_us))
    last = np.full(len(stays), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last, where, batch.effective)
    ends = [
        from_micros(max(int(e), to_micros(s.icu_admission)) + 3_600_000_000)
        for s, e in zip(stays, last, strict=True)
    ]
    return ClockedSource(stays=list(zip(stays, ends, strict=True)), recorded=batch), quarantined


def _shift_stay(stay: Stay, days: int) -> Stay:
    d = timedelta(days=days)
    return replace(
        stay,
        icu_admission=stay.icu_admission - d,
        hospital_admission=stay.hospital_admission - d if stay.hospital_admission else None,
        birth_date=stay.birth_date - d if stay.birth_date else None,
    )


def replay_ticks(start: datetime, end: datetime, *, step: timedelta = TICK) -> list[datetime]:
    """Ticks aligned to the step (:00, :15, ...) from the first at or after ``start`` to ``end``."""
    s = step.total_seconds()
    first = math.ceil(start.timestamp() / s) * s
    n = int(max(0.0, end.timestamp() - first) // s) + 1
    return [datetime.fromtimestamp(first + i * s, UTC) for i in range(n)]


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did."""

    cycles: int
    skipped: int
    failed: int
    results: tuple[CycleResult, ...]


def replay(
    runner: CycleRunner,
    ticks: Sequence[datetime],
    *,
    progress: Callable[[int, CycleResult | None], None] | None = None,
) -> ReplayResult:
    """Run one cycle per tick, skipping ticks the store has already committed.

    Parameters
    ----------
    runner : CycleRunner
        Built on a :class:`ClockedSource`.
    ticks : sequence of datetime
    progress : callable (index, result or None), optional
        Called after each tick (None when skipped).

    Returns
    -------
    ReplayResult
    """
    done = {c.tick for c in runner.store.cycles() if c.status in COMMITTED}
    runner.store.mark_interrupted()
    results: list[CycleResult] = []
    skipped = 0
    for i, tick in enumerate(ticks):
        if tick.timestamp() in done:
            skipped += 1
            if progress is not None:
                progress(i, None)
            continue
        result = runner.run(tick)
        results.append(result)
        if progress is not None:
            progress(i, result)
    if runner.store.pending():
        runner.flush()
    return ReplayResult(
        cycles=len(results),
        skipped=skipped,
        failed=sum(not r.ok for r in results),
        results=tuple(results),
    )


def scores_output(store: StateStore) -> pd.DataFrame:
    """The active model's scores as ``patient_id, iculos, scored_at, probability, alert``."""
    frame = store.scores_frame(role="active")
    return pd.DataFrame({
        "patient_id": frame["patient_key"].astype(str),
        "iculos": frame["iculos"].astype(np.int64),
        "scored_at": pd.to_datetime(frame["tick"], unit="s", utc=True),
        "probability": frame["probability"].astype(np.float64),
        "alert": frame["alert"].astype(bool),
    }).loc[:, list(OUTPUT_COLUMNS)]


def hourly(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per patient-hour: the last tick's probability, and whether any tick alerted."""
    ordered = scores.sort_values(["patient_id", "iculos", "scored_at"], kind="stable")
    grouped = ordered.groupby(["patient_id", "iculos"], sort=True)
    return pd.DataFrame({
        "probability": grouped["probability"].last(),
        "alert": grouped["alert"].any(),
    }).reset_index()


def summarize(
    scores: pd.DataFrame,
    *,
    cycles: int,
    threshold: float,
    labels: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """The replay summary: patients, cycles, scores, alerts per patient-day, and with labels
    AUROC and normalized utility on the scored patient-hours.

    Parameters
    ----------
    scores : DataFrame
        :data:`OUTPUT_COLUMNS`.
    cycles : int
    threshold : float
        The decision threshold for the utility (hourly probability >= threshold).
    labels : DataFrame, optional
        ``patient_id, ICULOS, SepsisLabel`` (e.g. the PhysioNet parquet).

    Notes
    -----
    Alerts per patient-day = alerts / (patient-ticks x 15 min / 24 h). Utility is the
    PhysioNet 2019 normalized utility (Reyna et al., Crit Care Med 48:210-217, 2020)
    of the thresholded hourly probabilities over each patient's scored hours.
    """
    out: dict[str, Any] = {
        "patients": int(scores["patient_id"].nunique()),
        "cycles": cycles,
        "scores": len(scores),
        "alerts": int(scores["alert"].sum()),
        "threshold": threshold,
    }
    patient_days = len(scores) * TICK.total_seconds() / 86400.0
    out["alerts_per_patient_day"] = out["alerts"] / patient_days if patient_days else float("nan")
    if labels is None:
        return out
    from vigil.features.metrics import auroc
    from vigil.features.utility import normalized_utility

    per_hour = hourly(scores)
    lab = labels.loc[:, ["patient_id", "ICULOS", "SepsisLabel"]].rename(columns={"ICULOS": "iculos"})
    lab = lab.astype({"patient_id": str, "iculos": np.int64})
    merged = per_hour.merge(lab, on=["patient_id", "iculos"], how="inner", validate="one_to_one")
    merged = merged.sort_values(["patient_id", "iculos"], kind="stable").reset_index(drop=True)
    y = merged["SepsisLabel"].to_numpy(dtype=np.int8)
    p = merged["probability"].to_numpy(dtype=np.float64)
    pid = merged["patient_id"].to_numpy()
    new = np.ones(len(pid), dtype=bool)
    new[1:] = pid[1:] != pid[:-1]
    starts = np.append(np.flatnonzero(new), len(pid)).astype(np.int64)
    out["labelled_hours"] = len(merged)
    out["auroc"] = auroc(y, p) if len(merged) else float("nan")
    out["utility"] = (
        normalized_utility(y, (p >= threshold).astype(np.int8), starts) if len(merged) else float("nan")
    )
    return out
