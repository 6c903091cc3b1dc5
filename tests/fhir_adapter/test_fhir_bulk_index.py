"""The NDJSON source's byte-offset index and the vectorized latest-version rule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

import vigil.fhir_adapter.bulk as bulk
from vigil.fhir_adapter.bulk import NDJSONSource
from vigil.fhir_adapter.fast import parse_ndjson
from vigil.fhir_adapter.hourly import latest_versions


def _obs(rid: str, hour: int, value: float, status: str = "final") -> bytes:
    stamp = f"2024-01-01T{hour:02d}:00:00Z"
    return orjson.dumps({
        "resourceType": "Observation", "id": rid, "status": status,
        "meta": {"lastUpdated": stamp}, "effectiveDateTime": stamp,
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org",
                          "code": "/min"},
    })


@pytest.mark.parametrize("block", [7, 1 << 24])
def test_fhir_bulk_offsets_equal_whole_file_parse(tmp_path: Path, block: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Written out of time order, with blank and CRLF lines and no final newline; a small
    # block makes every line cross a scan block, and releasing pages every 2 lines is exercised.
    monkeypatch.setattr(bulk, "_BLOCK", block)
    monkeypatch.setattr(bulk, "_RELEASE_EVERY", 2)
    lines = [_obs("a", 5, 80.0), b"", _obs("b", 3, 90.0) + b"\r", b"   ", _obs("c", 4, 70.0),
             _obs("a", 6, 81.0)]
    (tmp_path / "Observation.ndjson").write_bytes(b"\n".join(lines))
    (tmp_path / "Observation.2.ndjson").write_bytes(_obs("d", 1, 60.0) + b"\n")
    source = NDJSONSource(tmp_path)
    got = source.observations(None).observations
    in_time_order = [_obs("d", 1, 60.0), _obs("b", 3, 90.0), _obs("c", 4, 70.0),
                     _obs("a", 5, 80.0), _obs("a", 6, 81.0)]
    want = parse_ndjson(in_time_order).observations
    assert got.resource_id.tolist() == want.resource_id.tolist() == ["d", "b", "c", "a", "a"]
    assert got.value.tolist() == [60.0, 90.0, 70.0, 80.0, 81.0]
    assert got.seq.tolist() == want.seq.tolist()
    window = source.observations(datetime(2024, 1, 1, 3, tzinfo=UTC),
                                 datetime(2024, 1, 1, 5, tzinfo=UTC)).observations
    assert window.value.tolist() == [70.0, 80.0]


def test_fhir_latest_versions_keeps_highest_seq_per_id() -> None:
    rid = np.array(["x", "y", "x", "z", "y", "x"], dtype=object)
    seq = np.array([1, 2, 3, 4, 2, 0], dtype=np.int64)
    assert latest_versions(rid, seq).tolist() == [False, True, True, True, True, False]
    assert latest_versions(np.zeros(0, object), np.zeros(0, np.int64)).shape == (0,)
