import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil.core.catalog import MEASURED, variable
from vigil.core.errors import DataError
from vigil.features import (
    FEATURE_SCHEMA,
    LOOKBACK_HOURS,
    build_features,
    build_latest_features,
    grid_from_frame,
)
from vigil.features.window import carry_forward, rolling_count, rolling_stats


def naive_reference(values, starts, max_age, lookback, hours):
    """Row-by-row Python loops: the definitions, written the slow obvious way."""
    n, m = values.shape
    out = {
        k: np.full((n, m), np.nan)
        for k in ("value", "since", "count", "min", "max", "mean", "slope")
    }
    for p in range(len(starts) - 1):
        for r in range(starts[p], starts[p + 1]):
            for j in range(m):
                past = [
                    (r - q, values[q, j])
                    for q in range(starts[p], r + 1)
                    if not np.isnan(values[q, j])
                ]
                if past:
                    age, v = past[-1]
                    out["value"][r, j] = v if age <= max_age[j] else np.nan
                    out["since"][r, j] = min(age, lookback)
                else:
                    out["since"][r, j] = lookback
                win = [(-a, v) for a, v in past if a < hours]
                out["count"][r, j] = len(win)
                if win:
                    t = np.array([w[0] for w in win], float)
                    v = np.array([w[1] for w in win], float)
                    out["min"][r, j], out["max"][r, j], out["mean"][r, j] = (
                        v.min(),
                        v.max(),
                        v.mean(),
                    )
                    out["slope"][r, j] = np.polyfit(t, v, 1)[0] if len(win) >= 2 else 0.0
                else:
                    out["slope"][r, j] = 0.0
    return out


def test_window_kernels_equal_the_naive_definitions():
    rng = np.random.default_rng(7)
    n, m = 60, 4
    values = np.round(rng.normal(size=(n, m)), 3)
    values[rng.random((n, m)) < 0.6] = np.nan
    starts = np.array([0, 25, 31, 60])
    row_start = np.repeat(starts[:-1], np.diff(starts))
    max_age = np.array([1, 3, 6, 10])
    ref = naive_reference(values, starts, max_age, lookback=8, hours=6)
    cf = carry_forward(values, row_start, max_age=max_age, lookback=8)
    np.testing.assert_allclose(cf.value, ref["value"], equal_nan=True)
    np.testing.assert_array_equal(cf.hours_since, ref["since"])
    rs = rolling_stats(values, row_start, hours=6)
    np.testing.assert_array_equal(rs.count, ref["count"])
    np.testing.assert_array_equal(
        rolling_count(~np.isnan(values), row_start, hours=6), ref["count"]
    )
    for key, got in (
        ("min", rs.minimum),
        ("max", rs.maximum),
        ("mean", rs.mean),
        ("slope", rs.slope),
    ):
        np.testing.assert_allclose(got, ref[key], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_schema_names_unique_and_match_width(sample):
    x = build_features(sample.grid.select(np.arange(20)))
    assert x.shape[1] == len(FEATURE_SCHEMA) == len(set(FEATURE_SCHEMA.names))
    assert x.dtype == np.float32
    assert np.isfinite(x).all()


def test_schema_hash_covers_parameters():
    d = FEATURE_SCHEMA.to_dict()
    assert d["sha256"] == FEATURE_SCHEMA.sha256 and len(d["sha256"]) == 64
    other = type(FEATURE_SCHEMA)(
        FEATURE_SCHEMA.version,
        FEATURE_SCHEMA.names,
        {**FEATURE_SCHEMA.parameters, "trend_hours": 5},
    )
    assert other.sha256 != FEATURE_SCHEMA.sha256


def test_known_values_on_a_hand_made_patient():
    hours = np.arange(1, 9)
    frame = pd.DataFrame({"patient_id": "p1", "ICULOS": hours})
    for c in (*MEASURED, "Age", "Gender", "Unit1", "Unit2", "HospAdmTime"):
        frame[c] = np.nan
    frame["HR"] = [80, np.nan, 100, np.nan, np.nan, np.nan, np.nan, np.nan]
    frame["SBP"] = [100, np.nan, np.nan, 125, np.nan, np.nan, np.nan, np.nan]
    frame["Lactate"] = [np.nan, 4.0, np.nan, np.nan, np.nan, np.nan, np.nan, 99.0]  # 99 implausible
    frame["Age"], frame["Gender"], frame["HospAdmTime"] = 70.0, 1.0, -5.0
    x = build_features(grid_from_frame(frame))
    col = {n: i for i, n in enumerate(FEATURE_SCHEMA.names)}
    # HR carried forward 6 h (max age 6): at hour 8 (row 7) the last HR is 5 h old
    assert (
        x[7, col["HR"]] == 100
        and x[7, col["HR__hours_since"]] == 5
        and x[7, col["HR__missing"]] == 0
    )
    assert x[3, col["HR__max_6h"]] == 100 and x[3, col["HR__min_6h"]] == 80
    assert x[2, col["HR__slope_6h"]] == pytest.approx(10.0)  # (100 - 80) / 2 h
    assert x[3, col["shock_index"]] == pytest.approx(100 / 125)
    assert x[7, col["Lactate"]] == 4.0  # 99 is outside the plausible range: treated as missing
    assert x[7, col["Lactate__count_24h"]] == 1
    assert x[0, col["Lactate__missing"]] == 1 and x[0, col["Lactate"]] == variable("Lactate").normal
    assert x[0, col["Lactate__hours_since"]] == LOOKBACK_HOURS
    assert x[7, col["unit_unknown"]] == 1 and x[7, col["ICULOS"]] == 8 and x[7, col["Age"]] == 70


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_batch_equals_incremental_on_real_patients(sample, data):
    """Property: the runtime's incremental features equal the training batch features."""
    grid = sample.grid
    p = data.draw(st.integers(0, grid.n_patients - 1), label="patient")
    lo, hi = int(grid.starts[p]), int(grid.starts[p + 1])
    row = data.draw(st.integers(lo, hi - 1), label="row")
    batch = build_features(grid.patient(p))[row - lo]
    incremental = build_latest_features(grid.rows(lo, row + 1))[0]
    np.testing.assert_array_equal(incremental, batch)


def test_batch_equals_incremental_for_many_patients_at_once(sample):
    idx = np.arange(0, sample.grid.n_patients, 37)
    sub = sample.grid.select(idx)
    batch = build_features(sub)
    # cut every patient at a different hour, then score all of them as the runtime does
    cuts = [
        int(sub.starts[i]) + (i * 7) % int(np.diff(sub.starts)[i]) for i in range(sub.n_patients)
    ]
    pieces = [sub.rows(int(sub.starts[i]), c + 1) for i, c in enumerate(cuts)]
    merged = type(sub)(
        patient_ids=sub.patient_ids,
        starts=np.r_[0, np.cumsum([q.n_rows for q in pieces])].astype(np.int64),
        hours=np.concatenate([q.hours for q in pieces]),
        values=np.concatenate([q.values for q in pieces]),
    )
    np.testing.assert_array_equal(build_latest_features(merged), batch[cuts])


def test_grid_errors_say_what_was_expected(sample):
    frame = sample.frame.iloc[:50].copy()
    with pytest.raises(DataError, match="missing: Lactate"):
        grid_from_frame(frame.drop(columns=["Lactate"]))
    shuffled = frame.iloc[[1, 0, *range(2, 50)]]
    with pytest.raises(DataError, match="consecutive ICU hours"):
        grid_from_frame(shuffled)
    interleaved = pd.concat([frame.iloc[:5], sample.frame.iloc[-3:], frame.iloc[5:]])
    with pytest.raises(DataError, match="contiguous"):
        grid_from_frame(interleaved)
