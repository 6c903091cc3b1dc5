"""No silent loss: ignored codes are counted by code, census files are read line by line,
the NDJSON source's watermark cannot be frozen by a bad time and misses no late line."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import orjson
from fhir_support import observation, parse_all
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.fhir_adapter import NDJSONSource, build_census, parse_fast
from vigil.fhir_adapter.accumulator import Accumulator
from vigil.fhir_adapter.bulk import ndjson_census, ndjson_files, read_resources
from vigil.fhir_adapter.records import MAX_IGNORED_CODES, IngestCounts, to_micros

ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
SNOMED = "http://snomed.info/sct"


def unknown(rid: str, code: str, system: str = "urn:site:local") -> dict:
    obs = observation(rid=rid)
    obs["code"] = {"coding": [{"system": system, "code": code}]}
    return obs


# -- ignored codes ------------------------------------------------------------------------------


def test_ignored_observations_are_counted_by_code_in_every_reader() -> None:
    resources = [observation(rid="hr"), unknown("u1", "HR-LOCAL"), unknown("u2", "HR-LOCAL"),
                 unknown("u3", "94500-6", system="http://loinc.org"),
                 {**unknown("u4", "x"), "code": {"text": "no coding"}}]
    result = parse_all(resources)
    c = result.counts
    assert c.resources == 5 and c.values == 1 and c.ignored_unknown_code == 4
    assert c.ignored_codes == (("urn:site:local|HR-LOCAL", 2), ("(no coding)", 1),
                               ("http://loinc.org|94500-6", 1))
    assert c.quarantined == 0
    assert c.top_ignored(1) == {"urn:site:local|HR-LOCAL": 2}
    assert "ignored_codes" not in c.as_dict()  # the integer counters only, as before


def test_ignored_codes_are_bounded_and_keep_the_total() -> None:
    acc = Accumulator()
    for i in range(MAX_IGNORED_CODES + 50):
        acc.ignore(f"urn:x|{i}")
    acc.ignore("urn:x|0")
    codes = acc.result().counts.ignored_codes
    assert len(codes) == MAX_IGNORED_CODES  # "other" included
    assert dict(codes)["other"] == 51 and dict(codes)["urn:x|0"] == 2
    assert sum(n for _, n in codes) == acc.n_unknown == MAX_IGNORED_CODES + 51
    both = acc.result().counts + acc.result().counts
    assert len(both.ignored_codes) <= MAX_IGNORED_CODES
    assert sum(n for _, n in both.ignored_codes) == 2 * acc.n_unknown


def test_counts_add_merges_codes() -> None:
    a = IngestCounts(ignored_unknown_code=2, ignored_codes=(("s|a", 2),))
    b = IngestCounts(ignored_unknown_code=3, ignored_codes=(("s|b", 2), ("s|a", 1)))
    assert (a + b).ignored_codes == (("s|a", 3), ("s|b", 2))
    assert (a + b).ignored_unknown_code == 5


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["urn:a", "http://loinc.org", "urn:b"]),
                          st.text("ABCxyz0123-", min_size=1, max_size=8)), max_size=12),
       st.integers(0, 5))
def test_unknown_codes_never_change_the_other_values(extra, where) -> None:
    known = [observation(rid=f"k{i}", value=60.0 + i, when=f"2024-03-01T1{i}:00:00Z")
             for i in range(5)]
    noise = [unknown(f"n{i}", code, system=system) for i, (system, code) in enumerate(extra)
             if not (system == "http://loinc.org")]
    base = parse_fast(known)
    mixed = parse_fast(known[:where] + noise + known[where:])
    assert mixed.observations.value.tolist() == base.observations.value.tolist()
    assert mixed.observations.resource_id.tolist() == base.observations.resource_id.tolist()
    assert mixed.counts.ignored_unknown_code == len(noise)
    assert mixed.quarantine == base.quarantine


# -- census files --------------------------------------------------------------------------------


def loc(lid: str, *, system: str = ROLE, codes: tuple[str, ...] = (), part_of: str | None = None
        ) -> dict:
    d: dict = {"resourceType": "Location", "id": lid}
    if codes:
        d["type"] = [{"coding": [{"system": system, "code": c} for c in codes]}]
    if part_of:
        d["partOf"] = {"reference": f"Location/{part_of}"}
    return d


def enc(eid: str, patient: str, location: str, start: str = "2024-01-01T00:00:00Z") -> dict:
    return {"resourceType": "Encounter", "id": eid, "status": "in-progress",
            "subject": {"reference": f"Patient/{patient}"}, "period": {"start": start},
            "location": [{"location": {"reference": f"Location/{location}"},
                          "period": {"start": start}}]}


def test_a_bed_part_of_an_icu_is_in_the_icu_and_gets_its_unit() -> None:
    locations = [loc("icu", codes=("ICU", "SICU")), loc("ward", part_of="icu"),
                 loc("room", part_of="ward"), loc("bed", part_of="room"),
                 loc("ward-bed", part_of="general"), loc("general", codes=("HU",))]
    census = build_census([enc("e1", "a", "bed"), enc("e2", "b", "ward-bed")], [], locations)
    assert [(s.patient, s.unit) for s in census.stays] == [("a", "SICU")]


def test_partof_cycles_end() -> None:
    locations = [loc("x", part_of="y"), loc("y", part_of="x")]
    assert build_census([enc("e1", "a", "x")], [], locations).stays == ()


def test_snomed_icu_type_is_an_icu_only_in_snomed() -> None:
    locations = [loc("s", system=SNOMED, codes=("309904001",)),
                 loc("other", system="urn:local", codes=("309904001",))]
    census = build_census([enc("e1", "a", "s"), enc("e2", "b", "other")], [], locations)
    assert [s.patient for s in census.stays] == ["a"]
    assert census.stays[0].unit is None


def test_malformed_census_lines_are_quarantined_and_the_rest_read(tmp_path) -> None:
    good = [enc("e1", "a", "icu"), enc("e2", "b", "icu")]
    lines = [orjson.dumps(good[0]), orjson.dumps(good[1])[:25],  # truncated
             b"\xef\xbb\xbf" + orjson.dumps(enc("e3", "c", "icu")),  # BOM
             orjson.dumps({"resourceType": "Patient", "id": "p-x"}),  # foreign
             b"[1, 2]", b"", orjson.dumps(enc("e4", "d", "icu"))]
    (tmp_path / "Encounter.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "Location.ndjson").write_bytes(orjson.dumps(loc("icu", codes=("ICU",))))
    (tmp_path / "Patient.ndjson").write_bytes(b"{\"resourceType\": \"Patient\", \"id\"")
    (tmp_path / "Observation.ndjson").write_bytes(b"")
    census = ndjson_census(ndjson_files(tmp_path))
    assert [s.patient for s in census.stays] == ["a", "d"]
    reasons = [(q.resource_type, q.reason) for q in census.quarantine]
    assert reasons == [
        ("Encounter", "malformed NDJSON line 2 of Encounter.ndjson: not JSON (truncated?)"),
        ("Encounter", "malformed NDJSON line 3 of Encounter.ndjson: starts with a byte-order "
                      "mark (NDJSON is UTF-8 without one)"),
        ("Encounter", "line 4 of Encounter.ndjson: expected a Encounter, got 'Patient'"),
        ("Encounter", "malformed NDJSON line 5 of Encounter.ndjson: not a JSON object"),
        ("Patient", "malformed NDJSON line 1 of Patient.ndjson: not JSON (truncated?)"),
    ]
    assert all("p-x" not in r and "c" != r for _, r in reasons)
    source = NDJSONSource(tmp_path)
    assert source.census().quarantine == census.quarantine


def test_read_resources_of_no_file() -> None:
    assert read_resources([], "Patient") == ([], [])


# -- the NDJSON source's watermark ---------------------------------------------------------------


def _write(path, resources, *, mode="wb", mtime: float | None = None) -> None:
    with path.open(mode) as fh:
        for r in resources:
            fh.write(orjson.dumps(r) + b"\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _source(tmp_path) -> NDJSONSource:
    _write(tmp_path / "Encounter.ndjson", [enc("e1", "p", "icu")])
    return NDJSONSource(tmp_path)


def test_a_far_future_stamp_does_not_push_the_watermark_past_the_file(tmp_path) -> None:
    obs = tmp_path / "Observation.ndjson"
    written = time.time() - 600
    _write(obs, [observation(rid="a", patient="p", meta={"lastUpdated": "2024-03-01T10:00:00Z"}),
                 observation(rid="future", patient="p",
                             meta={"lastUpdated": "2999-01-01T00:00:00Z"})], mtime=written)
    source = _source(tmp_path)
    first = source.observations(None)
    assert sorted(first.observations.resource_id.tolist()) == ["a", "future"]
    assert first.watermark is not None
    assert to_micros(first.watermark) <= int(written * 1e6) + 1
    # the next value is read: the feed is not frozen behind the year 2999
    _write(obs, [observation(rid="b", patient="p", meta={"lastUpdated": "2024-03-01T11:00:00Z"})],
           mode="ab", mtime=written + 60)
    second = source.observations(first.watermark)
    assert second.observations.resource_id.tolist() == ["b"]
    assert second.watermark > first.watermark


def test_a_value_written_late_with_an_old_time_is_read(tmp_path) -> None:
    obs = tmp_path / "Observation.ndjson"
    t0 = time.time() - 3600
    _write(obs, [observation(rid="a", patient="p", when="2024-03-01T10:00:00Z"),
                 observation(rid="b", patient="p", when="2024-03-01T12:00:00Z")], mtime=t0)
    source = _source(tmp_path)
    first = source.observations(None)
    assert first.watermark == datetime(2024, 3, 1, 12, tzinfo=UTC)
    assert source.observations(first.watermark).observations.resource_id.tolist() == []
    # charted late: an effective time (and no lastUpdated) before the watermark
    _write(obs, [observation(rid="late", patient="p", when="2024-03-01T11:00:00Z")], mode="ab",
           mtime=t0 + 60)
    second = source.observations(first.watermark)
    assert second.observations.resource_id.tolist() == ["late"]
    assert second.observations.effective.tolist() == [to_micros(datetime(2024, 3, 1, 11,
                                                                         tzinfo=UTC))]
    # once read, not again; earlier lines keep their keys
    assert source.observations(second.watermark).observations.resource_id.tolist() == []
    assert sorted(source.observations(None).observations.resource_id.tolist()) == [
        "a", "b", "late"]


def test_a_late_line_beyond_until_waits_for_a_later_call(tmp_path) -> None:
    obs = tmp_path / "Observation.ndjson"
    t0 = time.time() - 3600
    _write(obs, [observation(rid="a", patient="p", when="2024-03-01T10:00:00Z")], mtime=t0)
    source = _source(tmp_path)
    mark = datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert source.observations(None, mark).observations.resource_id.tolist() == ["a"]
    _write(obs, [observation(rid="late", patient="p", when="2024-03-01T09:00:00Z")], mode="ab",
           mtime=t0 + 60)
    source.observations(mark, mark + timedelta(minutes=1))  # re-index; the line is not due yet
    _write(obs, [observation(rid="c", patient="p", when="2024-03-01T10:30:00Z")], mode="ab",
           mtime=t0 + 120)
    later = source.observations(mark)
    assert sorted(later.observations.resource_id.tolist()) == ["c", "late"]


# -- the REST census and the default search ------------------------------------------------------


def _rest(handler, **kw):
    import httpx

    from vigil.fhir_adapter import FHIRSettings, RESTSource

    return RESTSource(FHIRSettings(base_url="http://ehr.test/fhir", retries=0, **kw),
                      client=httpx.Client(transport=httpx.MockTransport(handler)))


def _bundle(resources):
    return {"resourceType": "Bundle", "type": "searchset",
            "entry": [{"resource": r} for r in resources]}


def test_rest_census_finds_stays_in_beds_inside_a_snomed_icu():
    import httpx

    locations = {"icu": loc("icu", system=SNOMED, codes=("309904001",)),
                 "ward": loc("ward", part_of="icu"), "bed": loc("bed", part_of="ward")}
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        q = dict(request.url.params)
        seen.append((request.url.path.rsplit("/", 1)[-1], q))
        if request.url.path.endswith("/Location") and "type" in q:
            return httpx.Response(200, json=_bundle([locations["icu"]]))
        if request.url.path.endswith("/Location"):
            parents = {v.split("/")[1] for v in q["partof"].split(",")}
            return httpx.Response(200, json=_bundle(
                [r for r in locations.values() if r.get("partOf", {}).get("reference", "")
                 .split("/")[-1] in parents]))
        wanted = {v.split("/")[1] for v in q["location"].split(",")}
        return httpx.Response(200, json=_bundle(
            [enc("e1", "a", "bed")] if "bed" in wanted else []))

    with _rest(handler) as source:
        census = source.census()
    assert [s.patient for s in census.stays] == ["a"]
    assert seen[0][1]["type"] == "ICU,MICU,SICU,http://snomed.info/sct|309904001"
    assert [q["partof"] for p, q in seen if "partof" in q] == [
        "Location/icu", "Location/ward", "Location/bed"]
    assert seen[-1][1]["location"] == "Location/icu,Location/ward,Location/bed"


def test_rest_census_without_partof_search_falls_back_to_the_icus(caplog):
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        q = dict(request.url.params)
        if "partof" in q:
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "not-supported"}]})
        if "type" in q:
            return httpx.Response(200, json=_bundle([loc("icu", codes=("ICU",))]))
        return httpx.Response(200, json=_bundle([enc("e1", "a", "icu")]))

    with _rest(handler) as source:
        assert [s.patient for s in source.census().stays] == ["a"]
    assert "cannot search Location?partof=" in caplog.text


def test_rest_observations_ask_for_no_category_by_default():
    import httpx

    queries = []

    def handler(request: httpx.Request) -> httpx.Response:
        queries.append(dict(request.url.params))
        return httpx.Response(200, json=_bundle([]))

    with _rest(handler) as source:
        source.observations(None, None, patients=["a"])
    with _rest(handler, categories=("vital-signs",)) as source:
        source.observations(None, None, patients=["a"])
    assert "category" not in queries[0] and queries[1]["category"] == "vital-signs"
