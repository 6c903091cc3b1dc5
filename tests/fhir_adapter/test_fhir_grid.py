"""The hour rule, the last-value rule, versions and deletions of grid_from_observations."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from fhir_support import observation, parse_all

from vigil.core.errors import DataError
from vigil.features import GRID_COLUMNS
from vigil.fhir_adapter import Stay, grid_from_observations

A = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
HR = GRID_COLUMNS.index("HR")


def stay(patient: str = "pat-1", *, admitted: datetime = A, unit: str | None = "MICU") -> Stay:
    return Stay(patient=patient, encounter=f"{patient}-icu", icu_admission=admitted, unit=unit,
                gender="male", birth_date=date(1960, 5, 1),
                hospital_admission=admitted - timedelta(hours=2, minutes=30))


def at(delta: timedelta) -> str:
    return (A + delta).isoformat()


def hr_column(resources: list[dict], until: datetime) -> list[float]:
    grid = grid_from_observations([stay()], parse_all(resources).observations, until=until)
    return grid.values[:, HR].tolist()


@pytest.mark.parametrize(("delta", "row"), [
    (timedelta(microseconds=1), 0), (timedelta(minutes=30), 0), (timedelta(hours=1), 0),
    (timedelta(hours=1, microseconds=1), 1), (timedelta(hours=3), 2),
    (timedelta(hours=3, seconds=1), 3),
])
def test_a_value_at_admission_plus_x_hours_goes_to_hour_ceil_x(delta: timedelta, row: int) -> None:
    column = hr_column([observation(value=90.0, when=at(delta))], A + timedelta(hours=4))
    assert len(column) == 4
    assert [i for i, v in enumerate(column) if not math.isnan(v)] == [row]


def test_values_at_admission_or_after_until_are_not_placed() -> None:
    column = hr_column([observation(rid="a", value=90.0, when=at(timedelta(0))),
                        observation(rid="b", value=91.0, when=at(timedelta(hours=-2))),
                        observation(rid="c", value=92.0, when=at(timedelta(hours=2, minutes=1)))],
                       A + timedelta(hours=2))
    assert len(column) == 2 and all(math.isnan(v) for v in column)


def test_the_last_value_of_an_hour_wins() -> None:
    column = hr_column([
        observation(rid="late", value=101.0, when=at(timedelta(minutes=50))),
        observation(rid="early", value=99.0, when=at(timedelta(minutes=10))),
        observation(rid="tie-old", value=70.0, when=at(timedelta(hours=2)),
                    meta={"lastUpdated": at(timedelta(hours=3))}),
        observation(rid="tie-new", value=71.0, when=at(timedelta(hours=2)),
                    meta={"lastUpdated": at(timedelta(hours=4))}),
    ], A + timedelta(hours=2))
    assert column == [101.0, 71.0]


def test_a_later_version_replaces_and_a_deletion_removes() -> None:
    column = hr_column([
        observation(rid="x", value=80.0, when=at(timedelta(minutes=30))),
        observation(rid="y", value=85.0, when=at(timedelta(hours=1, minutes=30))),
        observation(rid="x", value=82.0, when=at(timedelta(hours=2, minutes=30)), status="amended"),
        observation(rid="y", value=85.0, when=at(timedelta(hours=1, minutes=30)),
                    status="entered-in-error"),
        observation(rid="z", value=88.0, when=at(timedelta(hours=1, minutes=40)),
                    status="entered-in-error"),
        observation(rid="z", value=89.0, when=at(timedelta(hours=1, minutes=40))),
    ], A + timedelta(hours=3))
    assert column[0] != column[0]  # x moved away from hour 1
    assert column[1:] == [89.0, 82.0]  # y deleted; z re-entered after its deletion


def test_static_columns_come_from_the_census() -> None:
    grid = grid_from_observations([stay(), stay("pat-2", unit=None)], parse_all([]).observations,
                                  until=A + timedelta(hours=5, minutes=1))
    assert grid.patient_ids == ("pat-1", "pat-2")
    assert grid.starts.tolist() == [0, 6, 12] and grid.hours.tolist() == [1, 2, 3, 4, 5, 6] * 2
    statics = grid.values[:, GRID_COLUMNS.index("Age"):]
    np.testing.assert_allclose(statics[0], [64.0, 1.0, 1.0, 0.0, -2.5])
    assert np.isnan(statics[6, 2:4]).all() and statics[6, 1] == 1.0
    assert np.isnan(grid.values[:, :GRID_COLUMNS.index("Age")]).all()


def test_until_per_stay_and_other_patients() -> None:
    batch = parse_all([observation(patient="pat-2", when=at(timedelta(hours=1))),
                        observation(patient="ghost", rid="g", when=at(timedelta(hours=1)))]
                       ).observations
    grid = grid_from_observations([stay(), stay("pat-2")], batch,
                                  until=[A - timedelta(hours=1), A + timedelta(hours=2)])
    assert np.diff(grid.starts).tolist() == [1, 2]  # at least one row per stay
    assert grid.values[1, HR] == 80.0
    with pytest.raises(DataError, match="expected one 'until' per stay .2., got 1"):
        grid_from_observations([stay(), stay("pat-2")], batch, until=[A])
    with pytest.raises(DataError, match="expected one stay per patient"):
        grid_from_observations([stay(), stay()], batch, until=A)
