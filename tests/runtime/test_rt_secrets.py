"""No secret in any settings error: broken configs holding a unique marker, in the file and env."""

import os
import tomllib
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil.core.errors import ConfigError
from vigil.runtime.settings import load_settings

# Where a secret can sit: its proper place, a misspelt key, a wrong section, a whole section.
PLACES = [
    ("fhir", "bearer_token"), ("fhir", "bearer"), ("fhir", "token"), ("fhir", "client_secret"),
    ("fhir.smart", "private_key_pem"), ("fhir.smart", "private_key"), ("ops", "token"),
    ("ops", "tokn"), ("ops", "password"), ("models", "secret"), ("", "token"), ("", "api_key"),
    ("", "fhir"), ("", "ops"), ("fhir", "smart"), ("fhir", "auth"), ("fhir", "base_url"),
    ("ops", "host"), ("store", "url"), ("ops", "port"), ("scheduler", "misfire_grace_s"),
    ("alerts", "hysteresis"), ("models", "allow_unsigned"),
]
# Something else that is wrong (or nothing: the secret's place alone may be wrong).
BREAKS = [
    {}, {"ops": {"port": "eighty"}}, {"fhir": {"base_url": "ftp://x"}},
    {"fhir": {"auth": "smart"}}, {"fhir": {"auth": "bearer"}}, {"fhir": {"retries": -1}},
    {"scheduler": {"misfire_grace_s": 0}}, {"site_id": "a b"}, {"unknown": 1},
    {"models": {"allow_unsigned": True, "public_key": "/k.pub"}}, {"ops": {"token": "short"}},
    {"fhir": {"smart": {"client_id": "c", "key_id": "k"}}}, {"store": {"retention_hours": 1}},
]
BASE = {"fhir": {"base_url": "http://127.0.0.1:9/fhir", "auth": "bearer", "bearer_token": "x" * 8}}


def _put(tree, dotted, key, value):
    node = tree
    for part in [p for p in dotted.split(".") if p]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[key] = value


def _merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _toml(tree, prefix=""):
    import json

    scalars = [f"{k} = {json.dumps(v)}" for k, v in tree.items() if not isinstance(v, dict)]
    text = (f"[{prefix}]\n" if prefix else "") + "\n".join(scalars) + "\n"
    for k, v in tree.items():
        if isinstance(v, dict):
            text += _toml(v, f"{prefix}.{k}" if prefix else k)
    return text


def _env(tree, prefix="VIGIL_"):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_env(v, f"{prefix}{k.upper()}__"))
        else:
            out[f"{prefix}{k.upper()}"] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


@contextmanager
def environment(values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _text(exc):
    parts = [str(exc), repr(exc), str(getattr(exc, "key", ""))]
    cause = exc.__cause__
    while cause is not None:
        parts.append(str(cause))
        cause = cause.__cause__
    return "\n".join(parts)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(place=st.sampled_from(PLACES), broken=st.sampled_from(BREAKS),
       via_env=st.booleans(), marker=st.text("abcdef0123456789", min_size=12, max_size=12))
def test_no_settings_error_shows_the_secret(tmp_path_factory, place, broken, via_env, marker):
    secret = f"SECRET{marker}"
    config = _merge(BASE, broken)
    tree = {}
    _put(tree, *place, secret)
    path = tmp_path_factory.mktemp("cfg") / "site.toml"
    if via_env:
        path.write_text(_toml(config))
        env = _env(tree)
    else:
        path.write_text(_toml(_merge(config, tree)))
        env = {}
    assert tomllib.loads(path.read_text())  # the file itself is valid TOML
    with environment(env):
        try:
            load_settings(path)
        except ConfigError as exc:
            assert secret not in _text(exc)
            assert marker not in _text(exc)


def test_a_section_given_as_a_string_is_not_echoed(monkeypatch):
    monkeypatch.setenv("VIGIL_FHIR", '{"bearer_token": "SECRET-in-json", ')
    with pytest.raises(ConfigError, match="'fhir'") as info:
        load_settings(None)
    assert "SECRET" not in str(info.value)


def test_a_scalar_of_a_plain_setting_is_still_shown(monkeypatch):
    monkeypatch.setenv("VIGIL_OPS__PORT", "eighty")
    with pytest.raises(ConfigError, match="got 'eighty'"):
        load_settings(None)


def test_credentials_in_the_fhir_url_are_refused_without_echo():
    with pytest.raises(ConfigError, match="without user:password@") as info:
        load_settings(None, environ=False,
                      fhir={"base_url": "https://vigil:SECRET-pw@ehr.example.org/fhir"})
    assert "SECRET" not in str(info.value) and info.value.key == "fhir"


def test_masking_keeps_the_message_readable():
    with pytest.raises(ConfigError, match="auth = 'bearer' needs bearer_token"):
        load_settings(None, environ=False, fhir={"base_url": "http://ehr/fhir", "auth": "bearer"})
