"""Replay: the runtime's own cycle on a simulated clock over recorded FHIR data.

:func:`replay` runs :class:`~vigil.runtime.cycle.CycleRunner` at every
15-minute tick of a :class:`~vigil.runtime.recorded.ClockedSource`, with the same
store, models, alert policy and write-back as ``vigil serve``. Its output is one
row per patient and tick (:data:`OUTPUT_COLUMNS`); :func:`summarize` reports
alerts per patient-day and, given labels, AUROC and the PhysioNet utility.

A replay with a persistent store resumes: ticks already committed are skipped,
so a replay killed at any point and started again ends with the same scores and
the same RiskAssessments as one that was never interrupted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from vigil.core.errors import ConfigError
from vigil.runtime.cycle import CycleResult, CycleRunner, CycleSink
from vigil.runtime.models import LiveModels
from vigil.runtime.monitoring.alarms import load_alarms
from vigil.runtime.monitoring.monitor import Monitor
from vigil.runtime.monitoring.performance import FrameLabels
from vigil.runtime.recorded import ClockedSource
from vigil.runtime.settings import AlertSettings, ScoringSettings
from vigil.runtime.store import StateStore

__all__ = [
    "OUTPUT_COLUMNS",
    "ReplayResult",
    "go_live_start",
    "hourly",
    "monitor_summary",
    "physionet_labels",
    "replay",
    "replay_ticks",
    "run_replay",
    "scores_output",
    "summarize",
]

OUTPUT_COLUMNS = ("patient_id", "iculos", "scored_at", "probability", "alert")
TICK = timedelta(minutes=15)


def replay_ticks(start: datetime, end: datetime, *, step: timedelta = TICK) -> list[datetime]:
    """Ticks aligned to the step (:00, :15, ...) from the first at or after ``start`` to ``end``."""
    s = step.total_seconds()
    first = math.ceil(start.timestamp() / s) * s
    n = int(max(0.0, end.timestamp() - first) // s) + 1
    return [datetime.fromtimestamp(first + i * s, UTC) for i in range(n)]


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did (``failed`` and ``degraded`` count cycles)."""

    cycles: int
    skipped: int
    failed: int
    results: tuple[CycleResult, ...]
    degraded: int = 0
    """Cycles scored on inputs that were not enough (not counted in ``failed``)."""


def go_live_start(source: ClockedSource, days: int) -> datetime:
    """Return midnight (UTC) of the last of ``days`` admission days: a go-live replay's start.

    With a source whose admissions were stacked onto ``days`` consecutive days
    (:func:`~vigil.runtime.recorded.load_ndjson` ``stack_days=days``), a replay from
    here finds, like a site switching vigil on, an ICU already holding patients of
    every stay age up to ``days - 1`` days, not an empty one that fills with first
    ICU hours (``vigil demo``, ``vigil replay --go-live-days``).

    Raises
    ------
    ConfigError
        If ``days`` is smaller than 1.
    """
    if days < 1:
        raise ConfigError(f"expected at least 1 admission day for a go-live replay, got {days}",
                          key="go_live_days")
    first, _ = source.span
    return first.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
        days=days - 1)


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
    runner.store.mark_interrupted()
    results: list[CycleResult] = []
    skipped = 0
    for i, tick in enumerate(ticks):
        result = runner.run(tick)
        if result.status == "skipped":
            skipped += 1
            if progress is not None:
                progress(i, None)
            continue
        results.append(result)
        if progress is not None:
            progress(i, result)
    return ReplayResult(
        cycles=len(results),
        skipped=skipped,
        failed=sum(not r.ok and r.status != "degraded" for r in results),
        results=tuple(results),
        degraded=sum(r.status == "degraded" for r in results),
    )


def run_replay(
    source: ClockedSource,
    models: LiveModels,
    *,
    store: StateStore,
    sink: CycleSink | None = None,
    alerts: AlertSettings | None = None,
    hours: float | None = None,
    progress: Callable[[int, CycleResult | None], None] | None = None,
    monitor: Monitor | None = None,
    start: datetime | None = None,
) -> tuple[ReplayResult, pd.DataFrame]:
    """Replay recorded data from its first ICU admission, or ``start``, for ``hours`` or to its end.

    Returns
    -------
    ReplayResult, DataFrame
        What ran, and the active model's scores (:data:`OUTPUT_COLUMNS`).
    """
    first, end = source.span
    start = first if start is None else max(first, start)
    if hours is not None:
        end = min(end, start + timedelta(hours=hours))
    runner = CycleRunner(
        store=store, source=source, sink=sink, models=lambda: models, scoring=ScoringSettings(),
        alerts=alerts or AlertSettings(),
        retention_hours=max(24.0 * 7, (end - start).total_seconds() / 3600 + 1), monitor=monitor,
    )
    result = replay(runner, replay_ticks(start, end), progress=progress)
    return result, scores_output(store)


def physionet_labels(frame: pd.DataFrame, *, delay_hours: float) -> FrameLabels:
    """Return the monitor's outcomes from a PhysioNet table (``patient_id, ICULOS, SepsisLabel``).

    The patient-hour's ``SepsisLabel`` becomes known ``delay_hours`` after it was scored.
    """
    table = frame.loc[:, ["patient_id", "ICULOS", "SepsisLabel"]]
    return FrameLabels(table.set_axis(["patient_key", "iculos", "label"], axis=1),
                       delay_hours=delay_hours)


def monitor_summary(store: StateStore, monitor: Monitor) -> dict[str, Any]:
    """Summarize what the monitor found in a replay: alarms by kind, open, labelled hours.

    Returns
    -------
    dict
        ``alarms`` (kind -> count), ``open``, ``alarm_list`` (kind, variable, severity,
        first_seen as UTC ISO time), ``labelled_hours`` (in the last performance window)
        and ``errors`` (cycles whose monitoring failed).
    """
    alarms = load_alarms(store.conn)
    by_kind: dict[str, int] = {}
    for a in alarms:
        by_kind[str(a.kind)] = by_kind.get(str(a.kind), 0) + 1
    metrics = monitor.performance.metrics() if monitor.performance is not None else None
    return {
        "alarms": dict(sorted(by_kind.items())),
        "open": sum(a.resolved is None for a in alarms),
        "alarm_list": [
            {"kind": str(a.kind), "variable": a.variable, "severity": str(a.severity),
             "first_seen": datetime.fromtimestamp(a.first_seen, UTC).isoformat(timespec="minutes")}
            for a in alarms
        ],
        "labelled_hours": 0 if metrics is None else metrics.n,
        "errors": monitor.errors,
    }


def scores_output(store: StateStore) -> pd.DataFrame:
    """Return the active model's scores (:data:`OUTPUT_COLUMNS`)."""
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
    """Summarize a replay: patients, cycles, alerts per patient-day; AUROC and utility.

    AUROC and the normalized utility need ``labels``; they are computed on the
    scored patient-hours.

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
    lab = labels.loc[:, ["patient_id", "ICULOS", "SepsisLabel"]]
    lab = lab.rename(columns={"ICULOS": "iculos"})
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
        normalized_utility(y, (p >= threshold).astype(np.int8), starts).normalized
        if len(merged) else float("nan")
    )
    return out
