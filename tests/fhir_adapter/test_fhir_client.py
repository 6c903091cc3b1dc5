"""The REST client against mocked transports: auth (bearer, SMART), retries, queries, secrets."""

from __future__ import annotations

import base64
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from fhir_support import observation
from pydantic import ValidationError

from vigil.core.errors import ConfigError, FHIRError, FHIRTransportError
from vigil.fhir_adapter import FHIRSettings, RESTSource, SMARTBackendAuth, SMARTSettings, Source

BASE = "https://ehr.example.org/fhir"
TOKEN_URL = "https://ehr.example.org/auth/token"


def b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def pem(key: Any) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def bundle(resources: list[dict], next_url: str | None = None) -> httpx.Response:
    doc = {"resourceType": "Bundle", "type": "searchset",
           "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
           "link": [{"relation": "next", "url": next_url}] if next_url else []}
    return httpx.Response(200, content=orjson.dumps(doc))


# --- settings and secrets ---------------------------------------------------------------------


def test_secrets_never_show(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-token-value"
    key = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    cfg = FHIRSettings(base_url=BASE + "/", auth="bearer", bearer_token=secret,
                       smart=SMARTSettings(client_id="c", key_id="k", private_key_pem=key))
    shown = repr(cfg) + str(cfg) + cfg.model_dump_json() + str(cfg.model_dump())
    assert secret not in shown and key.splitlines()[2] not in shown
    assert cfg.base_url == BASE
    with pytest.raises(ValidationError) as info:
        FHIRSettings(base_url=BASE, auth="smart", bearer_token=secret)
    assert "needs a [smart] section" in str(info.value) and secret not in str(info.value)
    with pytest.raises(ValidationError, match="exactly one of private_key_pem and private_key_pa"):
        SMARTSettings(client_id="c", key_id="k")

    caplog.set_level(logging.DEBUG)
    sent: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers["Authorization"])
        return httpx.Response(503, content=b'{"resourceType":"OperationOutcome","issue":'
                                           b'[{"severity":"error","code":"transient"}]}')

    with RESTSource(cfg, client=httpx.Client(transport=httpx.MockTransport(refuse)),
                    sleep=lambda s: None) as source:
        with pytest.raises(FHIRTransportError) as err:
            source.observations(None, patients=["p-123"])
    assert sent[0] == f"Bearer {secret}" and len(sent) == 5
    text = str(err.value) + repr(err.value) + caplog.text + repr(source)
    assert "HTTP 503" in str(err.value) and "issue codes: transient" in str(err.value)
    assert secret not in text and "p-123" not in text
    assert err.value.url == BASE + "/Observation" and err.value.status == 503


# --- SMART Backend Services --------------------------------------------------------------------


class SmartServer:
    """A mocked token endpoint that verifies assertions with the registered public key."""

    def __init__(self, key: Any, alg: str, *, lifetime: int = 300) -> None:
        self.key, self.alg, self.lifetime = key.public_key(), alg, lifetime
        self.claims: list[dict] = []
        self.forms: list[dict] = []
        self.fhir_calls = 0
        self.reject_next_fhir = False

    def verify(self, assertion: str) -> dict:
        head, body, sig = assertion.split(".")
        header, claims = orjson.loads(b64decode(head)), orjson.loads(b64decode(body))
        assert header == {"alg": self.alg, "kid": "key-1", "typ": "JWT"}
        data, raw = f"{head}.{body}".encode(), b64decode(sig)
        if self.alg == "RS384":
            self.key.verify(raw, data, padding.PKCS1v15(), hashes.SHA384())
        else:
            assert len(raw) == 96
            der = encode_dss_signature(int.from_bytes(raw[:48], "big"),
                                       int.from_bytes(raw[48:], "big"))
            self.key.verify(der, data, ec.ECDSA(hashes.SHA384()))
        return claims

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(200, json={
                "token_endpoint": TOKEN_URL,
                "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"]})
        if str(request.url) == TOKEN_URL:
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            self.forms.append(form)
            try:
                self.claims.append(self.verify(form["client_assertion"]))
            except InvalidSignature:
                return httpx.Response(401, json={"error": "invalid_client"})
            return httpx.Response(200, json={"access_token": f"tok-{len(self.claims)}",
                                             "token_type": "bearer", "expires_in": self.lifetime})
        self.fhir_calls += 1
        if self.reject_next_fhir:
            self.reject_next_fhir = False
            return httpx.Response(401)
        assert request.headers["Authorization"] == f"Bearer tok-{len(self.claims)}"
        return bundle([])


@pytest.mark.parametrize(("alg", "make_key"), [
    ("RS384", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("ES384", lambda: ec.generate_private_key(ec.SECP384R1())),
])
def test_smart_assertion_signature_claims_cache_and_refresh(alg: str, make_key) -> None:  # type: ignore[no-untyped-def]
    key = make_key()
    server = SmartServer(key, alg)
    now = [1_000_000.0]
    cfg = FHIRSettings(base_url=BASE, auth="smart", smart=SMARTSettings(
        client_id="vigil-a", key_id="key-1", algorithm=alg, private_key_pem=pem(key)))
    auth = SMARTBackendAuth(cfg.smart, BASE, clock=lambda: now[0])  # type: ignore[arg-type]
    with RESTSource(cfg, client=httpx.Client(transport=httpx.MockTransport(server)),
                    credentials=auth) as source:
        for _ in range(3):
            source.observations(None)
        assert auth.fetches == 1
        now[0] += 239  # 300 s token, refreshed 60 s before expiry
        source.observations(None)
        assert auth.fetches == 1
        now[0] += 2
        source.observations(None)
        assert auth.fetches == 2
        server.reject_next_fhir = True  # the server revoked the token: fetch a new one once
        source.observations(None)
        assert auth.fetches == 3
    first = server.claims[0]
    assert first["iss"] == first["sub"] == "vigil-a" and first["aud"] == TOKEN_URL
    assert 0 < first["exp"] - first["iat"] <= 300
    assert len({c["jti"] for c in server.claims}) == 3
    form = server.forms[0]
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "system/Observation.rs" in form["scope"]
    assert "tok-" not in repr(auth)


def test_smart_configuration_errors() -> None:
    rsa_key = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    wrong = SMARTSettings(client_id="c", key_id="k", algorithm="ES384", private_key_pem=rsa_key,
                          token_url=TOKEN_URL)
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(500)))
    with pytest.raises(ConfigError, match="does not fit algorithm ES384") as info:
        SMARTBackendAuth(wrong, BASE).authorization(client)
    assert rsa_key.splitlines()[1] not in str(info.value)
    garbage = SMARTSettings(client_id="c", key_id="k", private_key_pem="not a key",
                            token_url=TOKEN_URL)
    with pytest.raises(ConfigError, match="could not read the SMART private key"):
        SMARTBackendAuth(garbage, BASE).authorization(client)
    config = {"token_endpoint": TOKEN_URL,
              "token_endpoint_auth_signing_alg_values_supported": ["RS384"]}
    only_rs = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200,
                                                                                  json=config)))
    es = SMARTSettings(client_id="c", key_id="k", algorithm="ES384", private_key_pem=rsa_key)
    with pytest.raises(ConfigError, match="does not accept ES384 assertions"):
        SMARTBackendAuth(es, BASE).authorization(only_rs)
    client.close()
    only_rs.close()


# --- retries, capabilities, queries -----------------------------------------------------------


def test_retry_after_as_http_date_is_capped() -> None:
    answers = [httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}),
               httpx.Response(503, headers={"Retry-After": "soon"}),
               bundle([])]
    sleeps: list[float] = []
    cfg = FHIRSettings(base_url=BASE, backoff_s=0.5, max_backoff_s=20)
    client = httpx.Client(transport=httpx.MockTransport(lambda r: answers.pop(0)))
    with RESTSource(cfg, client=client, sleep=sleeps.append) as source:
        source.observations(None)
    assert sleeps == [20.0, 1.0]


def capability(fhir_version: str = "4.0.1", types: tuple[str, ...] = (
        "Patient", "Encounter", "Location", "Observation"), update: tuple[str, ...] = ()) -> dict:
    return {"resourceType": "CapabilityStatement", "fhirVersion": fhir_version,
            "software": {"name": "Test EHR"}, "rest": [{"mode": "server", "resource": [
                {"type": t, "interaction": [{"code": "search-type"}]} for t in types] + [
                {"type": t, "interaction": [{"code": "update"}]} for t in update]}]}


@pytest.mark.parametrize(("doc", "error"), [
    (capability(update=("RiskAssessment",)), None),
    (capability(fhir_version="5.0.0"),
     "expected a FHIR R4 server .fhirVersion 4.0.x., got '5.0.0'"),
    (capability(types=("Patient", "Encounter")), "cannot search Location, Observation"),
    ({"resourceType": "OperationOutcome"}, "expected a CapabilityStatement"),
])
def test_capability_check(doc: dict, error: str | None) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=doc)))
    with RESTSource(FHIRSettings(base_url=BASE), client=client) as source:
        assert isinstance(source, Source)
        if error is None:
            caps = source.check()
            assert (caps.fhir_version, caps.software, caps.can_write_risk) == ("4.0.1", "Test EHR",
                                                                                True)
        else:
            with pytest.raises(FHIRError, match=error):
                source.check()


def test_observation_queries_chunks_concurrency_and_watermark() -> None:
    seen: list[dict[str, list[str]]] = []
    active, peak = [0], [0]
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        query = parse_qs(request.url.query.decode())
        with lock:
            seen.append(query)
            active[0] -= 1
        patients = query.get("patient", [""])[0].split(",")
        stamp = f"2026-01-01T10:0{len(seen) % 10}:00Z"
        return bundle([observation(rid=f"o-{p}", patient=p, meta={"lastUpdated": stamp})
                       for p in patients])

    cfg = FHIRSettings(base_url=BASE, patients_per_request=2, concurrency=2,
                       overlap=timedelta(minutes=10), categories=("vital-signs",))
    since = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    until = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
    client = httpx.Client(transport=httpx.MockTransport(handler))
    with RESTSource(cfg, client=client) as source:
        got = source.observations(since, until, patients=[f"p{i}" for i in range(7)])
    assert len(seen) == 4 and peak[0] == 2
    assert sorted(q["patient"][0] for q in seen) == ["p0,p1", "p2,p3", "p4,p5", "p6"]
    assert all(q["_lastUpdated"] == ["gt2026-01-01T08:50:00.000Z", "le2026-01-01T11:00:00.000Z"]
               and q["category"] == ["vital-signs"] and q["_count"] == ["500"] for q in seen)
    assert sorted(got.observations.patient.tolist()) == [f"p{i}" for i in range(7)]
    assert got.watermark == datetime(2026, 1, 1, 10, 4, tzinfo=UTC)


@pytest.mark.parametrize("prefix", ["gt", "sa"])
def test_incremental_lower_bound_uses_the_configured_prefix(prefix: str) -> None:
    seen: list[dict[str, list[str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(parse_qs(request.url.query.decode()))
        return bundle([])

    cfg = FHIRSettings(base_url=BASE, since_prefix=prefix, categories=())
    since = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
    with RESTSource(cfg, client=httpx.Client(transport=httpx.MockTransport(handler))) as source:
        got = source.observations(since, patients=["p1"])
    assert seen == [{"_lastUpdated": [f"{prefix}2026-01-01T08:45:00.000Z"], "patient": ["p1"],
                     "_count": ["500"]}]
    assert got.watermark == since and len(got.observations) == 0
    with pytest.raises(ValidationError, match="since_prefix"):
        FHIRSettings(base_url=BASE, since_prefix="ge")


def test_paging_follows_next_links_and_warns_on_outcomes(caplog: pytest.LogCaptureFixture) -> None:
    pages = {
        "/fhir/Observation": bundle([observation(rid="a")], f"{BASE}/Observation?page=2"),
        "2": bundle([observation(rid="b")], f"{BASE}/Observation?page=3"),
        "3": httpx.Response(200, content=orjson.dumps({
            "resourceType": "Bundle", "type": "searchset", "entry": [
                {"resource": observation(rid="c"), "search": {"mode": "match"}},
                {"resource": {"resourceType": "OperationOutcome"},
                 "search": {"mode": "outcome"}}]})),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        page = parse_qs(request.url.query.decode()).get("page", [request.url.path])[0]
        assert request.headers.get("Prefer") == "handling=strict"
        return pages[page]

    with RESTSource(FHIRSettings(base_url=BASE),
                    client=httpx.Client(transport=httpx.MockTransport(handler))) as source:
        got = source.observations(None)
    assert got.observations.resource_id.tolist() == ["a", "b", "c"]
    assert "1 OperationOutcome entries" in caplog.text
