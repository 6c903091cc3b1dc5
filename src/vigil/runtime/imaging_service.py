"""The imaging loop of ``vigil serve``: its source, sinks, models, metrics and health.

:func:`build_imaging` turns the ``[imaging]`` settings into an :class:`ImagingLoop`:
the source (a drop folder now; Orthanc when wired), the write-back sinks, the live
imaging models from the same registry as the sepsis model (task ``imaging``,
reloaded when an install or promotion changes them), an
:class:`~vigil.runtime.imaging_cycle.ImagingRunner` on a store connection of its own
(the sepsis cycle keeps its own; SQLite in WAL mode serializes their commits), and the
imaging metrics in the service's Prometheus registry. The service runs
:meth:`ImagingLoop.poll` every ``imaging.poll_seconds`` beside the 15-minute cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vigil.core.errors import ConfigError
from vigil.runtime.imaging_cycle import ImagingResult, ImagingRunner
from vigil.runtime.models import LiveModel, LiveModels, check_records, load_live_models
from vigil.runtime.settings import VigilSettings
from vigil.runtime.store import StateStore
from vigil.runtime.study_contracts import (
    StudyInstance,
    StudyPage,
    StudyRef,
    StudyScore,
    StudySink,
    StudySource,
)

__all__ = ["ImagingLoop", "ImagingMetrics", "build_imaging", "cursor_position",
           "open_imaging_io"]

if TYPE_CHECKING:
    from vigil.dicom_adapter.orthanc import OrthancClient, OrthancSource

log = logging.getLogger(__name__)


def cursor_position(cursor: str | None) -> float:
    """Return the numeric head of a cursor (Orthanc change sequence, folder arrival ns) or NaN."""
    head = (cursor or "").split(":", 1)[0]
    try:
        return float(head)
    except ValueError:
        return float("nan")


class ImagingMetrics:
    """The imaging loop's Prometheus metrics, in the service's registry (no identifier)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.studies = Counter("vigil_imaging_studies_scored",
                               "Studies scored (per model role).", ["role"], registry=r)
        self.instances = Counter("vigil_imaging_instances_scored",
                                 "Image instances scored by the active model.", registry=r)
        self.quarantined = Counter(
            "vigil_imaging_instances_quarantined",
            "Instances refused by the reader or the pixel chain, by reason.", ["reason"],
            registry=r)
        self.sink_failures = Counter("vigil_imaging_sink_failures",
                                     "Studies whose write-back failed (retried).", registry=r)
        self.polls = Counter("vigil_imaging_polls", "Imaging polls by outcome.", ["status"],
                             registry=r)
        self.duration = Histogram("vigil_imaging_poll_duration_seconds",
                                  "Wall time of an imaging poll.", registry=r,
                                  buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
        self.last_poll = Gauge("vigil_imaging_last_poll_timestamp_seconds",
                               "End of the last imaging poll that reached the source's end.",
                               registry=r)
        self.last_poll_age = Gauge("vigil_imaging_last_poll_age_seconds",
                                   "Seconds since the last good imaging poll (-1: none yet).",
                                   registry=r)
        self.cursor = Gauge("vigil_imaging_cursor_position",
                            "Numeric head of the source cursor (Orthanc change sequence; "
                            "folder: arrival time in ns).", registry=r)
        self.model_loaded = Gauge("vigil_imaging_model_loaded",
                                  "1 when an active imaging model is loaded.", registry=r)
        self._last_good: float | None = None
        self.last_poll_age.set_function(
            lambda: -1.0 if self._last_good is None else time.time() - self._last_good)

    def study(self, score: StudyScore, error: str | None) -> None:
        """Count one recorded study score."""
        self.studies.labels(role=score.role).inc()
        if score.role == "active":
            self.instances.inc(len(score.sop_instance_uids))
            for _, reason in score.quarantined:
                self.quarantined.labels(reason=reason).inc()
            if error is not None:
                self.sink_failures.inc()

    def poll(self, result: ImagingResult) -> None:
        """Record one poll."""
        self.polls.labels(status="ok" if result.ok else "failed").inc()
        self.duration.observe(result.duration_s)
        self.cursor.set(cursor_position(result.cursor))
        if result.ok:
            self._last_good = time.time()
            self.last_poll.set(self._last_good)


class ImagingLoop:
    """The imaging side of the service: poll, models, health.

    Parameters
    ----------
    settings : VigilSettings
    store : StateStore
        The loop's own connection (closed by :meth:`close`).
    source : StudySource
    sinks : sequence of StudySink
    metrics : ImagingMetrics
    owns_store : bool, optional
        Whether :meth:`close` closes ``store``.
    """

    def __init__(self, settings: VigilSettings, *, store: StateStore, source: StudySource,
                 sinks: Sequence[StudySink], metrics: ImagingMetrics,
                 owns_store: bool = True) -> None:
        self.settings = settings
        self.store = store
        self.owns_store = owns_store
        self.stopping = threading.Event()
        """Set by the service on SIGTERM: a running poll stops after its current page."""
        self.source = source
        self.sinks = tuple(sinks)
        self.metrics = metrics
        self._models = LiveModels(None, None)
        self._lock = threading.Lock()
        self.last_result: ImagingResult | None = None
        self._last_good: float | None = None
        s = settings.imaging
        self.runner = ImagingRunner(
            store=store, source=source, sinks=self.sinks, models=self.live_models,
            modalities=s.modalities, page_limit=s.page_limit,
            retention_hours=settings.store.retention_hours,
            site_id=s.site_id or settings.site_id, on_study=metrics.study,
            prefetch=s.prefetch, prefetch_bytes=s.prefetch_mb * 2**20,
        )

    def live_models(self) -> LiveModels:
        """Return the live imaging models, reloaded when the registry changed."""
        m, s = self.settings.models, self.settings.imaging
        wanted = tuple((r.key, r.role, r.calibration) for r in self.store.models()
                       if r.role in ("active", "shadow") and r.task == "imaging"
                       and s.model in (None, r.name))
        if wanted != self._models.signature:
            self._models = load_live_models(
                self.store, public_key=m.trusted_key(), threads=self.settings.scoring.threads,
                calibration_key=m.calibration_key, task="imaging", name=s.model)
            active = self._models.active
            log.info("imaging models loaded: active %s, shadow %s",
                     active.key if active else None,
                     self._models.shadow.key if self._models.shadow else None)
            self.metrics.model_loaded.set(1 if active is not None else 0)
        else:
            check_records(self._models, calibration_key=m.calibration_key)
        return self._models

    @property
    def active_model(self) -> LiveModel | None:
        """The active imaging model as last loaded by a poll (None before; no store access)."""
        return self._models.active

    def poll(self, *, max_pages: int | None = None) -> ImagingResult:
        """One run of the imaging cycle (the scheduler's job); never raises on source errors."""
        with self._lock:
            try:
                result = self.runner.run(max_pages=max_pages, stop=self.stopping.is_set)
            except Exception as exc:  # noqa: BLE001 - a model or store error must not kill serve
                result = ImagingResult(cursor=self.runner.cursor,
                                       error=f"imaging poll failed: {type(exc).__name__}")
                log.exception("imaging poll failed")
        self.metrics.poll(result)
        self.last_result = result
        if result.ok:
            self._last_good = time.time()
        if result.scored or not result.ok:
            log.info("imaging poll: %s", ", ".join(f"{k}={v}" for k, v in
                                                    result.to_dict().items()
                                                    if k != "quarantine_reasons"))
        return result

    def health(self) -> dict[str, Any]:
        """Return the imaging part of ``/readyz``: ``ok``, ``starting`` or ``degraded`` and why."""
        age = None if self._last_good is None else time.time() - self._last_good
        last = self.last_result
        if last is None:
            status, reason = "starting", "no imaging poll yet"
        elif not last.ok:
            status, reason = "degraded", last.error or "the last imaging poll failed"
        elif age is not None and age > self.settings.imaging.ready_max_age_s:
            status, reason = "degraded", f"the last good imaging poll is {age:.0f} s old"
        else:
            status, reason = "ok", "ok"
        return {"status": status, "reason": reason, "source": self.source.name,
                "last_good_poll_age_s": None if age is None else round(age, 1)}

    def close(self) -> None:
        """Close the loop's store connection and whatever the sinks and the source hold.

        The sinks first: an SR sink storing in the background finishes its queued stores
        through the PACS connection the source then closes.
        """
        for part in (*self.sinks, self.source):
            close = getattr(part, "close", None)
            if close is not None:
                close()
        if self.owns_store:
            self.store.close()


def _orthanc(settings: VigilSettings) -> OrthancClient:
    from vigil.dicom_adapter.orthanc import OrthancClient

    s = settings.imaging
    assert s.url is not None
    password = None
    if s.password_file is not None:
        try:
            password = s.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"imaging.password_file: expected a readable file, got "
                              f"{exc.strerror}", key="imaging.password_file") from None
    return OrthancClient(s.url, username=s.username, password=password,
                         timeout=s.timeout_s)


def _fhir_sink(settings: VigilSettings) -> StudySink:
    from vigil.fhir_adapter.imaging_report import FhirStudySink

    d = settings.data
    if d.writeback == "ndjson":
        assert d.writeback_dir is not None
        d.writeback_dir.mkdir(parents=True, exist_ok=True)
        return FhirStudySink(d.writeback_dir, site=settings.site_id,
                             deployment=settings.deployment_id)
    if d.writeback == "fhir" and settings.fhir is not None:
        return FhirStudySink(settings.fhir, site=settings.site_id,
                             deployment=settings.deployment_id)
    raise ConfigError("imaging.writeback.fhir = true needs data.writeback = 'fhir' (with a "
                      f"[fhir] server) or 'ndjson', got {d.writeback!r}",
                      key="imaging.writeback.fhir")


def open_imaging_io(settings: VigilSettings) -> tuple[StudySource, list[StudySink]]:
    """Open the imaging source and sinks the settings name.

    Source: Orthanc's change feed (:class:`~vigil.dicom_adapter.orthanc.OrthancSource`) or
    a drop folder. Sinks: a DiagnosticReport + Observation per study where the sepsis
    RiskAssessments go (``data.writeback``: the FHIR server, or NDJSON files), and a DICOM
    SR stored back to the Orthanc the study came from.

    Raises
    ------
    ConfigError
        For a source or sink the settings cannot support (one line, the key).
    """
    s = settings.imaging
    sinks: list[StudySink] = []
    if s.writeback.fhir:
        sinks.append(_fhir_sink(settings))
    if s.source == "orthanc":
        from vigil.dicom_adapter.orthanc import OrthancSource

        client = _orthanc(settings)
        if s.writeback.sr:
            from vigil.dicom_adapter.sr import SRStudySink

            sinks.append(SRStudySink(client.store, site=settings.site_id,
                                     background=s.writeback.sr_background))
        source = OrthancSource(client, modalities=s.modalities)
        return (FromNow(source) if s.start == "now" else source), sinks
    from vigil.runtime.folder_studies import FolderStudySource

    assert s.folder is not None
    return FolderStudySource(s.folder, stable_seconds=s.stable_seconds), sinks


class FromNow:
    """A PACS source that starts at the end of its change feed when no cursor is stored.

    A site switching vigil on must not score, and write results for, every study its
    PACS ever held (``imaging.start = "now"``, the default; ``"beginning"`` reads them
    all). The end is asked for at the first poll, not at start-up, so a PACS that is down
    when the service starts is a degraded poll like any other, and the cursor is stored
    with that poll's page as always.
    """

    def __init__(self, source: OrthancSource) -> None:
        self.source = source
        self.name = source.name

    def poll(self, cursor: str | None, *, limit: int) -> StudyPage:
        """Poll from ``cursor``, or from the feed's end when there is none."""
        return self.source.poll(cursor if cursor is not None else self.source.latest_cursor(),
                                limit=limit)

    def fetch(self, study: StudyRef) -> list[StudyInstance]:
        """Fetch a study's instances."""
        return self.source.fetch(study)

    def close(self) -> None:
        """Close the PACS connection."""
        self.source.close()


def build_imaging(settings: VigilSettings, *, registry: CollectorRegistry,
                  store: StateStore | None = None) -> ImagingLoop | None:
    """Build the service's imaging loop (None when ``imaging.enabled`` is false).

    ``store`` defaults to a new connection to ``store.url`` (without a writer lock: the
    service holds it).

    Raises
    ------
    ConfigError
        For a bad ``[imaging]`` setting (one line, the key).
    """
    from vigil.runtime.imaging_settings import check_imaging

    if not settings.imaging.enabled:
        return None
    check_imaging(settings.imaging)
    source, sinks = open_imaging_io(settings)
    own = store if store is not None else StateStore.open(settings.store.url)
    try:
        return ImagingLoop(settings, store=own, source=source, sinks=sinks,
                           metrics=ImagingMetrics(registry), owns_store=store is None)
    except BaseException:
        if store is None:
            own.close()
        raise
