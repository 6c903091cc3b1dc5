"""The SMART scope follows the settings; an explicit scope lacking a needed write is refused."""

from __future__ import annotations

from urllib.parse import parse_qs

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.core.errors import ConfigError
from vigil.fhir_adapter.auth import SMARTBackendAuth
from vigil.runtime.settings import check_serving, load_settings
from vigil.runtime.smart_scope import missing_scopes

READS = "system/Patient.rs system/Encounter.rs system/Location.rs system/Observation.rs"
PEM = "-----BEGIN PRIVATE KEY-----\nnot read before a token request\n-----END PRIVATE KEY-----\n"


def _toml(tmp_path, *, scope: str | None = None, imaging_fhir: bool = True,
          writeback: str = "fhir", outcomes: str = "none") -> str:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "key.pem").write_text(PEM)
    line = "" if scope is None else f'scope = "{scope}"\n'
    return f"""\
site_id = "hospital-a"
[data]
source = "fhir"
writeback = "{writeback}"
writeback_dir = "{tmp_path / 'out'}"
[store]
url = "sqlite:///{tmp_path / 'state.db'}"
[outcomes]
source = "{outcomes}"
[fhir]
base_url = "http://127.0.0.1:1/fhir"
auth = "smart"
[fhir.smart]
client_id = "vigil-a"
key_id = "k1"
algorithm = "ES384"
token_url = "http://127.0.0.1:1/token"
private_key_path = "{tmp_path / 'key.pem'}"
{line}[imaging]
enabled = true
folder = "{tmp_path / 'in'}"
[imaging.writeback]
fhir = {'true' if imaging_fhir else 'false'}
"""


@pytest.fixture()
def config(tmp_path, monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("VIGIL_"):
            monkeypatch.delenv(key)

    def write(**kwargs: object):  # type: ignore[no-untyped-def]
        path = tmp_path / "site.toml"
        path.write_text(_toml(tmp_path, **kwargs))  # type: ignore[arg-type]
        return path

    return write


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, f"{READS} system/RiskAssessment.cu system/DiagnosticReport.cu system/Observation.cu"),
    ({"imaging_fhir": False}, f"{READS} system/RiskAssessment.cu"),
    ({"outcomes": "fhir"}, f"{READS} system/Condition.rs system/RiskAssessment.cu "
                           "system/DiagnosticReport.cu system/Observation.cu"),
    ({"writeback": "ndjson"}, READS),  # NDJSON write-back (imaging's too): no write scope
])
def test_the_requested_scope_is_what_the_settings_use(config, kwargs, expected):
    settings = load_settings(config(**kwargs))
    assert settings.fhir.smart.scope == expected  # what the token request sends
    check_serving(settings)


def test_the_token_request_asks_for_the_derived_scope(config, tmp_path):
    path = config()
    (tmp_path / "key.pem").write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    settings = load_settings(path)
    forms: list[dict[str, list[str]]] = []

    def token_endpoint(request: httpx.Request) -> httpx.Response:
        forms.append(parse_qs(request.content.decode()))
        return httpx.Response(200, json={"access_token": "t", "token_type": "bearer",
                                         "expires_in": 300})

    auth = SMARTBackendAuth(settings.fhir.smart, settings.fhir.base_url)
    with httpx.Client(transport=httpx.MockTransport(token_endpoint)) as client:
        assert auth.authorization(client) == "Bearer t"
    (form,) = forms
    assert form["scope"] == [settings.fhir.smart.scope]
    assert "system/DiagnosticReport.cu system/Observation.cu" in form["scope"][0]


def test_an_explicit_scope_is_the_override(config, monkeypatch):
    wide = "system/*.rs system/*.cu"
    settings = load_settings(config(scope=wide))
    assert settings.fhir.smart.scope == wide
    check_serving(settings)
    monkeypatch.setenv("VIGIL_FHIR__SMART__SCOPE", "system/*.read system/*.write")
    assert load_settings(config()).fhir.smart.scope == "system/*.read system/*.write"
    check_serving(load_settings(config()))


def test_an_explicit_scope_without_the_imaging_writes_is_refused(config):
    narrow = load_settings(config(scope=f"{READS} system/RiskAssessment.cu"))
    with pytest.raises(ConfigError) as err:
        check_serving(narrow)
    message = str(err.value)
    assert err.value.key == "fhir.smart.scope" and "\n" not in message
    assert "lacks system/DiagnosticReport.cu system/Observation.cu" in message
    assert "imaging.writeback.fhir = true" in message
    # without the imaging write-back the same scope is enough
    check_serving(load_settings(config(scope=f"{READS} system/RiskAssessment.cu",
                                       imaging_fhir=False)))
    reads_only = load_settings(config(scope=READS, imaging_fhir=False))
    with pytest.raises(ConfigError, match=r"lacks system/RiskAssessment.cu, which the "
                                          r"write-back \(data.writeback = 'fhir'\) needs"):
        check_serving(reads_only)


def test_vigil_serve_refuses_to_start_with_exit_2(config):
    path = config(scope="system/*.rs system/RiskAssessment.cu")
    result = CliRunner(mix_stderr=False).invoke(app, ["serve", "--config", str(path), "--once"])
    assert result.exit_code == 2
    assert "fhir.smart.scope lacks system/DiagnosticReport.cu system/Observation.cu" in (
        " ".join(result.stderr.split()))


@pytest.mark.parametrize(("scope", "missing"), [
    ("system/Observation.cu", []),
    ("system/Observation.cruds", []),
    ("system/Observation.write", []),  # SMART 1.0: write = c, u, d
    ("system/*.cu", []),
    ("system/*.*", []),
    ("system/Observation.c system/Observation.u", []),  # permissions add up
    ("system/Observation.c system/*.u", []),
    ("system/Observation.rs", ["system/Observation.cu"]),
    ("system/Observation.read", ["system/Observation.cu"]),
    ("system/Observation.c", ["system/Observation.cu"]),
    ("user/Observation.cu patient/*.cu", ["system/Observation.cu"]),  # not a backend scope
    ("system/Observation.cu?category=laboratory", ["system/Observation.cu"]),  # restricted
    ("system/DiagnosticReport.cu", ["system/Observation.cu"]),
    ("", ["system/Observation.cu"]),
    ("system/Observation.xyz system/Observation", ["system/Observation.cu"]),
])
def test_missing_scopes(scope, missing):
    assert missing_scopes(scope, ("system/Observation.cu",)) == missing
