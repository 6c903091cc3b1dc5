"""The centralized reference run: fit both models, score the test patients, write the package.

What ``vigil reference`` and ``vigil train`` run, on the fitting of
:mod:`vigil.federation.centralized` (its docstring states the protocol): patients
split by :func:`vigil.data.patient_split`, models fitted on ``train``, threshold
and epoch chosen on ``valid``, metrics on ``test``; the torch model is written
as a parity-checked, optionally signed model package whose manifest carries the
training rows' reference profile, as a federated package's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from vigil.data.loader import PhysioNetTable
from vigil.data.splits import Split
from vigil.features import build_features
from vigil.features.metrics import evaluate_by_hospital
from vigil.federation.centralized import (
    THRESHOLD_RULE,
    FittedModel,
    HGBSetup,
    Progress,
    TorchSetup,
    fit_hgb,
    fit_torch,
    split_table,
)

if TYPE_CHECKING:
    from vigil.core.package import ModelPackage

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_VERSION",
    "ReferenceResult",
    "package_fitted",
    "reference",
    "train_package",
]

DEFAULT_NAME = "sepsis-centralized"
DEFAULT_VERSION = "0.1.0"
_TORCH = TorchSetup()
_HGB = HGBSetup()


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


def reference(
    table: PhysioNetTable,
    *,
    torch_setup: TorchSetup = _TORCH,
    hgb_setup: HGBSetup = _HGB,
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
    setup: TorchSetup = _TORCH,
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
