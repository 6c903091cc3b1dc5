"""The on-prem service: a scoring cycle every 15 minutes, plus the ops endpoint.

APScheduler 3.x runs the cycle on a cron trigger aligned to the wall clock
(minutes 0, 15, 30 and 45 by default) with ``max_instances=1`` (a slow cycle
never overlaps the next), ``coalesce=True`` (runs missed while the machine was
busy or asleep collapse into one) and a ``misfire_grace_time`` (a run later than
that is skipped; the next one catches up from the watermark). SIGTERM or
SIGINT stop the scheduler, let a running cycle finish, close the endpoint and
the store, and return.

With ``[imaging]`` enabled, the imaging loop (:mod:`vigil.runtime.imaging_service`)
runs in the same scheduler as an interval job every ``imaging.poll_seconds``
(``max_instances=1``), on a store connection of its own; a stop ends a running poll
after its current page. Its metrics share ``/metrics``; ``/readyz`` reports its
health under ``imaging`` (a degraded imaging source does not make the sepsis
service unready). The imaging drift monitor (:mod:`vigil.runtime.imaging_monitor`) is a
job of its own on the cycle's trigger and checks once an hour, as the sepsis monitor
does; its alarms join the sepsis monitor's in the store and ``/metrics``, its status is
``imaging.monitor`` in ``/readyz``, and its failures reach neither the cycle nor the polls.

Missed ticks: a cycle that finds ticks between the latest committed one and its
own (the service was stopped, or runs were skipped) first scores them, oldest
first, at most ``scheduler.backfill_ticks`` of the latest, within the store's
retention (:func:`missed_ticks`; docs/runtime.md, "Cycle status and missed ticks").
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import FrameType

from vigil.core.errors import ConfigError
from vigil.runtime import heap
from vigil.runtime.cycle import CycleResult, CycleRunner, CycleSink, CycleSource
from vigil.runtime.imaging_cycle import ImagingResult
from vigil.runtime.imaging_monitor import ImagingCheck, ImagingMonitor
from vigil.runtime.imaging_service import ImagingLoop, build_imaging
from vigil.runtime.models import LiveModels, check_records, load_live_models
from vigil.runtime.monitoring import Alarm, AlarmCollector, Monitor
from vigil.runtime.monitoring.outcomes import (
    FHIRConditionOutcomes,
    FileOutcomes,
    OutcomeFeed,
    store_stays,
)
from vigil.runtime.ops import OpsServer, Readiness, RuntimeMetrics, readiness
from vigil.runtime.settings import VigilSettings, check_serving
from vigil.runtime.store import StateStore, sqlite_path

__all__ = ["Service", "build_service", "last_fire_time", "missed_ticks", "open_outcomes"]

log = logging.getLogger(__name__)


def _trigger(settings: VigilSettings):  # type: ignore[no-untyped-def]
    from apscheduler.triggers.cron import CronTrigger

    try:
        return CronTrigger(minute=settings.scheduler.minute, timezone=settings.scheduler.timezone)
    except (ValueError, LookupError) as exc:
        raise ConfigError(
            f"invalid setting 'scheduler.minute' or 'scheduler.timezone': {exc}",
            key="scheduler.minute",
        ) from exc


def last_fire_time(trigger: object, now: datetime) -> datetime:
    """Return the latest time at or before ``now`` when a cron trigger fires (the tick)."""
    probe = now - timedelta(hours=25)
    last = probe
    while True:
        nxt = trigger.get_next_fire_time(None, probe)  # type: ignore[attr-defined]
        if nxt is None or nxt > now:
            return last.astimezone(UTC)
        last = nxt
        probe = nxt + timedelta(seconds=1)


def missed_ticks(trigger: object, after: datetime, tick: datetime, *, limit: int,
                 not_before: datetime | None = None) -> list[datetime]:
    """Return the fire times strictly between ``after`` and ``tick``, oldest first.

    Only the latest ``limit`` are kept, and none before ``not_before``.
    """
    if limit <= 0 or tick <= after:
        return []
    start = after if not_before is None else max(after, not_before - timedelta(seconds=1))
    out: list[datetime] = []
    probe = start + timedelta(seconds=1)
    while True:
        nxt = trigger.get_next_fire_time(None, probe)  # type: ignore[attr-defined]
        if nxt is None or nxt >= tick:
            break
        if nxt > after:
            out.append(nxt.astimezone(UTC))
            if len(out) > limit:
                out.pop(0)
        probe = nxt + timedelta(seconds=1)
    return out


def open_outcomes(settings: VigilSettings, store: StateStore) -> OutcomeFeed | None:
    """Open the outcome feed the settings name (``[outcomes]``), or return None.

    Its labels reach the monitor's performance checks as ``vigil replay --labels``
    does (:class:`~vigil.runtime.monitoring.Monitor` ``labels=``).
    """
    o = settings.outcomes
    if o.source == "none":
        return None
    if o.source == "file":
        assert o.path is not None
        onsets: FileOutcomes | FHIRConditionOutcomes = FileOutcomes(o.path)
    else:
        from vigil.fhir_adapter.http import FHIRHttp

        assert settings.fhir is not None
        onsets = FHIRConditionOutcomes(FHIRHttp(settings.fhir))
    return OutcomeFeed(onsets, store_stays(store.conn), delay_hours=o.delay_hours,
                       lead_hours=o.lead_hours, negatives_on_discharge=o.source == "fhir")


class Service:
    """Everything ``vigil serve`` runs.

    Parameters
    ----------
    settings : VigilSettings
    source : CycleSource
    sink : CycleSink or None
    """

    def __init__(
        self, settings: VigilSettings, *, source: CycleSource, sink: CycleSink | None
    ) -> None:
        self.settings = settings
        self.trigger = _trigger(settings)
        self.store = StateStore.open(settings.store.url, lock="cycles")
        try:
            self._start(settings, source=source, sink=sink)
        except BaseException:
            self.store.close()  # and its writer lock: a failed start holds nothing
            raise

    def _start(
        self, settings: VigilSettings, *, source: CycleSource, sink: CycleSink | None
    ) -> None:
        n = self.store.mark_interrupted()
        if n:
            log.warning("%d cycle(s) were interrupted by a stop; the next cycle catches up", n)
        self.metrics = RuntimeMetrics()
        self._models = LiveModels(None, None)
        self._lock = threading.Lock()
        self._reload_models()
        good = self.store.last_good_cycle()
        self._last_good_end: float | None = good.finished if good is not None else None
        if self._last_good_end is not None:
            self.metrics.last_good.set(self._last_good_end)
        self.outcomes = open_outcomes(settings, self.store)
        self.monitor = Monitor(labels=self.outcomes)
        self.metrics.registry.register(AlarmCollector(self.open_alarms))
        self.runner = CycleRunner(
            monitor=self.monitor,
            store=self.store,
            source=source,
            sink=sink,
            models=self._reload_models,
            scoring=settings.scoring,
            alerts=settings.alerts,
            metrics=self.metrics,
            retention_hours=settings.store.retention_hours,
        )
        self._stop = threading.Event()
        memory = sqlite_path(settings.store.url) == ":memory:"  # one connection: share it
        self.imaging: ImagingLoop | None = build_imaging(
            settings, registry=self.metrics.registry, store=self.store if memory else None)
        self.image_monitor: ImagingMonitor | None = None
        if self.imaging is not None:
            try:
                own = self.store if memory else StateStore.open(settings.store.url)
            except BaseException:
                self.imaging.close()  # a failed start holds no connection
                raise
            loop = self.imaging
            self.image_monitor = ImagingMonitor(
                store=own, owns_store=not memory, active=lambda: loop.active_model,
                registry=self.metrics.registry)

    def _reload_models(self) -> LiveModels:
        wanted = tuple(
            (r.key, r.role, r.calibration)
            for r in self.store.models()
            if r.role in ("active", "shadow") and r.task == "sepsis"
        )
        m = self.settings.models
        if wanted != self._models.signature:
            self._models = load_live_models(
                self.store, public_key=m.trusted_key(), threads=self.settings.scoring.threads,
                calibration_key=m.calibration_key,
            )
            active = self._models.active
            log.info("models loaded: active %s, shadow %s", active.key if active else None,
                     self._models.shadow.key if self._models.shadow else None)
            self.metrics.model_loaded.set(1 if active is not None else 0)
        else:
            check_records(self._models, calibration_key=m.calibration_key)
        return self._models

    def _missed(self, tick: datetime) -> list[datetime]:
        """Ticks missed since the latest committed cycle (see the module docstring)."""
        limit = self.settings.scheduler.backfill_ticks
        done = self.store.last_committed_tick() if limit else None
        if done is None:
            return []
        retention = timedelta(hours=self.settings.store.retention_hours)
        return missed_ticks(self.trigger, datetime.fromtimestamp(done, UTC), tick,
                            limit=limit, not_before=tick - retention)

    def run_cycle(self, now: datetime | None = None) -> CycleResult:
        """Run the cycle of the latest tick at or before ``now`` (the scheduler's job).

        Ticks missed since the latest committed cycle are scored first (back-fill).
        """
        now = datetime.now(UTC) if now is None else now
        tick = last_fire_time(self.trigger, now)
        with self._lock:
            for past in self._missed(tick):
                done = self.runner.run(past)
                log.info("back-filled the tick %s: %s", past.isoformat(timespec="minutes"),
                         done.status)
            result = self.runner.run(tick)
            heap.release()  # the next cycle starts from what the service holds, not this peak
        if result.ok:
            good = self.store.last_good_cycle()
            self._last_good_end = good.finished if good is not None else None
        log.info(
            "cycle %d at %s: %s; %s; ignored codes %s", result.cycle_id,
            tick.isoformat(timespec="minutes"), result.status,
            ", ".join(f"{k}={v}" for k, v in sorted(result.counts.items())),
            result.ignored_codes or "none",
        )
        return result

    def poll_imaging(self) -> ImagingResult | None:
        """Run the imaging loop once (its scheduler job); None when imaging is off."""
        if self.imaging is None:
            return None
        if self.imaging.owns_store:
            return self.imaging.poll()
        with self._lock:  # an in-memory store: the cycle's own connection
            return self.imaging.poll()

    def monitor_imaging(self, now: datetime | None = None) -> ImagingCheck | None:
        """Run the imaging drift check of the latest tick (its scheduler job; hourly).

        None when imaging is off. Never raises (:mod:`vigil.runtime.imaging_monitor`).
        """
        if self.image_monitor is None:
            return None
        now = datetime.now(UTC) if now is None else now
        tick = last_fire_time(self.trigger, now)
        if self.image_monitor.owns_store:
            return self.image_monitor.run(tick)
        with self._lock:  # an in-memory store: the cycle's own connection
            return self.image_monitor.run(tick)

    def open_alarms(self) -> list[Alarm]:
        """Open alarms of the sepsis monitor and of the imaging monitor (``/metrics``)."""
        found = self.monitor.open_alarms()
        image = getattr(self, "image_monitor", None)
        return found if image is None else found + image.open_alarms()

    def readiness(self) -> Readiness:
        """Answer ``/readyz`` (with the imaging loop's health when it runs)."""
        active = self._models.active
        ready = readiness(
            model=active.key if active is not None else None,
            last_good_end=self._last_good_end,
            max_age_s=self.settings.ops.ready_max_age_s,
        )
        if self.imaging is None:
            return ready
        health = self.imaging.health()
        if self.image_monitor is not None:
            health["monitor"] = self.image_monitor.health()
        return replace(ready, imaging=health)

    def patient_scores(self, patient_key: str) -> list[dict[str, object]]:
        """Recent scores of one patient, read on a connection of its own."""
        if sqlite_path(self.settings.store.url) == ":memory:":
            return []
        with StateStore.open(self.settings.store.url, read_only=True) as reader:
            return reader.patient_scores(patient_key)

    def stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        """Ask :meth:`serve` to return (also the SIGTERM and SIGINT handler)."""
        if signum is not None:
            log.info("received signal %d; stopping after the running cycle", signum)
        self._stop.set()
        if self.imaging is not None:
            self.imaging.stopping.set()

    def serve(self) -> None:
        """Run until :meth:`stop` or SIGTERM/SIGINT; then shut down cleanly."""
        from apscheduler.schedulers.background import BackgroundScheduler

        s = self.settings
        ops = None
        if s.ops.enabled:
            token = s.ops.token.get_secret_value() if s.ops.token is not None else None
            try:
                ops = OpsServer(
                    host=s.ops.host, port=s.ops.port, ready=self.readiness, metrics=self.metrics,
                    patient_scores=self.patient_scores, token=token,
                ).start()
            except OSError as exc:
                self.close()
                raise ConfigError(
                    f"the ops endpoint cannot listen on {s.ops.host}:{s.ops.port} "
                    f"({exc.strerror or exc}); set ops.port to a free port, or ops.enabled = "
                    "false", key="ops.port",
                ) from None
        scheduler = BackgroundScheduler(timezone=s.scheduler.timezone)
        extra = {"next_run_time": datetime.now(UTC)} if s.scheduler.run_at_start else {}
        scheduler.add_job(
            self.run_cycle, self.trigger, id="cycle", name="scoring cycle", max_instances=1,
            coalesce=True, misfire_grace_time=s.scheduler.misfire_grace_s, **extra,
        )
        if self.imaging is not None:
            scheduler.add_job(
                self.poll_imaging, "interval", seconds=s.imaging.poll_seconds, id="imaging",
                name="imaging poll", max_instances=1, coalesce=True,
                next_run_time=datetime.now(UTC),
            )
        if self.image_monitor is not None:  # the sepsis monitor's cadence: hourly, on ticks
            scheduler.add_job(
                self.monitor_imaging, self.trigger, id="imaging-monitor",
                name="imaging drift monitor", max_instances=1, coalesce=True,
                misfire_grace_time=s.scheduler.misfire_grace_s,
            )
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        scheduler.start()
        log.info("serving: cycles at minute %s (%s)%s", s.scheduler.minute, s.scheduler.timezone,
                 f"; imaging polls every {s.imaging.poll_seconds:g} s" if self.imaging else "")
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            scheduler.shutdown(wait=True)
            if ops is not None:
                ops.stop()
            self.close()
            log.info("stopped")

    def close(self) -> None:
        """Close the store, the source, the write-back target, the outcome feed and imaging."""
        if getattr(self, "imaging", None) is not None:
            assert self.imaging is not None
            self.imaging.close()
        if getattr(self, "image_monitor", None) is not None:
            assert self.image_monitor is not None
            self.image_monitor.close()
        self.store.close()
        for part in (self.runner.source, self.runner.sink, self.outcomes):
            close = getattr(part, "close", None)
            if close is not None:
                close()


def build_service(settings: VigilSettings) -> Service:
    """Build the service of a site: its FHIR (or NDJSON) source and write-back target."""
    from vigil.runtime.sources import open_sink, open_source

    check_serving(settings)
    heap.limit_arenas()  # before any thread: the REST source fetches in several
    return Service(settings, source=open_source(settings), sink=open_sink(settings))
