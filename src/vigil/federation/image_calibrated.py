"""Pooled imaging metrics after site calibration: every site's probabilities on one scale.

A pooled AUC ranks the test images of all sites together, so it measures how well the
sites' probability scales line up as well as how well each site's images are ranked: with
site thresholds from 0.33 to 0.82, a negative of one site can outscore a positive of
another. The product's answer is the site calibration each site fits on its own labelled
studies (``vigil calibrate``, :mod:`vigil.calibration`). Here, for every arm, seed and
site, the calibrator ``vigil calibrate`` fits by default
(:data:`~vigil.calibration.methods.DEFAULT_METHOD`: logistic
recalibration on the logit, Cox 1958, Platt 1999) is fitted on that site's validation
probabilities and labels and applied to its test probabilities; the pooled AUC and accuracy
are taken over the sites' calibrated probabilities. Each site's decision threshold is chosen
on its calibrated validation probabilities by the runs' rule (the edge of
:data:`~vigil.federation.evaluation.SCORE_EDGES` maximizing the site's validation accuracy,
first maximum). A calibrator is non-decreasing (strictly increasing when its slope is
positive), so a site's own AUC does not change; what moves is the pooled AUC and, through
the edge grid only, the accuracy.

Intervals are paired bootstrap intervals of the seed-averaged ``metric(A) - factor *
metric(B)`` (Efron & Tibshirani, 1993, ch. 13), as in
:mod:`vigil.federation.image_intervals`, in two variants:

- **fixed** (``refit=False``): the test images are resampled (the draws of
  :func:`~vigil.features.bootstrap.bootstrap_estimates`), the calibrators and thresholds
  fitted once;
- **re-fit** (``refit=True``): each site's validation images are resampled as well (the
  draws of the re-chosen thresholds, :func:`~vigil.federation.image_intervals.paired_draws`)
  and every calibrator and threshold is re-fitted on each resample. A resample's
  multiplicities are the fit's sample weights (the weighted maximum-likelihood fit is the
  fit on the resampled rows); the minimum-sample rule is the one ``vigil calibrate``
  applies to the site's validation images, not re-applied to each resample. A resample on
  which the fit fails leaves its replicate undefined; their number is returned.

With validation AUCs near 0.99 and 20 to 60 negatives per site, many resamples leave a
site's validation images (quasi-)completely separated by the score: no finite
maximum-likelihood map exists (Albert & Anderson, Biometrika 71:1-10, 1984), and the fit
returns Newton's last iterate, a near-step map, as ``vigil calibrate`` would write it. Such
resamples are kept as fitted and counted (``separated``), so the reader can judge how much
of the re-fit interval they make.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.calibration import (
    DEFAULT_METHOD,
    CalibrationWarning,
    Method,
    make_calibrator,
    separated_each,
)
from vigil.core.errors import DataError
from vigil.features.bootstrap import Estimate, percentile_interval, weighted_auroc
from vigil.federation.evaluation import SCORE_EDGES
from vigil.federation.image_intervals import (
    COMPARISONS,
    _correct_at_edges,
    paired_draws,
    resampled_auroc,
)

__all__ = [
    "CALIBRATED_COMPARISONS",
    "calibrate_runs",
    "calibrated_comparisons",
    "calibrated_interval",
    "calibrated_markdown",
]

CALIBRATED_COMPARISONS: tuple[tuple[str, str | None, float], ...] = tuple(
    c for c in COMPARISONS if c[1] in (None, "fedavg", "centralized"))
"""The pooled comparisons (arm A, arm B, factor) of the issue's targets: FedAvg and FedProx
alone, FedBN − FedAvg, FedAvg / FedProx − 0.98 × centralized (not − alone: that target is
per site, where site calibration changes no AUC)."""

METRICS = ("auc", "accuracy")


def _site_predictions(
    run: Mapping[str, Any], held: Mapping[str, Any], arm: str, site: str,
    n_test: int, n_valid: int,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """One arm's kept test and validation probabilities at one site, checked."""
    cells = (run.get(arm, {}).get(site, {}), held.get(arm, {}).get(site, {}))
    if any("probability" not in c for c in cells):
        raise DataError(f"expected kept test and validation predictions of arm {arm!r} at "
                        f"{site}, got none")
    p_t, p_v = (np.asarray(c["probability"], np.float64) for c in cells)
    if p_t.size != n_test or p_v.size != n_valid:
        raise DataError(f"expected {n_test} test and {n_valid} validation predictions at "
                        f"{site}, got {p_t.size} and {p_v.size}")
    return p_t, p_v


def _fit_site(
    p_v: NDArray[np.float64], y_v: NDArray[np.bool_], p_t: NDArray[np.float64],
    weights: NDArray[np.float64], method: Method,
) -> tuple[NDArray[np.float64], float]:
    """Calibrated test probabilities, shape (n_test,), and the calibrated threshold.

    The calibrator is fitted on the validation images counted ``weights`` times each
    (shape (n_valid,)); the threshold is the edge maximizing the weighted validation
    accuracy of the calibrated validation probabilities (first maximum).
    """
    calibrator = make_calibrator(method).fit(p_v, y_v.astype(np.int8), sample_weight=weights)
    q_v = calibrator.transform(p_v)
    edge = int(np.argmax(weights @ _correct_at_edges(y_v, q_v)))
    return calibrator.transform(p_t), float(SCORE_EDGES[edge])


def calibrate_runs(
    labels: Mapping[str, NDArray[np.integer]],
    runs: Sequence[Mapping[str, Any]],
    valid_labels: Mapping[str, NDArray[np.integer]],
    valid_runs: Sequence[Mapping[str, Any]],
    *,
    method: Method = DEFAULT_METHOD,
) -> list[dict[str, dict[str, Any]]]:
    """Every run with each arm's site probabilities calibrated on the site's validation images.

    Parameters
    ----------
    labels : mapping of str to ndarray of shape (n_site,)
        Each site's test labels, in the order of the kept predictions.
    runs : sequence of mapping
        Per training seed, arm → site → ``{"probability"}`` of the test images
        (:func:`~vigil.federation.image_compare.compare_images`, ``keep_predictions=True``).
    valid_labels : mapping of str to ndarray of shape (n_valid_site,)
    valid_runs : sequence of mapping
        Per seed, in the order of ``runs``: arm → site → ``{"probability"}`` of the
        validation images (``validation_scores(..., keep=True)``).
    method : Method, optional

    Returns
    -------
    list of dict
        Per seed, arm → site (and ``"pooled"``) → ``{"auc", "accuracy", "n"}``, sites also
        ``"threshold"`` (on the calibrated scale) and ``"probability"`` (calibrated test
        probabilities): the layout of ``runs``, so
        :func:`~vigil.federation.image_intervals.paired_interval` and
        :func:`~vigil.federation.image_compare.summarize_seeds` take it as it is.

    Raises
    ------
    DataError
        If predictions are missing or miscounted, or a site's validation images are below
        the method's minimum-sample rule.
    """
    if len(valid_runs) != len(runs):
        raise DataError(f"expected validation predictions for each of the {len(runs)} runs, "
                        f"got {len(valid_runs)}")
    out = []
    for run, held in zip(runs, valid_runs, strict=True):
        calibrated: dict[str, dict[str, Any]] = {}
        for arm in run:
            cells: dict[str, Any] = {}
            every_y, every_q, every_hit = [], [], []
            for site in labels:
                y_t, y_v = np.asarray(labels[site]) > 0, np.asarray(valid_labels[site]) > 0
                p_t, p_v = _site_predictions(run, held, arm, site, y_t.size, y_v.size)
                q_t, threshold = _fit_site(p_v, y_v, p_t, np.ones(y_v.size), method)
                hit = (q_t >= threshold) == y_t
                cells[site] = {"auc": weighted_auroc(y_t, q_t, np.ones(y_t.size)),
                               "accuracy": float(hit.mean()), "n": int(y_t.size),
                               "threshold": threshold, "probability": q_t.tolist()}
                every_y.append(y_t)
                every_q.append(q_t)
                every_hit.append(hit)
            y_all = np.concatenate(every_y)
            cells["pooled"] = {"auc": weighted_auroc(y_all, np.concatenate(every_q),
                                                     np.ones(y_all.size)),
                               "accuracy": float(np.concatenate(every_hit).mean()),
                               "n": int(y_all.size)}
            calibrated[arm] = cells
        out.append(calibrated)
    return out


class _Replicates:
    """Pooled AUC and accuracy after site calibration of each (seed, arm), on every resample.

    Built once per variant and shared by the comparisons, so each calibrator is fitted
    once per resample whatever the number of comparisons it enters.
    """

    def __init__(self, labels: Mapping[str, NDArray[np.integer]],
                 runs: Sequence[Mapping[str, Any]],
                 valid_labels: Mapping[str, NDArray[np.integer]],
                 valid_runs: Sequence[Mapping[str, Any]], *,
                 refit: bool, n_boot: int, seed: int, method: Method) -> None:
        if len(valid_runs) != len(runs):
            raise DataError(f"expected validation predictions for each of the {len(runs)} "
                            f"runs, got {len(valid_runs)}")
        self.sites = list(labels)
        self.y_t = [np.asarray(labels[s]) > 0 for s in self.sites]
        self.y_v = [np.asarray(valid_labels[s]) > 0 for s in self.sites]
        self.y = np.concatenate(self.y_t)
        self.runs, self.valid_runs = runs, valid_runs
        self.refit, self.method = refit, method
        self.test_counts, self.valid_counts = paired_draws(
            self.y.size, [y.size for y in self.y_v], n_boot=n_boot, seed=seed)
        self.offsets = np.cumsum([0] + [y.size for y in self.y_t])
        self._cache: dict[tuple[int, str], tuple[NDArray[np.float64], NDArray[np.bool_]]] = {}

    def of(self, index: int, arm: str) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """Return seed ``index``'s arm on every resample, computed once.

        Metrics of shape (n_boot + 1, 2), row 0 on the images as they are, and of shape
        (n_boot + 1,) whether some site's fit data were separated.
        """
        key = (index, arm)
        if key not in self._cache:
            self._cache[key] = self._compute(index, arm)
        return self._cache[key]

    def _compute(self, index: int, arm: str) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        counts = self.test_counts
        n_rows = counts.shape[0] if self.refit else 1
        q = np.full((n_rows, self.y.size), np.nan)
        decide = np.zeros((n_rows, self.y.size), dtype=bool)
        separated = np.zeros(counts.shape[0], dtype=bool)
        for i, (y_t, y_v) in enumerate(zip(self.y_t, self.y_v, strict=True)):
            part = slice(self.offsets[i], self.offsets[i + 1])
            p_t, p_v = _site_predictions(self.runs[index], self.valid_runs[index], arm,
                                         self.sites[i], y_t.size, y_v.size)
            separated |= separated_each(p_v, y_v, self.valid_counts[i][:n_rows])
            for b in range(n_rows):
                try:
                    with warnings.catch_warnings():
                        # a constant map on a resample is what vigil calibrate would fit
                        warnings.simplefilter("ignore", CalibrationWarning)
                        q[b, part], threshold = _fit_site(p_v, y_v, p_t,
                                                          self.valid_counts[i][b], self.method)
                except DataError:
                    if b == 0:
                        raise  # the site's own validation images: vigil calibrate refuses
                    q[b] = np.nan  # a failed fit on a resample: the replicate is undefined
                    continue
                decide[b, part] = q[b, part] >= threshold
        hit = (decide == self.y).astype(np.float64)
        if not self.refit:  # one calibration, scored on every resample
            accuracy = counts @ hit[0] / counts.sum(axis=1)
            return (np.stack([resampled_auroc(self.y, q[0], counts), accuracy], axis=1),
                    np.repeat(separated[:1], counts.shape[0]))
        out = np.full((n_rows, 2), np.nan)
        for b in range(n_rows):
            if np.isfinite(q[b]).all():
                out[b] = (weighted_auroc(self.y, q[b], counts[b]),
                          counts[b] @ hit[b] / counts[b].sum())
        return out, separated

    def interval(self, arm: str, versus: str | None, factor: float, level: float
                 ) -> tuple[dict[str, Estimate], dict[str, int]]:
        """Seed mean of ``A - factor * B`` with its percentile interval.

        Also counts the resamples left undefined or fitted on separated data (some arm,
        seed and site).
        """
        arms = [(arm, 1.0)] if versus is None else [(arm, 1.0), (versus, -factor)]
        scored = [[self.of(i, name) for name, _ in arms] for i in range(len(self.runs))]
        total = np.mean([sum(sign * m for (_, sign), (m, _) in zip(arms, per, strict=True))
                         for per in scored], axis=0)
        separated = np.any([sep for per in scored for _, sep in per], axis=0)
        low, high = percentile_interval(total[1:], level)
        counts = {"undefined": int((~np.isfinite(total[1:])).any(axis=1).sum()),
                  "separated": int(separated[1:].sum())}
        return ({m: Estimate(float(total[0, k]), float(low[k]), float(high[k]))
                 for k, m in enumerate(METRICS)}, counts)


def calibrated_interval(
    labels: Mapping[str, NDArray[np.integer]],
    runs: Sequence[Mapping[str, Any]],
    valid_labels: Mapping[str, NDArray[np.integer]],
    valid_runs: Sequence[Mapping[str, Any]],
    arm: str,
    versus: str | None = None,
    *,
    factor: float = 1.0,
    refit: bool = False,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: Method = DEFAULT_METHOD,
) -> tuple[dict[str, Estimate], dict[str, int]]:
    """Pooled ``metric(arm) - factor * metric(versus)`` after site calibration, with its interval.

    Parameters
    ----------
    labels, runs, valid_labels, valid_runs
        As :func:`calibrate_runs`.
    arm : str
    versus : str or None, optional
        None: the interval of ``arm``'s own pooled metrics.
    factor : float, optional
    refit : bool, optional
        Also resample each site's validation images and re-fit the calibrators and
        thresholds on every resample.
    n_boot, level, seed : optional
        As :func:`~vigil.federation.image_intervals.paired_interval` (the same test
        resamples for the same ``seed``).
    method : Method, optional

    Returns
    -------
    estimates : dict of str to Estimate
        ``"auc"`` and ``"accuracy"``; the value is the same in both variants.
    counts : dict of str to int
        ``"undefined"``: resamples on which some calibrator could not be fitted (left out
        of the interval); ``"separated"``: resamples on which some site's fit data were
        separated by the score (kept, as fitted). With ``refit=False`` the fit data are
        the validation images as they are: 0 or ``n_boot``.

    Raises
    ------
    DataError
        As :func:`calibrate_runs`.
    """
    reps = _Replicates(labels, runs, valid_labels, valid_runs, refit=refit, n_boot=n_boot,
                       seed=seed, method=method)
    return reps.interval(arm, versus, factor, level)


def calibrated_comparisons(
    labels: Mapping[str, NDArray[np.integer]],
    runs: Sequence[Mapping[str, Any]],
    valid_labels: Mapping[str, NDArray[np.integer]],
    valid_runs: Sequence[Mapping[str, Any]],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: Method = DEFAULT_METHOD,
) -> list[dict[str, Any]]:
    """Every comparison of :data:`CALIBRATED_COMPARISONS`, pooled, in both variants.

    Returns
    -------
    list of dict
        ``{"arm", "versus", "factor", "site": "pooled", "variant": "fixed" | "refit",
        "auc", "accuracy", "undefined", "separated"}``, each metric
        :meth:`Estimate.to_dict`.
        Comparisons whose arms were not run are skipped.
    """
    present = set(runs[0])
    wanted = [c for c in CALIBRATED_COMPARISONS
              if c[0] in present and (c[1] is None or c[1] in present)]
    rows = []
    for refit in (False, True):
        reps = _Replicates(labels, runs, valid_labels, valid_runs, refit=refit,
                           n_boot=n_boot, seed=seed, method=method)
        for arm, versus, factor in wanted:
            est, counts = reps.interval(arm, versus, factor, level)
            rows.append({"arm": arm, "versus": versus, "factor": factor, "site": "pooled",
                         "variant": "refit" if refit else "fixed", "n_boot": n_boot, **counts,
                         **{m: e.to_dict() for m, e in est.items()}})
    return rows


def calibrated_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`calibrated_comparisons` as a Markdown table, both variants side by side."""
    def cell(e: Mapping[str, float], signed: bool) -> str:
        f = "+.3f" if signed else ".3f"
        return f"{e['value']:{f}} [{e['low']:{f}}, {e['high']:{f}}]"

    by_key: dict[tuple[Any, ...], dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        by_key.setdefault((r["arm"], r["versus"], r["factor"]), {})[r["variant"]] = r
    lines = ["| pooled after site calibration | AUC, calibrators fixed | AUC, re-fit | "
             "accuracy, calibrators fixed | accuracy, re-fit |", "|---|---|---|---|---|"]
    for (arm, versus, factor), variants in by_key.items():
        what = arm if versus is None else (
            f"{arm} − {factor:g} × {versus}" if factor != 1 else f"{arm} − {versus}")
        signed = versus is not None
        cells = [cell(variants[v][m], signed) if v in variants else "—"
                 for m in METRICS for v in ("fixed", "refit")]
        refit = variants.get("refit", {})
        notes = [f"{refit[k]} of {refit['n_boot']} re-fit resamples {k}"
                 for k in ("separated", "undefined") if refit.get(k)]
        note = f" ({'; '.join(notes)})" if notes else ""
        lines.append(f"| {what}{note} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
