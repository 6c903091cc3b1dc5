"""Shared fixtures: the bundled sample, the shared data when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.data import PhysioNetTable, load_physionet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_PARQUET = SHARED / "physionet2019" / "sepsis_hourly.parquet"
SHARED_PNEUMONIA = SHARED / "medmnist" / "pneumoniamnist.npz"


@pytest.fixture(scope="session")
def sample() -> PhysioNetTable:
    """The bundled 3,000-patient sample."""
    return load_physionet("sample")


@pytest.fixture(scope="session")
def shared_parquet() -> Path:
    """The full shared development file (CI has it beside the clone)."""
    if not SHARED_PARQUET.is_file():
        pytest.skip(f"needs the shared data at {SHARED_PARQUET}")
    return SHARED_PARQUET


@pytest.fixture(scope="session")
def shared_pneumoniamnist() -> Path:
    """The full shared PneumoniaMNIST file."""
    if not SHARED_PNEUMONIA.is_file():
        pytest.skip(f"needs the shared data at {SHARED_PNEUMONIA}")
    return SHARED_PNEUMONIA


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A private Orthanc for one test module (``tests/dicom_adapter/orthanc_support.py``)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "dicom_adapter"))
    from orthanc_support import private_orthanc

    with private_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
