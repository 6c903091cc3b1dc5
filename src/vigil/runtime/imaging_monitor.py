"""The imaging drift monitor in ``vigil serve``: hourly, on the cycle's ticks, alarms stored.

The sepsis monitor runs inside every 15-minute cycle and judges drift once an hour
(:class:`~vigil.runtime.monitoring.Monitor`). With ``[imaging]`` on, the service runs
:meth:`ImagingMonitor.run` as its own scheduler job on the same cron trigger, and it checks
at most once an hour of ticks, the same cadence. One check is exactly what
``vigil monitor images`` does at each check time
(:func:`~vigil.runtime.monitoring.image_replay.check_images` over
:class:`~vigil.runtime.monitoring.images.ImageDriftMonitor`), on the active imaging model's
instance records in the store (``imaging_instances``), against that package's image
profile and the site's baseline (its first 48 h of records; relearned from the records still
in the store after a restart, as the sepsis monitor relearns its baseline).

Alarms go where the sepsis monitor's go: the store's ``monitor_alarms`` (one transaction
with the check's ``monitor_stats``; the imaging alarms are told apart by their variables,
:data:`~vigil.runtime.monitoring.images.IMAGING_VARIABLES`), the log (a warning per new
alarm) and ``/metrics`` (``vigil_monitor_alarm{kind, variable, severity}``, the service
exports both monitors' open alarms). A failing check is logged and counted
(``vigil_imaging_monitor_checks_total{status="failed"}``), its transaction rolled back and
its alarm book reloaded from the store, so the stored alarms stay those of the last good
check; it never reaches the sepsis cycle or the imaging polls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge

from vigil.imaging.profile import ImageProfile
from vigil.runtime.imaging_store import instance_records
from vigil.runtime.monitoring.alarms import (
    Alarm,
    AlarmBook,
    load_alarms,
    put_alarms,
    put_stats,
)
from vigil.runtime.monitoring.image_records import records_frame
from vigil.runtime.monitoring.image_replay import check_images
from vigil.runtime.monitoring.images import ImageDriftMonitor, is_imaging_alarm
from vigil.runtime.store import StateStore

if TYPE_CHECKING:
    from vigil.runtime.models import LiveModel

__all__ = ["ImagingCheck", "ImagingMonitor", "ImagingMonitorMetrics"]

log = logging.getLogger(__name__)

_HOUR = 3600.0


@dataclass(frozen=True)
class ImagingCheck:
    """What one run of the job did.

    Attributes
    ----------
    tick : float
        The check time (UTC seconds).
    status : {"ok", "skipped", "failed"}
        ``skipped``: no active imaging model loaded yet, or an hour has not passed.
    model : str or None
    records : int
        Instance records judged.
    raised : list of Alarm
        Alarms first raised by this check.
    error : str or None
        Why it failed (one line, no identifier).
    """

    tick: float
    status: str
    model: str | None = None
    records: int = 0
    raised: list[Alarm] = field(default_factory=list)
    error: str | None = None


class ImagingMonitorMetrics:
    """The job's own Prometheus metrics (its alarms are exported with the sepsis monitor's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.checks = Counter("vigil_imaging_monitor_checks",
                              "Imaging drift checks by outcome (ok, skipped, failed).",
                              ["status"], registry=registry)
        self.last_check = Gauge("vigil_imaging_monitor_last_check_timestamp_seconds",
                                "Tick of the last imaging drift check that completed.",
                                registry=registry)
        self.records = Gauge("vigil_imaging_monitor_records",
                             "Instance records judged by the last imaging drift check.",
                             registry=registry)


class ImagingMonitor:
    """The hourly imaging drift check of ``vigil serve``.

    Parameters
    ----------
    store : StateStore
        A connection of its own (closed by :meth:`close` when ``owns_store``), or the
        service's in-memory store (the service then holds its lock around :meth:`run`).
    active : callable returning LiveModel or None
        The imaging loop's active model as loaded (no store access).
    registry : CollectorRegistry
        The service's Prometheus registry.
    owns_store : bool, optional
    clear_after : int, optional
        Quiet checks that resolve an alarm (the sepsis monitor's default).
    options : Any
        Parameters of :class:`~vigil.runtime.monitoring.images.ImageDriftMonitor`.
    """

    def __init__(self, *, store: StateStore, active: Callable[[], LiveModel | None],
                 registry: CollectorRegistry, owns_store: bool = True, clear_after: int = 4,
                 **options: Any) -> None:
        self.store = store
        self.owns_store = owns_store
        self.active = active
        self.metrics = ImagingMonitorMetrics(registry)
        self.clear_after = clear_after
        self.options = options
        self.errors = 0
        """Failed checks since the start."""
        self.last: ImagingCheck | None = None
        self._lock = threading.Lock()
        self._model: str | None = None
        self._drift: ImageDriftMonitor | None = None
        self._book: AlarmBook | None = None
        self._last_check = float("-inf")

    # -- the job ----------------------------------------------------------------------------

    def run(self, tick: datetime) -> ImagingCheck:
        """Check the records up to ``tick`` when an hour has passed since the last check.

        Never raises: a failure is logged, counted and returned (``status = "failed"``).
        """
        now = tick.timestamp()
        with self._lock:
            model = self.active()
            if model is None or now - self._last_check < _HOUR - 1e-6:
                return self._done(ImagingCheck(now, "skipped", model.key if model else None))
            try:
                result = self._check(model, now)
            except Exception as exc:  # noqa: BLE001 - the monitor must not stop serve's jobs
                self.errors += 1
                # the type only: an exception's text may quote a value of the records
                log.error("the imaging monitor failed (%s); its alarms stay as last stored",
                          type(exc).__name__)
                log.debug("imaging monitor failure", exc_info=True)
                self._book = self._stored_book()  # what the last good check stored
                return self._done(ImagingCheck(now, "failed", model.key,
                                               error=f"imaging monitor failed: "
                                                     f"{type(exc).__name__}"))
            self._last_check = now
            self.metrics.last_check.set(now)
            self.metrics.records.set(result.records)
            return self._done(result)

    def _done(self, result: ImagingCheck) -> ImagingCheck:
        self.metrics.checks.labels(status=result.status).inc()
        if result.status != "skipped":
            self.last = result
        return result

    def _check(self, model: LiveModel, now: float) -> ImagingCheck:
        if model.key != self._model or self._drift is None:
            manifest = model.scorer.package.manifest
            profile = ImageProfile.from_manifest(manifest.model_dump(),
                                                 where=f"the manifest of {model.key}")
            self._drift = ImageDriftMonitor(profile, **self.options)
            self._model = model.key
            for note in self._drift.notes:
                log.info("imaging monitor: %s", note)
        drift = self._drift
        with self.store.transaction() as tx:
            if self._book is None:
                self._book = AlarmBook([a for a in load_alarms(tx, open_only=True)
                                        if is_imaging_alarm(a)], clear_after=self.clear_after)
            book = self._book
            frame = records_frame(instance_records(tx, model=model.key))
            changed, raised, stats = check_images(
                frame, drift, book, now=pd.Timestamp(now, unit="s", tz="UTC"), model=model.key)
            book.stored(put_alarms(tx, changed))
            put_stats(tx, now, stats)
        for a in raised:
            log.warning("imaging monitor alarm: %s %s %s: %s", a.severity, a.kind, a.variable,
                        a.message)
        return ImagingCheck(now, "ok", model.key, len(frame), raised)

    def _stored_book(self) -> AlarmBook | None:
        """Return the open imaging alarms as stored (None when the store cannot be read now)."""
        try:
            stored = load_alarms(self.store.conn, open_only=True)
        except Exception:  # noqa: BLE001 - read again at the next check
            log.exception("the imaging monitor could not read its stored alarms")
            return None
        return AlarmBook([a for a in stored if is_imaging_alarm(a)], clear_after=self.clear_after)

    # -- what the service exports -------------------------------------------------------------

    def open_alarms(self) -> list[Alarm]:
        """Open imaging alarms (for ``/metrics``; safe from the ops endpoint's thread)."""
        book = self._book
        return [] if book is None else book.open()

    def health(self) -> dict[str, Any]:
        """Return the monitor's part of ``/readyz``: last check, status, open alarms, failures."""
        last = self.last
        return {
            "status": "waiting" if last is None else last.status,
            "last_check_age_s": None if last is None else round(time.time() - last.tick, 1),
            "open_alarms": len(self.open_alarms()),
            "failures": self.errors,
            **({"error": last.error} if last is not None and last.error else {}),
        }

    def close(self) -> None:
        """Close the job's store connection (when it owns one)."""
        if self.owns_store:
            self.store.close()
