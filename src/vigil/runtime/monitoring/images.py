"""The imaging drift monitor: what shifts a site's images, checked over a sliding window of studies.

Pure computations on the instance-record frame (:mod:`.image_records`) and the package's
image profile (:class:`vigil.imaging.profile.ImageProfile`); no I/O. At each check time
``now`` the window is the records of the last ``window_hours``, the *site baseline* the
records of the site's first ``baseline_hours`` (the site's own acquisition mix; longer for a
quiet site, until it holds ``min_studies`` studies), and:

- **header drift** (kind ``header_drift``, variable = the DICOM keyword): per watched header
  (:data:`~vigil.imaging.profile.WATCHED_HEADERS`), a value making up at least
  ``novel_share`` of the window (and ``min_count`` studies) that the training sites never
  had (the profile), or that the site's baseline never had, or a value whose share moved by
  ``share_abs`` or more from the baseline; a baseline comparison also needs the pooled
  two-proportion test (:func:`~.stats.proportion_change`) below ``noise_level``;
- **input drift** (``input_drift``, ``image_intensity``): the summed model-input histogram
  against the baseline's (or, with ``reference="profile"``, the profile's): PSI at least
  ``psi_warn`` and above the PSI's chi-squared noise floor (:func:`~.stats.psi_noise_floor`)
  for the effective numbers of studies, each study's image one multinomial draw (pixels of
  one image are correlated; this floor is conservative);
- **score drift** (``score_drift``, ``image_score``): the raw probabilities, PSI at least
  ``psi_warn`` on at most ``max_bins`` bins of equal reference mass (material) and the
  two-sample Kolmogorov-Smirnov test (:func:`~.stats.ks_binned`, Kolmogorov's limiting law)
  below ``drift_level`` on the finer reference bins (beyond chance: at a window of ~50
  studies the PSI's chi-squared floor is too optimistic for a score piled up near 0 and 1);
- **quarantine** (``quarantine``, ``image``): the share of instances the pixel chain
  refused, at least ``quarantine_warn`` and (with a baseline) significantly above it.

Why the baseline, not the profile, for intensities and scores: the profile pools four
scanner sites, and one stable site's images differ from the pool (measured PSI of a single
simulated site's test images against the pooled validation histogram: 0.02 to 0.32; against
its own validation images at most 0.012; docs/monitoring.md). Headers are compared with both:
the profile says "the model never saw this acquisition", the baseline "this site changed".

Instances of one study share ``scored_at``; the tests count Kish's effective number of
studies (:func:`~.stats.effective_size`), never instances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.core.errors import ConfigError
from vigil.imaging.histogram import INPUT_EDGES
from vigil.imaging.profile import WATCHED_HEADERS, ImageProfile
from vigil.runtime.monitoring.alarms import Alarm, AlarmKind, Finding, Severity
from vigil.runtime.monitoring.image_records import HIST_COLUMNS
from vigil.runtime.monitoring.reference import Histogram
from vigil.runtime.monitoring.stats import (
    effective_size,
    histogram,
    ks_binned,
    proportion_change,
    psi,
    psi_noise_floor,
    quantile_edges,
)

__all__ = ["IMAGE_INTENSITY", "IMAGE_SCORE", "IMAGING_VARIABLES", "ImageDriftMonitor", "Stat",
           "categories", "is_imaging_alarm"]

IMAGE_INTENSITY = "image_intensity"
"""Variable of the input-histogram alarm."""
IMAGE_SCORE = "image_score"
"""Variable of the imaging score-drift and performance alarms."""
_QUARANTINE = "image"
Stat = tuple[str, str, str, float]

IMAGING_VARIABLES: frozenset[str] = frozenset(
    {*WATCHED_HEADERS.values(), IMAGE_INTENSITY, IMAGE_SCORE, _QUARANTINE})
"""The variables of imaging alarms: the DICOM keywords, ``image_intensity``, ``image_score``
and ``image``. The sepsis and imaging monitors share the store's ``monitor_alarms`` table;
an alarm belongs to the imaging monitor by its variable (no sepsis variable has these names)."""


def is_imaging_alarm(alarm: Alarm) -> bool:
    """Whether a stored alarm is the imaging monitor's (:data:`IMAGING_VARIABLES`)."""
    return alarm.variable in IMAGING_VARIABLES


def categories(frame: pd.DataFrame, field: str) -> NDArray[np.object_]:
    """:func:`~vigil.imaging.profile.header_value` of a frame column, vectorized, shape (n,)."""
    col = frame[field]
    if field == "pixel_spacing_mm":
        x = col.to_numpy(dtype=np.float64)
        out = np.where(np.isfinite(x), np.char.mod("%.2f", np.round(np.nan_to_num(x), 2)),
                       "absent")
    elif field == "bits_stored":
        b = col.to_numpy(dtype=np.int64)
        out = np.where(b > 0, b.astype(str), "absent")
    else:
        text = col.fillna("").astype(str).str.strip().to_numpy(dtype=object)
        out = np.where(text == "", "absent", text)
    return np.asarray(out, dtype=object)


@dataclass(frozen=True, eq=False)
class _Part:
    """Records of one time range: headers as categories, histograms, scores, study codes."""

    n: int
    values: dict[str, NDArray[np.object_]]
    times: NDArray[np.datetime64]
    studies: NDArray[np.int64]
    hist: NDArray[np.float64]  # (N_BINS,) of scored instances
    raw: NDArray[np.float64]
    quarantined: NDArray[np.bool_]
    reasons: pd.Series

    @property
    def n_eff(self) -> float:
        """Kish's effective number of studies."""
        return effective_size(self.studies)

    @classmethod
    def of(cls, frame: pd.DataFrame) -> _Part:
        quarantined = frame["quarantine_reason"].notna().to_numpy()
        scored = ~quarantined
        raw = frame["raw_probability"].to_numpy(dtype=np.float64)[scored]
        times = frame["scored_at"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
        return cls(
            n=len(frame), values={f: categories(frame, f) for f in WATCHED_HEADERS},
            times=times, studies=np.unique(times, return_inverse=True)[1].reshape(-1),
            hist=frame.loc[scored, list(HIST_COLUMNS)].to_numpy(np.float64).sum(axis=0),
            raw=raw[np.isfinite(raw)], quarantined=quarantined,
            reasons=frame.loc[quarantined, "quarantine_reason"],
        )


class ImageDriftMonitor:
    """Checks a site's imaging records against its baseline and the package's profile.

    Parameters
    ----------
    profile : ImageProfile or None
        The package's image profile; None (an older package): headers are checked against
        the site baseline only, and :attr:`notes` says so once.
    reference : {"baseline", "profile"}, optional
        What intensities and scores are compared with (see the module docstring).
    window_hours, baseline_hours : float, optional
    min_studies : int, optional
        Fewest effective studies in the window (and baseline) before a check runs.
    novel_share, min_count : float, int, optional
        Smallest share and number of studies of a header value that counts.
    share_abs : float, optional
        Smallest change of a known header value's share that counts.
    critical_share : float, optional
        A never-trained-on header value above this share is critical.
    noise_level : float, optional
        Significance of the header and quarantine proportion tests.
    drift_level : float, optional
        Significance of the intensity PSI floor and the score KS test: lower, as hourly checks
        of overlapping windows test the same studies again and again (docs/monitoring.md).
    psi_warn, psi_act : float, optional
        PSI levels of a warning and a critical drift (Siddiqi 2006: 0.1, 0.25).
    max_bins : int, optional
        Score bins of equal reference mass.
    quarantine_warn : float, optional
        Share of refused instances that counts.
    """

    def __init__(
        self, profile: ImageProfile | None, *, reference: str = "baseline",
        window_hours: float = 24.0, baseline_hours: float = 48.0, min_studies: int = 20,
        novel_share: float = 0.05, min_count: int = 3, share_abs: float = 0.2,
        critical_share: float = 0.25, noise_level: float = 0.01, drift_level: float = 0.001,
        psi_warn: float = 0.1,
        psi_act: float = 0.25, max_bins: int = 5, quarantine_warn: float = 0.05,
    ) -> None:
        if reference not in ("baseline", "profile"):
            raise ConfigError(f"expected reference 'baseline' or 'profile', got {reference!r}",
                              key="reference")
        if not (window_hours > 0 and baseline_hours > 0):
            raise ConfigError(f"expected window_hours and baseline_hours > 0, got {window_hours!r}"
                              f" and {baseline_hours!r}", key="window_hours")
        self.profile, self.reference = profile, reference
        self.window_hours, self.baseline_hours = float(window_hours), float(baseline_hours)
        self.min_studies, self.min_count = min_studies, min_count
        self.novel_share, self.share_abs, self.critical_share = novel_share, share_abs, \
            critical_share
        self.noise_level, self.drift_level = noise_level, drift_level
        self.psi_warn, self.psi_act = psi_warn, psi_act
        self.max_bins, self.quarantine_warn = max_bins, quarantine_warn
        self.notes: list[str] = []
        if profile is None:
            self.notes.append(
                "the imaging package has no image profile (exported before it existed): headers "
                f"are compared with the site's first {baseline_hours:g} h only, and intensities "
                "and scores with that baseline")
        self._baseline: _Part | None = None
        self._baseline_end: pd.Timestamp | None = None

    def check(self, frame: pd.DataFrame, *, now: pd.Timestamp) -> tuple[list[Finding], list[Stat]]:
        """Judge the records up to ``now`` (a frame of :func:`.image_records.records_frame`).

        Returns
        -------
        findings : list of Finding
        stats : list of (kind, variable, statistic, value)
        """
        now = pd.Timestamp(now)
        if frame.empty:
            return [], []
        start = frame["scored_at"].iloc[0]
        baseline = self._learned(frame, start, now)
        window = frame[(frame["scored_at"] > now - pd.Timedelta(hours=self.window_hours))
                       & (frame["scored_at"] <= now)]
        if window.empty:
            return [], []
        cur = _Part.of(window)
        findings: list[Finding] = []
        stats: list[Stat] = [(str(AlarmKind.QUARANTINE), _QUARANTINE, "instances", float(cur.n))]
        if cur.n_eff < self.min_studies:
            return findings, stats
        history = frame[frame["scored_at"] <= now]
        for field, keyword in WATCHED_HEADERS.items():
            findings += self._header(field, keyword, cur, baseline, history)
        f, s = self._quarantine(cur, baseline)
        findings += f
        stats += s
        ref_hist = self._reference_histograms(baseline)
        if ref_hist is not None and cur.hist.sum() > 0:
            f, s = self._psi(AlarmKind.INPUT_DRIFT, IMAGE_INTENSITY, ref_hist[0], cur.hist,
                             ref_hist[1], cur.n_eff)
            findings += f
            stats += s
        ref_score = self._reference_scores(baseline)
        if ref_score is not None and cur.raw.size:
            cut = histogram(cur.raw, ref_score.edges).astype(np.float64)
            coarse = ref_score.merged(self.max_bins)
            ks = ks_binned(ref_score.counts, cut, n_reference=ref_score.values_size,
                           n_current=cur.n_eff, limit=True)
            stats.append((str(AlarmKind.SCORE_DRIFT), IMAGE_SCORE, "ks_pvalue", ks.pvalue))
            f, s = self._psi(AlarmKind.SCORE_DRIFT, IMAGE_SCORE, coarse.counts + 0.5,
                             histogram(cur.raw, coarse.edges) + 0.5, ref_score.values_size,
                             cur.n_eff, pvalue=ks.pvalue)
            findings += f
            stats += s
        return findings, stats

    def _learned(self, frame: pd.DataFrame, start: pd.Timestamp, now: pd.Timestamp
                 ) -> _Part | None:
        end = start + pd.Timedelta(hours=self.baseline_hours)
        times = frame["scored_at"].drop_duplicates()
        if len(times) > self.min_studies:  # a quiet site: until it has min_studies studies
            end = max(end, times.iloc[self.min_studies])
        if self._baseline is None and now >= end:
            part = _Part.of(frame[frame["scored_at"] < end])
            if part.n_eff >= self.min_studies:
                self._baseline, self._baseline_end = part, end
        return self._baseline

    def _header(self, field: str, keyword: str, cur: _Part, base: _Part | None,
                history: pd.DataFrame) -> list[Finding]:
        cats, counts = np.unique(cur.values[field], return_counts=True)
        share = dict(zip(cats.tolist(), (counts / cur.n).tolist(), strict=True))
        ref = None if self.profile is None else self.profile.headers.get(field)
        b_share: dict[str, float] = {}
        if base is not None:
            bc, bn = np.unique(base.values[field], return_counts=True)
            b_share = dict(zip(bc.tolist(), (bn / base.n).tolist(), strict=True))
        parts: list[str] = []
        worst, critical = 0.0, False
        for cat in sorted(set(share) | set(b_share), key=lambda c: (-share.get(c, 0.0), c)):
            w, count = share.get(cat, 0.0), share.get(cat, 0.0) * cur.n
            frequent = w >= self.novel_share and count >= self.min_count
            if frequent and ref is not None and cat not in ref:
                since = history.loc[categories(history, field) == cat, "scored_at"].min()
                parts.append(f"{cat} ({w:.0%} of the last {self.window_hours:g} h's "
                             f"{cur.n_eff:.0f} studies, since {since:%Y-%m-%d %H:%M} UTC) never "
                             "seen in the training sites' profile")
                worst, critical = max(worst, w), critical or w >= self.critical_share
                continue
            if base is None:
                continue
            b = b_share.get(cat, 0.0)
            moved = (b == 0.0 and frequent) or abs(w - b) >= self.share_abs
            if moved and proportion_change(
                    reference_events=b * base.n_eff, reference_n=base.n_eff,
                    current_events=w * cur.n_eff, current_n=cur.n_eff).pvalue < self.noise_level:
                parts.append(f"{cat} share {b:.0%} → {w:.0%}")
                worst = max(worst, abs(w - b))
        if not parts:
            return []
        against = (f" (against the site's first {self.baseline_hours:g} h)"
                   if base is not None and any("share" in p for p in parts) else "")
        return [Finding(AlarmKind.HEADER_DRIFT, keyword,
                        Severity.CRITICAL if critical else Severity.WARNING, worst,
                        self.novel_share, f"{keyword} changed: {'; '.join(parts)}{against}")]

    def _quarantine(self, cur: _Part, base: _Part | None) -> tuple[list[Finding], list[Stat]]:
        r1 = float(cur.quarantined.mean())
        kind = str(AlarmKind.QUARANTINE)
        stats: list[Stat] = [(kind, _QUARANTINE, "rate", r1)]
        r0 = float(base.quarantined.mean()) if base is not None else 0.0
        if r1 < self.quarantine_warn or r1 < 2 * r0:
            return [], stats
        if base is not None and proportion_change(
                reference_events=r0 * base.n, reference_n=base.n, current_events=r1 * cur.n,
                current_n=cur.n).pvalue >= self.noise_level:
            return [], stats
        top = cur.reasons.value_counts()
        where = f"the site's first {self.baseline_hours:g} h: {r0:.1%}" if base is not None \
            else "no site baseline yet"
        return [Finding(
            AlarmKind.QUARANTINE, _QUARANTINE,
            Severity.CRITICAL if r1 >= 4 * self.quarantine_warn else Severity.WARNING, r1,
            max(self.quarantine_warn, 2 * r0),
            f"{r1:.1%} of the last {self.window_hours:g} h's {cur.n} instances were refused by "
            f"the pixel chain ({where}); most common reason: {top.index[0]} ({int(top.iloc[0])})",
        )], stats

    def _reference_histograms(self, base: _Part | None) -> tuple[NDArray[np.float64], float] | None:
        if self.reference == "profile" and self.profile is not None:
            return self.profile.input_counts, float(self.profile.images)
        if base is None or base.hist.sum() == 0:
            return None
        return base.hist, base.n_eff

    def _reference_scores(self, base: _Part | None) -> Histogram | None:
        if self.reference == "profile" and self.profile is not None:
            p = self.profile
            return Histogram(p.score_edges, p.score_counts, missing=0,
                             rows=int(p.score_counts.sum()))
        if base is None or base.raw.size == 0:
            return None
        edges = quantile_edges(base.raw, n_bins=4 * self.max_bins)
        return Histogram(edges, histogram(base.raw, edges).astype(np.float64), missing=0,
                         rows=int(base.raw.size), n_values=base.n_eff)

    def _psi(self, kind: AlarmKind, name: str, ref: NDArray[np.float64],
             cur: NDArray[np.float64], n_ref: float, n_cur: float, *,
             pvalue: float | None = None) -> tuple[list[Finding], list[Stat]]:
        value = psi(ref, cur)
        stats: list[Stat] = [(str(kind), name, "psi", value)]
        if value < self.psi_warn:
            return [], stats
        floor = psi_noise_floor(ref.size, n_reference=n_ref, n_current=n_cur,
                                quantile=1.0 - self.drift_level)
        stats.append((str(kind), name, "psi_floor", floor))
        if (value <= floor) if pvalue is None else (pvalue >= self.drift_level):
            return [], stats
        chance = (f"what chance gives ({floor:.3f}, p = {self.drift_level:g})" if pvalue is None
                  else f"chance (Kolmogorov-Smirnov p = {pvalue:.1e} < {self.drift_level:g})")
        source = "training sites' profile" if self.reference == "profile" and self.profile \
            else f"site's first {self.baseline_hours:g} h"
        if kind is AlarmKind.INPUT_DRIFT:
            centers = (INPUT_EDGES[1:] + INPUT_EDGES[:-1]) / 2
            m0, m1 = (float(h @ centers / h.sum()) for h in (ref, cur))
            what = (f"model-input intensities (mean {m0:+.2f} → {m1:+.2f} on [-1, 1]: images "
                    f"{'brighter' if m1 > m0 else 'darker'} after the pixel chain)")
        else:
            what = "imaging score distribution"
        return [Finding(
            kind, name, Severity.CRITICAL if value >= self.psi_act else Severity.WARNING, value,
            max(self.psi_warn, floor),
            f"{what} drifted from the {source}: PSI {value:.3f} over the last "
            f"{self.window_hours:g} h ({n_cur:.0f} studies), above {self.psi_warn:g} and beyond "
            f"{chance}",
        )], stats

