"""The centralized reference: what the federation is measured against.

Protocol (issue 2, points 7 and 9), on one table of hourly rows:

1. Split patients with :func:`vigil.data.patient_split` (a patient's split is a
   hash of its identifier): fit on ``train``; choose the decision threshold
   with :func:`vigil.features.utility.best_utility_threshold` on ``valid``
   (also used to pick the epoch); report on ``test``, which neither fitting
   nor threshold choice ever sees.
2. Models: :class:`~vigil.federation.model.SepsisNet` (standardization
   statistics from the training rows) and, for comparison, scikit-learn's
   ``HistGradientBoostingClassifier``; both scored against the rule
   baselines qSOFA, SIRS and NEWS2 at their clinical cut-offs (scored by the
   caller, see :func:`vigil.federation.reference_run.reference`).

Training target. With ``target="utility"`` (the torch model's default) a model
learns the utility-optimal decision rather than ``SepsisLabel``: a row's label is 1 when
predicting 1 there earns more utility than predicting 0 (``u_pos > u_neg``,
:func:`vigil.features.utility.row_utilities`), and its weight is the stake
``|u_pos - u_neg|`` (cost-sensitive learning as in Elkan, IJCAI 2001). This is
the Challenge's own objective (Reyna et al., Crit Care Med 48(2):210-217,
2020); metrics are still reported against ``SepsisLabel``. HistGradientBoosting
fits ``SepsisLabel`` by default (see :class:`HGBSetup`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.data.loader import PhysioNetTable
from vigil.data.splits import Split, patient_split
from vigil.features import build_features
from vigil.features.metrics import auroc
from vigil.features.utility import best_utility_threshold, row_utilities

__all__ = [
    "THRESHOLD_RULE",
    "FittedModel",
    "HGBSetup",
    "Progress",
    "TorchSetup",
    "fit_hgb",
    "fit_torch",
    "split_table",
    "training_targets",
]

logger = logging.getLogger(__name__)

THRESHOLD_RULE = (
    "threshold maximizing the normalized utility on validation patients "
    "(vigil.data.patient_split 'valid', disjoint from training and test patients)"
)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class TorchSetup:
    """Hyperparameters of the centralized :class:`SepsisNet`.

    Attributes
    ----------
    hidden : tuple of int
    dropout : float
    epochs : int
        Maximum epochs; the epoch with the best validation utility is kept.
    batch_size : int
    lr, weight_decay : float
        AdamW.
    target : str
        ``"utility"`` (cost-sensitive, see the module docstring) or ``"label"``.
    seed : int
    threads : int
        torch intra-op threads during the fit (restored after).
    """

    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.5
    epochs: int = 6
    batch_size: int = 2048
    lr: float = 3e-4
    weight_decay: float = 1e-2
    target: str = "utility"
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True)
class HGBSetup:
    """Hyperparameters of the ``HistGradientBoostingClassifier`` comparator.

    Boosting stops early when the loss on a random 10% of the training rows has
    not improved for ``n_iter_no_change`` iterations (those rows are training
    patients: neither validation nor test patients are seen). ``threads`` caps
    OpenMP, which slows down badly on an oversubscribed machine. The target
    defaults to ``"label"``: sample weights make scikit-learn's boosting about
    five times slower.
    """

    max_iter: int = 100
    learning_rate: float = 0.2
    max_leaf_nodes: int = 31
    l2_regularization: float = 1.0
    n_iter_no_change: int = 10
    target: str = "label"
    seed: int = 0
    threads: int = 1


@dataclass(frozen=True, eq=False)
class FittedModel:
    """A fitted model with its validation-chosen threshold.

    Attributes
    ----------
    model : object
        A ``SepsisNet`` or a ``HistGradientBoostingClassifier``.
    predict : callable
        Features (n, n_features) -> probabilities (n,).
    threshold : float
        From :func:`best_utility_threshold` on validation patients.
    valid_utility, valid_auroc : float
        On validation patients.
    seconds : float
        Fitting time.
    details : dict
        Setup and per-epoch history (JSON-serializable).
    """

    model: Any
    predict: Callable[[NDArray[np.float32]], NDArray[np.float64]]
    threshold: float
    valid_utility: float
    valid_auroc: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"FittedModel({type(self.model).__name__}, threshold={self.threshold:.4f}, "
                f"valid_utility={self.valid_utility:.4f})")


def split_table(
    table: PhysioNetTable, *, hospital: str | None = None
) -> dict[Split, PhysioNetTable]:
    """Split a table into train, validation and test tables (optionally of one hospital's patients).

    Raises
    ------
    DataError
        If a split would be empty or ``hospital`` is unknown.
    """
    keep = np.ones(table.grid.n_patients, dtype=bool)
    if hospital is not None:
        known = sorted(set(table.patient_hospital.tolist()))
        if hospital not in known:
            raise DataError(f"expected a hospital among {known}, got {hospital!r}")
        keep = table.patient_hospital == hospital
    out: dict[Split, PhysioNetTable] = {}
    for s in (Split.TRAIN, Split.VALID, Split.TEST):
        idx = np.flatnonzero(keep & patient_split(table.grid.patient_ids, s))
        if idx.size == 0:
            raise DataError(f"expected patients in the {s.value} split, found none; use more data")
        out[s] = table.select(idx)
    return out


def training_targets(
    labels: NDArray[np.integer], starts: NDArray[np.int64], *, target: str
) -> tuple[NDArray[np.float32], NDArray[np.float32] | None]:
    """Row targets and weights for fitting.

    Parameters
    ----------
    labels : ndarray of shape (n_rows,)
        ``SepsisLabel``.
    starts : ndarray of shape (n_patients + 1,)
    target : str
        ``"label"``: ``SepsisLabel`` unweighted. ``"utility"``: ``u_pos > u_neg``
        with weight ``|u_pos - u_neg|`` scaled to mean 1.

    Returns
    -------
    y : ndarray of shape (n_rows,)
    weight : ndarray of shape (n_rows,) or None

    Examples
    --------
    >>> y, w = training_targets(np.array([0, 0, 1]), np.array([0, 3]), target="utility")
    >>> y.tolist()
    [1.0, 1.0, 1.0]
    """
    if target == "label":
        return np.asarray(labels, dtype=np.float32), None
    if target != "utility":
        raise ValueError(f"expected target 'label' or 'utility', got {target!r}")
    u_pos, u_neg = row_utilities(labels, starts)
    gain = u_pos - u_neg
    weight = np.abs(gain)
    mean = weight.mean()
    return (gain > 0).astype(np.float32), (weight / mean if mean > 0 else weight + 1).astype(
        np.float32
    )


def _choose(
    table: PhysioNetTable, probability: NDArray[np.float64]
) -> tuple[float, float, float]:
    threshold, utility = best_utility_threshold(table.labels, probability, table.grid.starts)
    return threshold, utility, auroc(table.labels, probability)


def fit_torch(
    train: PhysioNetTable,
    valid: PhysioNetTable,
    *,
    setup: TorchSetup = TorchSetup(),
    features: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None,
    progress: Progress | None = None,
) -> FittedModel:
    """Fit the :class:`SepsisNet`, keeping the epoch with the best validation utility.

    Parameters
    ----------
    train, valid : PhysioNetTable
    setup : TorchSetup, optional
    features : (ndarray, ndarray), optional
        Precomputed features of ``train`` and ``valid``, shapes (n_rows, n_features).
    progress : callable, optional
        Receives one line per epoch.

    Returns
    -------
    FittedModel
    """
    import torch

    from vigil.federation.model import SepsisNet, fit_norm, get_weights, predict_proba, set_weights
    from vigil.federation.training import train_local

    x_train, x_valid = features or (build_features(train.grid), build_features(valid.grid))
    y, weight = training_targets(train.labels, train.grid.starts, target=setup.target)
    torch.manual_seed(setup.seed)  # the initial weights too, not only shuffling and dropout
    model = SepsisNet(x_train.shape[1], hidden=setup.hidden, dropout=setup.dropout)
    fit_norm(model, x_train)
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"utility": -np.inf}
    t0 = time.perf_counter()

    def on_epoch(epoch: int, loss: float) -> None:
        threshold, utility, area = _choose(valid, predict_proba(model, x_valid))
        history.append({"epoch": epoch, "loss": loss, "valid_utility": utility,
                        "valid_auroc": area, "threshold": threshold})
        line = (f"epoch {epoch + 1}/{setup.epochs}: loss {loss:.4f}, validation utility "
                f"{utility:.4f}, AUROC {area:.4f}")
        logger.info(line)
        if progress is not None:
            progress(line)
        if utility > best["utility"]:
            best.update(utility=utility, auroc=area, threshold=threshold, epoch=epoch,
                        weights=get_weights(model))

    before = torch.get_num_threads()
    torch.set_num_threads(setup.threads)
    try:
        train_local(
            model, x_train, y, epochs=setup.epochs, batch_size=setup.batch_size, lr=setup.lr,
            seed=setup.seed, sample_weight=weight, weight_decay=setup.weight_decay,
            on_epoch=on_epoch,
        )
    finally:
        torch.set_num_threads(before)
    set_weights(model, best["weights"])
    return FittedModel(
        model=model,
        predict=lambda x: predict_proba(model, x),
        threshold=float(best["threshold"]),
        valid_utility=float(best["utility"]),
        valid_auroc=float(best["auroc"]),
        seconds=time.perf_counter() - t0,
        details={"setup": {**asdict(setup), "hidden": list(setup.hidden)},
                 "best_epoch": int(best["epoch"]) + 1, "history": history},
    )


def fit_hgb(
    train: PhysioNetTable,
    valid: PhysioNetTable,
    *,
    setup: HGBSetup = HGBSetup(),
    features: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None,
) -> FittedModel:
    """Fit the ``HistGradientBoostingClassifier`` comparator (same split, same threshold rule).

    Parameters
    ----------
    train, valid : PhysioNetTable
    setup : HGBSetup, optional
    features : (ndarray, ndarray), optional
        Precomputed features of ``train`` and ``valid``.

    Returns
    -------
    FittedModel
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    x_train, x_valid = features or (build_features(train.grid), build_features(valid.grid))
    y, weight = training_targets(train.labels, train.grid.starts, target=setup.target)
    t0 = time.perf_counter()
    model = HistGradientBoostingClassifier(
        max_iter=setup.max_iter, learning_rate=setup.learning_rate,
        max_leaf_nodes=setup.max_leaf_nodes, l2_regularization=setup.l2_regularization,
        early_stopping=True, n_iter_no_change=setup.n_iter_no_change, validation_fraction=0.1,
        random_state=setup.seed,
    )
    with threadpool_limits(limits=setup.threads):
        model.fit(x_train, y.astype(np.int8), sample_weight=weight)

    def predict(x: NDArray[np.float32]) -> NDArray[np.float64]:
        with threadpool_limits(limits=setup.threads):
            return model.predict_proba(x)[:, 1].astype(np.float64)

    threshold, utility, area = _choose(valid, predict(x_valid))
    return FittedModel(
        model=model, predict=predict, threshold=threshold, valid_utility=utility,
        valid_auroc=area, seconds=time.perf_counter() - t0,
        details={"setup": asdict(setup), "iterations": int(model.n_iter_)},
    )
