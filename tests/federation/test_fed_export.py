"""Export of a federated run: manifest contents, FedBN site packages, byte-level integrity."""

import json

import numpy as np
import pytest
import torch

from vigil.core.errors import ConfigError, ModelArtifactError
from vigil.core.package import read_package
from vigil.core.signing import generate_keypair
from vigil.features import FEATURE_SCHEMA
from vigil.federation.driver import Plan
from vigil.federation.history import HISTORY_FILE, History
from vigil.federation.integrity import (
    PUBLIC_KEY_FILE,
    sign_package,
    verify_package,
    write_keypair,
)
from vigil.federation.privacy import DPSettings
from vigil.federation.simulation import export_run, federate
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy
from vigil.runtime.scoring import Scorer

SPEC = ModelSpec(hidden=(8,), dropout=0.0)
PLAN = Plan(rounds=2, batch_size=512, lr=1e-3)


@pytest.fixture(scope="module")
def half(sample):
    torch.set_num_threads(1)
    return sample.select(np.arange(0, sample.grid.n_patients, 2))


@pytest.fixture(scope="module")
def keys():
    return generate_keypair()


@pytest.fixture(scope="module")
def fedavg_package(half, keys, tmp_path_factory):
    run = federate(half, scheme="hospital-unit", strategy=make_strategy("fedavg"), plan=PLAN,
                   model=SPEC, data="sample.parquet")
    out = tmp_path_factory.mktemp("pkg") / "fedavg"
    (package,) = export_run(run, out, name="sepsis-fed", version="1.2.3", private_key_pem=keys[0])
    return run, package


def test_manifest_records_strategy_rounds_sites_metrics_and_profile(fedavg_package, keys):
    run, package = fedavg_package
    m = read_package(package.path, public_key=keys[1],
                     expected_schema_sha256=FEATURE_SCHEMA.sha256).manifest
    t = m.training
    assert t["strategy"]["name"] == "fedavg" and t["rounds"] == 2
    assert t["site_scheme"] == "hospital-unit" and t["data"] == "sample.parquet"
    assert set(t["sites"]) == {"A-MICU", "A-SICU", "B-MICU", "B-SICU"}
    for name, s in run.result.statistics.items():
        assert t["sites"][name]["train_rows"] == s.count > 0
    assert t["differential_privacy"] is None and t["best_round"] in (1, 2)
    assert m.threshold == pytest.approx(run.result.pooled.threshold)
    assert m.validation["auroc"] == pytest.approx(run.result.pooled.auroc)
    assert set(m.validation["by_site"]) == set(t["sites"])
    profile = m.reference_profile
    assert profile["rows"] == sum(s["train_rows"] for s in t["sites"].values())
    temp = profile["variables"]["Temp"]
    assert sum(temp["counts"]) + temp["missing"] == profile["rows"]
    assert sum(profile["score"]["counts"]) == m.validation["n_rows"]
    assert set(m.files) == {"model.onnx", "MODEL_CARD.md", HISTORY_FILE, PUBLIC_KEY_FILE}
    history = History.from_json((package.path / HISTORY_FILE).read_bytes())
    assert len(history.rounds) == 2 and history.to_dict() == run.result.history.to_dict()


def test_onnx_scores_like_the_federated_weights(fedavg_package, half):
    from vigil.federation.model import SepsisNet, predict_proba, set_weights

    run, package = fedavg_package
    net = SepsisNet(len(FEATURE_SCHEMA), hidden=SPEC.hidden, dropout=0.0)
    set_weights(net, run.result.weights)
    x = run.sites[0].valid.X[:500]
    np.testing.assert_allclose(Scorer(package).predict_proba(x), predict_proba(net, x), atol=1e-5)


@pytest.mark.parametrize("name", ["model.onnx", "manifest.json", "manifest.sig", "MODEL_CARD.md",
                                  HISTORY_FILE, PUBLIC_KEY_FILE])
def test_any_changed_byte_fails_verification_naming_the_file(fedavg_package, keys, name, tmp_path):
    import shutil

    _, package = fedavg_package
    copy = tmp_path / "pkg"
    shutil.copytree(package.path, copy)
    assert verify_package(copy, public_key=None).signature == "included key"
    path = copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    for key in (None, keys[1]):
        key_file = None
        if key is not None:
            key_file = tmp_path / "publisher.pem"
            key_file.write_bytes(key)
        with pytest.raises(ModelArtifactError, match=name.replace(".", r"\.")):
            verify_package(copy, public_key=key_file)


def test_unlisted_file_and_wrong_key_are_refused(fedavg_package, tmp_path):
    import shutil

    _, package = fedavg_package
    copy = tmp_path / "pkg"
    shutil.copytree(package.path, copy)
    other = tmp_path / "other.pem"
    other.write_bytes(generate_keypair()[1])
    with pytest.raises(ModelArtifactError, match="manifest.sig does not verify"):
        verify_package(copy, public_key=other)
    (copy / "notes.txt").write_text("hi")
    with pytest.raises(ModelArtifactError, match="notes.txt is in the package but not listed"):
        verify_package(copy)


def test_sign_package_moves_the_signature_to_a_new_key_and_keeps_every_other_byte(
        fedavg_package, tmp_path):
    import shutil

    _, package = fedavg_package
    copy = tmp_path / "pkg"
    shutil.copytree(package.path, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    private, public = generate_keypair()
    pub = tmp_path / "release.pub"
    pub.write_bytes(public)
    report = sign_package(copy, private)
    assert report.signature == "publisher key"
    assert verify_package(copy, public_key=pub).signature == "publisher key"
    old_pub = tmp_path / "old.pub"
    old_pub.write_bytes(before[PUBLIC_KEY_FILE])
    with pytest.raises(ModelArtifactError, match="does not verify"):
        verify_package(copy, public_key=old_pub)
    after = {p.name: p.read_bytes() for p in copy.iterdir()}
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"manifest.json", "manifest.sig", PUBLIC_KEY_FILE}
    old, new = json.loads(before["manifest.json"]), json.loads(after["manifest.json"])
    old["files"].pop(PUBLIC_KEY_FILE)
    new["files"].pop(PUBLIC_KEY_FILE)
    assert old == new  # only the key's hash moved


def test_sign_package_refuses_a_changed_package(fedavg_package, tmp_path):
    import shutil

    _, package = fedavg_package
    copy = tmp_path / "pkg"
    shutil.copytree(package.path, copy)
    onnx = copy / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(ModelArtifactError, match="model.onnx"):
        sign_package(copy, generate_keypair()[0])


def test_keygen_never_overwrites(tmp_path):
    write_keypair(tmp_path / "k", tmp_path / "k.pub")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ModelArtifactError, match="refusing to overwrite"):
        write_keypair(tmp_path / "k", tmp_path / "k2.pub")


def test_fedbn_writes_one_package_per_site_with_its_own_normalization(half, tmp_path):
    import onnx
    from onnx import numpy_helper

    run = federate(half, scheme="hospital", strategy=make_strategy("fedbn"),
                   plan=Plan(rounds=1, batch_size=512), model=SPEC)
    packages = export_run(run, tmp_path / "bn", name="sepsis-bn", version="0.0.1")
    assert [p.path.name for p in packages] == ["A", "B"]
    for package, site in zip(packages, run.sites, strict=True):
        graph = onnx.load(str(package.model_path)).graph
        mean = {i.name: numpy_helper.to_array(i) for i in graph.initializer}["norm_mean"]
        np.testing.assert_allclose(mean, site.train.X.astype(np.float64).mean(axis=0), rtol=1e-4,
                                   atol=1e-4)
        assert package.manifest.training["export_site"] == site.name
    (one,) = export_run(run, tmp_path / "b-only", name="x", version="0", export_site="B")
    assert one.manifest.name == "x-B"
    with pytest.raises(ConfigError, match="--export-site among"):
        export_run(run, tmp_path / "c", name="x", version="0", export_site="C")


def test_dp_epsilon_per_site_is_in_the_manifest(half, tmp_path):
    quarter = half.select(np.arange(0, half.grid.n_patients, 4))
    run = federate(quarter, scheme="hospital", strategy=make_strategy("fedavg"),
                   plan=Plan(rounds=1, batch_size=256), model=SPEC, dp=DPSettings(8.0))
    (package,) = export_run(run, tmp_path / "dp", name="dp", version="0")
    dp = package.manifest.training["differential_privacy"]
    assert dp["target_epsilon"] == 8.0 and set(dp["sites"]) == {"A", "B"}
    rows = package.manifest.training["sites"]
    for site, spent in dp["sites"].items():
        assert 7.9 < spent["epsilon"] <= 8.0
        assert spent["delta"] == pytest.approx(1 / rows[site]["train_rows"])
    card = (package.path / "MODEL_CARD.md").read_text()
    assert "DP epsilon" in card and json.loads((package.path / "manifest.json").read_text())
