"""The NDJSON source's byte-offset index and the vectorized latest-version rule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest
from fhir_support import assert_same

import vigil.fhir_adapter.bulk as bulk
import vigil.fhir_adapter.fast as fast
from vigil.fhir_adapter.bulk import NDJSONSource
from vigil.fhir_adapter.fast import parse_ndjson
from vigil.fhir_adapter.strict import parse_ndjson_strict
from vigil.fhir_adapter.versions import newest


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
    assert_same(parse_ndjson(in_time_order), parse_ndjson_strict(in_time_order))
    assert got.resource_id.tolist() == want.resource_id.tolist() == ["d", "b", "c", "a", "a"]
    assert got.value.tolist() == [60.0, 90.0, 70.0, 80.0, 81.0]
    assert got.seq.tolist() == want.seq.tolist()
    window = source.observations(datetime(2024, 1, 1, 3, tzinfo=UTC),
                                 datetime(2024, 1, 1, 5, tzinfo=UTC)).observations
    assert window.value.tolist() == [70.0, 80.0]


def test_fhir_newest_keeps_highest_seq_per_id_without_other_keys() -> None:
    rid = np.array(["x", "y", "x", "z", "y", "x"], dtype=object)
    seq = np.array([1, 2, 3, 4, 2, 0], dtype=np.int64)
    assert newest(rid, seq).tolist() == [False, True, True, True, True, False]
    assert newest(np.zeros(0, object), np.zeros(0, np.int64)).shape == (0,)


def test_fhir_ndjson_columns_in_chunks_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # Inline rows (the fast path) interleaved with general-path rows (a preliminary value is
    # skipped, a component panel and a first-seen subject take the general path): columns
    # made every 2 inline values must equal one block, in reading order, counters included.
    panel = orjson.loads(_obs("bp", 2, 0.0))
    del panel["valueQuantity"]
    panel["code"] = {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}
    panel["component"] = [
        {"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
         "valueQuantity": {"value": v, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        for code, v in (("8480-6", 120.0), ("8462-4", 80.0))]
    other = orjson.loads(_obs("q", 7, 75.0))
    other["subject"] = {"reference": "Patient/p2"}
    lines = [_obs("a", 1, 80.0), _obs("b", 2, 81.0), orjson.dumps(panel), _obs("c", 3, 82.0),
             _obs("d", 4, 83.0, status="preliminary"), _obs("e", 5, 84.0),
             orjson.dumps(other), _obs("f", 6, 85.0), _obs("g", 7, 86.0)]
    whole = parse_ndjson(lines)
    monkeypatch.setattr(fast, "_FLUSH", 2 * fast._WIDTH)
    chunked = parse_ndjson(lines)
    assert chunked.observations.resource_id.tolist() == ["a", "b", "bp", "bp", "c", "e", "q",
                                                        "f", "g"]
    for name in ("patient", "variable", "effective", "value", "resource_id", "last_updated",
                 "seq", "unit"):
        x, y = getattr(chunked.observations, name), getattr(whole.observations, name)
        assert x.dtype == y.dtype and x.tolist() == y.tolist(), name
    assert chunked.counts == whole.counts and chunked.counts.values == 9
    assert chunked.counts.skipped_status == 1


def test_fhir_searchset_with_server_stamps_maps_inline_without_caching_them() -> None:
    # A server stamps every resource apart (meta.lastUpdated to the millisecond): the fast
    # parser maps them inline, caches none of them, and equals the strict parser.
    from vigil.fhir_adapter import parse_fast, parse_strict
    from vigil.fhir_adapter.mapping import VALID_INSTANTS

    entries = []
    for i in range(50):
        o = orjson.loads(_obs(f"s{i}", 3, 60.0 + i))
        o["meta"] = {"lastUpdated": f"2024-01-02T00:00:{i // 10:02d}.{i:03d}Z"}
        entries.append({"fullUrl": f"http://x/fhir/Observation/s{i}", "resource": o})
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    before = len(VALID_INSTANTS)
    got = parse_fast([bundle])
    assert len(VALID_INSTANTS) - before <= 2  # the effective time, the first stamp
    want = parse_strict([bundle])
    for name in ("patient", "variable", "effective", "value", "resource_id", "last_updated"):
        assert getattr(got.observations, name).tolist() == getattr(want.observations,
                                                                   name).tolist(), name
    assert got.observations.last_updated[-1] == got.observations.last_updated[0] + 4_049_000
    # one str per patient, shared by its values (not one per value)
    assert len({id(p) for p in got.observations.patient}) == 1
    assert got.counts == want.counts and got.counts.values == 50
