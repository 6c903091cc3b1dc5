"""Installed models: signatures on by default, re-installs, calibration records bound by hash."""

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from rt_support import UNSIGNED, make_package, make_record, move_to_now, write_trusted_key

from vigil.calibration.record import load_record
from vigil.core.errors import ConfigError, ModelArtifactError
from vigil.core.signing import RELEASE_PUBLIC_KEY
from vigil.runtime.models import check_records, install_model, load_live_models
from vigil.runtime.settings import load_settings
from vigil.runtime.store import StateStore


@pytest.fixture()
def store(tmp_path):
    s = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    yield s
    s.close()


def test_the_release_key_is_trusted_unless_another_key_or_the_opt_out_is_set(tmp_path):
    assert load_settings(None, environ=False).models.trusted_key() == RELEASE_PUBLIC_KEY
    own = load_settings(None, environ=False, models={"public_key": str(tmp_path / "k.pub")})
    assert own.models.trusted_key() == tmp_path / "k.pub"
    opt_out = load_settings(None, environ=False, models={"allow_unsigned": True})
    assert opt_out.models.trusted_key() is None
    with pytest.raises(ConfigError, match="contradicts public_key") as info:
        load_settings(None, environ=False,
                      models={"allow_unsigned": True, "public_key": str(tmp_path / "k.pub")})
    assert info.value.key == "models"


def test_the_release_key_refuses_a_package_it_did_not_sign(tmp_path, store):
    make_package(tmp_path / "p")  # signed with the tests' key, not the release key
    with pytest.raises(ModelArtifactError, match="signature does not match"):
        install_model(store, tmp_path / "p", models_dir=tmp_path / "models",
                      public_key=RELEASE_PUBLIC_KEY)
    assert store.models() == [] and not (tmp_path / "models").exists()


def test_the_unsigned_opt_out_is_logged(tmp_path, store, caplog):
    make_package(tmp_path / "p", private_key=UNSIGNED)
    install_model(store, tmp_path / "p", models_dir=tmp_path / "models", public_key=None)
    load_live_models(store, public_key=None)
    warnings = [r for r in caplog.records if "signature verification is OFF" in r.getMessage()]
    assert len(warnings) == 2 and all(r.levelname == "WARNING" for r in warnings)


def test_reinstalling_the_active_package_keeps_it_active(tmp_path, store):
    key = write_trusted_key(tmp_path)
    make_package(tmp_path / "v1", version="1.0.0")
    make_package(tmp_path / "v2", version="2.0.0", seed=1)
    models = tmp_path / "models"
    first = install_model(store, tmp_path / "v1", models_dir=models, public_key=key)
    install_model(store, tmp_path / "v2", models_dir=models, public_key=key, role="shadow")
    again = install_model(store, tmp_path / "v1", models_dir=models, public_key=key)
    assert again == first and again.role == "active"
    assert {r.version: r.role for r in store.models()} == {"1.0.0": "active", "2.0.0": "shadow"}
    # the same name and version with other bytes is another model: refused, nothing changes
    make_package(tmp_path / "v1-other", version="1.0.0", seed=7)
    with pytest.raises(ModelArtifactError, match="already installed with another model.onnx"):
        install_model(store, tmp_path / "v1-other", models_dir=models, public_key=key)
    assert {(r.version, r.role, r.model_sha256) for r in store.models()} == {
        ("1.0.0", "active", first.model_sha256),
        ("2.0.0", "shadow", next(r.model_sha256 for r in store.models() if r.version == "2.0.0")),
    }


def test_a_reinstalled_record_replaces_the_old_one_and_keeps_the_role(tmp_path, store):
    key = write_trusted_key(tmp_path)
    pkg = make_package(tmp_path / "v1")
    models = tmp_path / "models"
    a = make_record(pkg, tmp_path / "a.json", threshold=0.2)
    b = make_record(pkg, tmp_path / "b.json", threshold=0.35, intercept=-0.5)
    first = install_model(store, tmp_path / "v1", models_dir=models, public_key=key, calibration=a)
    assert load_live_models(store, public_key=key).active.threshold == 0.2
    second = install_model(store, tmp_path / "v1", models_dir=models, public_key=key,
                           calibration=b)
    assert second.role == "active" and second.calibration != first.calibration
    live = load_live_models(store, public_key=key)
    assert live.active.threshold == 0.35
    raw, calibrated = live.active.probabilities(_features())
    expected = 1 / (1 + np.exp(-(-0.5 + np.log(raw / (1 - raw)))))
    np.testing.assert_allclose(calibrated, expected, rtol=1e-9)
    installed = sorted(p.name for p in (models / "sepsis-tiny-1.0.0").glob("calibration*"))
    assert installed == [second.calibration.rsplit("/", 1)[1]]
    # a re-install without a record keeps the installed one
    third = install_model(store, tmp_path / "v1", models_dir=models, public_key=key)
    assert third.calibration == second.calibration


def _features():
    from vigil.features import FEATURE_SCHEMA

    return np.full((3, len(FEATURE_SCHEMA)), 0.5, dtype=np.float32)


def test_a_record_changed_after_install_is_refused(tmp_path, store):
    key = write_trusted_key(tmp_path)
    pkg = make_package(tmp_path / "v1")
    install_model(store, tmp_path / "v1", models_dir=tmp_path / "models", public_key=key,
                  calibration=make_record(pkg, tmp_path / "a.json"))
    live = load_live_models(store, public_key=key)
    check_records(live)
    path = Path(live.active.row.calibration)
    body = json.loads(path.read_text())
    body["threshold"] = 0.99  # still a valid record, for the same model
    path.write_text(json.dumps(body))
    assert load_record(path, package=pkg).threshold == 0.99
    with pytest.raises(ModelArtifactError, match="has changed since it was installed"):
        check_records(live)
    with pytest.raises(ModelArtifactError, match="has changed since it was installed"):
        load_live_models(store, public_key=key)


def test_with_a_site_key_records_must_carry_its_hmac(tmp_path, store):
    key = write_trusted_key(tmp_path)
    site_key = tmp_path / "site.key"
    site_key.write_bytes(bytes(range(64)))
    pkg = make_package(tmp_path / "v1")
    record = make_record(pkg, tmp_path / "a.json")
    row = install_model(store, tmp_path / "v1", models_dir=tmp_path / "models", public_key=key,
                        calibration=record, calibration_key=site_key)
    live = load_live_models(store, public_key=key, calibration_key=site_key)
    check_records(live, calibration_key=site_key)
    other = tmp_path / "other.key"
    other.write_bytes(bytes(range(1, 65)))
    with pytest.raises(ModelArtifactError, match="not authenticated by the site key"):
        check_records(live, calibration_key=other)
    mac = Path(row.calibration + ".hmac")
    mac.write_bytes(b"\xff\xfe not a digest")
    with pytest.raises(ModelArtifactError, match="not authenticated by the site key"):
        check_records(live, calibration_key=site_key)
    mac.unlink()
    with pytest.raises(ModelArtifactError, match="not authenticated by the site key"):
        check_records(live, calibration_key=site_key)
    short = tmp_path / "short.key"
    short.write_bytes(b"too short")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        check_records(live, calibration_key=short)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("threshold", 0.0, "greater than 0"), ("threshold", 1.0, "less than 1"),
     ("threshold", math.nan, "finite"), ("intercept_", math.nan, "finite"),
     ("slope_", math.inf, "finite")],
)
def test_an_invalid_record_is_refused_at_install(tmp_path, store, field, value, match):
    key = write_trusted_key(tmp_path)
    pkg = make_package(tmp_path / "v1")
    path = make_record(pkg, tmp_path / "a.json")
    body = json.loads(path.read_text())
    if field == "threshold":
        body["threshold"] = value
    else:
        body["calibrator"]["state"][field] = value
    path.write_text(json.dumps(body))  # json writes NaN and Infinity, as a hand edit could
    with pytest.raises(ModelArtifactError, match=match):
        install_model(store, tmp_path / "v1", models_dir=tmp_path / "models", public_key=key,
                      calibration=path)
    assert store.models() == []


def _serving(tmp_path, sample, intercept=0.5):
    """A built service over 3 test patients, its model installed with a record."""
    from vigil.data import patient_split
    from vigil.fhir_adapter.synth import write_synth
    from vigil.runtime.service import build_service

    table = sample.select(np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:3])
    write_synth(table.frame, tmp_path / "export")
    # a current feed: a cycle on the synthetic 2020 values would be degraded (empty inputs)
    move_to_now(tmp_path / "export", datetime.now(UTC))
    key = write_trusted_key(tmp_path)
    settings = load_settings(
        None, environ=False, site_id="s",
        data={"source": "ndjson", "ndjson_dir": str(tmp_path / "export"), "writeback": "none"},
        store={"url": f"sqlite:///{tmp_path / 'serve.db'}"},
        models={"dir": str(tmp_path / "models"), "public_key": str(key)},
    )
    pkg = make_package(tmp_path / "v1")
    with StateStore.open(settings.store.url) as installer:
        row = install_model(installer, pkg.path, models_dir=settings.models.dir, public_key=key,
                            calibration=make_record(pkg, tmp_path / "a.json", intercept=intercept))
    return build_service(settings), settings, pkg, key, row


def test_a_running_service_uses_a_reinstalled_record_at_its_next_cycle(tmp_path, sample):
    from datetime import UTC, datetime, timedelta

    from scipy.special import expit, logit

    service, settings, pkg, key, _ = _serving(tmp_path, sample)
    try:
        now = datetime.now(UTC)
        assert service.run_cycle(now).ok
        with StateStore.open(settings.store.url) as installer:
            install_model(installer, pkg.path, models_dir=settings.models.dir, public_key=key,
                          calibration=make_record(pkg, tmp_path / "b.json", intercept=-0.5,
                                                  threshold=0.4))
        assert service.run_cycle(now + timedelta(minutes=15)).ok
        scores = service.store.scores_frame()
    finally:
        service.close()
    ticks = sorted(scores["tick"].unique())
    assert len(ticks) == 2
    for tick, intercept in zip(ticks, (0.5, -0.5), strict=True):
        rows = scores[scores["tick"] == tick]
        assert len(rows) == 3
        np.testing.assert_allclose(rows["probability"],
                                   expit(intercept + logit(rows["raw_probability"])), rtol=1e-9)


def test_a_record_changed_under_a_running_service_fails_the_next_cycle(tmp_path, sample):
    from datetime import UTC, datetime, timedelta

    service, _, _, _, row = _serving(tmp_path, sample)
    try:
        now = datetime.now(UTC)
        assert service.run_cycle(now).ok
        record = Path(row.calibration)
        record.write_text(record.read_text().replace('"threshold": 0.2', '"threshold": 0.9'))
        failed = service.run_cycle(now + timedelta(minutes=15))
        assert not failed.ok and failed.status == "failed"
        assert "has changed since it was installed" in failed.reason
        assert len(service.store.scores_frame()["tick"].unique()) == 1  # nothing scored with it
    finally:
        service.close()


def test_a_record_installed_by_an_older_vigil_is_refused_until_reinstalled(tmp_path, store):
    import dataclasses

    key = write_trusted_key(tmp_path)
    pkg = make_package(tmp_path / "v1")
    row = install_model(store, tmp_path / "v1", models_dir=tmp_path / "models", public_key=key)
    legacy = Path(row.path) / "calibration.json"  # where records used to be installed
    make_record(pkg, legacy, threshold=0.25)
    store.put_model(dataclasses.replace(row, calibration=str(legacy)))
    with pytest.raises(ModelArtifactError, match="named calibration-SHA256.json; re-install"):
        load_live_models(store, public_key=key)
    again = install_model(store, tmp_path / "v1", models_dir=tmp_path / "models", public_key=key)
    assert again.role == "active" and Path(again.calibration).name.startswith("calibration-")
    assert not legacy.exists()
    assert load_live_models(store, public_key=key).active.threshold == 0.25
