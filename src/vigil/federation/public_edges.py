"""Public bin edges for the boosted trees: from the catalog and the feature definitions only.

The non-private boosting bins every feature at the sites' averaged quantiles
(:func:`vigil.federation.boosting.bin_edges`), and each quantile is a
patient's value. Under differential privacy the edges must not depend on any
site's rows, so :func:`public_edges` derives them from what is public: the
catalog's plausible range of every variable (:mod:`vigil.core.catalog`) and the
definitions of the derived features (:mod:`vigil.features.builder`). The same
edges come out whatever the data.

Each feature gets a range ``[low, high]`` and a spacing:

- **integer** features (missingness and unit indicators, gender, 24-h counts,
  the SOFA-like steps, qSOFA, SIRS, NEWS2): one edge half-way between each two
  consecutive values (``low + 0.5, ..., high - 0.5``);
- **linear**: equal width within ``[low, high]`` (vitals, most labs, age,
  ICU hour, hours since a measurement, trend minimum/maximum/mean);
- **log**: equal width in ``log(1 + (x - low) / c)`` with ``c = (normal - low) / 8``,
  for a variable whose reference value lies in the lowest 15 % of its range
  (right-skewed labs such as AST, glucose, creatinine, WBC), and for the ratios
  HR/SBP and BUN/creatinine (``c`` = one eighth of the ratio of the normals);
- **asinh**: equal width in ``asinh(x / c)``, signed quantities: the 6-h slopes
  (``c`` = 1 unit per hour, range ``+-(high - low)`` per hour) and hours from
  hospital admission (``c`` = 1 h).

Ranges of the derived features follow from their definitions and the catalog:
HR/SBP in ``[HR_low / SBP_high, HR_high / SBP_low]``, pulse pressure in
``[SBP_low - DBP_high, SBP_high - DBP_low]``, BUN/creatinine and SpO2/FiO2
likewise; counts in ``[0, 24]``, hours since in ``[0, 72]`` (the look-back),
ICU hour in ``[0, 336]`` (the Challenge's 14 days; later hours share the last bin).
A value outside its range falls in the first or last bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from vigil.core.catalog import variable
from vigil.core.errors import ConfigError
from vigil.features.builder import COUNT_HOURS, FEATURE_SCHEMA, LOOKBACK_HOURS

__all__ = ["FeatureRange", "Spacing", "feature_range", "public_edges"]

ICU_HOURS = 336
"""Upper end of the ICU-hour range: 14 days, the longest stay of the Challenge records."""

_INTEGER_RANGES: dict[str, tuple[float, float]] = {
    "Gender": (0, 1), "MICU": (0, 1), "SICU": (0, 1), "unit_unknown": (0, 1),
    "sofa_platelets": (0, 4), "sofa_bilirubin": (0, 4), "sofa_creatinine": (0, 4),
    "sofa_cardiovascular": (0, 1), "sofa_respiratory": (0, 4), "sofa_partial": (0, 17),
    "qsofa": (0, 3), "sirs": (0, 4), "news2": (0, 20),
}


class Spacing(StrEnum):
    """How the edges are spread within a feature's range."""

    INTEGER = "integer"
    LINEAR = "linear"
    LOG = "log"
    ASINH = "asinh"


@dataclass(frozen=True)
class FeatureRange:
    """A feature's public range and spacing.

    Parameters
    ----------
    low, high : float
    spacing : Spacing
    scale : float, optional
        ``c`` of the log and asinh spacings.
    """

    low: float
    high: float
    spacing: Spacing
    scale: float = 1.0


def _value_range(name: str) -> FeatureRange:
    v = variable(name)
    if (v.normal - v.low) < 0.15 * (v.high - v.low):
        return FeatureRange(v.low, v.high, Spacing.LOG, max(v.normal - v.low, 1e-3) / 8)
    return FeatureRange(v.low, v.high, Spacing.LINEAR)


def _ratio(num: str, den: str) -> FeatureRange:
    a, b = variable(num), variable(den)
    return FeatureRange(a.low / b.high, a.high / b.low, Spacing.LOG, a.normal / b.normal / 8)


def feature_range(name: str) -> FeatureRange:
    """Return the public range and spacing of one feature of :data:`FEATURE_SCHEMA`.

    Raises
    ------
    ConfigError
        If ``name`` is not a feature the module knows.
    """
    if name in _INTEGER_RANGES:
        return FeatureRange(*_INTEGER_RANGES[name], Spacing.INTEGER)
    base, _, suffix = name.partition("__")
    if suffix == "missing":
        return FeatureRange(0, 1, Spacing.INTEGER)
    if suffix == "hours_since":
        return FeatureRange(0, LOOKBACK_HOURS, Spacing.LINEAR)
    if suffix == f"count_{COUNT_HOURS}h":
        return FeatureRange(0, COUNT_HOURS, Spacing.INTEGER)
    if suffix.startswith("slope_"):
        v = variable(base)
        return FeatureRange(v.low - v.high, v.high - v.low, Spacing.ASINH, 1.0)
    if suffix:  # min, max, mean over the trend window: the variable's own values
        return _value_range(base)
    derived = {
        "shock_index": lambda: _ratio("HR", "SBP"),
        "bun_creatinine": lambda: _ratio("BUN", "Creatinine"),
        "pulse_pressure": lambda: FeatureRange(variable("SBP").low - variable("DBP").high,
                                               variable("SBP").high - variable("DBP").low,
                                               Spacing.LINEAR),
        "sf_ratio": lambda: FeatureRange(variable("O2Sat").low / variable("FiO2").high,
                                         variable("O2Sat").high / variable("FiO2").low,
                                         Spacing.LINEAR),
        "Age": lambda: FeatureRange(variable("Age").low, variable("Age").high, Spacing.LINEAR),
        "HospAdmTime": lambda: FeatureRange(variable("HospAdmTime").low,
                                            variable("HospAdmTime").high, Spacing.ASINH, 1.0),
        "ICULOS": lambda: FeatureRange(0, ICU_HOURS, Spacing.LINEAR),
    }
    if name in derived:
        return derived[name]()
    try:
        return _value_range(name)
    except KeyError:
        raise ConfigError(f"expected a feature of the schema, got {name!r}",
                          key="features") from None


def _edges(r: FeatureRange, n_bins: int) -> NDArray[np.float64]:
    inner = slice(1, -1)
    if r.spacing is Spacing.INTEGER and r.high - r.low <= n_bins - 1:
        return np.arange(r.low, r.high) + 0.5
    if r.spacing is Spacing.LOG:
        u = np.linspace(0.0, math.log1p((r.high - r.low) / r.scale), n_bins + 1)[inner]
        return r.low + r.scale * np.expm1(u)
    if r.spacing is Spacing.ASINH:
        u = np.linspace(math.asinh(r.low / r.scale), math.asinh(r.high / r.scale),
                        n_bins + 1)[inner]
        return r.scale * np.sinh(u)
    return np.linspace(r.low, r.high, n_bins + 1)[inner]


def public_edges(n_bins: int, names: Sequence[str] = FEATURE_SCHEMA.names) -> list[
    NDArray[np.float32]
]:
    """Bin edges of every feature from public information only (module docstring).

    Parameters
    ----------
    n_bins : int
        Bins per feature, 2 to 256; integer features may use fewer.
    names : sequence of str, optional
        Feature names, default the schema's (184).

    Returns
    -------
    list of ndarray
        Per feature, at most ``n_bins - 1`` distinct increasing float32 edges,
        the input :func:`vigil.federation.boosting.bin_rows` takes.

    Raises
    ------
    ConfigError
        If ``n_bins`` is out of range or a name is unknown.
    """
    if not 2 <= n_bins <= 256:
        raise ConfigError(f"expected 2 <= n_bins <= 256, got {n_bins}", key="n_bins")
    return [np.unique(_edges(feature_range(n), n_bins).astype(np.float32)) for n in names]
