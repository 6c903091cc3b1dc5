"""The feature builder: one function of the hourly grid, for training and the runtime.

:func:`build_features` computes a feature row for every grid row from that
row and at most :data:`LOOKBACK_HOURS` earlier rows of the same patient. The
training pipeline calls it on a whole table; the runtime calls
:func:`build_latest_features` on each patient's last rows, which is the same
function applied to a shorter grid. A property test holds the two equal.

Features, in schema order:

1. For each of the 34 measured variables: the last value carried forward
   within the variable's maximum age (else the catalog's reference value),
   a missingness indicator (no fresh value), hours since the last measurement
   (capped at the look-back), and the number of measurements in 24 h.
2. For the 7 vital signs with a trend: minimum, maximum, mean and
   least-squares slope per hour over the last 6 h (the carried-forward value
   and slope 0 when the window is empty).
3. Derived values: shock index HR/SBP (Allgöwer & Burri 1967), pulse
   pressure, BUN/creatinine, SpO2/FiO2 (Rice et al., Chest 132:410-417, 2007),
   SOFA-like components (Vincent et al., Intensive Care Med 22:707-710, 1996)
   for platelets, bilirubin, creatinine, MAP and S/F, and the rule scores
   qSOFA, SIRS, NEWS2 (:mod:`vigil.features.baselines`).
4. Demographics: age, gender, MICU, SICU, unit unknown, hours from hospital
   admission, ICU hour.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from vigil.core.catalog import MEASURED, VITALS, variable
from vigil.features.baselines import news2, qsofa, sirs
from vigil.features.grid import GRID_COLUMNS, HourlyGrid
from vigil.features.schema import FeatureSchema
from vigil.features.window import carry_forward, rolling_count, rolling_stats

__all__ = [
    "COUNT_HOURS",
    "FEATURE_SCHEMA",
    "LOOKBACK_HOURS",
    "TREND_HOURS",
    "build_features",
    "build_latest_features",
    "fresh_values",
]

LOOKBACK_HOURS = 72
"""No feature depends on a row more than this many hours before the row scored."""
TREND_HOURS = 6
COUNT_HOURS = 24
SCHEMA_VERSION = "1"
_LATEST_BLOCK = 256

_N_MEASURED = len(MEASURED)
_MAX_AGE = np.array([variable(c).max_age_h for c in MEASURED], dtype=np.int32)
_NORMAL = np.array([variable(c).normal for c in MEASURED], dtype=np.float32)
_TREND_COLS = [MEASURED.index(c) for c in VITALS if c != "EtCO2"]
_DERIVED = (
    "shock_index",
    "pulse_pressure",
    "bun_creatinine",
    "sf_ratio",
    "sofa_platelets",
    "sofa_bilirubin",
    "sofa_creatinine",
    "sofa_cardiovascular",
    "sofa_respiratory",
    "sofa_partial",
    "qsofa",
    "sirs",
    "news2",
)
_DEMOGRAPHIC = ("Age", "Gender", "MICU", "SICU", "unit_unknown", "HospAdmTime", "ICULOS")


def _schema() -> FeatureSchema:
    names: list[str] = []
    for c in MEASURED:
        names += [c, f"{c}__missing", f"{c}__hours_since", f"{c}__count_{COUNT_HOURS}h"]
    for i in _TREND_COLS:
        c = MEASURED[i]
        names += [f"{c}__{s}_{TREND_HOURS}h" for s in ("min", "max", "mean", "slope")]
    names += list(_DERIVED) + list(_DEMOGRAPHIC)
    parameters = {
        "lookback_hours": LOOKBACK_HOURS,
        "trend_hours": TREND_HOURS,
        "count_hours": COUNT_HOURS,
        "variables": {
            c: {
                "unit": variable(c).unit,
                "low": variable(c).low,
                "high": variable(c).high,
                "normal": variable(c).normal,
                "max_age_h": variable(c).max_age_h,
            }
            for c in GRID_COLUMNS
        },
    }
    return FeatureSchema(version=SCHEMA_VERSION, names=tuple(names), parameters=parameters)


FEATURE_SCHEMA: FeatureSchema = _schema()


def fresh_values(grid: HourlyGrid) -> NDArray[np.float32]:
    """Carried-forward values of the measured variables, NaN when not fresh.

    Parameters
    ----------
    grid : HourlyGrid

    Returns
    -------
    ndarray of shape (n_rows, 34)
        Columns in :data:`vigil.core.catalog.MEASURED` order.
    """
    cf = carry_forward(
        grid.values[:, :_N_MEASURED], grid.row_start(), max_age=_MAX_AGE, lookback=LOOKBACK_HOURS
    )
    return cf.value


def _steps(x: NDArray[np.float32], cuts: tuple[float, ...], *, below: bool) -> NDArray[np.float32]:
    """Count thresholds crossed: ``x < cut`` (below) or ``x >= cut`` for each cut."""
    out = np.zeros(x.shape, dtype=np.float32)
    for cut in cuts:
        out += (x < cut) if below else (x >= cut)
    return out


def _derived(
    v: dict[str, NDArray[np.float32]], raw: dict[str, NDArray[np.float32]]
) -> list[NDArray[np.float32]]:
    hr, sbp, dbp = v["HR"], v["SBP"], v["DBP"]
    sf = v["O2Sat"] / v["FiO2"]
    s_plt = _steps(v["Platelets"], (150, 100, 50, 20), below=True)
    s_bil = _steps(v["Bilirubin_total"], (1.2, 2.0, 6.0, 12.0), below=False)
    s_cre = _steps(v["Creatinine"], (1.2, 2.0, 3.5, 5.0), below=False)
    s_map = (v["MAP"] < 70).astype(np.float32)
    # S/F cut-offs equivalent to P/F 400/300/200/100 by S/F = 64 + 0.84 P/F (Rice et al. 2007).
    s_resp = _steps(sf, (400.0, 316.0, 232.0, 148.0), below=True)
    return [
        hr / sbp,
        sbp - dbp,
        v["BUN"] / v["Creatinine"],
        sf,
        s_plt,
        s_bil,
        s_cre,
        s_map,
        s_resp,
        s_plt + s_bil + s_cre + s_map + s_resp,
        qsofa(resp=raw["Resp"], sbp=raw["SBP"]),
        sirs(temp=raw["Temp"], hr=raw["HR"], resp=raw["Resp"], paco2=raw["PaCO2"], wbc=raw["WBC"]),
        news2(
            resp=raw["Resp"],
            spo2=raw["O2Sat"],
            fio2=raw["FiO2"],
            sbp=raw["SBP"],
            hr=raw["HR"],
            temp=raw["Temp"],
        ),
    ]


def build_features(grid: HourlyGrid) -> NDArray[np.float32]:
    """Compute the feature matrix of every row of a grid.

    Parameters
    ----------
    grid : HourlyGrid
        Rows grouped by patient, consecutive hours.

    Returns
    -------
    ndarray of shape (grid.n_rows, len(FEATURE_SCHEMA))
        float32, no NaN; column ``j`` is ``FEATURE_SCHEMA.names[j]``.
    """
    row_start = grid.row_start()
    measured = grid.values[:, :_N_MEASURED]
    observed = ~np.isnan(measured)
    cf = carry_forward(measured, row_start, max_age=_MAX_AGE, lookback=LOOKBACK_HOURS)
    stale = np.isnan(cf.value)
    value = np.where(stale, _NORMAL[None, :], cf.value)
    counts = rolling_count(observed, row_start, hours=COUNT_HOURS)

    n = grid.n_rows
    blocks = np.empty((n, _N_MEASURED, 4), dtype=np.float32)
    blocks[:, :, 0] = value
    blocks[:, :, 1] = stale
    blocks[:, :, 2] = cf.hours_since
    blocks[:, :, 3] = counts
    columns: list[NDArray[np.float32]] = [blocks.reshape(n, _N_MEASURED * 4)]

    trend = rolling_stats(measured[:, _TREND_COLS], row_start, hours=TREND_HOURS)
    tv = value[:, _TREND_COLS]
    stats = np.empty((n, len(_TREND_COLS), 4), dtype=np.float32)
    stats[:, :, 0] = np.where(np.isnan(trend.minimum), tv, trend.minimum)
    stats[:, :, 1] = np.where(np.isnan(trend.maximum), tv, trend.maximum)
    stats[:, :, 2] = np.where(np.isnan(trend.mean), tv, trend.mean)
    stats[:, :, 3] = trend.slope
    columns.append(stats.reshape(n, len(_TREND_COLS) * 4))

    imputed = {c: value[:, i] for i, c in enumerate(MEASURED)}
    fresh = {c: cf.value[:, i] for i, c in enumerate(MEASURED)}
    with np.errstate(invalid="ignore", divide="ignore"):
        derived = np.stack(_derived(imputed, fresh), axis=1)
    columns.append(np.nan_to_num(derived, nan=0.0, posinf=0.0, neginf=0.0))

    unit1, unit2 = grid.column("Unit1"), grid.column("Unit2")
    unknown = np.isnan(unit1) | np.isnan(unit2)
    demo = np.stack(
        [
            np.nan_to_num(grid.column("Age"), nan=variable("Age").normal),
            np.nan_to_num(grid.column("Gender"), nan=variable("Gender").normal),
            np.where(unknown, 0.0, unit1),
            np.where(unknown, 0.0, unit2),
            unknown,
            np.nan_to_num(grid.column("HospAdmTime"), nan=0.0),
            grid.hours,
        ],
        axis=1,
    ).astype(np.float32)
    columns.append(demo)
    out = np.concatenate(columns, axis=1).astype(np.float32, copy=False)
    return out


def build_latest_features(grid: HourlyGrid) -> NDArray[np.float32]:
    """Features of each patient's last row, from at most the last look-back rows.

    This is the runtime's case: every patient scored at the current hour.

    Parameters
    ----------
    grid : HourlyGrid
        Each patient's history up to the hour to score.

    Returns
    -------
    ndarray of shape (grid.n_patients, len(FEATURE_SCHEMA))
    """
    out = np.zeros((grid.n_patients, len(FEATURE_SCHEMA)), dtype=np.float32)
    ends = grid.starts[1:]
    begins = np.maximum(grid.starts[:-1], ends - (LOOKBACK_HOURS + 1))
    # Blocks of patients bound the feature builder's intermediates (about 1 MB per patient
    # at the full look-back) whatever the census size; each patient's row is independent.
    for first in range(0, grid.n_patients, _LATEST_BLOCK):
        b, e = begins[first : first + _LATEST_BLOCK], ends[first : first + _LATEST_BLOCK]
        idx = np.concatenate([np.arange(lo, hi) for lo, hi in zip(b, e, strict=True)])
        window = HourlyGrid(
            patient_ids=grid.patient_ids[first : first + _LATEST_BLOCK],
            starts=np.concatenate([[0], np.cumsum(e - b)]).astype(np.int64),
            hours=grid.hours[idx],
            values=grid.values[idx],
        )
        out[first : first + b.size] = build_features(window)[window.starts[1:] - 1]
    return out
