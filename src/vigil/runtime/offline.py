"""Offline evaluation: the same features and model as the runtime, over a whole table.

Every hour is scored causally: a row's features use only that row and earlier
rows of the same patient (:func:`vigil.features.build_features`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.core.catalog import MEASURED
from vigil.core.errors import DataError
from vigil.core.package import ModelPackage
from vigil.data.loader import PhysioNetTable
from vigil.features.baselines import RULE_THRESHOLDS, Rule, news2, qsofa, sirs
from vigil.features.builder import build_features, fresh_values
from vigil.features.metrics import evaluate_by_hospital
from vigil.runtime.scoring import Scorer

__all__ = [
    "PREDICTION_COLUMNS",
    "alerts",
    "evaluate_rows",
    "predictions_frame",
    "rule_scores",
    "rule_threshold",
    "score_table",
    "scores_from_predictions",
]

PREDICTION_COLUMNS = ("patient_id", "ICULOS", "probability", "prediction")


def score_table(
    package: ModelPackage, table: PhysioNetTable, *, threads: int = 1
) -> NDArray[np.float64]:
    """Model probability of every hourly row, shape (n_rows,).

    One onnxruntime thread by default, as the runtime scores: a package with
    trees sums them in an order that depends on the thread count, which moves
    probabilities by a few float32 units in the last place (about 2e-7).
    """
    return Scorer(package, threads=threads).predict_proba(build_features(table.grid))


def rule_scores(rule: Rule | str, table: PhysioNetTable) -> NDArray[np.float32]:
    """Hourly score of a rule baseline, shape (n_rows,)."""
    fresh = fresh_values(table.grid)
    v = {c: fresh[:, i] for i, c in enumerate(MEASURED)}
    rule = Rule(rule)
    if rule is Rule.QSOFA:
        return qsofa(resp=v["Resp"], sbp=v["SBP"])
    if rule is Rule.SIRS:
        return sirs(temp=v["Temp"], hr=v["HR"], resp=v["Resp"], paco2=v["PaCO2"], wbc=v["WBC"])
    return news2(
        resp=v["Resp"], spo2=v["O2Sat"], fio2=v["FiO2"], sbp=v["SBP"], hr=v["HR"], temp=v["Temp"]
    )


def alerts(
    probability: NDArray[np.floating],
    threshold: float,
    prediction: NDArray[np.integer] | None = None,
) -> NDArray[np.integer]:
    """Return the 0/1 alerts: ``prediction`` if given, else ``probability >= threshold``.

    Parameters
    ----------
    probability : ndarray of shape (n_rows,)
    threshold : float
    prediction : ndarray of shape (n_rows,), optional
        Alerts made elsewhere, which win over the threshold.

    Returns
    -------
    ndarray of shape (n_rows,)
    """
    return (probability >= threshold).astype(np.int8) if prediction is None else prediction


def evaluate_rows(
    table: PhysioNetTable,
    probability: NDArray[np.floating],
    *,
    threshold: float,
    prediction: NDArray[np.integer] | None = None,
) -> dict[str, Any]:
    """Metrics of hourly probabilities on a table, overall and by hospital.

    Parameters
    ----------
    table : PhysioNetTable
    probability : ndarray of shape (n_rows,)
    threshold : float
        Rows with ``probability >= threshold`` are positive unless ``prediction`` is given.
    prediction : ndarray of shape (n_rows,), optional

    Returns
    -------
    dict
        See :func:`vigil.features.metrics.evaluate_by_hospital`.
    """
    return evaluate_by_hospital(
        table.labels,
        probability,
        alerts(probability, threshold, prediction),
        table.grid.starts,
        table.hospital,
        threshold=threshold,
    )


def rule_threshold(rule: Rule | str) -> float:
    """Return the positive cut-off of a rule."""
    return RULE_THRESHOLDS[Rule(rule)]


def predictions_frame(
    table: PhysioNetTable, probability: NDArray[np.floating], *, threshold: float
) -> pd.DataFrame:
    """Build the predictions table: ``patient_id, ICULOS, probability, prediction``."""
    return pd.DataFrame(
        {
            "patient_id": table.frame["patient_id"].to_numpy(),
            "ICULOS": table.grid.hours.astype(np.int16),
            "probability": np.asarray(probability, dtype=np.float64),
            "prediction": alerts(np.asarray(probability), threshold),
        }
    )


def scores_from_predictions(
    table: PhysioNetTable, predictions: pd.DataFrame
) -> tuple[NDArray[np.float64], NDArray[np.int8]]:
    """Align a predictions table with the rows of ``table``.

    Parameters
    ----------
    table : PhysioNetTable
    predictions : DataFrame
        Columns ``patient_id``, ``ICULOS``, ``probability``, ``prediction``.

    Returns
    -------
    probability, prediction : ndarray of shape (n_rows,)

    Raises
    ------
    DataError
        If columns are missing, a row is duplicated, or a table row has no prediction.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise DataError(
            f"expected prediction columns {', '.join(PREDICTION_COLUMNS)}; "
            f"missing {', '.join(missing)}"
        )
    if predictions.duplicated(["patient_id", "ICULOS"]).any():
        raise DataError("expected one prediction per (patient_id, ICULOS); found duplicates")
    keys = pd.DataFrame(
        {
            "patient_id": table.frame["patient_id"].to_numpy(),
            "ICULOS": table.grid.hours.astype(np.int64),
        }
    )
    preds = predictions.loc[:, list(PREDICTION_COLUMNS)].astype({"ICULOS": np.int64})
    merged = keys.merge(preds, on=["patient_id", "ICULOS"], how="left", validate="one_to_one")
    absent = int(merged["probability"].isna().sum())
    if absent:
        raise DataError(
            f"expected a prediction for every hourly row of the data; {absent} of {len(keys)} "
            "rows have none"
        )
    return (
        merged["probability"].to_numpy(dtype=np.float64),
        merged["prediction"].to_numpy(dtype=np.int8),
    )
