"""Versions by version, not by reading order: one rule for the parsers, the grid and the store."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest
from fhir_support import DATA, observation, parse_all
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.features import GRID_COLUMNS
from vigil.fhir_adapter import ObservationBatch, Stay, grid_from_observations
from vigil.fhir_adapter.records import NO_TIME, NO_VERSION
from vigil.fhir_adapter.versions import latest_in_batch, newest, version_number

A = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
HR = GRID_COLUMNS.index("HR")
STAY = Stay("pat-1", "e1", A, "MICU", "male", date(1960, 5, 1), A)


def at(minutes: float) -> str:
    return (A + timedelta(minutes=minutes)).isoformat()


def version(rid: str, n: int, value: float, *, hour: int, key: str = "versionId",
            status: str = "final") -> dict:
    """Version ``n`` (1, 2, ...) of one heart rate, newer as ``n`` grows by the key given."""
    meta = {"versionId": str(n), "lastUpdated": at(24 * 60)}  # lastUpdated equal: versionId decides
    if key == "lastUpdated":
        meta = {"lastUpdated": at(60 * 30 + n)}
    extra: dict = {"meta": meta}
    if key == "issued":
        extra = {"issued": at(60 * 30 + n)}
    return observation(rid=rid, value=value, status=status, when=at(60 * hour - 30), **extra)


def hr_column(resources: list[dict], hours: int = 4) -> list[float]:
    batch = parse_all(resources).observations
    grid = grid_from_observations([STAY], batch, until=A + timedelta(hours=hours))
    return grid.values[:, HR].tolist()


def test_version_numbers() -> None:
    assert [version_number(v) for v in ("1", "0012", "9" * 18)] == [1, 12, int("9" * 18)]
    assert all(version_number(v) == NO_VERSION for v in
               (None, "", "v2", "1.2", "-3", "٣", "9" * 19, 3, "W/\"2\""))


def test_the_newest_by_version_id_wins_whatever_the_reading_order() -> None:
    versions = [version("x", 1, 80.0, hour=1), version("x", 3, 83.0, hour=1),
                version("x", 2, 82.0, hour=1)]
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]):
        assert hr_column([versions[i] for i in order])[0] == 83.0
    # version 10 is newer than version 9 (numbers, not text)
    assert hr_column([version("x", 10, 90.0, hour=1), version("x", 9, 89.0, hour=1)])[0] == 90.0


@pytest.mark.parametrize("key", ["lastUpdated", "issued"])
def test_without_version_ids_lastupdated_then_issued_decide(key: str) -> None:
    assert hr_column([version("x", 2, 82.0, hour=1, key=key),
                      version("x", 1, 81.0, hour=1, key=key)])[0] == 82.0


def test_a_key_counts_only_when_every_version_has_it() -> None:
    # A: versionId 2, oldest lastUpdated; B: no versionId; C: versionId 1, newest lastUpdated.
    # Pair by pair, A > C (versionId), C > B and B > A (lastUpdated): a circle. The rule orders
    # the three by lastUpdated, since B has no versionId: C wins, whatever the reading order.
    rid = np.array(["r", "r", "r"], dtype=object)
    ver = np.array([2, NO_VERSION, 1], dtype=np.int64)
    lu = np.array([10, 20, 30], dtype=np.int64)
    for perm in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        got = newest(rid[perm], np.arange(3, dtype=np.int64), version=ver[perm],
                     last_updated=lu[perm])
        assert ver[perm][got].tolist() == [1]
    # without B, the versionId decides against the lastUpdated
    assert newest(rid[:2:], np.array([0, 1]), version=np.array([2, 1]),
                  last_updated=np.array([10, 30])).tolist() == [True, False]
    # a non-numeric versionId falls back to the next key; no key at all: reading order
    assert newest(rid[:2], np.array([5, 4]), version=np.array([NO_VERSION, 1]),
                  last_updated=np.array([NO_TIME, NO_TIME]),
                  issued=np.array([7, 6])).tolist() == [True, False]
    assert newest(rid[:2], np.array([5, 4])).tolist() == [True, False]


def test_a_history_bundle_yields_the_newest_version() -> None:
    """A ``history`` Bundle lists the newest version first (RESTful API, 3.1.0.4 history)."""
    base = json.loads((DATA / "observation-example-map-sitting.json").read_text())
    entries = []
    for n, value in ((3, 70.0), (2, 65.0), (1, 60.0)):  # newest first
        res = {**base, "meta": {"versionId": str(n), "lastUpdated": f"2018-04-05T10:0{n}:00Z"},
               "valueQuantity": {**base["valueQuantity"], "value": value}}
        entries.append({"fullUrl": f"http://example.org/fhir/Observation/{base['id']}",
                        "resource": res,
                        "request": {"method": "PUT", "url": f"Observation/{base['id']}"},
                        "response": {"status": "200",
                                     "location": f"Observation/{base['id']}/_history/{n}"}})
    bundle = {"resourceType": "Bundle", "type": "history", "total": 3, "entry": entries}
    batch = parse_all([bundle]).observations
    assert len(batch) == 3
    values, _ = latest_in_batch(batch)
    assert batch.value[values].tolist() == [70.0] and batch.version[values].tolist() == [3]


def test_a_deletion_wins_only_when_it_is_the_newest_version() -> None:
    old_delete = version("x", 1, 80.0, hour=1, status="entered-in-error")
    new_delete = version("y", 3, 85.0, hour=2, status="entered-in-error")
    column = hr_column([version("x", 2, 81.0, hour=1), old_delete,  # read last, but older
                        new_delete, version("y", 2, 84.0, hour=2)])  # read first, but newer
    assert column[0] == 81.0 and np.isnan(column[1])


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[dict], dict[int, float], str]:
    """Versions of up to four heart rates (one per hour), and the value each hour must show."""
    key = draw(st.sampled_from(["versionId", "lastUpdated", "issued"]))
    resources, expected = [], {}
    for hour in range(1, draw(st.integers(1, 4)) + 1):
        n = draw(st.integers(1, 4))
        values = draw(st.lists(st.integers(40, 200), min_size=n, max_size=n))
        resources += [version(f"hr-{hour}", i + 1, float(v), hour=hour, key=key)
                      for i, v in enumerate(values)]
        expected[hour] = float(values[-1])
    return draw(st.permutations(resources)), expected, key


@settings(max_examples=40, deadline=None)
@given(histories(), st.data())
def test_property_order_files_and_other_deletions_never_change_the_winner(
        case: tuple[list[dict], dict[int, float], str], data: st.DataObject) -> None:
    resources, expected, key = case
    want = [expected.get(h, float("nan")) for h in range(1, 5)]
    assert np.array_equal(hr_column(resources), want, equal_nan=True)
    assert np.array_equal(hr_column(resources[::-1]), want, equal_nan=True)
    # split into files read one after another (each parsed apart), in either order
    cut = data.draw(st.integers(0, len(resources)))
    for files in ([resources[:cut], resources[cut:]], [resources[cut:], resources[:cut]]):
        batch = ObservationBatch.concat([parse_all(f).observations for f in files])
        grid = grid_from_observations([STAY], batch, until=A + timedelta(hours=4))
        assert np.array_equal(grid.values[:, HR], want, equal_nan=True)
    # entered-in-error rows of other resources, anywhere, change nothing
    gone = [version(f"gone-{i}", 9, 100.0, hour=1 + i % 4, key=key, status="entered-in-error")
            for i in range(data.draw(st.integers(1, 3)))]
    mixed = list(resources)
    for g in gone:
        mixed.insert(data.draw(st.integers(0, len(mixed))), g)
    assert np.array_equal(hr_column(mixed), want, equal_nan=True)


def test_an_amendment_written_before_its_original_wins_from_a_bulk_directory(tmp_path) -> None:
    """Bulk Data files: the amendment (version 2) is in the first file, its original in the
    second; NDJSONSource reads them in its own order, the newest version still wins."""
    import orjson

    from vigil.fhir_adapter import NDJSONSource

    amended = version("x", 2, 91.0, hour=1) | {"status": "amended"}
    (tmp_path / "Observation.1.ndjson").write_bytes(orjson.dumps(amended) + b"\n")
    (tmp_path / "Observation.2.ndjson").write_bytes(
        orjson.dumps(version("x", 1, 90.0, hour=1)) + b"\n")
    with NDJSONSource(tmp_path) as source:
        batch = source.observations(None).observations
    grid = grid_from_observations([STAY], batch, until=A + timedelta(hours=1))
    assert len(batch) == 2 and grid.values[0, HR] == 91.0
