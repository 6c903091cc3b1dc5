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
   caller, see :func:`reference`).

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.data.loader import PhysioNetTable
from vigil.data.splits import Split, patient_split
from vigil.features import build_features
from vigil.features.metrics import auroc, evaluate_by_hospital
from vigil.features.utility import best_utility_threshold, row_utilities

if TYPE_CHECKING:
    from vigil.core.package import ModelPackage

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_VERSION",
    "THRESHOLD_RULE",
    "FittedModel",
    "HGBSetup",
    "ReferenceResult",
    "TorchSetup",
    "fit_hgb",
    "fit_torch",
    "package_fitted",
    "reference",
    "split_table",
    "train_package",
    "training_targets",
]

logger = logging.getLogger(__name__)

DEFAULT_NAME = "sepsis-centralized"
DEFAULT_VERSION = "0.1.0"
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


@dataclass(frozen=True, eq=False)
class ReferenceResult:
    """Test-split metrics of every method, and the fitted torch model.

    Attributes
    ----------
    metrics : dict of str to dict
        ``"torch"`` and ``"hgb"`` -> a
        :func:`vigil.features.metrics.evaluate_by_hospital` dict (overall
        fields plus ``by_hospital``).
    torch : FittedModel
    hgb : FittedModel
    test : PhysioNetTable
        The test patients the metrics are on.
    patients : dict of str to int
        Patients per split.
    """

    metrics: dict[str, dict[str, Any]]
    torch: FittedModel
    hgb: FittedModel
    test: PhysioNetTable
    patients: dict[str, int]


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


def reference(
    table: PhysioNetTable,
    *,
    torch_setup: TorchSetup = TorchSetup(),
    hgb_setup: HGBSetup = HGBSetup(),
    progress: Progress | None = None,
    out_dir: str | Path | None = None,
    name: str = DEFAULT_NAME,
    version: str = DEFAULT_VERSION,
    private_key_pem: bytes | None = None,
) -> ReferenceResult:
    """Fit both models and evaluate them on the test split.

    The rule baselines are scored by the caller (:mod:`vigil.runtime.offline`
    sits above this layer) on ``result.test``.

    Parameters
    ----------
    table : PhysioNetTable
        All patients; split by :func:`split_table`.
    torch_setup : TorchSetup, optional
    hgb_setup : HGBSetup, optional
    progress : callable, optional
        Receives one line per stage and epoch.
    out_dir : str or Path, optional
        If given, the torch model is also written there as a model package.
    name, version : str, optional
        Of that package.
    private_key_pem : bytes, optional
        Ed25519 key to sign it with.

    Returns
    -------
    ReferenceResult
    """
    say = progress or (lambda line: None)
    parts = split_table(table)
    say("building features")
    x = {s: build_features(t.grid) for s, t in parts.items()}
    pair = (x[Split.TRAIN], x[Split.VALID])
    say("fitting the torch model")
    fitted_torch = fit_torch(parts[Split.TRAIN], parts[Split.VALID], setup=torch_setup,
                             features=pair, progress=progress)
    say("fitting HistGradientBoosting")
    fitted_hgb = fit_hgb(parts[Split.TRAIN], parts[Split.VALID], setup=hgb_setup, features=pair)
    test = parts[Split.TEST]
    if out_dir is not None:
        say("writing the model package")
        package_fitted(fitted_torch, out_dir, parts=parts, x_test=x[Split.TEST], name=name,
                       version=version, private_key_pem=private_key_pem)
    metrics = {name: _evaluate(test, fitted.predict(x[Split.TEST]), threshold=fitted.threshold)
               for name, fitted in (("torch", fitted_torch), ("hgb", fitted_hgb))}
    return ReferenceResult(
        metrics=metrics, torch=fitted_torch, hgb=fitted_hgb, test=test,
        patients={s.value: t.grid.n_patients for s, t in parts.items()},
    )


def _evaluate(
    table: PhysioNetTable, probability: NDArray[np.floating], *, threshold: float
) -> dict[str, Any]:
    """Overall and per-hospital metrics of alerts at ``probability >= threshold``."""
    prediction = (np.asarray(probability) >= threshold).astype(np.int8)
    return evaluate_by_hospital(table.labels, probability, prediction, table.grid.starts,
                                table.hospital, threshold=threshold)


def package_fitted(
    fitted: FittedModel,
    out_dir: str | Path,
    *,
    parts: dict[Split, PhysioNetTable],
    x_test: NDArray[np.float32],
    name: str = DEFAULT_NAME,
    version: str = DEFAULT_VERSION,
    hospital: str | None = None,
    test: PhysioNetTable | None = None,
    private_key_pem: bytes | None = None,
) -> ModelPackage:
    """Write a fitted :class:`SepsisNet` as a parity-checked model package.

    The manifest's ``reference_profile`` holds the training rows' variable
    histograms and the validation probabilities' histogram
    (:mod:`vigil.federation.profile`), as a federated package's does.

    Parameters
    ----------
    fitted : FittedModel
        From :func:`fit_torch`.
    out_dir : str or Path
    parts : dict of Split to PhysioNetTable
        The training, validation and test tables it was made from.
    x_test : ndarray of shape (n_test_rows, n_features)
        Features of ``test`` (or of ``parts[Split.TEST]``): 1,000 of its rows
        are the ONNX parity check, and the package's validation metrics are on it.
    name, version : str, optional
    hospital : str, optional
        The hospital the model was trained on, if only one.
    test : PhysioNetTable, optional
        Test patients to report on, if not ``parts[Split.TEST]``.
    private_key_pem : bytes, optional

    Returns
    -------
    ModelPackage

    Raises
    ------
    ModelArtifactError
        If ONNX parity exceeds 1e-5 (nothing is written).
    """
    from vigil.federation.evaluation import SCORE_EDGES, score_bins
    from vigil.federation.export import PARITY_ROWS, export_package
    from vigil.federation.profile import reference_profile, variable_histograms

    test = parts[Split.TEST] if test is None else test
    valid = parts[Split.VALID]
    valid_bins = score_bins(fitted.predict(build_features(valid.grid)))
    train = parts[Split.TRAIN]
    profile = reference_profile(
        *variable_histograms(train.grid.values), train.grid.n_rows, score_edges=SCORE_EDGES,
        score_counts=np.bincount(valid_bins, minlength=SCORE_EDGES.size + 1),
    )
    rng = np.random.default_rng(0)
    check = x_test[rng.choice(x_test.shape[0], size=min(PARITY_ROWS, x_test.shape[0]),
                              replace=False)]
    sites = [
        {"site": h, "patients": int((train.patient_hospital == h).sum()),
         "rows": int((train.hospital == h).sum())}
        for h in sorted(set(train.patient_hospital.tolist()))
    ]
    training = {
        "strategy": "centralized",
        "hospital": hospital or "all",
        "sites": sites,
        "patients": {s.value: t.grid.n_patients for s, t in parts.items()},
        "threshold_rule": THRESHOLD_RULE,
        "valid_utility": fitted.valid_utility,
        "valid_auroc": fitted.valid_auroc,
        "seconds": round(fitted.seconds, 1),
        **fitted.details,
    }
    validation = {
        **_evaluate(test, fitted.predict(x_test), threshold=fitted.threshold),
        "split": f"{test.grid.n_patients:,} held-out test patients (vigil patient_split 'test')",
    }
    return export_package(
        fitted.model, out_dir, name=name, version=version, threshold=fitted.threshold,
        training=training, validation=validation, reference_profile=profile,
        private_key_pem=private_key_pem, check_rows=check,
    )


def train_package(
    table: PhysioNetTable,
    out_dir: str | Path,
    *,
    hospital: str | None = None,
    setup: TorchSetup = TorchSetup(),
    name: str = DEFAULT_NAME,
    version: str = DEFAULT_VERSION,
    private_key_pem: bytes | None = None,
    progress: Progress | None = None,
) -> tuple[ModelPackage, FittedModel]:
    """Fit the torch model on training patients and write its package (``vigil train``).

    The threshold is chosen on validation patients of the same hospital(s); the
    package's validation metrics are on the test patients of EVERY hospital, so
    a model trained on one hospital shows how it transfers to the other.

    Parameters
    ----------
    table : PhysioNetTable
    out_dir : str or Path
    hospital : str, optional
        Train (and pick the threshold) on this hospital's patients only.
    setup : TorchSetup, optional
    name, version : str, optional
    private_key_pem : bytes, optional
    progress : callable, optional

    Returns
    -------
    ModelPackage, FittedModel
    """
    say = progress or (lambda line: None)
    parts = split_table(table, hospital=hospital)
    test = split_table(table)[Split.TEST] if hospital is not None else parts[Split.TEST]
    say("building features")
    pair = (build_features(parts[Split.TRAIN].grid), build_features(parts[Split.VALID].grid))
    fitted = fit_torch(parts[Split.TRAIN], parts[Split.VALID], setup=setup, features=pair,
                       progress=progress)
    say("writing the model package")
    package = package_fitted(
        fitted, out_dir, parts=parts, x_test=build_features(test.grid), name=name,
        version=version, hospital=hospital, test=test, private_key_pem=private_key_pem,
    )
    return package, fitted
