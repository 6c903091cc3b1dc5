"""The scoring cycle (DESIGN.md, "Cycle"), the same code for the service and for replay.

census → incremental fetch from the persisted watermark (with an overlap for
late-charted values) → store → features of each census patient at the tick →
onnxruntime batch (active and shadow model) → calibrated probability → alert
policy → RiskAssessments queued → one commit → write-back → cycle record.

Crash safety:

* Everything a cycle stores (census, observations, watermark, quarantine,
  scores, alert state, queued RiskAssessments, the cycle's status) is written
  in **one transaction**. A cycle that fails or is killed before the commit
  leaves no trace but its ``running`` record (marked ``interrupted`` at the
  next start); the watermark was not advanced, so the next cycle fetches the
  same observations again.
* Write-back happens after the commit, from the queue (``outbox``). Each
  RiskAssessment has a deterministic id (patient, tick, model) and is written
  with an idempotent ``PUT``, so sending it again after a crash replaces it
  instead of duplicating it. A failed write-back leaves the queue for the next
  cycle.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import FHIRError, ModelArtifactError, VigilError
from vigil.features.builder import LOOKBACK_HOURS
from vigil.features.grid import HourlyGrid
from vigil.fhir_adapter.records import IngestCounts, ObservationBatch, to_micros
from vigil.runtime.alert_step import alert_step
from vigil.runtime.contracts import (
    CycleResult,
    CycleSink,
    CycleSource,
    GridBuilder,
    ResumableSource,
    ScoreBatch,
    adapter_grid,
    complete_hours,
)
from vigil.runtime.coverage import (
    coverage_findings,
    expected_rates,
    measure_coverage,
    profile_rates,
)
from vigil.runtime.feature_cache import LatestFeatures
from vigil.runtime.inputs import InputHealth, check_inputs, has_recent_values, split_future
from vigil.runtime.models import LiveModel, LiveModels
from vigil.runtime.monitoring.alarms import Finding
from vigil.runtime.monitoring.monitor import Monitor
from vigil.runtime.ops import RuntimeMetrics
from vigil.runtime.schema import COMMITTED
from vigil.runtime.settings import AlertSettings, ScoringSettings
from vigil.runtime.store import StateStore
from vigil.runtime.window import ObservationWindow, recent_grid

__all__ = [
    "CURSOR_SUFFIX",
    "CycleResult",
    "CycleRunner",
    "CycleSink",
    "CycleSource",
    "GridBuilder",
    "ScoreBatch",
    "adapter_grid",
    "complete_hours",
]

log = logging.getLogger(__name__)

CURSOR_SUFFIX = "#cursor"
"""Key of a source's cursor in the store's watermarks: the source's name and this suffix."""

def _ts(t: datetime) -> float:
    return t.timestamp()


class CycleRunner:
    """Runs cycles against one store, source, sink and set of models.

    Parameters
    ----------
    store : StateStore
    source : CycleSource
    sink : CycleSink or None
        None scores and stores without writing back.
    models : callable returning LiveModels
        Asked at every cycle (a promotion takes effect at the next cycle).
    scoring : ScoringSettings
    alerts : AlertSettings
    metrics : RuntimeMetrics or None, optional
    checkpoint : callable (str) -> None, optional
        Called at named points of the cycle (crash tests kill the process there).
    retention_hours : float, optional
        Observations older than this are pruned.
    writeback_batch : int, optional
        RiskAssessments per sink call.
    grid_builder : GridBuilder, optional
        The FHIR adapter's by default.
    keep_window : bool, optional
        Keep the observation window in memory between cycles
        (:class:`~vigil.runtime.window.ObservationWindow`); False reads it from the
        store every cycle.
    monitor : Monitor or None, optional
        Drift and performance monitor, called after scoring inside the cycle's transaction.
    """

    def __init__(
        self,
        *,
        store: StateStore,
        source: CycleSource,
        sink: CycleSink | None,
        models: Callable[[], LiveModels],
        scoring: ScoringSettings,
        alerts: AlertSettings,
        metrics: RuntimeMetrics | None = None,
        checkpoint: Callable[[str], None] | None = None,
        retention_hours: float = 7 * 24,
        writeback_batch: int = 200,
        grid_builder: GridBuilder = adapter_grid,
        keep_window: bool = True,
        monitor: Monitor | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self.sink = sink
        self.models = models
        self.scoring = scoring
        self.alerts = alerts
        self.metrics = metrics
        self.checkpoint = checkpoint or (lambda _name: None)
        self.retention_hours = retention_hours
        self.writeback_batch = writeback_batch
        self.grid_builder = grid_builder
        self.keep_window = keep_window
        self._window: ObservationWindow | None = None
        self._features = LatestFeatures()  # recomputes only patients whose grid changed
        self.monitor = monitor
        self._census_before: int | None = None
        self._resumed = False
        self._census_known = False
        self._rates: tuple[str, dict[str, float]] = ("", {})

    def run(self, tick: datetime) -> CycleResult:
        """Run one cycle for ``tick`` (UTC); never raises for a failed cycle, records it."""
        if tick.tzinfo is None:
            raise ValueError("expected a timezone-aware tick (UTC)")
        tick = tick.astimezone(UTC)
        started = time.perf_counter()
        timings: dict[str, float] = {}
        counts: dict[str, int] = {}
        try:
            cycle_id = self.store.claim_cycle(_ts(tick))
        except sqlite3.Error as exc:  # a full disk, a lost file: nothing can be recorded
            reason = (f"the state store cannot be written ({exc}); nothing was scored, the next "
                      "cycle catches up")
            log.error("cycle at %s: %s", tick.isoformat(timespec="minutes"), reason)
            self._observe("failed", counts, timings, committed=False)
            return CycleResult(0, tick, "failed", reason, counts, timings)
        if cycle_id is None:
            # Scored before (a restart within the same tick): scoring again would apply the
            # alert policy twice; only finish what that cycle queued.
            reason = self.flush(counts)
            timings["total"] = time.perf_counter() - started
            return CycleResult(0, tick, "skipped", reason, counts, timings)
        if not self._census_known:
            self._census_before = self._last_census()
            self._census_known = True
        ignored: dict[str, int] = {}
        try:
            self.checkpoint("started")
            models = self.models()
            if models.active is None:
                raise VigilError("no active model is installed; run `vigil model install`")
            health = self._score_and_commit(cycle_id, tick, models, counts, timings, ignored)
        except Exception as exc:
            return self._failed(cycle_id, tick, exc, counts, timings, started)
        if counts["census"]:  # an empty census stays degraded until patients come back
            self._census_before = counts["census"]
        self.checkpoint("committed")
        t0 = time.perf_counter()
        reason = self.flush(counts)
        status = "ok" if reason is None else "writeback_failed"
        if reason is not None:
            log.warning("cycle %d: %s", cycle_id, reason)
        if health.degraded:
            status = "degraded"
            reason = "; ".join(r for r in (health.reason, reason) if r)
            log.warning("cycle %d degraded, no RiskAssessment written: %s", cycle_id, reason)
        timings["writeback"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - started
        self._record(cycle_id, status, reason, counts, timings)
        self._observe(status, counts, timings, committed=True)
        return CycleResult(cycle_id, tick, status, reason, counts, timings, ignored)

    def _last_census(self) -> int | None:
        """Return the latest non-empty census of a committed cycle (None: none recently)."""
        for row in reversed(self.store.cycles(limit=96)):
            if row.status in COMMITTED and row.counts.get("census"):
                return int(row.counts["census"])
        return None

    # -- steps ----------------------------------------------------------------------------------

    def _score_and_commit(
        self,
        cycle_id: int,
        tick: datetime,
        models: LiveModels,
        counts: dict[str, int],
        timings: dict[str, float],
        ignored: dict[str, int],
    ) -> InputHealth:
        t0 = time.perf_counter()
        census = self.source.census(tick)
        timings["census"] = time.perf_counter() - t0
        counts["census"] = len(census)
        self.checkpoint("census")

        t0 = time.perf_counter()
        if not self._resumed and isinstance(self.source, ResumableSource):
            position = self.store.watermark(self.source.name + CURSOR_SUFFIX)
            if position is not None:  # a new process: where the last one read up to
                self.source.resume(position)
        self._resumed = True
        mark = self.store.watermark(self.source.name)
        since = None if mark is None else datetime.fromisoformat(mark)
        fetched = self.source.observations(since, tick, patients=census.patients)
        results = [fetched]
        # Patients new to the census are read back to their ICU admission: their values
        # written before the watermark were not fetched while they were elsewhere.
        known = set(self.store.census_keys())
        new = [s for s in census.stays if s.patient not in known]
        if new and since is not None:
            back = min(s.icu_admission for s in new) - timedelta(hours=1)
            if back < since:
                results.append(
                    self.source.observations(back, tick, patients=[s.patient for s in new])
                )
        incoming = (fetched.observations if len(results) == 1
                    else ObservationBatch.concat([r.observations for r in results]))
        # a value dated after it was read has a bad clock: quarantined, not stored
        incoming, future = split_future(incoming, max(tick, fetched.watermark or tick))
        timings["fetch"] = time.perf_counter() - t0
        counts["observations"] = len(incoming)
        counts["backfilled_patients"] = len(new) if len(results) > 1 else 0
        read = sum((r.counts for r in results), IngestCounts())
        counts["read"] = read.resources
        counts["ignored_unknown_code"] = read.ignored_unknown_code
        counts["skipped_status"] = read.skipped_status
        ignored.update(read.top_ignored(10))
        quarantine = (census.quarantine + tuple(q for r in results for q in r.quarantine)
                      + future)
        counts["quarantined"] = len(quarantine)
        self.checkpoint("fetched")

        with self.store.transaction() as tx:
            t0 = time.perf_counter()
            # the look-back of the grid, and nothing the store prunes below
            since_us = to_micros(tick - timedelta(hours=min(LOOKBACK_HOURS + 2,
                                                            self.retention_hours)))
            base = self._window
            if base is None or base.since > since_us:
                # Read what the store held before this cycle's values; they are added from
                # memory below (reading back a whole first fetch would cost as much as storing it).
                base = ObservationWindow.read(self.store, census.patients, since=since_us)
            self.store.put_census(tx, census.stays, tick=_ts(tick))
            kept, replaced = self.store.put_observations(tx, incoming)
            self.store.put_quarantine(tx, cycle_id, quarantine)
            if fetched.watermark is not None:
                self.store.set_watermark(tx, self.source.name, fetched.watermark.isoformat())
            position = (self.source.cursor() if isinstance(self.source, ResumableSource)
                        else None)
            if position is not None:
                self.store.set_watermark(tx, self.source.name + CURSOR_SUFFIX, position)
            counts["pruned"] = self.store.prune(tx, before=_ts(tick) - self.retention_hours * 3600)
            window = base.advance(self.store, census.patients, since=since_us, kept=kept,
                                  replaced=replaced)
            timings["store"] = time.perf_counter() - t0
            self.checkpoint("stored")

            t0 = time.perf_counter()
            done = complete_hours(census.stays, tick)
            ready = [(s, h) for s, h in zip(census.stays, done, strict=True) if h >= 1]
            seen = window.until(to_micros(tick))
            grid = recent_grid([s for s, _ in ready], [h for _, h in ready], seen,
                               builder=self.grid_builder)
            features = self._features(grid)
            hours = grid.hours[grid.starts[1:] - 1] if grid.n_patients else np.zeros(0, np.int32)
            timings["features"] = time.perf_counter() - t0
            health = check_inputs(
                census=len(census), previous_census=self._census_before,
                read=read.resources, mapped=read.values, ignored=ignored,
                recent=has_recent_values(
                    grid.patient_ids, seen, until=to_micros(tick),
                    since=to_micros(tick - timedelta(hours=self.scoring.recent_hours))),
                settled=hours >= self.scoring.recent_hours, settings=self.scoring,
                coverage=self._coverage(models.active, grid, seen, hours, tick),
            )
            hold = health.withheld()
            counts["first_hour"] = len(census) - len(ready)
            counts["features_computed"] = self._features.computed

            t0 = time.perf_counter()
            encounters = {stay.patient: stay.encounter for stay in census.stays}
            batches = [
                self._score(model, role, grid, features, hours, tick, encounters, hold)
                for role, model in (("active", models.active), ("shadow", models.shadow))
                if model is not None
            ]
            timings["inference"] = time.perf_counter() - t0
            for scored in batches:
                self.store.put_scores(tx, scored, cycle_id=cycle_id)
            active = batches[0]
            counts["scored"] = len(active)
            counts["shadow_scored"] = sum(len(b) for b in batches[1:])
            counts["alerts"] = int(active.alert.sum())
            counts["empty_inputs"] = int(health.empty.sum())
            counts["withheld"] = int(hold.sum())
            if self.monitor is not None:
                t0 = time.perf_counter()
                counts["monitor_alarms"] = len(self.monitor.observe_cycle(
                    tx, tick=tick, model=models.active, grid=grid, scores=active,
                    census=len(census), observations=incoming, quarantine=quarantine,
                    units=incoming.unit_counts(), findings=health.findings))
                timings["monitor"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            items = self.sink.assessments(active) if self.sink is not None and len(active) else []
            if hold.any() and items:
                # no RiskAssessment from empty inputs (docs/runtime.md, "Cycle status")
                items = [it for it, h in zip(items, hold.tolist(), strict=True) if not h]
            self.store.enqueue(tx, cycle_id, ((i, _ts(tick), b) for i, b in items))
            counts["queued"] = len(items)
            timings["build_writeback"] = time.perf_counter() - t0
            self.store.finish_cycle(tx, cycle_id, status="scored", counts=counts, timings=timings)
        self._window = window if self.keep_window else None
        return health

    def _coverage(self, model: LiveModel, grid: HourlyGrid, seen: ObservationBatch,
                  hours: NDArray[np.int32], tick: datetime) -> tuple[Finding, ...]:
        """Judge the census's values of the last ``coverage_hours`` (:mod:`.coverage`)."""
        if self._rates[0] != model.key:
            try:
                rates = profile_rates(model.scorer.package.manifest.reference_profile,
                                      where=f"the manifest of {model.key}")
            except ModelArtifactError as exc:
                log.warning("feed coverage is judged against the site baseline: %s", exc)
                rates = {}
            self._rates = (model.key, rates)
        rates = self._rates[1]
        if not rates and self.monitor is not None:  # no profile: the site's baseline, once learned
            rates = expected_rates(self.monitor.baseline)
        if not rates:
            return ()
        # only patients settled in the ICU (recent_hours), as for recent_values: a stay's
        # first hour has no value yet, so a census of new admissions would look uncovered
        window = self.scoring.coverage_hours
        settled = hours >= self.scoring.recent_hours
        keys = np.asarray(grid.patient_ids, dtype=str)[settled]
        coverage = measure_coverage(
            seen.take(np.isin(seen.patient.astype(str), keys)), rates=rates, patients=len(keys),
            patient_hours=float(np.minimum(hours[settled], window).sum()),
            since=to_micros(tick - timedelta(hours=window)), until=to_micros(tick))
        return coverage_findings(coverage, min_coverage=self.scoring.min_coverage,
                                 min_expected=self.scoring.min_expected,
                                 min_patients=self.scoring.coverage_min_patients,
                                 min_rate=self.scoring.absent_min_rate)

    def _score(
        self,
        model: LiveModel,
        role: str,
        grid: HourlyGrid,
        features: NDArray[np.float32],
        hours: NDArray[np.int32],
        tick: datetime,
        encounters: dict[str, str],
        hold: NDArray[np.bool_],
    ) -> ScoreBatch:
        raw, prob = model.probabilities(features)
        keys = grid.patient_ids
        # The shadow model gets the same policy (its own state) so that its alert burden can be
        # compared before a promotion; only the active model's alerts are raised and written back.
        step = alert_step(
            keys, prob, now_hours=_ts(tick) / 3600.0, state=self.store.alert_state(model.key),
            threshold=model.threshold, suppression_hours=self.alerts.suppression_hours,
            hysteresis=self.alerts.hysteresis,
        )
        # a withheld patient neither alerts nor moves the policy's state (no RiskAssessment)
        self.store.put_alert_state(
            self.store.conn, model.key,
            ((k, last, armed) for k, last, armed, h in zip(
                keys, step.last_alert, step.armed, hold.tolist(), strict=True) if not h),
        )
        return ScoreBatch(
            model_name=model.row.name,
            model_version=model.row.version,
            threshold=model.threshold,
            role=role,
            tick=tick,
            patient_keys=keys,
            encounters=tuple(encounters[k] for k in keys),
            iculos=hours.astype(np.int64),
            raw_probability=raw,
            probability=prob,
            calibrated=model.calibration is not None,
            alert=np.asarray(step.alert, dtype=bool) & ~hold,
        )

    def flush(self, counts: dict[str, int] | None = None) -> str | None:
        """Write back every queued RiskAssessment; returns why it failed, or None.

        Sets ``written_back`` and ``pending`` in ``counts`` when given.
        """
        counts = {} if counts is None else counts
        counts["written_back"] = 0
        reason = None
        if self.sink is not None:
            pending = self.store.pending()
            try:
                for lo in range(0, len(pending), self.writeback_batch):
                    chunk = pending[lo : lo + self.writeback_batch]
                    self.sink.put([body for _, body in chunk])
                    self.checkpoint("put")
                    self.store.mark_sent([rid for rid, _ in chunk])
                    counts["written_back"] += len(chunk)
            except Exception as exc:
                reason = (f"write-back failed ({type(exc).__name__}: {exc}); "
                          "queued for the next cycle")
                if isinstance(exc, FHIRError) and self.metrics is not None:
                    self.metrics.fhir_errors.inc()
        counts["pending"] = len(self.store.pending())
        return reason

    def _failed(
        self,
        cycle_id: int,
        tick: datetime,
        exc: Exception,
        counts: dict[str, int],
        timings: dict[str, float],
        started: float,
    ) -> CycleResult:
        self._window = None  # rebuilt from the store by the next cycle
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, VigilError | sqlite3.Error):
            log.warning("cycle %d failed: %s", cycle_id, reason)
        else:
            log.exception("cycle %d failed unexpectedly", cycle_id)
        if isinstance(exc, FHIRError) and self.metrics is not None:
            self.metrics.fhir_errors.inc()
        timings["total"] = time.perf_counter() - started
        self._record(cycle_id, "failed", reason, counts, timings)
        self._observe("failed", counts, timings, committed=False)
        return CycleResult(cycle_id, tick, "failed", reason, counts, timings)

    def _record(self, cycle_id: int, status: str, reason: str | None, counts: dict[str, int],
                timings: dict[str, float]) -> None:
        """Record a cycle's end; a store that cannot be written leaves it to the next start."""
        try:
            with self.store.transaction() as tx:
                self.store.finish_cycle(tx, cycle_id, status=status, reason=reason,
                                        counts=counts, timings=timings)
        except sqlite3.Error as exc:
            log.error("cycle %d: could not record its end (%s); the next start marks it "
                      "interrupted", cycle_id, exc)

    def _observe(
        self, status: str, counts: dict[str, int], timings: dict[str, float], *, committed: bool
    ) -> None:
        m = self.metrics
        if m is None:
            return
        m.cycles.labels(status=status).inc()
        m.cycle_duration.observe(timings.get("total", 0.0))
        if committed:
            m.quarantined.inc(counts.get("quarantined", 0))
            m.patients_scored.set(counts.get("scored", 0))
            m.scores.inc(counts.get("scored", 0))
            m.alerts.inc(counts.get("alerts", 0))
            m.writeback.inc(counts.get("written_back", 0))
        if status == "ok":
            m.last_good.set(time.time())

