"""Measure the imaging federation: FedAvg, FedProx, FedBN, centralized, each site alone.

Every arm runs through the same driver (:func:`~vigil.federation.image_run.federate_images`):
*centralized* is one site holding every site's training images (the pooled data,
FedAvg with a single site is plain training, round = epoch); *alone* is one site
with its own images only. Every arm keeps the round with the best validation
accuracy (by the plan's ``keep_by`` rule: ``"site"``, each site at its own
threshold, in the imaging recipe) and, per site, the threshold that maximizes that
site's validation accuracy (site calibration); the official test split is touched
only to report. :func:`validation_scores` scores an arm the same way on the
validation images, for choosing a recipe without the test split.

Reported per site (its own test images, with its own model under FedBN) and pooled
(all test images, each scored by its site's model at its site's threshold): AUC
and accuracy, per seed, then mean and SD over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ConfigError
from vigil.features.metrics import auroc
from vigil.federation.driver import Plan
from vigil.federation.evaluation import pool_evaluations
from vigil.federation.image_run import SiteArrays, federate_images
from vigil.federation.image_task import image_evaluation, predict_images
from vigil.federation.strategies import make_strategy

__all__ = ["ARMS", "compare_images", "compare_markdown", "score_arm", "summarize_seeds",
           "train_arm", "validation_scores"]

ARMS = ("fedavg", "fedprox", "fedbn", "centralized", "alone")
"""The arms of the comparison."""


def _auc(y: NDArray[np.integer], p: NDArray[np.float64]) -> float:
    """Binary AUC, or the macro one-vs-rest AUC of (n, classes) probabilities."""
    if p.ndim == 2:
        from vigil.features.multiclass import macro_ovr_auroc

        return macro_ovr_auroc(y, p)
    return auroc(y, p)


def score_arm(models: dict[str, Any], thresholds: dict[str, float],
              test: Sequence[SiteArrays], keep: bool = False) -> dict[str, dict[str, Any]]:
    """Score each site's images with its model at its threshold, per site and pooled.

    Parameters
    ----------
    models : dict of str to torch module
        Site name → the network it runs (:func:`train_arm`).
    thresholds : dict of str to float
        Site name → its threshold (unused for a multi-class model: arg-max).
    test : sequence of SiteArrays
    keep : bool, optional
        Also keep each site's threshold and each image's probability.

    Returns
    -------
    dict
        site (and ``"pooled"``) → ``{"auc", "accuracy", "n"}`` (and the kept predictions).
    """
    out: dict[str, dict[str, Any]] = {}
    every_y, every_p, every_hit = [], [], []
    for name, x, y in test:
        p = predict_images(models[name], x)
        if p.ndim == 2:  # multi-class: arg-max decision, macro one-vs-rest AUC
            hit = np.argmax(p, axis=1) == np.asarray(y)
        else:
            hit = (p >= thresholds[name]) == (np.asarray(y) > 0)
        out[name] = {"auc": _auc(np.asarray(y), p), "accuracy": float(hit.mean()),
                     "n": int(len(y))}
        if keep:
            out[name] |= {"threshold": float(thresholds[name]),
                          "probability": [float(v) for v in p]}
        every_y.append(np.asarray(y))
        every_p.append(p)
        every_hit.append(hit)
    y_all, p_all = np.concatenate(every_y), np.concatenate(every_p)
    out["pooled"] = {"auc": _auc(y_all, p_all),
                     "accuracy": float(np.concatenate(every_hit).mean()), "n": int(y_all.size)}
    return out


def _net(run: Any, site: str) -> Any:
    from vigil.federation.cnn import SmallCNN
    from vigil.federation.model import set_weights

    net = SmallCNN(run.spec)
    set_weights(net, run.site_weights(site), strict=False)
    return net


def _site_thresholds(net: Any, valid: Sequence[SiteArrays]) -> dict[str, float]:
    return {name: pool_evaluations([image_evaluation(name, y, predict_images(net, x))]).threshold
            for name, x, y in valid}


def compare_images(
    train: Sequence[SiteArrays],
    valid: Sequence[SiteArrays],
    test: Sequence[SiteArrays],
    *,
    plan: Plan,
    arms: Sequence[str] = ARMS,
    mu: float | None = None,
    threads: int = 1,
    max_shift: int = 0,
    keep_predictions: bool = False,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Train every arm with ``plan`` (one seed) and score the test images.

    Parameters
    ----------
    train, valid, test : sequence of SiteArrays
        Each site's model inputs of each split (same sites, same order).
    plan : Plan
    arms : sequence of str, optional
        A subset of :data:`ARMS`.
    mu : float or None, optional
        FedProx proximal strength.
    threads : int, optional
    max_shift : int, optional
        Training augmentation of every arm (:func:`~vigil.federation.augment.random_shifts`).
    keep_predictions : bool, optional
        Also keep, per site, its ``"threshold"`` and each test image's ``"probability"``
        (in the order of ``test``), for the paired intervals of
        :mod:`vigil.federation.image_intervals`.

    Returns
    -------
    dict
        arm → site (and ``"pooled"``) → ``{"auc", "accuracy", "n"}`` (and, per site, the
        kept predictions).
    """
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for arm in arms:
        models, thresholds = train_arm(arm, train, valid, plan=plan, mu=mu, threads=threads,
                                       max_shift=max_shift)
        results[arm] = score_arm(models, thresholds, test, keep_predictions)
    return results


def train_arm(
    arm: str,
    train: Sequence[SiteArrays],
    valid: Sequence[SiteArrays],
    *,
    plan: Plan,
    mu: float | None = None,
    threads: int = 1,
    max_shift: int = 0,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Train one arm of :data:`ARMS` and calibrate each site's threshold on validation.

    Parameters
    ----------
    arm : str
    train, valid : sequence of SiteArrays
    plan : Plan
    mu : float or None, optional
        FedProx proximal strength.
    threads : int, optional
    max_shift : int, optional

    Returns
    -------
    models : dict of str to torch module
        The model each site runs (site name → network; FedBN: its own BatchNorm).
    thresholds : dict of str to float
        Each site's validation-accuracy threshold (empty for a multi-class model).
    """
    single = replace(plan, min_sites=1)
    if arm in ("fedavg", "fedprox", "fedbn"):
        run = federate_images(train, valid, strategy=make_strategy(
            arm, mu=mu if arm == "fedprox" else None), plan=plan, threads=threads,
            max_shift=max_shift)
        return {name: _net(run, name) for name, _, _ in train}, run.thresholds()
    if arm == "centralized":
        pooled: SiteArrays = ("pooled", np.concatenate([x for _, x, _ in train]),
                              np.concatenate([y for _, _, y in train]))
        held: SiteArrays = ("pooled", np.concatenate([x for _, x, _ in valid]),
                            np.concatenate([y for _, _, y in valid]))
        run = federate_images([pooled], [held], strategy=make_strategy("fedavg"),
                              plan=single, threads=threads, max_shift=max_shift)
        net = _net(run, "pooled")
        return dict.fromkeys((name for name, _, _ in train), net), _site_thresholds(net, valid)
    if arm != "alone":
        raise ConfigError(f"expected an arm among {ARMS}, got {arm!r}", key="arm")
    models, thresholds = {}, {}
    for site, held_site in zip(train, valid, strict=True):
        run = federate_images([site], [held_site], strategy=make_strategy("fedavg"),
                              plan=single, threads=threads, max_shift=max_shift)
        models[site[0]] = _net(run, site[0])
        thresholds |= run.thresholds()
    return models, thresholds


def validation_scores(models: dict[str, Any], valid: Sequence[SiteArrays], keep: bool = False
                      ) -> dict[str, dict[str, Any]]:
    """Score an arm on the validation images, each site at its own validation-best threshold.

    The recipe grid's criterion (``bench/imaging_recipe.py``): per site and pooled, AUC and
    the accuracy after site calibration on the same images (the threshold is the score-bin
    edge maximizing the site's validation accuracy, as for the test report).

    Parameters
    ----------
    models : dict of str to torch module
        Site name → the network it runs (:func:`train_arm`).
    valid : sequence of SiteArrays
    keep : bool, optional
        Also keep each site's threshold and each validation image's probability (so that
        an interval can re-choose thresholds on resampled validation images).

    Returns
    -------
    dict
        site (and ``"pooled"``) → ``{"auc", "accuracy", "n"}`` (and the kept predictions).
    """
    thresholds = {name: pool_evaluations([image_evaluation(name, y, predict_images(
        models[name], x))]).threshold for name, x, y in valid}
    return score_arm(models, thresholds, valid, keep=keep)


def summarize_seeds(per_seed: Sequence[dict[str, dict[str, dict[str, float]]]]
                    ) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and SD (ddof 1) over seeds of every arm, site and metric."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for arm, sites in per_seed[0].items():
        out[arm] = {}
        for site in sites:
            cell: dict[str, float] = {}
            for metric in ("auc", "accuracy"):
                values: NDArray[np.float64] = np.array([r[arm][site][metric] for r in per_seed])
                cell[f"{metric}_mean"] = float(values.mean())
                cell[f"{metric}_sd"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
            out[arm][site] = cell
    return out


def compare_markdown(summary: dict[str, dict[str, dict[str, float]]], n_seeds: int) -> str:
    """Render :func:`summarize_seeds` as a Markdown table (AUC / accuracy, mean ± SD)."""
    sites = list(next(iter(summary.values())))
    lines = [f"| arm ({n_seeds} seeds) | " + " | ".join(sites) + " |",
             "|---|" + "---|" * len(sites)]
    for arm, cells in summary.items():
        row = [f"{c['auc_mean']:.3f} ± {c['auc_sd']:.3f} / {c['accuracy_mean']:.3f} ± "
               f"{c['accuracy_sd']:.3f}" for c in (cells[s] for s in sites)]
        lines.append(f"| {arm} | " + " | ".join(row) + " |")
    return "\n".join(lines)
