"""Running the imaging drift monitor over a site's records, check by check, with delayed labels.

:func:`replay_image_monitor` walks a record frame (:mod:`.image_records`) in steps of
``every_hours`` and, at each check time, runs :class:`~.images.ImageDriftMonitor` and, when
study outcomes are given, the performance monitor the sepsis runtime uses
(:class:`~.performance.PerformanceMonitor`: AUROC drop with DeLong's standard error,
one study per cluster, and ADWIN on calibration residuals) fed the studies whose label
became known since the previous check (labels arrive days after the scores: a report
is confirmed, a follow-up read). Findings become alarms through the same
:class:`~.alarms.AlarmBook` as the sepsis runtime's, so an alarm has a ``first_seen`` (the
check that first found it) and resolves after ``clear_after`` quiet checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vigil.core.errors import DataError
from vigil.runtime.monitoring.alarms import Alarm, AlarmBook, AlarmKind
from vigil.runtime.monitoring.images import IMAGE_SCORE, ImageDriftMonitor, Stat
from vigil.runtime.monitoring.performance import PerformanceMonitor, Wording

__all__ = ["IMAGE_KINDS", "IMAGE_WORDING", "ImageMonitorRun", "check_images",
           "replay_image_monitor", "study_outcomes"]

IMAGE_WORDING = Wording(IMAGE_SCORE, "labelled studies", "study", "positive studies",
                        "positive studies", "studies")
"""How imaging performance alarms read (one row per study, each study its own cluster)."""

IMAGE_KINDS = (AlarmKind.HEADER_DRIFT, AlarmKind.INPUT_DRIFT, AlarmKind.SCORE_DRIFT,
               AlarmKind.QUARANTINE)
"""The alarm kinds every imaging drift check judges (performance only with labels)."""


@dataclass
class ImageMonitorRun:
    """What a replay found.

    Attributes
    ----------
    alarms : list of Alarm
        Every alarm, in order of ``first_seen`` (resolved ones with ``resolved`` set).
    stats : list of (tick, kind, variable, statistic, value)
        Every check's statistics (ticks in UTC seconds).
    notes : list of str
        Said once (e.g. the package has no image profile).
    checks : int
    """

    alarms: list[Alarm] = field(default_factory=list)
    stats: list[tuple[float, str, str, str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"checks": self.checks, "notes": self.notes,
                "alarms": [a.to_dict() for a in self.alarms]}


def study_outcomes(scores: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Join study scores to their delayed labels.

    Parameters
    ----------
    scores : DataFrame
        ``study_key``, ``scored_at`` and ``probability`` (the study's: highest instance).
    labels : DataFrame
        ``study_key``, ``label`` (0/1) and ``known_at`` (when the label became known).

    Returns
    -------
    DataFrame
        ``study_key, probability, label, known_at`` (UTC), one row per labelled study.

    Raises
    ------
    DataError
        If a column is missing or a label is not 0/1.
    """
    for name, frame, cols in (("scores", scores, ("study_key", "scored_at", "probability")),
                              ("labels", labels, ("study_key", "label", "known_at"))):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(f"expected {name} columns {', '.join(cols)}; missing "
                            f"{', '.join(missing)}")
    if not labels["label"].isin((0, 1)).all():
        raise DataError("expected study labels 0 or 1")
    latest = scores.sort_values("scored_at", kind="stable").drop_duplicates("study_key",
                                                                            keep="last")
    out = latest.loc[:, ["study_key", "probability"]].merge(
        labels.loc[:, ["study_key", "label", "known_at"]], on="study_key", how="inner")
    out["known_at"] = pd.to_datetime(out["known_at"], utc=True, format="ISO8601")
    return out.sort_values("known_at", kind="stable").reset_index(drop=True)


def check_images(
    frame: pd.DataFrame, monitor: ImageDriftMonitor, book: AlarmBook, *, now: pd.Timestamp,
    model: str, performance: PerformanceMonitor | None = None,
    labelled: pd.DataFrame | None = None,
) -> tuple[list[Alarm], list[Alarm], list[Stat]]:
    """Run one imaging check at ``now`` and apply its findings to ``book``.

    The one code path of the imaging monitor: :func:`replay_image_monitor` calls it at
    every check time, ``vigil serve`` once an hour (:mod:`vigil.runtime.imaging_monitor`).

    Parameters
    ----------
    frame : DataFrame
        Instance records (:func:`~.image_records.records_frame`), one model's.
    monitor : ImageDriftMonitor
    book : AlarmBook
        The open imaging alarms (updated in place).
    now : Timestamp
        The check time (UTC).
    model : str
        ``name@version`` written into new alarms.
    performance : PerformanceMonitor or None, optional
    labelled : DataFrame or None, optional
        Studies whose label became known since the previous check (:func:`study_outcomes`
        rows); with ``performance``, they are added and the performance checks run.

    Returns
    -------
    changed : list of Alarm
        New, extended and resolved alarms (to store).
    raised : list of Alarm
        The new ones.
    stats : list of (kind, variable, statistic, value)
    """
    findings, stats = monitor.check(frame, now=now)
    checked: list[str] = [str(k) for k in IMAGE_KINDS]
    tick = pd.Timestamp(now).timestamp()
    if performance is not None and labelled is not None:
        performance.add(now=tick, patient_keys=labelled["study_key"].to_numpy(dtype=object),
                        probability=labelled["probability"].to_numpy(dtype=np.float64),
                        labels=labelled["label"].to_numpy(dtype=np.float64))
        f, s = performance.check(now=tick)
        findings, stats = findings + f, stats + s
        checked += [str(AlarmKind.DISCRIMINATION), str(AlarmKind.CALIBRATION)]
    changed, raised = book.update(findings, tick=tick, model=model, checked=checked)
    return changed, raised, stats


def replay_image_monitor(
    frame: pd.DataFrame, monitor: ImageDriftMonitor, *, every_hours: float = 1.0,
    outcomes: pd.DataFrame | None = None, performance: PerformanceMonitor | None = None,
    model: str = "", clear_after: int = 4,
) -> ImageMonitorRun:
    """Check the records every ``every_hours`` from the first record to the last (or last label).

    Parameters
    ----------
    frame : DataFrame
        Instance records (:func:`~.image_records.records_frame`), one model's.
    monitor : ImageDriftMonitor
    every_hours : float, optional
    outcomes : DataFrame or None, optional
        :func:`study_outcomes`; each study is fed at the first check after ``known_at``.
    performance : PerformanceMonitor or None, optional
        Default: one with :data:`IMAGE_WORDING` and no reference AUROC (the first full
        window's).
    model : str, optional
        ``name@version`` written into the alarms.
    clear_after : int, optional

    Returns
    -------
    ImageMonitorRun
    """
    run = ImageMonitorRun(notes=list(monitor.notes))
    if frame.empty:
        return run
    if not every_hours > 0:
        raise DataError(f"expected every_hours > 0, got {every_hours!r}")
    if outcomes is not None and performance is None:
        performance = PerformanceMonitor(reference_auroc=None, window_hours=24.0 * 7,
                                         wording=IMAGE_WORDING)
    step = pd.Timedelta(hours=every_hours)
    first, last = frame["scored_at"].iloc[0], frame["scored_at"].iloc[-1]
    if outcomes is not None and len(outcomes):
        last = max(last, outcomes["known_at"].iloc[-1])  # until the last label is in
    ticks = pd.date_range(first.ceil(step), last.ceil(step) + step, freq=step)
    book = AlarmBook(clear_after=clear_after)
    where: dict[tuple[str, str], int] = {}
    fed = 0
    for now in ticks:
        batch = None
        if performance is not None and outcomes is not None:
            upto = int(outcomes["known_at"].searchsorted(now, side="right"))
            batch = outcomes.iloc[fed:upto]
            fed = upto
        changed, _, stats = check_images(frame, monitor, book, now=now, model=model,
                                         performance=performance, labelled=batch)
        tick = now.timestamp()
        for alarm in changed:
            index = where.get(alarm.key)
            if index is None:
                where[alarm.key] = len(run.alarms)
                run.alarms.append(alarm)
            else:
                run.alarms[index] = alarm
            if alarm.resolved is not None:
                where.pop(alarm.key, None)
        run.stats += [(tick, *row) for row in stats]
        run.checks += 1
    return run
