import json

import pytest
from rt_support import UNSIGNED, make_package

from vigil.core.errors import ConfigError, ModelArtifactError
from vigil.core.signing import generate_keypair
from vigil.runtime.models import install_model, load_live_models, promote_model, verify_package
from vigil.runtime.store import StateStore


@pytest.fixture()
def store(tmp_path):
    s = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    yield s
    s.close()


def roles(store):
    return {r.version: r.role for r in store.models()}


def test_install_promote_and_shadow(tmp_path, store):
    make_package(tmp_path / "v1", version="1.0.0")
    make_package(tmp_path / "v2", version="2.0.0", seed=1)
    make_package(tmp_path / "v3", version="3.0.0", seed=2)
    models = tmp_path / "models"
    first = install_model(store, tmp_path / "v1", models_dir=models)
    assert first.role == "active" and (models / "sepsis-tiny-1.0.0" / "model.onnx").is_file()
    install_model(store, tmp_path / "v2", models_dir=models)
    install_model(store, tmp_path / "v3", models_dir=models, role="shadow")
    assert roles(store) == {"1.0.0": "active", "2.0.0": "installed", "3.0.0": "shadow"}
    live = load_live_models(store)
    assert live.active.key == "sepsis-tiny@1.0.0" and live.shadow.key == "sepsis-tiny@3.0.0"
    assert live.active.calibration is None and live.active.threshold == 0.3
    promote_model(store, "2.0.0")
    assert roles(store) == {"1.0.0": "retired", "2.0.0": "active", "3.0.0": "shadow"}
    promote_model(store, "1.0.0", role="shadow")
    assert roles(store) == {"1.0.0": "shadow", "2.0.0": "active", "3.0.0": "retired"}
    with pytest.raises(ConfigError, match="no installed model has version '9'"):
        promote_model(store, "9")


def test_a_changed_file_is_refused_and_nothing_installed(tmp_path, store):
    make_package(tmp_path / "p")
    onnx_file = tmp_path / "p" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 1
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match="model.onnx has changed"):
        install_model(store, tmp_path / "p", models_dir=tmp_path / "models")
    assert store.models() == []
    assert not (tmp_path / "models" / "sepsis-tiny-1.0.0").exists()


def test_signature_required_when_a_key_is_configured(tmp_path, store):
    private, public = generate_keypair()
    key_file = tmp_path / "models.pub"
    key_file.write_bytes(public)
    make_package(tmp_path / "unsigned", private_key=UNSIGNED)
    with pytest.raises(ModelArtifactError, match="has no manifest.sig"):
        install_model(store, tmp_path / "unsigned", models_dir=tmp_path / "m", public_key=key_file)
    make_package(tmp_path / "signed", private_key=private)
    row = install_model(store, tmp_path / "signed", models_dir=tmp_path / "m", public_key=key_file)
    assert (tmp_path / "m" / "sepsis-tiny-1.0.0" / "manifest.sig").is_file()
    assert load_live_models(store, public_key=key_file).active.key == row.key


def test_other_feature_schema_is_refused(tmp_path):
    schema = {"version": "0", "sha256": "0" * 64, "names": ["x"]}
    make_package(tmp_path / "p", schema=schema)
    with pytest.raises(ModelArtifactError, match="trained on feature schema 000000000000"):
        verify_package(tmp_path / "p")


def test_a_model_that_does_not_run_is_refused(tmp_path):
    make_package(tmp_path / "p")
    manifest = tmp_path / "p" / "manifest.json"
    body = json.loads(manifest.read_text())
    body["input_name"] = "inputs"  # the graph's input is called "features"
    manifest.write_text(json.dumps(body))
    with pytest.raises(ModelArtifactError, match="onnxruntime could not run the model"):
        verify_package(tmp_path / "p")
