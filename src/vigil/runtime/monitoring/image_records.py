"""The imaging drift monitor's input: a table of instance records (one row per scored instance).

The runtime stores one :class:`~vigil.runtime.study_contracts.InstanceRecord` per scored or
quarantined image instance. The monitor reads them as a DataFrame with the dataclass
fields as columns, the histogram spread over ``hist_0 .. hist_{N_BINS-1}``:

==========================  ================================================================
column                      meaning
==========================  ================================================================
``scored_at``               when its study was scored (datetime64, UTC)
``model``                   ``name@version`` that scored it
``modality`` ...            the :data:`~vigil.dicom_adapter.HEADER_FIELDS` (to
                            ``transfer_syntax``)
``hist_0`` ...              model-input intensity counts (zeros when quarantined)
``raw_probability``         model output (NaN when quarantined)
``probability``             after the site calibration (NaN when quarantined)
``quarantine_reason``       why the pixel chain refused it (None: scored)
==========================  ================================================================

:func:`records_frame` builds it from records in memory; :func:`load_instance_records` from a
store table or a Parquet file whose columns are the same, with the histogram either in
``hist_*`` columns or in one ``histogram`` column (a JSON list, or int64 bytes).
Records have no identifier; instances of one study share ``scored_at``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vigil.core.errors import DataError
from vigil.dicom_adapter.headers import HEADER_FIELDS
from vigil.imaging.histogram import N_BINS
from vigil.runtime.study_contracts import InstanceRecord

__all__ = ["HIST_COLUMNS", "RECORD_COLUMNS", "load_instance_records", "records_frame"]

HIST_COLUMNS: tuple[str, ...] = tuple(f"hist_{i}" for i in range(N_BINS))
"""The histogram's columns, in bin order."""

RECORD_COLUMNS: tuple[str, ...] = ("scored_at", "model", *HEADER_FIELDS, *HIST_COLUMNS,
                                   "raw_probability", "probability", "quarantine_reason")
"""Every column of the monitor's frame, in order."""

_REQUIRED = ("scored_at", "model", *HEADER_FIELDS, "raw_probability", "probability")


def records_frame(records: Sequence[InstanceRecord]) -> pd.DataFrame:
    """Return the monitor's frame of ``records`` (sorted by ``scored_at``, stable)."""
    rows: list[dict[str, Any]] = []
    for r in records:
        hist = np.asarray(r.histogram, dtype=np.int64).reshape(-1)
        if hist.size != N_BINS:
            raise DataError(f"expected an instance histogram of {N_BINS} bins, got {hist.size}")
        rows.append({"scored_at": r.scored_at, "model": r.model,
                     **{f: getattr(r.headers, f) for f in HEADER_FIELDS},
                     **dict(zip(HIST_COLUMNS, hist.tolist(), strict=True)),
                     "raw_probability": r.raw_probability, "probability": r.probability,
                     "quarantine_reason": r.quarantine_reason})
    return _normalized(pd.DataFrame(rows, columns=list(RECORD_COLUMNS)), where="the records")


def _histogram_cell(value: Any) -> list[int]:
    if isinstance(value, bytes | bytearray | memoryview):
        return np.frombuffer(bytes(value), dtype=np.int64).tolist()
    if isinstance(value, str):
        return [int(x) for x in json.loads(value)]
    return [int(x) for x in np.asarray(value).reshape(-1)]


def _normalized(frame: pd.DataFrame, *, where: str) -> pd.DataFrame:
    missing = [c for c in _REQUIRED if c not in frame.columns]
    if missing:
        raise DataError(f"expected instance-record columns {', '.join(_REQUIRED)} in {where}; "
                        f"missing {', '.join(missing)}")
    out = frame.copy()
    if not all(c in out.columns for c in HIST_COLUMNS):
        if "histogram" not in out.columns:
            raise DataError(f"expected the input histogram in {where} (columns hist_0..hist_"
                            f"{N_BINS - 1} or one 'histogram' column); found neither")
        cells = [_histogram_cell(v) for v in out["histogram"]]
        if any(len(c) != N_BINS for c in cells):
            raise DataError(f"expected histograms of {N_BINS} bins in {where}, got lengths "
                            f"{sorted({len(c) for c in cells})}")
        hist = np.asarray(cells, dtype=np.int64).reshape(-1, N_BINS)
        out = out.drop(columns=["histogram"]).assign(**{c: hist[:, i]
                                                        for i, c in enumerate(HIST_COLUMNS)})
    if "quarantine_reason" not in out.columns:
        out["quarantine_reason"] = None
    at = out["scored_at"]
    if pd.api.types.is_numeric_dtype(at):
        out["scored_at"] = pd.to_datetime(at, unit="s", utc=True)
    else:
        try:
            out["scored_at"] = pd.to_datetime(at, utc=True, format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise DataError(f"expected scored_at as ISO 8601 times or UTC seconds in {where}; "
                            f"{exc}") from None
    out["bits_stored"] = pd.to_numeric(out["bits_stored"], errors="coerce").fillna(0).astype(int)
    for c in ("pixel_spacing_mm", "raw_probability", "probability"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(np.float64)
    out = out.loc[:, list(RECORD_COLUMNS)]
    return out.sort_values("scored_at", kind="stable").reset_index(drop=True)


def load_instance_records(source: str | Path | sqlite3.Connection, *,
                          table: str = "imaging_instances") -> pd.DataFrame:
    """Read instance records from a state store table or a Parquet file.

    Parameters
    ----------
    source : str, Path or sqlite3.Connection
        A ``.parquet`` file, a SQLite state store (path), or an open connection.
    table : str, optional
        The store's table of instance records (an SQL identifier; the runtime's
        ``imaging_instances`` by default).

    Returns
    -------
    DataFrame
        Columns :data:`RECORD_COLUMNS`, sorted by ``scored_at``.

    Raises
    ------
    DataError
        If the file or table is missing or lacks a column.
    """
    if not table.isidentifier():
        raise DataError(f"expected a table name (letters, digits, _), got {table!r}")
    if isinstance(source, sqlite3.Connection):
        return _from_store(source, table, where=f"table {table}")
    path = Path(source)
    if not path.is_file():
        raise DataError(f"expected instance records (a .parquet file or a state store), found "
                        f"nothing at {path}", source=str(path))
    if path.suffix == ".parquet":
        return _normalized(pd.read_parquet(path), where=path.name)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _from_store(conn, table, where=f"table {table} of {path.name}")
    finally:
        conn.close()


def _from_store(conn: sqlite3.Connection, table: str, *, where: str) -> pd.DataFrame:
    try:
        found = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?",
                             (table,)).fetchone()
    except sqlite3.DatabaseError as exc:
        raise DataError(f"expected a SQLite state store; {exc}") from None
    if found is None:
        raise DataError(f"expected a table {table} of instance records; the store has none "
                        "(no imaging study scored yet?)")
    return _normalized(pd.read_sql_query(f"SELECT * FROM {table}", conn), where=where)  # noqa: S608
