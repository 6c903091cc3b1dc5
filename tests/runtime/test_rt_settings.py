from pathlib import Path

import pytest

from vigil.core.errors import ConfigError
from vigil.runtime.settings import VigilSettings, check_serving, load_settings

TOML = """
site_id = "hospital-a"

[data]
source = "ndjson"
ndjson_dir = "/data/export"
writeback = "none"

[ops]
port = 9200

[alerts]
suppression_hours = 4
"""


@pytest.fixture()
def site(tmp_path, monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("VIGIL_"):
            monkeypatch.delenv(key)
    path = tmp_path / "site.toml"
    path.write_text(TOML)
    return path


def test_file_values_and_defaults(site):
    s = load_settings(site)
    assert isinstance(s, VigilSettings)
    assert s.site_id == "hospital-a"
    assert s.ops.port == 9200 and s.ops.host == "127.0.0.1"
    assert s.alerts.suppression_hours == 4 and s.alerts.hysteresis is None
    assert s.scheduler.minute == "0,15,30,45"
    assert str(s.data.ndjson_dir) == "/data/export" and s.fhir is None
    check_serving(s)


def test_environment_overrides_file_and_overrides_win(site, monkeypatch):
    monkeypatch.setenv("VIGIL_OPS__PORT", "9300")
    monkeypatch.setenv("VIGIL_SCORING__THREADS", "2")
    s = load_settings(site)
    assert s.ops.port == 9300 and s.scoring.threads == 2
    assert load_settings(site, ops={"port": 9400}).ops.port == 9400
    assert load_settings(site, environ=False).ops.port == 9200


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"scheduler": {"misfire_grace_s": 5000}}, "scheduler.misfire_grace_s"),
        ({"ops": {"prot": 1}}, "ops.prot"),
        ({"store": {"retention_hours": 10}}, "store.retention_hours"),
        ({"alerts": {"hysteresis": -0.1}}, "alerts.hysteresis"),
        ({"site_id": "a b"}, "site_id"),
        ({"fhir": {"base_url": "ftp://x"}}, "fhir.base_url"),
        ({"fhir": {"base_url": "http://x", "retries": -1}}, "fhir.retries"),
    ],
)
def test_errors_name_the_bad_key(site, override, key):
    with pytest.raises(ConfigError) as info:
        load_settings(site, **override)
    assert info.value.key == key
    assert repr(key) in str(info.value)


def test_bad_environment_value_names_the_key(site, monkeypatch):
    monkeypatch.setenv("VIGIL_OPS__PORT", "eighty")
    with pytest.raises(ConfigError, match="'ops.port'") as info:
        load_settings(site)
    assert info.value.key == "ops.port"


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="expected a settings file"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[fhir\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)


def test_serving_needs_consistent_sources(site):
    with pytest.raises(ConfigError, match="needs a \\[fhir\\] section") as info:
        check_serving(load_settings(site, data={"source": "fhir"}))
    assert info.value.key == "fhir.base_url"
    with pytest.raises(ConfigError, match="needs data.writeback_dir") as info:
        check_serving(load_settings(site, data={"writeback": "ndjson"}))
    assert info.value.key == "data.writeback_dir"
    s = load_settings(site, data={"source": "fhir", "writeback": "fhir"},
                      fhir={"base_url": "http://127.0.0.1:9/fhir/"})
    check_serving(s)
    assert s.fhir.base_url == "http://127.0.0.1:9/fhir"


def test_secrets_are_not_echoed(site, monkeypatch):
    monkeypatch.setenv("VIGIL_FHIR__BASE_URL", "http://ehr/fhir")
    monkeypatch.setenv("VIGIL_FHIR__AUTH", "bearer")
    monkeypatch.setenv("VIGIL_FHIR__BEARER_TOKEN", "s3cret-token")
    s = load_settings(site)
    assert s.fhir.bearer_token.get_secret_value() == "s3cret-token"
    assert "s3cret" not in repr(s)
    with pytest.raises(ConfigError) as info:
        load_settings(site, fhir={"bearer_token": {"nested": "s3cret-token"}})
    assert info.value.key == "fhir.bearer_token" and "s3cret" not in str(info.value)


def test_the_example_site_file_is_valid():
    example = Path(__file__).resolve().parents[2] / "examples" / "site.toml"
    s = load_settings(example, environ=False)
    check_serving(s)
    assert s.data.source == "fhir" and s.fhir.base_url.startswith("http://127.0.0.1")
    assert s.store.url.startswith("sqlite:////") and s.ops.host == "127.0.0.1"
