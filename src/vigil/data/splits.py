"""Deterministic patient-level splits.

A patient's split depends only on its identifier (a salted SHA-256), never on
which other patients are in the table: the bundled sample and the full data
agree on every shared patient's split, and adding patients moves no one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

__all__ = ["TEST_FRACTION", "VALID_FRACTION", "Split", "patient_split", "patient_uniform"]

TEST_FRACTION = 0.2
VALID_FRACTION = 0.1


class Split(StrEnum):
    """Which part of the data a patient belongs to."""

    TRAIN = "train"
    VALID = "valid"
    TEST = "test"
    ALL = "all"


def patient_uniform(
    patient_ids: Iterable[str], *, salt: str = "vigil-split-v1"
) -> NDArray[np.float64]:
    """Draw a uniform number in [0, 1) per patient from a salted SHA-256 of its identifier.

    Parameters
    ----------
    patient_ids : iterable of str
        Patient identifiers.
    salt : str, optional
        Changes the draw; the default defines vigil's split.

    Returns
    -------
    ndarray of shape (n_patients,)
    """
    out = [
        int.from_bytes(hashlib.sha256(f"{salt}:{pid}".encode()).digest()[:8], "big") / 2.0**64
        for pid in patient_ids
    ]
    return np.asarray(out, dtype=np.float64)


def patient_split(patient_ids: Iterable[str], split: Split | str) -> NDArray[np.bool_]:
    """Mask of the patients in a split.

    Test is the first 20% of the hash range, validation the next 10%, training the rest.

    Parameters
    ----------
    patient_ids : iterable of str
        Patient identifiers.
    split : Split or str
        ``train``, ``valid``, ``test`` or ``all``.

    Returns
    -------
    ndarray of shape (n_patients,)
    """
    split = Split(split)
    u = patient_uniform(patient_ids)
    if split is Split.ALL:
        return np.ones(u.shape, dtype=bool)
    if split is Split.TEST:
        return u < TEST_FRACTION
    if split is Split.VALID:
        return (u >= TEST_FRACTION) & (u < TEST_FRACTION + VALID_FRACTION)
    return u >= TEST_FRACTION + VALID_FRACTION
