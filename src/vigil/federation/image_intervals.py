"""Paired bootstrap intervals of the imaging comparison: is arm A better than arm B here.

Two arms of :func:`~vigil.federation.image_compare.compare_images` score the
**same** test images, so their difference is judged on the same resamples (the
paired design of :mod:`vigil.features.bootstrap`; Efron & Tibshirani, *An
Introduction to the Bootstrap*, 1993, ch. 13, percentile intervals). The test
images of the site (or of every site, for ``"pooled"``) are drawn with
replacement ``n_boot`` times; on each resample the metric of both arms is
recomputed, for every training seed, and the reported difference is the mean
over seeds of ``metric(A) - factor * metric(B)``. ``factor`` 0.98 tests the
issue's "federated ≥ 0.98 × centralized". AUC on a resample weights each image
by its multiplicity (the Mann-Whitney form of
:func:`~vigil.features.bootstrap.weighted_auroc`, computed for every resample at
once by :func:`resampled_auroc`); accuracy is the weighted share of right
decisions at each site's own (validation-chosen) threshold.

Given each arm's kept validation predictions, the accuracy's interval also
counts the choice of each site's threshold: the validation images are resampled
too and every threshold re-chosen on them (``paired_interval(valid_labels=,
valid_runs=)``).

Otherwise the interval is that of the test-set sampling of the seed-averaged difference:
it answers whether 624 test images can tell the two arms apart, not how much a
new training seed would move them (the seeds' spread is reported beside it). A
difference whose interval contains 0 is read as "not worse" (and not better).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.features.bootstrap import Estimate, bootstrap_estimates, percentile_interval
from vigil.federation.evaluation import SCORE_EDGES

__all__ = [
    "COMPARISONS",
    "comparison_markdown",
    "paired_draws",
    "paired_interval",
    "resampled_auroc",
    "standard_comparisons",
]

COMPARISONS: tuple[tuple[str, str | None, float], ...] = (
    ("fedavg", None, 1.0),
    ("fedprox", None, 1.0),
    ("fedavg", "alone", 1.0),
    ("fedprox", "alone", 1.0),
    ("fedbn", "alone", 1.0),
    ("fedbn", "fedavg", 1.0),
    ("fedavg", "centralized", 0.98),
    ("fedprox", "centralized", 0.98),
)
"""The issue's comparisons (arm A, arm B, factor); each is made per site and pooled."""

METRICS = ("auc", "accuracy")


def _arm_arrays(run: Mapping[str, Any], arm: str, sites: Sequence[str]
                ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    cells = run[arm]
    missing = [s for s in sites if "probability" not in cells.get(s, {})]
    if missing:
        raise DataError(f"expected kept test predictions of arm {arm!r} at {missing} "
                        f"(compare_images(keep_predictions=True)), got none")
    p = np.concatenate([np.asarray(cells[s]["probability"], np.float64) for s in sites])
    t = np.concatenate([np.full(len(cells[s]["probability"]), cells[s]["threshold"])
                        for s in sites])
    return p, p >= t


def resampled_auroc(y: NDArray[np.bool_], p: NDArray[np.float64],
                    counts: NDArray[np.float64]) -> NDArray[np.float64]:
    """AUROC of every resample at once, image ``i`` counted ``counts[b, i]`` times.

    The Mann-Whitney form with ties counting one half (Hanley & McNeil, 1982), as
    :func:`~vigil.features.bootstrap.weighted_auroc` computes for one weight vector.

    Parameters
    ----------
    y : ndarray of bool, shape (n,)
    p : ndarray of shape (n,)
    counts : ndarray of shape (n_boot, n)

    Returns
    -------
    ndarray of shape (n_boot,)
        NaN where a resample lacks a class.
    """
    unique, group = np.unique(p, return_inverse=True)
    member = np.zeros((p.size, unique.size))
    member[np.arange(p.size), group] = 1.0
    pos = counts @ (member * y[:, None])  # (n_boot, n_groups)
    neg = counts @ (member * ~y[:, None])
    below = np.cumsum(neg, axis=1) - neg
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / total, np.nan)


def _metrics(y: NDArray[np.bool_], p: NDArray[np.float64], decide: NDArray[np.bool_],
             counts: NDArray[np.float64]) -> NDArray[np.float64]:
    """(n_boot, 2): AUROC and accuracy of each resample."""
    accuracy = counts @ (decide == y).astype(np.float64) / counts.sum(axis=1)
    return np.stack([resampled_auroc(y, p, counts), accuracy], axis=1)


def paired_interval(
    labels: Mapping[str, NDArray[np.integer]],
    runs: Sequence[Mapping[str, Any]],
    arm: str,
    versus: str | None = None,
    *,
    site: str = "pooled",
    factor: float = 1.0,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    valid_labels: Mapping[str, NDArray[np.integer]] | None = None,
    valid_runs: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Estimate]:
    """Seed-averaged ``metric(arm) - factor * metric(versus)`` with a paired bootstrap interval.

    Parameters
    ----------
    labels : mapping of str to ndarray of shape (n_site,)
        Each site's test labels, in the order its predictions were kept.
    runs : sequence of mapping
        One :func:`~vigil.federation.image_compare.compare_images` result per training
        seed, made with ``keep_predictions=True``.
    arm : str
    versus : str or None, optional
        None: the interval of ``arm``'s own metrics.
    site : str, optional
        A site of ``labels``, or ``"pooled"`` (all of them, each scored by its own model).
    factor : float, optional
    n_boot : int, optional
    level : float, optional
    seed : int, optional
        Seeds the resampling (the same resamples for both arms and every training seed).
    valid_labels : mapping of str to ndarray of shape (n_valid_site,), optional
        Each site's validation labels, in the order of the kept validation predictions.
    valid_runs : sequence of mapping, optional
        Per seed, in the order of ``runs``: arm → site → ``{"probability"}`` of the
        validation images (``validation_scores(..., keep=True)``). With ``valid_labels``,
        the accuracy's interval also counts the choice of each site's threshold
        (:func:`_rechosen_accuracy`); its value is unchanged.

    Returns
    -------
    dict of str to Estimate
        ``"auc"`` and ``"accuracy"``.

    Raises
    ------
    DataError
        If a run lacks kept predictions, or their number differs from the labels'.
    """
    sites = list(labels) if site == "pooled" else [site]
    y = np.concatenate([np.asarray(labels[s]) > 0 for s in sites])
    arms = [arm] if versus is None else [arm, versus]
    scored = [[_arm_arrays(run, a, sites) for a in arms] for run in runs]
    for per_run in scored:
        for p, _ in per_run:
            if p.size != y.size:
                raise DataError(f"expected {y.size} kept predictions at {site}, got {p.size}")
    signs = [1.0] if versus is None else [1.0, -factor]

    def difference(counts: NDArray[np.float64]) -> NDArray[np.float64]:
        """(n_boot, 2): the seed mean of A - factor * B on each resample."""
        per_seed = [sum(sign * _metrics(y, p, d, counts)
                        for sign, (p, d) in zip(signs, per_run, strict=True))
                    for per_run in scored]
        return np.mean(per_seed, axis=0)

    out = bootstrap_estimates(difference, y.size, METRICS, n_boot=n_boot, level=level,
                              seed=seed, batched=True)
    if valid_labels is not None and valid_runs is not None:
        out["accuracy"] = _rechosen_accuracy(labels, runs, valid_labels, valid_runs, arms,
                                             signs, sites, n_boot=n_boot, level=level, seed=seed)
    return out


def paired_draws(
    n_test: int, valid_sizes: Sequence[int], *, n_boot: int, seed: int
) -> tuple[NDArray[np.float64], list[NDArray[np.float64]]]:
    """Draw the resamples of an interval that also resamples each site's validation images.

    The test images' multiplicities are drawn first, from the same stream and in the same
    way as :func:`~vigil.features.bootstrap.bootstrap_estimates` (batched) draws them for
    :func:`paired_interval`, so an interval that re-chooses thresholds or re-fits
    calibrators is paired with the fixed one resample by resample; then each site's
    validation multiplicities, site after site, independently of the test draws.

    Parameters
    ----------
    n_test : int
        Test images, the sites' concatenated.
    valid_sizes : sequence of int
        Validation images of each site.
    n_boot : int
    seed : int

    Returns
    -------
    test_counts : ndarray of shape (n_boot + 1, n_test)
        Row 0 all ones (the point value), then one resample per row.
    valid_counts : list of ndarray of shape (n_boot + 1, n_valid_site)
        Per site, the same layout.
    """
    rng = np.random.default_rng(seed)

    def draw(n: int) -> NDArray[np.float64]:
        return np.vstack([np.ones((1, n)), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)])

    test_counts = draw(n_test)
    return test_counts, [draw(n) for n in valid_sizes]


def _correct_at_edges(y: NDArray[np.bool_], p: NDArray[np.float64]) -> NDArray[np.float64]:
    """(n, len(SCORE_EDGES)): 1 where flagging at ``p >= edge`` is right for the image."""
    return ((p[:, None] >= SCORE_EDGES[None, :]) == y[:, None]).astype(np.float64)


def _rechosen_accuracy(
    labels: Mapping[str, NDArray[np.integer]],
    runs: Sequence[Mapping[str, Any]],
    valid_labels: Mapping[str, NDArray[np.integer]],
    valid_runs: Sequence[Mapping[str, Any]],
    arms: Sequence[str],
    signs: Sequence[float],
    sites: Sequence[str],
    *,
    n_boot: int,
    level: float,
    seed: int,
) -> Estimate:
    """Seed mean of the signed accuracies, each site's threshold re-chosen on every resample.

    On every resample each site's **validation** images are resampled too (independently
    of the test images, the same draws for both arms: :func:`paired_draws`) and each arm
    re-chooses, for every seed and site, the score-bin edge maximizing its resampled
    validation accuracy (the runs' site calibration, first maximum); the test resample
    (the same draws as :func:`paired_interval`'s) is scored at that threshold. The point
    value uses the validation images as they are, so it is the kept thresholds' accuracy.
    """
    if len(valid_runs) != len(runs):
        raise DataError(f"expected validation predictions for each of the {len(runs)} runs, "
                        f"got {len(valid_runs)}")
    n_test = sum(len(labels[s]) for s in sites)
    test_counts, drawn = paired_draws(n_test, [len(valid_labels[s]) for s in sites],
                                      n_boot=n_boot, seed=seed)
    offsets = np.cumsum([0] + [len(labels[s]) for s in sites])
    valid_counts = dict(zip(sites, drawn, strict=True))
    total = np.zeros(n_boot + 1)
    for run, held in zip(runs, valid_runs, strict=True):
        for sign, name in zip(signs, arms, strict=True):
            correct = np.zeros(n_boot + 1)
            for i, s in enumerate(sites):
                y_t, y_v = np.asarray(labels[s]) > 0, np.asarray(valid_labels[s]) > 0
                cells = (run.get(name, {}).get(s, {}), held.get(name, {}).get(s, {}))
                if any("probability" not in c for c in cells):
                    raise DataError(f"expected kept test and validation predictions of arm "
                                    f"{name!r} at {s}, got none")
                p_t, p_v = (np.asarray(c["probability"], np.float64) for c in cells)
                if p_t.size != y_t.size or p_v.size != y_v.size:
                    raise DataError(f"expected {y_t.size} test and {y_v.size} validation "
                                    f"predictions at {s}, got {p_t.size} and {p_v.size}")
                chosen = np.argmax(valid_counts[s] @ _correct_at_edges(y_v, p_v), axis=1)
                hits = test_counts[:, offsets[i]:offsets[i + 1]] @ _correct_at_edges(y_t, p_t)
                correct += hits[np.arange(n_boot + 1), chosen]
            total += sign * correct / test_counts.sum(axis=1)
    total /= len(runs)
    low, high = percentile_interval(total[1:, None], level)
    return Estimate(float(total[0]), float(low[0]), float(high[0]))


def standard_comparisons(
    labels: Mapping[str, NDArray[np.integer]],
    runs: Sequence[Mapping[str, Any]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every comparison of :data:`COMPARISONS`, per site and pooled, as plain rows.

    Returns
    -------
    list of dict
        ``{"arm", "versus", "factor", "site", "auc": {...}, "accuracy": {...}}`` where each
        metric is :meth:`Estimate.to_dict`. Comparisons whose arms were not run are skipped.
    """
    present = set(runs[0])
    rows = []
    for arm, versus, factor in COMPARISONS:
        if arm not in present or (versus is not None and versus not in present):
            continue
        for site in [*labels, "pooled"]:
            est = paired_interval(labels, runs, arm, versus, site=site, factor=factor,
                                  n_boot=n_boot, seed=seed)
            rows.append({"arm": arm, "versus": versus, "factor": factor, "site": site,
                         **{m: e.to_dict() for m, e in est.items()}})
    return rows


def comparison_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render :func:`standard_comparisons` as a Markdown table: value [low, high] per metric."""
    def cell(e: Mapping[str, float]) -> str:
        return f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"

    lines = ["| comparison | site | AUC (95 % paired interval) | accuracy (95 % paired interval) |",
             "|---|---|---|---|"]
    for r in rows:
        what = r["arm"] if r["versus"] is None else (
            f"{r['arm']} − {r['factor']:g} × {r['versus']}" if r["factor"] != 1 else
            f"{r['arm']} − {r['versus']}")
        if r["versus"] is None:
            lines.append(f"| {what} | {r['site']} | {r['auc']['value']:.3f} "
                         f"[{r['auc']['low']:.3f}, {r['auc']['high']:.3f}] | "
                         f"{r['accuracy']['value']:.3f} [{r['accuracy']['low']:.3f}, "
                         f"{r['accuracy']['high']:.3f}] |")
        else:
            lines.append(f"| {what} | {r['site']} | {cell(r['auc'])} | {cell(r['accuracy'])} |")
    return "\n".join(lines)
