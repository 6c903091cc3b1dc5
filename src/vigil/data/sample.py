"""Making the bundled sample of the PhysioNet 2019 data.

The sample is 1,500 patients of each hospital: those with the smallest salted
hash of their identifier (:func:`vigil.data.splits.patient_uniform`), so the
choice is deterministic, independent of row order, and a random draw in effect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vigil.data.splits import patient_uniform

__all__ = ["SAMPLE_PER_HOSPITAL", "make_sample"]

SAMPLE_PER_HOSPITAL = 1500


def make_sample(
    frame: pd.DataFrame, out: str | Path, *, per_hospital: int = SAMPLE_PER_HOSPITAL
) -> pd.DataFrame:
    """Write the sample of ``frame`` to ``out`` (parquet, zstd) and return it.

    Parameters
    ----------
    frame : DataFrame
        The full PhysioNet table (``patient_id``, ``hospital``, the 41 columns).
    out : str or Path
        Parquet file to write.
    per_hospital : int, optional
        Patients taken from each hospital.

    Returns
    -------
    DataFrame
        The sampled rows, sorted by patient and hour.
    """
    patients = frame.groupby("patient_id", sort=True)["hospital"].first()
    u = pd.Series(patient_uniform(patients.index, salt="vigil-sample-v1"), index=patients.index)
    chosen = u.groupby(patients).nsmallest(per_hospital).index.get_level_values("patient_id")
    sample = frame[frame["patient_id"].isin(np.asarray(chosen))]
    sample = sample.sort_values(["patient_id", "ICULOS"], kind="stable").reset_index(drop=True)
    sample.to_parquet(out, compression="zstd", compression_level=19, index=False)
    return sample
