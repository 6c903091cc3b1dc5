"""The bottom layer: errors, the clinical variable catalog, model packages.

Imports numpy, pydantic and cryptography only.
"""

from vigil.core.catalog import CATALOG, MEASURED, Conversion, Kind, Variable, variable
from vigil.core.errors import (
    AggregationError,
    ConfigError,
    DataError,
    DICOMError,
    FHIRError,
    FHIRResourceError,
    FHIRTransportError,
    ModelArtifactError,
    NotFittedError,
    ScoringError,
    VigilError,
)

__all__ = [
    "CATALOG",
    "MEASURED",
    "AggregationError",
    "ConfigError",
    "Conversion",
    "DICOMError",
    "DataError",
    "FHIRError",
    "FHIRResourceError",
    "FHIRTransportError",
    "Kind",
    "ModelArtifactError",
    "NotFittedError",
    "ScoringError",
    "Variable",
    "VigilError",
    "variable",
]
