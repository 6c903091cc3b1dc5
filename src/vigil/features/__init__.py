"""Features: the hourly grid, the feature builder, labels' utility score, metrics, baselines."""

from vigil.features.builder import (
    FEATURE_SCHEMA,
    LOOKBACK_HOURS,
    build_features,
    build_latest_features,
    fresh_values,
)
from vigil.features.grid import GRID_COLUMNS, HourlyGrid, grid_from_frame
from vigil.features.schema import FeatureSchema

__all__ = [
    "FEATURE_SCHEMA",
    "GRID_COLUMNS",
    "LOOKBACK_HOURS",
    "FeatureSchema",
    "HourlyGrid",
    "build_features",
    "build_latest_features",
    "fresh_values",
    "grid_from_frame",
]
