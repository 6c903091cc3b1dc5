"""The stateful monitor the cycle calls after scoring: drift, feed health, performance, alarms.

Every cycle, :meth:`Monitor.observe_cycle` takes what the cycle already has
(the census patients' hourly grid, the active model's scores, what was
fetched and quarantined) and:

1. adds each patient-hour the cycle scored for the first time (the cycle's
   grid ends at each patient's last complete hour) to a sliding window of
   ``window_hours``, with that first score; each patient-hour counts once;
2. once an hour, compares the window with the reference (:mod:`.reference`):
   per grid variable PSI, Kolmogorov-Smirnov, normed Wasserstein and
   Jensen-Shannon (:mod:`.stats`) and the measured rate (missingness); the
   raw score's PSI; and the share of hours at or above the alert threshold
   against the site's baseline;
3. runs the feed checks (:mod:`.feed`) every cycle and, once an hour when
   outcomes arrive, the performance checks (:mod:`.performance`);
4. turns findings into alarms (:class:`~.alarms.AlarmBook`) and stores the
   alarms and the cycle's statistics in the cycle's own transaction.

A drift finding needs both a material change (PSI at least ``psi_warn``,
``psi_act`` for critical, on at most ``max_bins`` reference bins of equal
mass; a measured rate halved or doubled and at least ``rate_abs`` apart) and
one that sampling noise cannot explain at level ``noise_level`` (the PSI's
chi-squared noise floor, :func:`~.stats.psi_noise_floor`; the two-proportion
test). One patient's hours are strongly correlated, so the tests count Kish's
effective number of patients (:func:`~.stats.effective_size`), not hours.

The reference is the model package's profile when it has one
(``reference="profile"``), else, or with ``reference="baseline"``, the site's
own first ``baseline_hours``. The baseline also sets the site's own
measurement rates (for the feed-down check) and alert-flag rate.
"""

from __future__ import annotations

import logging
import math
import sqlite3
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.core.errors import ConfigError
from vigil.features.grid import GRID_COLUMNS, HourlyGrid
from vigil.fhir_adapter.records import ObservationBatch
from vigil.runtime.monitoring.alarms import (
    Alarm,
    AlarmBook,
    AlarmKind,
    Finding,
    Severity,
    load_alarms,
    put_alarms,
    put_stats,
)
from vigil.runtime.monitoring.feed import FeedHealth
from vigil.runtime.monitoring.images import is_imaging_alarm
from vigil.runtime.monitoring.performance import LabelSource, PerformanceMonitor
from vigil.runtime.monitoring.reference import Histogram, Reference
from vigil.runtime.monitoring.stats import (
    effective_size,
    histogram,
    jensen_shannon,
    ks_binned,
    normed_wasserstein,
    proportion_change,
    psi,
    psi_noise_floor,
)

if TYPE_CHECKING:
    from vigil.runtime.models import LiveModel

__all__ = ["Monitor", "Scores"]

log = logging.getLogger(__name__)

_N_VARS = len(GRID_COLUMNS)
Stat = tuple[str, str, str, float]


class Scores(Protocol):
    """One model's scores of the census at one tick (the cycle's ``ScoreBatch``)."""

    patient_keys: Sequence[str]
    iculos: NDArray[np.int64]
    raw_probability: NDArray[np.float64]
    probability: NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class _Hours:
    """Patient-hours completed in one cycle."""

    tick: float
    patients: NDArray[np.int64]  # (n,) patient codes of the monitor
    values: NDArray[np.float32]  # (n, n_vars)
    score_patients: NDArray[np.int64]  # (m,)
    raw: NDArray[np.float64]  # (m,)
    flagged: NDArray[np.bool_]  # (m,)


class Monitor:
    """Drift and performance monitor of one site's runtime.

    Parameters
    ----------
    labels : LabelSource or None, optional
        Outcomes, when they become known; None disables the performance checks.
    reference : {"profile", "baseline"}, optional
        Compare with the package's profile (falls back to the baseline when
        the package has none) or always with the site's baseline.
    window_hours : float, optional
        Sliding window of completed patient-hours compared with the reference.
    baseline_hours : float, optional
        The site's first hours, which set its own rates.
    min_patients : int, optional
        Fewest effective patients (with a value) before a variable is judged.
    psi_warn, psi_act : float, optional
        PSI of a warning and of a critical alarm (Siddiqi 2006: 0.1 and 0.25).
    noise_level : float, optional
        Chance that sampling noise alone exceeds the PSI floor or the rate test.
    rate_abs : float, optional
        Smallest absolute change of a measured rate or of the alert-flag rate.
    performance_window_hours : float, optional
        Window of labelled hours.
    feed : FeedHealth, optional
        The feed checks with their parameters.
    clear_after : int, optional
        Quiet cycles that resolve an alarm.
    max_bins : int, optional
        Reference bins are merged to at most this many (equal reference mass) for the PSI.
    """

    def __init__(
        self,
        *,
        labels: LabelSource | None = None,
        reference: str = "profile",
        window_hours: float = 24.0,
        baseline_hours: float = 24.0,
        min_patients: int = 20,
        psi_warn: float = 0.1,
        psi_act: float = 0.25,
        noise_level: float = 1e-3,
        rate_abs: float = 0.02,
        performance_window_hours: float = 72.0,
        feed: FeedHealth | None = None,
        clear_after: int = 4,
        max_bins: int = 10,
    ) -> None:
        if reference not in ("profile", "baseline"):
            raise ConfigError(
                f"The 'reference' parameter of Monitor must be 'profile' or 'baseline'. "
                f"Got {reference!r} instead.", key="monitor.reference",
            )
        self.labels = labels
        self.reference_mode = reference
        self.window_hours, self.baseline_hours = window_hours, baseline_hours
        self.min_patients = min_patients
        self.psi_warn, self.psi_act, self.noise_level = psi_warn, psi_act, noise_level
        self.rate_abs, self.max_bins = rate_abs, max_bins
        self.performance_window_hours = performance_window_hours
        self.feed = feed or FeedHealth()
        self.book = AlarmBook(clear_after=clear_after)
        self.model_key: str | None = None
        self.reference: Reference | None = None
        self.baseline: Reference | None = None
        self.baseline_flag_rate: float | None = None
        self._baseline_flag_n = 0.0
        self.performance: PerformanceMonitor | None = None
        self._window: deque[_Hours] = deque()
        self._baseline_hours: list[_Hours] = []
        self._started: float | None = None
        self._counted: dict[str, int] = {}
        self._labelled_until: float | None = None
        self._restarted = False
        self.errors = 0
        self._last_hourly = -math.inf
        self._coarse: dict[str, tuple[Histogram, Histogram]] = {}
        self._ids: dict[str, int] = {}

    # -- the hook -------------------------------------------------------------------------------

    def observe_cycle(
        self,
        tx: sqlite3.Connection,
        *,
        tick: datetime | float,
        model: LiveModel,
        grid: HourlyGrid,
        scores: Scores,
        census: int,
        observations: ObservationBatch | None = None,
        quarantine: Iterable[Any] = (),
        units: Mapping[str, Mapping[str, int]] | None = None,
        findings: Sequence[Finding] = (),
    ) -> list[Alarm]:
        """Monitor one committed-to-be cycle; returns the alarms it raised.

        Parameters
        ----------
        tx : sqlite3.Connection
            The cycle's transaction (alarms and statistics commit with it).
        tick : datetime or float
            The cycle's tick (UTC seconds when a float).
        model : LiveModel
            The active model.
        grid : HourlyGrid
            The scored patients' hourly grid.
        scores : ScoreBatch
            The active model's scores (``patient_keys``, ``iculos``, ``raw_probability``,
            ``probability``).
        census : int
            Patients in the census.
        observations : ObservationBatch, optional
            The values the cycle fetched.
        quarantine : iterable of Quarantine or (type, id, reason)
            What the cycle rejected.
        units : mapping of str to (mapping of str to int), optional
            Per variable, how many fetched values came in each source unit (when
            the FHIR adapter reports it).
        findings : sequence of Finding, optional
            The cycle's own verdict on its inputs (:mod:`vigil.runtime.inputs`):
            ``cycle_inputs`` and ``feed_coverage`` alarms open with them and resolve
            when absent.

        Returns
        -------
        list of Alarm
            Alarms first raised in this cycle (all open alarms: :meth:`open_alarms`).
        """
        now = tick.timestamp() if isinstance(tick, datetime) else float(tick)
        # The monitor must never cost a cycle its scores: whatever fails here is logged and
        # undone (a savepoint inside the cycle's transaction), and the cycle goes on.
        tx.execute("SAVEPOINT vigil_monitor")
        try:
            raised = self._observe(tx, now, model, grid, scores, census, observations,
                                   quarantine, units, findings)
        except Exception:
            tx.execute("ROLLBACK TO vigil_monitor")
            tx.execute("RELEASE vigil_monitor")
            self.errors += 1
            log.exception("the monitor failed on this cycle; its statistics are skipped")
            return []
        tx.execute("RELEASE vigil_monitor")
        return raised

    def open_alarms(self) -> list[Alarm]:
        """Return the alarms open now (for ``/metrics``)."""
        return self.book.open()

    # -- one cycle ------------------------------------------------------------------------------

    def _observe(
        self, tx: sqlite3.Connection, now: float, model: LiveModel, grid: HourlyGrid,
        scores: Scores, census: int, observations: ObservationBatch | None,
        quarantine: Iterable[Any], units: Mapping[str, Mapping[str, int]] | None,
        inputs: Sequence[Finding] = (),
    ) -> list[Alarm]:
        if self._started is None:
            self._start(tx, now)
        self._use_model(model)
        hours = self._completed_hours(now, grid, scores, float(model.threshold))
        self._window.append(hours)
        while self._window and self._window[0].tick <= now - self.window_hours * 3600.0:
            self._window.popleft()
        self._learn_baseline(hours, now)

        stats: list[Stat] = []
        findings: list[Finding] = list(inputs)
        checked: set[str] = {AlarmKind.CYCLE_INPUTS, AlarmKind.FEED_COVERAGE}
        # A patient's hour completes once an hour, so the window, and the labelled hours,
        # change by a quarter of the census per 15-minute cycle: judge them once an hour.
        # Feeds and quarantine are judged every cycle (a broken interface is urgent).
        hourly = now - self._last_hourly >= 3600.0 - 1e-6
        if hourly:
            self._last_hourly = now
        ref = self.reference if self.reference is not None else self.baseline
        if hourly and ref is not None:
            f, s = self._drift(ref)
            findings += f
            stats += s
            checked |= {AlarmKind.INPUT_DRIFT, AlarmKind.MISSINGNESS, AlarmKind.SCORE_DRIFT}
        if hourly and self.baseline_flag_rate is not None:
            f, s = self._alert_rate()
            findings += f
            stats += s
            checked.add(AlarmKind.ALERT_RATE)
        f, s = self._feed(now, census, observations, quarantine, units)
        findings += f
        stats += s
        checked |= {AlarmKind.QUARANTINE, AlarmKind.UNIT_CHANGE}
        if self.baseline is not None:
            checked.add(AlarmKind.FEED_DOWN)
        if hourly and self.labels is not None and self.performance is not None:
            f, s = self._performance(tx, now)
            findings += f
            stats += s
            checked |= {AlarmKind.DISCRIMINATION, AlarmKind.CALIBRATION}

        changed, raised = self.book.update(findings, tick=now, model=self.model_key or "",
                                           checked=checked)
        self.book.stored(put_alarms(tx, changed))
        put_stats(tx, now, stats)
        for a in raised:
            log.warning("monitor alarm: %s %s %s: %s", a.severity, a.kind, a.variable or "-",
                        a.message)
        return raised

    def _start(self, tx: sqlite3.Connection, now: float) -> None:
        self._started = now
        self.feed.start(now)
        # the imaging monitor's alarms share the table: not this monitor's to extend or resolve
        mine = [a for a in load_alarms(tx, open_only=True) if not is_imaging_alarm(a)]
        self.book = AlarmBook(mine, clear_after=self.book.clear_after)
        # stats already stored: this process restarts a running site, so the patients' earlier
        # hours were counted before; only hours completing from now on are new
        self._restarted = tx.execute("SELECT 1 FROM monitor_stats LIMIT 1").fetchone() is not None
        if self._restarted:
            self._labelled_until = now - (self.labels.delay_hours * 3600.0 if self.labels else 0.0)

    def _use_model(self, model: LiveModel) -> None:
        if model.key == self.model_key:
            return
        self.model_key = model.key
        manifest = model.scorer.package.manifest
        self.reference = None
        if self.reference_mode == "profile":
            self.reference = Reference.from_profile(
                manifest.reference_profile, where=f"the manifest of {model.key}"
            )
            if self.reference is None:
                log.info("model %s has no reference profile; monitoring against the site baseline",
                         model.key)
        auroc = manifest.validation.get("auroc")
        self.performance = PerformanceMonitor(
            reference_auroc=float(auroc) if isinstance(auroc, int | float) else None,
            window_hours=self.performance_window_hours,
        )

    def _completed_hours(
        self, now: float, grid: HourlyGrid, scores: Scores, threshold: float
    ) -> _Hours:
        """Grid rows and scores of the patient-hours completed since the last cycle.

        The cycle's grid ends at each patient's last complete hour, the hour
        it scores; each hour is taken once, with its first score.
        """
        keys = np.asarray(grid.patient_ids, dtype=object)
        sizes = np.diff(grid.starts)
        has = sizes > 0
        last = np.zeros(keys.size, dtype=np.int64)
        last[has] = grid.hours[grid.starts[1:][has] - 1]
        first = np.zeros(keys.size, dtype=np.int64)
        first[has] = grid.hours[grid.starts[:-1][has]]
        fresh = not self._counted and self._restarted
        done = np.array(
            [self._counted.get(k, lh if fresh else fh - 1)
             for k, lh, fh in zip(keys.tolist(), last.tolist(), first.tolist(), strict=True)],
            dtype=np.int64,
        )
        take = np.flatnonzero(grid.hours > np.repeat(done, sizes))
        owners = np.repeat(keys, sizes)[take]
        previous = self._counted
        self._counted = {
            k: max(int(d), int(lh)) for k, d, lh, h in zip(keys.tolist(), done, last, has,
                                                          strict=True) if h
        }
        hour = np.asarray(scores.iculos, dtype=np.int64)
        new = np.array([h > previous.get(k, -1) if not fresh else False
                        for k, h in zip(scores.patient_keys, hour.tolist(), strict=True)],
                       dtype=bool)
        prob = np.asarray(scores.probability, dtype=np.float64)
        return _Hours(
            tick=now,
            patients=self._codes(owners),
            values=grid.values[take, :_N_VARS],
            score_patients=self._codes(np.asarray(scores.patient_keys, dtype=object)[new]),
            raw=np.asarray(scores.raw_probability, dtype=np.float64)[new],
            flagged=prob[new] >= threshold,
        )

    def _codes(self, keys: Iterable[str]) -> NDArray[np.int64]:
        """Small integer codes of patient keys (stable within this process)."""
        ids = self._ids
        return np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64)

    def _learn_baseline(self, hours: _Hours, now: float) -> None:
        if self.baseline is not None:
            return
        self._baseline_hours.append(hours)
        assert self._started is not None
        if now - self._started < self.baseline_hours * 3600.0:
            return
        hours_ = self._baseline_hours
        values = np.concatenate([h.values for h in hours_])
        patients = np.concatenate([h.patients for h in hours_])
        if values.shape[0] == 0 or effective_size(patients) < self.min_patients:
            return  # keep learning until the baseline has enough patients
        raw = np.concatenate([h.raw for h in hours_])
        flagged = np.concatenate([h.flagged for h in hours_])
        scored = np.concatenate([h.score_patients for h in hours_])
        self.baseline = Reference.from_baseline(values, raw if raw.size else None,
                                                patients=patients, score_patients=scored)
        self.baseline_flag_rate = float(flagged.mean()) if flagged.size else None
        self._baseline_flag_n = effective_size(scored)
        self._baseline_hours = []
        log.info("monitor baseline set from %d patient-hours of %d patients",
                 values.shape[0], np.unique(patients).size)

    # -- checks ---------------------------------------------------------------------------------

    def _window_arrays(self) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        if not self._window:
            return np.zeros(0, dtype=np.int64), np.zeros((0, _N_VARS), np.float32)
        return (np.concatenate([h.patients for h in self._window]),
                np.concatenate([h.values for h in self._window]))

    def _drift(self, ref: Reference) -> tuple[list[Finding], list[Stat]]:
        codes, values = self._window_arrays()
        findings: list[Finding] = []
        stats: list[Stat] = []
        if effective_size(codes) < self.min_patients:
            return findings, stats
        for j, name in enumerate(GRID_COLUMNS):
            hist = ref.variables.get(name)
            if hist is None:
                continue
            col = values[:, j]
            seen = np.isfinite(col)
            f, s = self._measured_rate(name, hist, seen, codes)
            findings += f
            stats += s
            n_eff = effective_size(codes[seen])
            if n_eff < self.min_patients or hist.counts.sum() == 0:
                continue
            f, s = self._distribution(AlarmKind.INPUT_DRIFT, name, hist, col[seen], n_eff)
            findings += f
            stats += s
        if ref.score is not None and self._window:
            raw = np.concatenate([h.raw for h in self._window])
            owners = np.concatenate([h.score_patients for h in self._window])
            n_eff = effective_size(owners)
            if n_eff >= self.min_patients:
                f, s = self._distribution(AlarmKind.SCORE_DRIFT, "score", ref.score, raw, n_eff)
                findings += f
                stats += s
        return findings, stats

    def _distribution(
        self, kind: AlarmKind, name: str, hist: Histogram, current: NDArray[np.floating],
        n_eff: float,
    ) -> tuple[list[Finding], list[Stat]]:
        cached = self._coarse.get(name)
        if cached is None or cached[0] is not hist:
            cached = self._coarse[name] = (hist, hist.merged(self.max_bins))
        coarse = cached[1]
        cur = histogram(current, coarse.edges)
        # add-one-half (Jeffreys) smoothing: a bin a small window leaves empty is not infinite
        value = psi(coarse.counts + 0.5, cur + 0.5)
        stats: list[Stat] = [
            (str(kind), name, "psi", value),
            (str(kind), name, "ks", ks_binned(coarse.counts, cur, limit=True).statistic),
            (str(kind), name, "wasserstein_normed",
             normed_wasserstein(coarse.counts, cur, coarse.edges)),
            (str(kind), name, "jensen_shannon", jensen_shannon(coarse.counts, cur)),
        ]
        if value < self.psi_warn:
            return [], stats
        floor = psi_noise_floor(coarse.n_bins, n_reference=coarse.values_size,
                                n_current=n_eff, quantile=1.0 - self.noise_level)
        stats.append((str(kind), name, "psi_floor", floor))
        if value <= floor:
            return [], stats
        severity = Severity.CRITICAL if value >= self.psi_act else Severity.WARNING
        what = "score distribution" if kind is AlarmKind.SCORE_DRIFT else f"{name} distribution"
        return [Finding(
            kind, name, severity, value, max(self.psi_warn, floor),
            f"{what} drifted from the {self._ref_name()}: PSI {value:.3f} over the last "
            f"{self.window_hours:g} h, above {self.psi_warn:g} and above what chance gives "
            f"{n_eff:.0f} effective patients ({floor:.3f}, p = {self.noise_level:g})",
        )], stats

    def _measured_rate(
        self, name: str, hist: Histogram, seen: NDArray[np.bool_], codes: NDArray[np.intp],
    ) -> tuple[list[Finding], list[Stat]]:
        r0, r1 = hist.measured_rate, float(seen.mean()) if seen.size else math.nan
        kind = str(AlarmKind.MISSINGNESS)
        stats: list[Stat] = [(kind, name, "measured_rate", r1),
                             (kind, name, "measured_rate_ref", r0)]
        if not (np.isfinite(r0) and np.isfinite(r1)) or hist.rows == 0:
            return [], stats
        n_eff = effective_size(codes)
        change = proportion_change(
            reference_events=hist.measured_rate * hist.rows_size, reference_n=hist.rows_size,
            current_events=r1 * n_eff, current_n=n_eff,
        )
        ratio = (r1 + 1e-9) / (r0 + 1e-9)
        if abs(r1 - r0) < self.rate_abs or 0.5 < ratio < 2.0 or change.pvalue >= self.noise_level:
            return [], stats
        severity = Severity.CRITICAL if r1 < r0 / 4 or r1 > 4 * r0 else Severity.WARNING
        return [Finding(
            AlarmKind.MISSINGNESS, name, severity, r1, r0,
            f"{name} is now measured in {r1:.1%} of patient-hours against {r0:.1%} in the "
            f"{self._ref_name()} ({'fewer' if r1 < r0 else 'more'} measurements; p = "
            f"{change.pvalue:.1e} with {n_eff:.0f} effective patients)",
        )], stats

    def _alert_rate(self) -> tuple[list[Finding], list[Stat]]:
        flagged = np.concatenate([h.flagged for h in self._window])
        owners = np.concatenate([h.score_patients for h in self._window])
        scored = effective_size(owners)
        kind = str(AlarmKind.ALERT_RATE)
        r0 = float(self.baseline_flag_rate or 0.0)
        if flagged.size == 0:
            return [], []
        r1 = float(flagged.mean())
        stats: list[Stat] = [(kind, "score", "flag_rate", r1), (kind, "score", "flag_rate_ref", r0)]
        if scored < self.min_patients:
            return [], stats
        change = proportion_change(
            reference_events=r0 * self._baseline_flag_n, reference_n=self._baseline_flag_n,
            current_events=r1 * scored, current_n=scored,
        )
        ratio = (r1 + 1e-9) / (r0 + 1e-9)
        if abs(r1 - r0) < self.rate_abs or 0.5 < ratio < 2.0 or change.pvalue >= self.noise_level:
            return [], stats
        return [Finding(
            AlarmKind.ALERT_RATE, "score", Severity.WARNING, r1, r0,
            f"{r1:.1%} of patient-hours are at or above the alert threshold against {r0:.1%} in "
            f"the site's baseline (p = {change.pvalue:.1e} with {scored:.0f} effective patients)",
        )], stats

    def _feed(
        self, now: float, census: int, obs: ObservationBatch | None, quarantine: Iterable[Any],
        units: Mapping[str, Mapping[str, int]] | None,
    ) -> tuple[list[Finding], list[Stat]]:
        if obs is not None and len(obs):
            self.feed.observe_values(obs.variable_names, np.asarray(obs.effective) / 1e6,
                                     now=now)
        findings, stats = self.feed.quarantine(_quarantine_records(quarantine))
        f, s = self.feed.units(units, now=now)
        findings += f
        stats += s
        rates = {} if self.baseline is None else {
            n: h.measured_rate for n, h in self.baseline.variables.items()
        }
        f, s = self.feed.feed_down(now=now, census=census, rates=rates)
        findings += f
        stats += s
        return findings, stats

    def _performance(self, tx: sqlite3.Connection, now: float) -> tuple[list[Finding], list[Stat]]:
        assert self.labels is not None and self.performance is not None
        until = now - self.labels.delay_hours * 3600.0
        since = self._labelled_until if self._labelled_until is not None else -math.inf
        self._labelled_until = until
        frame = _completed_scores(tx, since=since, until=until, model=self.model_key or "")
        if len(frame):
            keys = frame["patient_key"].to_numpy(object)
            y = self.labels.labels(keys, frame["iculos"].to_numpy())
            self.performance.add(now=now, patient_keys=keys,
                                 probability=frame["probability"].to_numpy(), labels=y)
        return self.performance.check(now=now)

    def _ref_name(self) -> str:
        return "model's reference profile" if self.reference is not None else "site baseline"


def _quarantine_records(items: Iterable[Any]) -> list[tuple[str, str, str]]:
    out = []
    for q in items:
        if isinstance(q, tuple):
            out.append((str(q[0]), str(q[1]), str(q[2])))
        else:
            out.append((str(q.resource_type), str(q.resource_id), str(q.reason)))
    return out


def _completed_scores(
    tx: sqlite3.Connection, *, since: float, until: float, model: str
) -> pd.DataFrame:
    """Read a model's scores of the patient-hours first scored in ``(since - 1 h, until - 1 h]``.

    A patient-hour is scored by up to four cycles; it is taken once, when its
    first score is an hour old (so the hour is over), with its last score.
    """
    lo, hi = since - 3600.0, until - 3600.0
    lo = lo if math.isfinite(lo) else -1e18
    # a patient-hour's scores span less than an hour: scan only (lo - 1 h, hi + 1 h]
    rows = tx.execute(
        "SELECT s.patient_key, s.iculos, s.probability FROM scores s JOIN ("
        " SELECT patient_key, iculos, model, MIN(tick) AS t0, MAX(tick) AS t1 FROM scores"
        " WHERE model = ? AND tick > ? AND tick <= ? GROUP BY patient_key, iculos, model"
        " HAVING t0 > ? AND t0 <= ?) g ON s.patient_key = g.patient_key AND s.iculos = g.iculos"
        " AND s.model = g.model AND s.tick = g.t1 ORDER BY g.t0, s.patient_key",
        (model, lo - 3600.0, hi + 3600.0, lo, hi),
    ).fetchall()
    return pd.DataFrame(rows, columns=["patient_key", "iculos", "probability"])

