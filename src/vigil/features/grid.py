"""The hourly clinical grid: one row per patient per ICU hour.

The grid is the one representation every model input is computed from. The
training data (PhysioNet parquet) is already such a grid; the runtime builds
one from FHIR Observations. Rows are grouped by patient and, within a patient,
are consecutive ICU hours (``ICULOS`` increases by exactly 1), so that windows
of *k* hours are windows of *k* rows.

Values outside a variable's plausible range (:mod:`vigil.core.catalog`) are
set to missing when the grid is built, in training and at the bedside alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from vigil.core.catalog import MEASURED, variable
from vigil.core.errors import DataError

if TYPE_CHECKING:  # the frame's methods only: importing the grid needs no pandas
    import pandas as pd

__all__ = ["GRID_COLUMNS", "STATIC_COLUMNS", "HourlyGrid", "grid_from_frame"]

STATIC_COLUMNS: tuple[str, ...] = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")
GRID_COLUMNS: tuple[str, ...] = MEASURED + STATIC_COLUMNS
"""Value columns of the grid, in order: 34 measured variables, then 5 static ones."""

_LOW = np.array([variable(c).low for c in GRID_COLUMNS], dtype=np.float32)
_HIGH = np.array([variable(c).high for c in GRID_COLUMNS], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class HourlyGrid:
    """Hourly values of a set of patients.

    Parameters
    ----------
    patient_ids : tuple of str
        One identifier per patient, in row order. Never logged.
    starts : ndarray of shape (n_patients + 1,)
        Row offsets: patient ``i`` owns rows ``starts[i]:starts[i + 1]``.
    hours : ndarray of shape (n_rows,)
        ICU hour of each row (PhysioNet ``ICULOS``), consecutive within a patient.
    values : ndarray of shape (n_rows, len(GRID_COLUMNS))
        float32 values in canonical units, NaN where nothing was recorded.
    """

    patient_ids: tuple[str, ...]
    starts: NDArray[np.int64]
    hours: NDArray[np.int32]
    values: NDArray[np.float32]

    @property
    def n_rows(self) -> int:
        """Number of hourly rows."""
        return int(self.hours.shape[0])

    @property
    def n_patients(self) -> int:
        """Number of patients."""
        return len(self.patient_ids)

    def __repr__(self) -> str:
        return f"HourlyGrid(n_patients={self.n_patients}, n_rows={self.n_rows})"

    def row_patient(self) -> NDArray[np.int64]:
        """Patient index of each row, shape (n_rows,)."""
        return np.repeat(np.arange(self.n_patients, dtype=np.int64), np.diff(self.starts))

    def row_start(self) -> NDArray[np.int64]:
        """Row offset of the first row of each row's patient, shape (n_rows,)."""
        return np.repeat(self.starts[:-1], np.diff(self.starts))

    def column(self, name: str) -> NDArray[np.float32]:
        """Values of one grid column, shape (n_rows,)."""
        return self.values[:, GRID_COLUMNS.index(name)]

    def rows(self, start: int, stop: int) -> HourlyGrid:
        """Return the grid of rows ``start:stop``, which must belong to one patient."""
        p = int(np.searchsorted(self.starts, start, side="right") - 1)
        if not (self.starts[p] <= start < stop <= self.starts[p + 1]):
            raise DataError(
                f"rows {start}:{stop} must lie within one patient's rows "
                f"{self.starts[p]}:{self.starts[p + 1]}"
            )
        return HourlyGrid(
            patient_ids=(self.patient_ids[p],),
            starts=np.array([0, stop - start], dtype=np.int64),
            hours=self.hours[start:stop],
            values=self.values[start:stop],
        )

    def patient(self, index: int) -> HourlyGrid:
        """Return the grid of one patient (by position)."""
        return self.rows(int(self.starts[index]), int(self.starts[index + 1]))

    def select(self, indices: Sequence[int] | NDArray[np.int64]) -> HourlyGrid:
        """Return the grid of the given patients (by position), in the order given."""
        idx = np.asarray(indices, dtype=np.int64)
        lengths = np.diff(self.starts)[idx]
        row_idx = (
            np.concatenate([np.arange(self.starts[i], self.starts[i + 1]) for i in idx])
            if idx.size
            else np.zeros(0, dtype=np.int64)
        )
        return HourlyGrid(
            patient_ids=tuple(self.patient_ids[i] for i in idx),
            starts=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            hours=self.hours[row_idx],
            values=self.values[row_idx],
        )


def grid_from_frame(frame: pd.DataFrame, *, source: str = "frame") -> HourlyGrid:
    """Build the hourly grid from a PhysioNet-shaped table.

    Parameters
    ----------
    frame : DataFrame of shape (n_rows, n_columns)
        Must hold ``patient_id``, ``ICULOS`` and every name of
        :data:`GRID_COLUMNS`. Rows must be sorted by patient, then hour, with
        consecutive hours within each patient (as PhysioNet's are).
    source : str, optional
        Name of the data source, for error messages.

    Returns
    -------
    HourlyGrid
        With implausible values set to NaN.

    Raises
    ------
    DataError
        If a column is missing, or rows are not sorted and consecutive.
    """
    missing = [c for c in ("patient_id", "ICULOS", *GRID_COLUMNS) if c not in frame.columns]
    if missing:
        raise DataError(
            f"expected PhysioNet columns; {len(missing)} missing: {', '.join(missing)}",
            source=source,
        )
    pid = frame["patient_id"].to_numpy()
    hours = frame["ICULOS"].to_numpy(dtype=np.int32)
    n = len(frame)
    new_patient = np.ones(n, dtype=bool)
    if n:
        new_patient[1:] = pid[1:] != pid[:-1]
    starts = np.flatnonzero(new_patient).astype(np.int64)
    ids = tuple(str(x) for x in pid[starts])
    if len(set(ids)) != len(ids):
        raise DataError(
            "expected the rows of each patient to be contiguous (sorted by patient_id, ICULOS); "
            "a patient's rows appear in more than one block. Sort the table first.",
            source=source,
        )
    step = np.diff(hours)
    bad = ~new_patient[1:] & (step != 1)
    if bad.any():
        raise DataError(
            f"expected consecutive ICU hours within each patient (ICULOS + 1 per row); "
            f"{int(bad.sum())} rows break that. Sort by patient_id, ICULOS and fill gaps.",
            source=source,
        )
    values = frame.loc[:, list(GRID_COLUMNS)].to_numpy(dtype=np.float32, na_value=np.nan)
    if not values.flags.writeable:  # pandas copy-on-write may hand out a read-only array
        values = values.copy()
    with np.errstate(invalid="ignore"):
        implausible = (values < _LOW) | (values > _HIGH)
    values[implausible] = np.nan
    return HourlyGrid(
        patient_ids=ids,
        starts=np.append(starts, n).astype(np.int64),
        hours=hours,
        values=values,
    )
