"""The release registry: versions, the diff from the previous one, and a site's verified pull."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.core.errors import ConfigError, ModelArtifactError
from vigil.core.package import ModelPackage, write_package
from vigil.core.signing import generate_keypair
from vigil.features import FEATURE_SCHEMA
from vigil.federation.registry import Registry, fetch_release, next_version, read_index


def _onnx(w: np.ndarray, b: float) -> bytes:
    """A logistic model ``sigmoid(x @ w + b)``: features (n, n_features) -> probability (n, 1)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z"]),
         helper.make_node("Add", ["z", "b"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["probability"])],
        "logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", len(FEATURE_SCHEMA)])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(w.astype(np.float32).reshape(-1, 1), "w"),
         numpy_helper.from_array(np.array([b], np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _package(path: Path, version: str, *, w: np.ndarray, auroc: float, sites: dict[str, int],
             key: bytes | None) -> ModelPackage:
    return write_package(
        path, onnx_model=_onnx(w, -2.0), model_card="# test\n", private_key_pem=key,
        manifest={
            "name": "sepsis-federated", "version": version, "feature_schema":
                FEATURE_SCHEMA.to_dict(), "threshold": 0.3,
            "training": {"method": "federated (test)", "strategy": {"name": "fedavg"},
                         "rounds": 3, "sites": {s: {"train_rows": n} for s, n in sites.items()}},
            "validation": {"auroc": auroc, "utility": 0.3, "loss": 0.2, "threshold": 0.3,
                           "n_rows": 100},
        },
    )


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[bytes, Path]:
    private, public = generate_keypair()
    (tmp_path / "release.pub").write_bytes(public)
    return private, tmp_path / "release.pub"


@pytest.fixture()
def registry(tmp_path: Path, keys: tuple[bytes, Path]) -> Registry:
    """Two releases: 1.0.0 (sites a, b) and 1.1.0 (sites b, c), with different weights."""
    private, public = keys
    reg = Registry(tmp_path / "registry")
    d = len(FEATURE_SCHEMA)
    w0 = np.linspace(-0.01, 0.01, d)
    _package(reg.staging("1.0.0"), "1.0.0", w=w0, auroc=0.80, sites={"a": 10, "b": 20}, key=private)
    reg.add(reg.path / ".staging" / "1.0.0", public_key=public)
    _package(reg.staging("1.1.0"), "1.1.0", w=w0 * 1.5, auroc=0.83, sites={"b": 25, "c": 5},
             key=private)
    reg.add(reg.path / ".staging" / "1.1.0", public_key=public)
    return reg


def test_versions_count_up_by_minor() -> None:
    assert [next_version(v) for v in (None, "1.0.0", "1.9.0", "3.2.7")] == [
        "1.0.0", "1.1.0", "1.10.0", "3.3.0"]
    with pytest.raises(ConfigError, match="MAJOR.MINOR.PATCH"):
        next_version("v2")


def test_release_records_metrics_and_the_diff_from_the_previous(registry: Registry) -> None:
    first, second = registry.releases()
    assert (first.version, second.version, registry.next_version()) == ("1.0.0", "1.1.0", "1.2.0")
    assert first.diff is None and first.signed and second.signed
    diff = second.diff
    assert diff is not None and diff["previous"] == "1.0.0"
    assert diff["metrics"]["auroc"] == {"before": 0.80, "after": 0.83,
                                        "change": pytest.approx(0.03)}
    assert diff["sites"]["added"] == ["c"] and diff["sites"]["removed"] == ["a"]
    assert diff["sites"]["rows"]["b"] == {"before": 20, "after": 25, "change": 5}
    assert diff["feature_schema_changed"] is False
    # weights moved by half of w0 in w; b unchanged: |0.5 w0| / |(w0, b)|
    w0 = np.linspace(-0.01, 0.01, len(FEATURE_SCHEMA)).astype(np.float32).astype(np.float64)
    w1 = (np.linspace(-0.01, 0.01, len(FEATURE_SCHEMA)) * 1.5).astype(np.float32)
    expected = np.linalg.norm(w1 - w0) / np.linalg.norm(np.r_[w0, -2.0])
    assert diff["weights"]["relative_l2"] == pytest.approx(expected, rel=1e-6)
    # the packages are in the registry as released, and the index lists both
    assert sorted(p.name for p in registry.path.iterdir()) == [".staging", "1.0.0", "1.1.0",
                                                              "index.json"]
    assert [r["version"] for r in read_index(registry.path)["releases"]] == ["1.0.0", "1.1.0"]


def test_a_released_version_or_another_model_is_refused(registry: Registry, keys) -> None:  # type: ignore[no-untyped-def]
    private, public = keys
    w = np.zeros(len(FEATURE_SCHEMA))
    again = _package(registry.staging("1.1.0"), "1.1.0", w=w, auroc=0.5, sites={}, key=private)
    with pytest.raises(ConfigError, match="version 1.1.0 is already released"):
        registry.add(again.path)
    other_private, _ = generate_keypair()
    unsigned = _package(registry.staging("1.2.0"), "1.2.0", w=w, auroc=0.5, sites={},
                        key=other_private)
    with pytest.raises(ModelArtifactError):
        registry.add(unsigned.path, public_key=public)
    assert [r.version for r in registry.releases()] == ["1.0.0", "1.1.0"]


def test_fetch_from_a_directory_verifies_the_copy(registry: Registry, keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, public = keys
    release, package = fetch_release(registry.path, tmp_path / "site", public_key=public)
    assert release.version == "1.1.0" and package.manifest.version == "1.1.0"
    assert package.path == tmp_path / "site" / "sepsis-federated-1.1.0"
    old, _ = fetch_release(registry.path, tmp_path / "site", version="1.0.0", public_key=public)
    assert old.version == "1.0.0"
    with pytest.raises(ModelArtifactError, match="no release '9.9.9'"):
        fetch_release(registry.path, tmp_path / "site", version="9.9.9")


def test_a_changed_byte_in_the_registry_is_caught(registry: Registry, keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, public = keys
    onnx_file = registry.path / "1.1.0" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0x01
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match="model.onnx"):
        fetch_release(registry.path, tmp_path / "site", public_key=public)
    assert not (tmp_path / "site" / "sepsis-federated-1.1.0").exists()


def test_a_foreign_signature_is_refused(registry: Registry, tmp_path: Path) -> None:
    _, stranger = generate_keypair()
    (tmp_path / "stranger.pub").write_bytes(stranger)
    with pytest.raises(ModelArtifactError):
        fetch_release(registry.path, tmp_path / "site", public_key=tmp_path / "stranger.pub")


@pytest.fixture()
def served(registry: Registry) -> Iterator[str]:
    handler = functools.partial(_Quiet, directory=str(registry.path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_: object) -> None:
        pass


def test_a_site_pulls_the_newest_version_as_its_shadow_model(served, keys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vigil.cli.main import app

    _, public = keys
    site = tmp_path / "site.toml"
    site.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/state.db"\n\n'
                    f'[models]\ndir = "{tmp_path}/models"\npublic_key = "{public}"\n')
    runner = CliRunner()
    first = runner.invoke(app, ["federation", "pull", "--registry", served, "--config", str(site),
                                "--json"])
    assert first.exit_code == 0, first.output
    body = json.loads(first.stdout)
    assert (body["release"], body["installed"], body["model"]["role"]) == ("1.1.0", True, "shadow")
    assert (tmp_path / "models" / "sepsis-federated-1.1.0" / "model.onnx").is_file()
    again = runner.invoke(app, ["federation", "pull", "--registry", served, "--config",
                                str(site), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["installed"] is False
    listed = runner.invoke(app, ["model", "list", "--config", str(site), "--json"])
    roles = {m["version"]: m["role"] for m in json.loads(listed.stdout)["models"]}
    assert roles == {"1.1.0": "shadow"}


def test_pull_from_a_dead_registry_fails_cleanly(tmp_path: Path) -> None:
    from vigil.cli.main import app

    site = tmp_path / "site.toml"
    site.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/state.db"\n')
    result = CliRunner().invoke(app, ["federation", "pull", "--registry", "http://127.0.0.1:9",
                                      "--config", str(site)])
    assert result.exit_code == 2
    assert "could not fetch from the registry" in result.output


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", "../../outside"), ("name", "../../outside"), ("version", "/tmp/x")],
)
def test_a_registry_index_cannot_lead_outside_the_site_directory(  # type: ignore[no-untyped-def]
    registry: Registry, keys, tmp_path, field, value
) -> None:
    _, public = keys
    index_path = registry.path / "index.json"
    index = json.loads(index_path.read_text())
    index["releases"][-1][field] = value
    index_path.write_text(json.dumps(index))
    (tmp_path / "site").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ModelArtifactError, match="expected a plain file name"):
        fetch_release(registry.path, tmp_path / "site" / "in", public_key=public)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "site" / "in").exists()
