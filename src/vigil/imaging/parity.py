"""Measuring parity between two input paths: pixel and probability differences, flips.

The check of issue 15, point 5: the same images through the training path and
through a DICOM path must give ``max |Δprobability| <= 1e-3`` and no decision
flipped at the threshold. Pure numpy; the scorer is any function from model
inputs to probabilities (a stand-in today, the imaging CNN's ONNX session later).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError

__all__ = ["MAX_PROBABILITY_DIFF", "ParityReport", "Scorer", "measure_parity"]

MAX_PROBABILITY_DIFF = 1e-3
"""The largest |Δprobability| the check allows (issue 15, point 5)."""

Scorer = Callable[[NDArray[np.float32]], NDArray[np.float64]]
"""Model inputs of shape (n, size, size) → probabilities of shape (n,)."""


@dataclass(frozen=True)
class ParityReport:
    """How far one input path is from the reference path.

    Attributes
    ----------
    n : int
        Number of images compared.
    max_abs_pixel : float
        Largest |Δ| of the display values in ``[0, 1]`` (model inputs / 2).
    max_abs_probability : float
        Largest |Δprobability|.
    flips : int
        Images whose decision (probability >= threshold) differs.
    threshold : float
        The decision threshold.
    """

    n: int
    max_abs_pixel: float
    max_abs_probability: float
    flips: int
    threshold: float

    @property
    def passes(self) -> bool:
        """``max_abs_probability <= MAX_PROBABILITY_DIFF`` and no flip."""
        return self.max_abs_probability <= MAX_PROBABILITY_DIFF and self.flips == 0

    def as_dict(self) -> dict[str, float | int | bool]:
        """Return the report as JSON-ready numbers, with ``passes``."""
        return {
            "n": self.n,
            "max_abs_pixel": self.max_abs_pixel,
            "max_abs_probability": self.max_abs_probability,
            "flips": self.flips,
            "threshold": self.threshold,
            "passes": self.passes,
        }


def measure_parity(
    reference: NDArray[np.float32],
    candidate: NDArray[np.float32],
    scorer: Scorer,
    *,
    threshold: float,
) -> ParityReport:
    """Compare the candidate path's model inputs with the reference path's.

    Parameters
    ----------
    reference, candidate : ndarray of float32, shape (n, size, size)
        Model inputs (normalized to ``[-1, 1]``) of the same images, in the same order.
    scorer : Scorer
        Model inputs → probabilities.
    threshold : float
        Decision threshold in ``(0, 1)``.

    Returns
    -------
    ParityReport
        The differences.

    Raises
    ------
    DataError
        If the two arrays differ in shape or are empty.
    """
    ref = np.asarray(reference, dtype=np.float32)
    cand = np.asarray(candidate, dtype=np.float32)
    if ref.shape != cand.shape or ref.shape[0] == 0:
        raise DataError(
            f"expected two non-empty input arrays of the same shape, got {ref.shape} "
            f"and {cand.shape}"
        )
    p_ref = np.asarray(scorer(ref), dtype=np.float64)
    p_cand = np.asarray(scorer(cand), dtype=np.float64)
    pixel = np.abs(ref.astype(np.float64) - cand.astype(np.float64)) / 2.0
    return ParityReport(
        n=int(ref.shape[0]),
        max_abs_pixel=float(pixel.max()),
        max_abs_probability=float(np.abs(p_ref - p_cand).max()),
        flips=int(np.count_nonzero((p_ref >= threshold) != (p_cand >= threshold))),
        threshold=float(threshold),
    )
