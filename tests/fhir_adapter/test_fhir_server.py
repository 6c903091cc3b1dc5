"""Integration tests against a real FHIR R4 server (sekmet-fhir 0.1.1, unpatched).

Faults (429, 500, timeouts, malformed bodies, endless paging) are injected by an
``httpx.MockTransport`` placed in front of the real server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhir_support import FaultyClient, Handler, assert_same, pick_patients, running_server

from vigil.core.errors import FHIRTransportError
from vigil.features import grid_from_frame
from vigil.fhir_adapter import (
    FHIRHttp,
    FHIRSettings,
    NDJSONSource,
    RESTSource,
    RESTWriter,
    bulk_export,
    grid_from_observations,
    parse_ndjson,
    parse_ndjson_strict,
    risk_assessment,
    write_synth,
)

pytestmark = pytest.mark.slow

@pytest.fixture
def faulty() -> Iterator[Callable[[Handler], FaultyClient]]:
    made: list[FaultyClient] = []

    def make(handler: Handler) -> FaultyClient:
        made.append(FaultyClient(handler))
        return made[-1]

    yield make
    for client in made:
        client.close()


def settings(base: str, **kw: Any) -> FHIRSettings:
    return FHIRSettings(base_url=base, backoff_s=0.01, max_backoff_s=30.0, **kw)


@pytest.fixture(scope="module")
def loaded(fhir_server: str, sample, tmp_path_factory) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Six sample patients written by synth and loaded with transaction Bundles."""
    frame = pick_patients(sample.frame, 6)
    out = tmp_path_factory.mktemp("synth")
    summary = write_synth(frame, out, bundles=True, bundle_size=400)
    with FHIRHttp(settings(fhir_server)) as http:
        for name in summary.files:
            if name.startswith("bundles/"):
                answer = http.json("POST", fhir_server, body=(out / name).read_bytes())
                assert answer["type"] == "transaction-response"
                assert all(e["response"]["status"].startswith(("200", "201"))
                           for e in answer["entry"])
    return {"frame": frame, "out": out, "summary": summary}


def test_check_and_census_match_the_synthesized_patients(fhir_server: str, loaded) -> None:
    frame = loaded["frame"]
    with RESTSource(settings(fhir_server)) as source:
        caps = source.check()
        census = source.census()
    assert caps.fhir_version == "4.0.1" and caps.software == "SEKMET FHIR R4 Tester"
    first = frame.groupby("patient_id").first()
    assert census.patients == tuple(first.index)
    for stay in census.stays:
        row = first.loc[stay.patient]
        expected_unit = "MICU" if row["Unit1"] == 1 else "SICU" if row["Unit2"] == 1 else None
        assert stay.unit == expected_unit
        assert stay.age == pytest.approx(float(row["Age"]), abs=1e-4)
        assert stay.gender == ("male" if row["Gender"] == 1 else "female")
        assert stay.hosp_adm_time == pytest.approx(float(row["HospAdmTime"]), abs=1e-3)
        assert stay.encounter == f"{stay.patient}-icu"


def _key(batch) -> list[tuple[str, int, float]]:  # type: ignore[no-untyped-def]
    return sorted(zip(batch.resource_id, batch.variable.tolist(), batch.value.tolist(),
                      strict=True))


def test_incremental_fetch_pages_and_rebuilds_the_rows(fhir_server: str, loaded, faulty) -> None:
    frame = loaded["frame"]
    pages: list[str] = []

    def count(request: httpx.Request, forward):  # type: ignore[no-untyped-def]
        if request.url.path.endswith("/Observation"):
            pages.append(str(request.url))
        return forward(request)

    source = RESTSource(settings(fhir_server, page_size=60, concurrency=2,
                                 patients_per_request=2), client=faulty(count))
    census = source.census()
    got = source.observations(None, patients=census.patients)
    expected = parse_ndjson(loaded["out"] / "Observation.ndjson")
    assert len(pages) >= 3 * 3  # three patient chunks, several pages each
    assert len(got.observations) == len(expected.observations) > 1000
    assert _key(got.observations) == _key(expected.observations)
    assert {q.resource_id for q in got.quarantine} == {q.resource_id for q in expected.quarantine}

    original = grid_from_frame(frame)
    last = [int(original.hours[original.starts[i + 1] - 1]) for i in range(original.n_patients)]
    grid = grid_from_observations(census, got.observations, until=[
        s.icu_admission + timedelta(hours=h) for s, h in zip(census.stays, last, strict=True)])
    for i in range(original.n_patients):
        a = original.values[original.starts[i]:original.starts[i + 1]]
        first_hour = int(original.hours[original.starts[i]])
        b = grid.values[grid.starts[i] + first_hour - 1:grid.starts[i + 1]]
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-3)

    # A late-charted value with an old effective time, and a corrected one, come with the next poll.
    assert got.watermark is not None
    pid = census.stays[0].patient
    old = census.stays[0].icu_admission + timedelta(hours=1, minutes=30)
    late = {"resourceType": "Observation", "id": f"{pid}-late-1", "status": "final",
            "category": [{"coding": [{"code": "laboratory", "system":
                          "http://terminology.hl7.org/CodeSystem/observation-category"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2524-7"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": old.isoformat(),
            "valueQuantity": {"value": 18.0, "unit": "mg/dL",
                              "system": "http://unitsofmeasure.org", "code": "mg/dL"}}
    fixed = orjson.loads(next(line for line in (loaded["out"] / "Observation.ndjson").read_bytes()
                              .splitlines() if f'"Patient/{pid}"'.encode() in line
                              and b'"8867-4"' in line))
    fixed["status"], fixed["valueQuantity"]["value"] = "corrected", 99.0
    for resource in (late, fixed):
        source.http.put(resource)
    with RESTSource(settings(fhir_server, overlap=timedelta(0))) as no_overlap:
        new = no_overlap.observations(got.watermark, patients=census.patients)
    assert sorted(new.observations.resource_id.tolist()) == sorted([late["id"], fixed["id"]])
    lactate = new.observations.value[new.observations.resource_id == late["id"]]
    assert lactate == pytest.approx([18.0 / 9.008])  # mg/dL -> mmol/L
    assert new.observations.value[new.observations.resource_id == fixed["id"]].tolist() == [99.0]
    assert new.watermark is not None and new.watermark > got.watermark
    again = source.observations(got.watermark, patients=census.patients)  # 15 min overlap
    assert len(again.observations) == len(got.observations) + 1
    source.close()


def test_writeback_twice_leaves_one_resource(fhir_server: str, loaded) -> None:
    when = datetime(2026, 1, 1, 12, 15, tzinfo=UTC)
    ra = risk_assessment(site="a", deployment="test",
                         patient=loaded["frame"]["patient_id"].iloc[0], encounter=None,
                         model_name="sepsis-gbm", model_version="1.2.0", scored_at=when,
                         probability=0.37, threshold=0.3, basis=["obs-1"])
    with RESTWriter(settings(fhir_server)) as writer:
        writer.write([ra])
        writer.write([ra])
        found = writer.http.json("GET", "RiskAssessment", params=[("_id", ra["id"])])
        stored = writer.http.json("GET", f"RiskAssessment/{ra['id']}")
    assert found["total"] == 1
    assert stored["meta"]["versionId"] == "2"
    assert stored["prediction"][0]["probabilityDecimal"] == 0.37
    assert stored["prediction"][0]["qualitativeRisk"]["coding"][0]["code"] == "high"


def test_bulk_export_reads_like_rest(fhir_server: str, loaded, tmp_path: Path) -> None:
    with FHIRHttp(settings(fhir_server)) as http:
        # a short real pause per poll: 600 polls give the server about a minute to export,
        # however fast it answers the status requests
        manifest = bulk_export(http, tmp_path, sleep=lambda s: time.sleep(min(s, 0.1)))
    with RESTSource(settings(fhir_server)) as rest:
        census_rest = rest.census()
    assert {o["type"] for o in manifest["output"]} >= {"Patient", "Encounter", "Observation"}
    assert all((tmp_path / o["url"]).is_file() for o in manifest["output"])
    with NDJSONSource(tmp_path) as source:
        assert source.census().stays == census_rest.stays
        bulk = source.observations(None)
    for name in sorted(o["url"] for o in manifest["output"] if o["type"] == "Observation"):
        # what a real server exports (its meta.versionId included) reads the same both ways
        assert_same(parse_ndjson(tmp_path / name), parse_ndjson_strict(tmp_path / name))
    synth = parse_ndjson(loaded["out"] / "Observation.ndjson")
    assert set(synth.observations.resource_id) <= set(bulk.observations.resource_id)


# --- faults injected in front of the real server -------------------------------------------


def test_429_is_retried_after_retry_after(fhir_server: str, loaded, faulty) -> None:
    seen: set[str] = set()
    sleeps: list[float] = []

    def throttle(request: httpx.Request, forward):  # type: ignore[no-untyped-def]
        if request.url.path not in seen:
            seen.add(request.url.path)
            return httpx.Response(429, headers={"Retry-After": "3"})
        return forward(request)

    with RESTSource(settings(fhir_server), client=faulty(throttle), sleep=sleeps.append) as source:
        census = source.census()
    assert len(census) == 6
    assert sleeps == [3.0, 3.0]  # Location search, then Encounter search


def test_500_is_retried_with_backoff(fhir_server: str, loaded, faulty) -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def flaky(request: httpx.Request, forward):  # type: ignore[no-untyped-def]
        calls.append(1)
        return httpx.Response(500) if len(calls) <= 2 else forward(request)

    with RESTSource(settings(fhir_server), client=faulty(flaky), sleep=sleeps.append) as source:
        assert source.check().fhir_version == "4.0.1"
    assert sleeps == [0.01, 0.02]


def test_timeouts_exhaust_the_retries(fhir_server: str, faulty) -> None:
    calls: list[int] = []

    def hang(request: httpx.Request, forward):  # type: ignore[no-untyped-def]
        calls.append(1)
        raise httpx.ReadTimeout("timed out", request=request)

    with RESTSource(settings(fhir_server, retries=2), client=faulty(hang),
                    sleep=lambda s: None) as source:
        with pytest.raises(FHIRTransportError,
                           match="failed after 3 attempts .ReadTimeout") as info:
            source.observations(None, patients=["p000001"])
    assert len(calls) == 3
    assert info.value.url == f"{fhir_server}/Observation"  # no query string: it names patients


def test_malformed_body_is_an_error_not_a_crash(fhir_server: str, loaded, faulty) -> None:
    def truncate(request: httpx.Request, forward):  # type: ignore[no-untyped-def]
        resp = forward(request)
        return httpx.Response(resp.status_code, content=resp.content[: len(resp.content) // 2])

    with RESTSource(settings(fhir_server), client=faulty(truncate)) as source:
        with pytest.raises(FHIRTransportError, match="not JSON") as info:
            source.census()
    assert info.value.status == 200


@pytest.mark.parametrize("mode", ["endless", "repeat", "elsewhere"])
def test_broken_paging_stops(fhir_server: str, loaded, faulty, mode: str) -> None:
    counter = iter(range(10_000))

    def relink(request: httpx.Request, forward):  # type: ignore[no-untyped-def]
        resp = forward(request)
        doc = orjson.loads(resp.content)
        k = next(counter)
        target = {"endless": f"{fhir_server}/Observation?_count={5 + k}",
                  "repeat": f"{fhir_server}/Observation?_count=7",
                  "elsewhere": "http://127.0.0.2:9/fhir/Observation?_count=5"}[mode]
        doc["link"] = [{"relation": "next", "url": target}]
        return httpx.Response(200, content=orjson.dumps(doc))

    message = {"endless": "paging did not end after 6 pages", "repeat": "repeats an earlier page",
               "elsewhere": "outside the FHIR base URL"}[mode]
    with RESTSource(settings(fhir_server, max_pages=6), client=faulty(relink)) as source:
        with pytest.raises(FHIRTransportError, match=message):
            source.observations(None)


# --- authentication against the real server ---------------------------------------------------


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[str, bytes]:
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> Iterator[dict[str, Any]]:  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("sekmet-auth")
    keys = {"RS384": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES384": ec.generate_private_key(ec.SECP384R1())}
    private = {}
    clients = ""
    for alg, key in keys.items():
        private[alg], public = _pem(key)
        (work / f"{alg}.pub.pem").write_bytes(public)
        clients += (f"    - client_id: vigil-{alg.lower()}\n"
                    f"      public_key_path: {work / f'{alg}.pub.pem'}\n"
                    "      scopes: system/*.*\n")
    extra = ("server_auth:\n  types: [bearer, smart]\n  tokens: [static-secret-token-123]\n"
             "  token_lifetime: 600\n  smart_clients:\n" + clients)
    with running_server(work, extra_yaml=extra) as base:
        yield {"base": base, "private": private}


def test_no_credentials_is_refused(auth_server) -> None:  # type: ignore[no-untyped-def]
    with RESTSource(settings(auth_server["base"])) as source:
        with pytest.raises(FHIRTransportError, match="HTTP 401") as info:
            source.census()
    assert info.value.status == 401


def test_static_bearer_token(auth_server, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    with RESTSource(settings(auth_server["base"], auth="bearer",
                             bearer_token="static-secret-token-123")) as source:
        assert source.check().fhir_version == "4.0.1"
        shown = caplog.text + repr(source) + repr(source.settings) + str(source.settings)
    assert "static-secret-token-123" not in shown


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_smart_backend_services(auth_server, alg: str, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    key = auth_server["private"][alg]
    cfg = settings(auth_server["base"], auth="smart", smart={
        "client_id": f"vigil-{alg.lower()}", "key_id": "k1", "algorithm": alg,
        "private_key_pem": key, "scope": "system/*.rs system/RiskAssessment.cu"})
    ra = risk_assessment(site="a", deployment="test", patient="p1", model_name="m",
                         model_version="1", probability=0.1,
                         scored_at=datetime(2026, 1, 1, tzinfo=UTC))
    with RESTSource(cfg) as source, RESTWriter(cfg, credentials=source.http.credentials) as writer:
        source.check()
        source.census()
        source.observations(None)
        assert writer.write([ra]).written == 1
        assert source.http.credentials.fetches == 1  # type: ignore[attr-defined]
    token_part = key.splitlines()[5]
    assert token_part not in caplog.text and token_part not in repr(cfg)
    assert "Bearer" not in caplog.text


def test_smart_with_an_unregistered_key_fails_cleanly(auth_server) -> None:  # type: ignore[no-untyped-def]
    other, _ = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    cfg = settings(auth_server["base"], auth="smart", smart={
        "client_id": "vigil-rs384", "key_id": "k1", "algorithm": "RS384", "private_key_pem": other})
    with RESTSource(cfg) as source:
        with pytest.raises(FHIRTransportError,
                           match="token request refused .HTTP 401, error 'invalid_client'") as info:
            source.census()
    assert other.splitlines()[3] not in str(info.value)
