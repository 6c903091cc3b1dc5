"""The imaging cycle: poll → fetch → read/quarantine → pixel chain → score → sinks → record.

Pure orchestration over a :class:`~vigil.runtime.study_contracts.StudySource`, the live
imaging models (active and shadow, from the registry), and
:class:`~vigil.runtime.study_contracts.StudySink` s; no torch. One :meth:`ImagingRunner.run`
works through the source from its stored cursor, one page at a time, reading it through
a page reader (:mod:`vigil.runtime.study_prefetch`: by default a worker thread polls the
next page and fetches its studies while the current page is processed; it only reads
the source, so nothing below changes):

1. each study of the page is fetched and read by :func:`vigil.runtime.images.read_instances`
   (the reader ``vigil evaluate --images`` uses); an instance the pixel chain refuses is
   quarantined with its reason and counted, and instances that are not images (the
   runtime's own Structured Reports among them; :func:`skip_instance`) are skipped; the
   pixels are dropped once read (the sinks need headers only);
2. each live model (``name@version`` and role) scores the page's studies it has not
   recorded with the same image instances, in one call (:meth:`ImageScorer.predict_images
   <vigil.runtime.images.ImageScorer.predict_images>`), then the site calibration
   record (probability and threshold) applies, else the package's threshold for this
   site (``site_thresholds`` of a federated package), else the package's threshold;
3. the active model's :class:`~vigil.runtime.study_contracts.StudyScore` goes to every
   sink (the shadow's is only stored);
4. sinks that hold a page's writes (``begin_page``/``end_page``: the FHIR NDJSON
   write-back, one durable append per file and page) make them durable;
5. the page's studies, their instance records and the cursor commit in **one
   transaction** (:mod:`vigil.runtime.imaging_store`).

When a study is scored again: a study already recorded by a model is fetched again
when the source re-announces it, and scored again only if its set of image instances
changed (:func:`~vigil.runtime.imaging_store.instances_digest`; new images arrived);
re-announcements that change nothing (the runtime's own SR stored back to the PACS)
are counted as ``unchanged``.

Crash safety: a crash before a page's commit leaves the cursor at the last recorded
page; the page is read again and its studies scored and written again, and sinks are
idempotent (deterministic ids), so the retry replaces what the crashed run wrote. A
sink that fails marks the study ``retry`` (its score is recorded once, never counted
twice); the next run fetches, scores and writes it again before polling. A failing
source (the PACS is down) ends the run with ``error`` set and the cursor unmoved, whether
the failing call ran ahead in the prefetch worker or not (its error is raised where the
sequential cycle would have made the call); pages fetched ahead are never committed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from vigil.core.errors import VigilError
from vigil.dicom_adapter.light_dataset import release_pixels
from vigil.dicom_adapter.own_output import is_own_output
from vigil.dicom_adapter.reading import ACCEPTED_MODALITIES
from vigil.imaging.histogram import N_BINS, input_histogram
from vigil.runtime.images import UNREAD_HEADERS, ImageScorer, InstanceBatch, read_instances
from vigil.runtime.imaging_store import (
    StudyRow,
    cursor_key,
    instances_digest,
    prune_instances,
    put_study,
    retry_studies,
    studies_rows,
)
from vigil.runtime.models import LiveModel, LiveModels
from vigil.runtime.store import StateStore
from vigil.runtime.study_contracts import (
    InstanceRecord,
    StudyInstance,
    StudyRef,
    StudyScore,
    StudySink,
    StudySource,
)
from vigil.runtime.study_prefetch import DEFAULT_MAX_BYTES, open_pages
from vigil.runtime.study_sinks import begin_page, end_page, write_all

__all__ = ["ImagingResult", "ImagingRunner", "binary_only", "site_threshold", "skip_instance"]

log = logging.getLogger(__name__)


def skip_instance(ds: Dataset | Mapping[str, Any], *,
                  modalities: Sequence[str] = ACCEPTED_MODALITIES) -> bool:
    """Whether an instance is left out of scoring: the runtime's own output, or not an image.

    vigil's own results (:func:`vigil.dicom_adapter.own_output.is_own_output`) and every
    instance whose Modality is not one the runtime scores (another system's SR, a
    presentation state, a report) are skipped, counted, never quarantined.
    """
    return is_own_output(ds) or str(ds.get("Modality", "") or "") not in modalities


def binary_only(models: Sequence[LiveModel]) -> str | None:
    """Return why the imaging cycle cannot run these models (None when it can).

    The cycle's study score, calibration, threshold, write-back and monitor are of one
    probability per image (the binary model's class 1); a multi-class (softmax) package,
    such as RetinaMNIST's five grades, is scored by ``vigil evaluate --images`` only.
    """
    for m in models:
        scorer = m.scorer
        if isinstance(scorer, ImageScorer) and scorer.multiclass:
            return (f"expected a binary imaging model for the imaging cycle (one probability "
                    f"per image), got {m.row.name} {m.row.version} with {scorer.classes} "
                    f"classes; score it with `vigil evaluate --images` instead")
    return None


def site_threshold(model: LiveModel, site_id: str | None) -> float:
    """Return the decision threshold: the calibration record's, else the package's for this site.

    A federated imaging package may carry ``site_thresholds`` (chosen per site on its
    validation data during training); a site not listed gets the package ``threshold``.
    """
    if model.calibration is not None:
        return float(model.calibration.threshold)
    manifest = model.scorer.package.manifest
    per_site = (manifest.model_extra or {}).get("site_thresholds") or {}
    if site_id is not None and site_id in per_site:
        return float(per_site[site_id])
    return float(manifest.threshold)


@dataclass
class ImagingResult:
    """What one :meth:`ImagingRunner.run` did (counts; no identifier)."""

    pages: int = 0
    studies: int = 0
    scored: int = 0
    unchanged: int = 0
    retried: int = 0
    empty: int = 0
    instances_scored: int = 0
    skipped: int = 0
    sink_failures: int = 0
    quarantine_reasons: Counter[str] = field(default_factory=Counter)
    cursor: str | None = None
    error: str | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the run reached the end of the source without a source error."""
        return self.error is None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the cursor is left out: a folder cursor holds a path)."""
        return {
            "pages": self.pages, "studies": self.studies, "scored": self.scored,
            "unchanged": self.unchanged, "retried": self.retried, "empty": self.empty,
            "instances_scored": self.instances_scored, "skipped": self.skipped,
            "instances_quarantined": sum(self.quarantine_reasons.values()),
            "quarantine_reasons": dict(self.quarantine_reasons),
            "sink_failures": self.sink_failures, "error": self.error,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass(frozen=True, eq=False)
class _Pending:
    ref: StudyRef
    reads: dict[int, InstanceBatch]
    """The study read at each model input size."""
    digest: str
    wanted: list[LiveModel]
    histograms: dict[int, np.ndarray] = field(default_factory=dict)
    """Input histograms of each read's accepted instances (:func:`_histograms`)."""


@dataclass(frozen=True, eq=False)
class _Recorded:
    score: StudyScore
    records: list[tuple[str, InstanceRecord]]
    digest: str
    error: str | None


class ImagingRunner:
    """Runs the imaging cycle on one store connection.

    Parameters
    ----------
    store : StateStore
        Its own connection (the imaging loop runs beside the sepsis cycle).
    source : StudySource
    sinks : sequence of StudySink
        Receive the active model's score of each study.
    models : callable returning LiveModels
        The live imaging models (reloaded by the caller when the registry changes).
    modalities : sequence of str, optional
        Image modalities scored.
    page_limit : int, optional
        Studies per page (one transaction).
    retention_hours : float or None, optional
        Instance records older than this are pruned.
    site_id : str or None, optional
        Selects the package's per-site threshold (:func:`site_threshold`).
    on_study : callable or None, optional
        Called with each recorded score (metrics).
    clock : callable, optional
        Now, timezone-aware.
    prefetch : bool, optional
        Poll and fetch the next page while the current one is processed
        (:mod:`vigil.runtime.study_prefetch`; default True).
    prefetch_bytes : int, optional
        Instance bytes fetched ahead at most (at least one study).
    """

    def __init__(
        self, *, store: StateStore, source: StudySource, sinks: Sequence[StudySink],
        models: Callable[[], LiveModels], modalities: Sequence[str] = ACCEPTED_MODALITIES,
        page_limit: int = 50, retention_hours: float | None = None, site_id: str | None = None,
        on_study: Callable[[StudyScore, str | None], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        prefetch: bool = True, prefetch_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.store, self.source, self.sinks = store, source, tuple(sinks)
        self.models = models
        self.modalities = tuple(modalities)
        self.page_limit = page_limit
        self.retry_limit = 20 * page_limit
        self.retention_hours = retention_hours
        self.site_id = site_id
        self.on_study = on_study
        self.clock = clock
        self.prefetch, self.prefetch_bytes = prefetch, prefetch_bytes

    @property
    def cursor(self) -> str | None:
        """The stored cursor of the source."""
        return self.store.watermark(cursor_key(self.source.name))

    def run(self, *, max_pages: int | None = None,
            stop: Callable[[], bool] | None = None) -> ImagingResult:
        """Retry the studies whose write-back failed (at most 20 pages), then poll the source.

        ``stop`` is asked before each page (a stopping service ends after the current one).

        Returns
        -------
        ImagingResult
            ``error`` is set (one line, no identifier) when the source failed; what was
            committed before stays.
        """
        started = time.monotonic()
        result = ImagingResult(cursor=self.cursor)
        live = self.models()
        models = [m for m in (live.active, live.shadow) if m is not None]
        if not models:
            result.error = "no active imaging model; install one with `vigil model install`"
            return result
        refused = binary_only(models)
        if refused is not None:
            result.error = refused
            log.warning("%s", refused)
            return result
        try:
            retry = retry_studies(self.store.conn, limit=self.retry_limit)
            for lo in range(0, len(retry), self.page_limit):
                part = retry[lo:lo + self.page_limit]
                begin_page(self.sinks)
                done = self._page(part, models, result, force=True)
                self._commit(self._end_page(done, result), None, result)
                result.retried += len(part)
            with open_pages(self.source, result.cursor, limit=self.page_limit,
                            prefetch=self.prefetch, max_bytes=self.prefetch_bytes) as pages:
                while ((max_pages is None or result.pages < max_pages)
                       and not (stop and stop())):
                    page = pages.next_page(more=max_pages is None
                                           or result.pages + 1 < max_pages)
                    begin_page(self.sinks)
                    done = self._page(page.studies, models, result, fetch=pages.fetch)
                    self._commit(self._end_page(done, result), page.cursor, result)
                    result.pages += 1
                    result.studies += len(page.studies)
                    result.cursor = page.cursor
                    if page.done or not page.studies:
                        break
        except Exception as exc:  # noqa: BLE001 - a source failure ends the run, not the service
            # vigil's own messages carry no identifier; a library's may (a WADO URL holds UIDs)
            detail = f": {_first_line(exc)}" if isinstance(exc, VigilError) else ""
            result.error = (f"the imaging source {self.source.name!r} failed: "
                            f"{type(exc).__name__}{detail}")
            log.warning("%s; the cursor stays at the last recorded page", result.error)
        result.duration_s = time.monotonic() - started
        return result

    def _end_page(self, done: list[list[_Recorded]], result: ImagingResult
                  ) -> list[list[_Recorded]]:
        """Make the sinks' held writes durable (before the page's record); mark failures.

        A sink whose ``end_page`` raises failed for every study it was handed in this
        page; one whose ``end_page`` returns ``{study_uid: error type}`` (writes it ran
        in the background) failed for those studies. They are recorded ``retry`` (their
        score counted once) and written again at the next run, as for a failed
        :meth:`StudySink.write`.
        """
        every, some = end_page(self.sinks)
        if every is None and not some:
            return done
        out = []
        for recorded in done:
            kept = []
            for r in recorded:
                why = every or some.get(r.score.study.study_uid)
                if (why is not None and r.error is None and r.score.role == "active"
                        and r.score.sop_instance_uids):
                    r = _Recorded(r.score, r.records, r.digest, why)
                    result.sink_failures += 1
                kept.append(r)
            out.append(kept)
        return out

    def _commit(self, done: list[list[_Recorded]], cursor: str | None,
                result: ImagingResult) -> None:
        with self.store.transaction() as tx:
            for recorded in done:
                for r in recorded:
                    put_study(tx, r.score, r.records, instances=r.digest, error=r.error)
            if cursor is not None:
                self.store.set_watermark(tx, cursor_key(self.source.name), cursor)
            if self.retention_hours is not None:
                prune_instances(tx, before=time.time() - self.retention_hours * 3600)
        for recorded in done:
            for r in recorded:
                result.scored += 1
                if self.on_study is not None:
                    self.on_study(r.score, r.error)

    def _page(self, refs: Sequence[StudyRef], models: list[LiveModel], result: ImagingResult,
              *, force: bool = False,
              fetch: Callable[[StudyRef], list[StudyInstance]] | None = None,
              ) -> list[list[_Recorded]]:
        """Score a page: read each study, one ONNX call per model for the page, then write.

        ``fetch``: where the studies' instances come from (the page reader's, in page
        order; default the source's).
        """
        fetch = fetch or self.source.fetch
        recorded = studies_rows(self.store.conn, [ref.study_uid for ref in refs])
        pending = [p for ref in refs
                   if (p := self._prepare(ref, fetch(ref), models, result,
                                          recorded[ref.study_uid], force=force))
                   is not None]
        _histograms(pending)
        raw: dict[tuple[int, int], np.ndarray] = {}
        for j, m in enumerate(models):
            users = [i for i, p in enumerate(pending) if any(w is m for w in p.wanted)]
            if not users:
                continue
            scorer = m.scorer
            assert isinstance(scorer, ImageScorer)
            out = _at_once(scorer.predict_images,
                           [pending[i].reads[scorer.size].inputs for i in users])
            raw.update(((i, j), o) for i, o in zip(users, out, strict=True))
        now = self.clock()
        done = []
        for i, p in enumerate(pending):
            recorded = []
            for j, m in enumerate(models):
                if not any(w is m for w in p.wanted):
                    continue
                size = _size(m)
                batch = p.reads[size]
                score, records = self._score(p.ref, m, batch, p.histograms[size], raw[(i, j)],
                                             now)
                result.instances_scored += len(score.sop_instance_uids)
                error = (write_all(self.sinks, score, batch.datasets)
                         if m.row.role == "active" else None)
                result.sink_failures += error is not None
                recorded.append(_Recorded(score, records, p.digest, error))
            done.append(recorded)
        return done

    def _prepare(self, ref: StudyRef, instances: list[StudyInstance], models: list[LiveModel],
                 result: ImagingResult, rows: dict[tuple[str, str], StudyRow], *,
                 force: bool = False) -> _Pending | None:
        """Read a study's fetched instances for every model that has not recorded it as it is now.

        ``rows``: its recorded scores (read for the whole page before it is processed:
        nothing of the page is recorded before its commit). None when no model needs it
        (``unchanged``). The instances' pixel data are dropped once read (the sinks need
        their headers only), so a page of films holds its model inputs, not its pixels.
        """
        reads: dict[int, InstanceBatch] = {}

        def read(size: int) -> InstanceBatch:
            if size not in reads:
                b = read_instances(((i.sop_instance_uid, i.data) for i in instances), size=size,
                                   skip=lambda ds: skip_instance(ds, modalities=self.modalities))
                for ds in b.datasets:
                    release_pixels(ds)
                reads[size] = b
            return reads[size]

        batch = read(_size(models[0]))
        digest = instances_digest([*batch.keys, *(k for k, _ in batch.quarantined)])
        wanted = []
        for m in models:
            row = rows.get((m.key, m.row.role))
            if force or row is None or row.status != "done" or row.instances != digest:
                wanted.append(m)
        if not wanted:
            result.unchanged += 1
            return None
        result.skipped += batch.skipped
        result.quarantine_reasons.update(reason for _, reason in batch.quarantined)
        if not batch.keys:
            result.empty += 1
        for m in wanted:
            read(_size(m))
        return _Pending(ref, reads, digest, wanted)

    def _score(self, ref: StudyRef, m: LiveModel, batch: InstanceBatch,
               histogram: np.ndarray, raw: np.ndarray, now: datetime
               ) -> tuple[StudyScore, list[tuple[str, InstanceRecord]]]:
        calibrated = raw if m.calibration is None else np.asarray(
            m.calibration.transform(raw), dtype=np.float64)
        score = StudyScore(
            study=ref, model_name=m.row.name, model_version=m.row.version, role=m.row.role,
            threshold=site_threshold(m, self.site_id), scored_at=now,
            sop_instance_uids=tuple(batch.keys), raw_probability=raw, probability=calibrated,
            calibrated=m.calibration is not None, quarantined=tuple(batch.quarantined))
        nan = float("nan")
        records = [(k, InstanceRecord(now, m.key, batch.headers[k], histogram[i],
                                      float(raw[i]), float(calibrated[i])))
                   for i, k in enumerate(batch.keys)]
        records += [(k, InstanceRecord(now, m.key, batch.headers.get(k, UNREAD_HEADERS),
                                       np.zeros(N_BINS, dtype=np.int64), nan, nan, reason))
                    for k, reason in batch.quarantined]
        return score, records


def _histograms(pending: Sequence[_Pending]) -> None:
    """Set each read's input histograms: one :func:`input_histogram` per input size and page.

    Per image the same counts as a call per study; the page's inputs are counted at once.
    """
    def count(x: np.ndarray) -> np.ndarray:
        return input_histogram(x) if len(x) else np.zeros((0, N_BINS), dtype=np.int64)

    for size in {size for p in pending for size in p.reads}:
        users = [p for p in pending if size in p.reads]
        for p, counts in zip(users, _at_once(count, [p.reads[size].inputs for p in users]),
                             strict=True):
            p.histograms[size] = counts


def _at_once(fn: Callable[[np.ndarray], np.ndarray], inputs: Sequence[np.ndarray]
             ) -> list[np.ndarray]:
    """Apply ``fn`` to the studies' inputs concatenated; return its rows split back per study.

    ``inputs``: one array of shape (n_i, ...) per study; ``fn`` maps (sum n_i, ...) to
    (sum n_i, ...) row by row (one ONNX call, one histogram count for the page).
    """
    out = fn(np.concatenate(inputs))
    bounds = np.cumsum([0, *(len(x) for x in inputs)])
    return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _size(model: LiveModel) -> int:
    scorer = model.scorer
    assert isinstance(scorer, ImageScorer)
    return scorer.size


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]
