"""Loading the PhysioNet 2019 hourly table (``sepsis_hourly.parquet``).

The schema is the one of ``shared/data/physionet2019/README.md``: ``patient_id``,
``hospital``, then the 41 Challenge columns. A copy of a few thousand of its
patients is bundled with the package (:data:`SAMPLE_PATH`), so a fresh clone
works without the shared data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.features.grid import GRID_COLUMNS, HourlyGrid, grid_from_frame

__all__ = ["SAMPLE_PATH", "PhysioNetTable", "load_physionet", "resolve_data_path"]

SAMPLE_PATH = Path(__file__).parent / "sample" / "sepsis_sample.parquet"
"""The bundled sample of the PhysioNet 2019 data (see ``sample/README.md``)."""

REQUIRED = ("patient_id", "hospital", *GRID_COLUMNS, "ICULOS", "SepsisLabel")


@dataclass(frozen=True, eq=False)
class PhysioNetTable:
    """A PhysioNet table with its grid, labels and hospitals.

    Attributes
    ----------
    frame : DataFrame of shape (n_rows, 43)
        The table as read, sorted by patient and hour.
    grid : HourlyGrid
        The hourly grid built from it (implausible values set to missing).
    labels : ndarray of shape (n_rows,)
        ``SepsisLabel`` (int8).
    hospital : ndarray of shape (n_rows,)
        Hospital of each row (``"A"`` or ``"B"``).
    """

    frame: pd.DataFrame
    grid: HourlyGrid
    labels: NDArray[np.int8]
    hospital: NDArray[np.str_]

    def __repr__(self) -> str:
        return f"PhysioNetTable(n_patients={self.grid.n_patients}, n_rows={self.grid.n_rows})"

    @property
    def patient_hospital(self) -> NDArray[np.str_]:
        """Hospital of each patient, shape (n_patients,)."""
        return self.hospital[self.grid.starts[:-1]]

    def patient_septic(self) -> NDArray[np.bool_]:
        """Whether each patient is ever labelled septic, shape (n_patients,)."""
        return np.maximum.reduceat(self.labels, self.grid.starts[:-1]).astype(bool)

    def select(self, patients: NDArray[np.int64]) -> PhysioNetTable:
        """Restrict the table to the given patients (by position), in that order."""
        patients = np.asarray(patients, dtype=np.int64)
        starts = self.grid.starts
        rows = (
            np.concatenate([np.arange(starts[i], starts[i + 1]) for i in patients])
            if patients.size
            else np.zeros(0, dtype=np.int64)
        )
        return PhysioNetTable(
            frame=self.frame.iloc[rows].reset_index(drop=True),
            grid=self.grid.select(patients),
            labels=self.labels[rows],
            hospital=self.hospital[rows],
        )


def resolve_data_path(value: str | Path | None) -> Path:
    """Turn a ``--data`` value into a file path.

    Parameters
    ----------
    value : str, Path or None
        A parquet path, ``"sample"`` or None for the bundled sample.

    Returns
    -------
    Path

    Raises
    ------
    DataError
        If the file does not exist.
    """
    if value is None or str(value) == "sample":
        return SAMPLE_PATH
    path = Path(value)
    if not path.is_file():
        raise DataError(
            f"expected a PhysioNet parquet file at {path}, found nothing; pass --data PATH, "
            "set VIGIL_DATA, or use --data sample for the bundled sample",
            source=str(path),
        )
    return path


def load_physionet(path: str | Path | None = None) -> PhysioNetTable:
    """Read a PhysioNet 2019 parquet table.

    Parameters
    ----------
    path : str, Path or None, optional
        The parquet file; None or ``"sample"`` reads the bundled sample.

    Returns
    -------
    PhysioNetTable

    Raises
    ------
    DataError
        If the file is missing, is not parquet, or lacks a required column.
    """
    file = resolve_data_path(path)
    try:
        frame = pd.read_parquet(file)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"expected a parquet file, could not read it: {exc}", source=str(file)
        ) from exc
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(
            f"expected the PhysioNet 2019 schema; missing columns: {', '.join(missing)}",
            source=str(file),
        )
    frame = frame.sort_values(["patient_id", "ICULOS"], kind="stable").reset_index(drop=True)
    grid = grid_from_frame(frame, source=str(file))
    return PhysioNetTable(
        frame=frame,
        grid=grid,
        labels=frame["SepsisLabel"].to_numpy(dtype=np.int8),
        hospital=frame["hospital"].to_numpy(dtype=str),
    )
