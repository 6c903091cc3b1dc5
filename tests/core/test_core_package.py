import json

import pytest

from vigil.core.errors import ModelArtifactError
from vigil.core.package import MANIFEST, SIGNATURE, file_sha256, read_package, write_package
from vigil.core.signing import generate_keypair, sign, verify

MANIFEST_FIELDS = {
    "name": "sepsis-test",
    "version": "0.0.1",
    "feature_schema": {"version": "1", "sha256": "abc123", "names": ["a", "b"]},
    "threshold": 0.25,
}


@pytest.fixture()
def keys():
    return generate_keypair()


@pytest.fixture()
def package_dir(tmp_path, keys):
    write_package(
        tmp_path / "pkg",
        onnx_model=b"\x08\x07onnx-bytes",
        manifest=MANIFEST_FIELDS,
        model_card="# Model card\n",
        private_key_pem=keys[0],
    )
    return tmp_path / "pkg"


def test_round_trip_signed(package_dir, keys):
    pkg = read_package(package_dir, public_key=keys[1], expected_schema_sha256="abc123")
    assert pkg.signed
    assert pkg.manifest.threshold == 0.25
    assert set(pkg.manifest.files) == {"model.onnx", "MODEL_CARD.md"}


@pytest.mark.parametrize("name", ["model.onnx", "MODEL_CARD.md"])
def test_any_changed_byte_is_named(package_dir, name):
    path = package_dir / name
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ModelArtifactError, match=f"{name} has changed") as info:
        read_package(package_dir)
    assert info.value.path == str(path)


def test_changed_manifest_fails_signature(package_dir, keys):
    path = package_dir / MANIFEST
    body = json.loads(path.read_bytes())
    body["threshold"] = 0.01
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    read_package(package_dir)  # hashes of the other files still match
    with pytest.raises(ModelArtifactError, match="signature does not match manifest.json"):
        read_package(package_dir, public_key=keys[1])


def test_wrong_key_and_missing_signature(package_dir):
    _, other_public = generate_keypair()
    with pytest.raises(ModelArtifactError, match="signature does not match"):
        read_package(package_dir, public_key=other_public)
    (package_dir / SIGNATURE).unlink()
    with pytest.raises(ModelArtifactError, match="has no manifest.sig"):
        read_package(package_dir, public_key=other_public)


def test_schema_mismatch_is_refused(package_dir):
    with pytest.raises(ModelArtifactError, match="feature schema abc123 but this vigil implements"):
        read_package(package_dir, expected_schema_sha256="ffff00000000")


def test_missing_listed_file_and_not_a_package(package_dir, tmp_path):
    (package_dir / "MODEL_CARD.md").unlink()
    with pytest.raises(
        ModelArtifactError, match="MODEL_CARD.md is listed in the manifest but missing"
    ):
        read_package(package_dir)
    with pytest.raises(ModelArtifactError, match="expected a model package directory"):
        read_package(tmp_path / "nowhere")


def test_sign_verify_primitives(keys):
    sig = sign(b"manifest", keys[0])
    assert len(sig) == 64
    assert verify(b"manifest", sig, keys[1])
    assert not verify(b"manifest!", sig, keys[1])


def _relist(package_dir, private_key, files):
    """Rewrite the manifest's file list (and re-sign it, so only the names are wrong)."""
    body = json.loads((package_dir / MANIFEST).read_text())
    body["files"] = files
    raw = json.dumps(body).encode()
    (package_dir / MANIFEST).write_bytes(raw)
    (package_dir / SIGNATURE).write_bytes(sign(raw, private_key))


@pytest.mark.parametrize(
    "name",
    ["../outside.bin", "/etc/hostname", "sub/model.onnx", "..", ".", "", "a\\b", "x\ny",
     "manifest.json", "manifest.sig"],
)
def test_only_plain_file_names_are_read(package_dir, keys, tmp_path, name):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not part of the package")
    files = json.loads((package_dir / MANIFEST).read_text())["files"]
    _relist(package_dir, keys[0], {**files, name: file_sha256(outside)})
    with pytest.raises(ModelArtifactError, match="expected a plain file name") as info:
        read_package(package_dir, public_key=keys[1])
    assert repr(name) in str(info.value)


def test_a_symlink_is_refused_even_with_the_right_hash(package_dir, keys, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret file elsewhere")
    (package_dir / "extra.bin").symlink_to(outside)
    files = json.loads((package_dir / MANIFEST).read_text())["files"]
    _relist(package_dir, keys[0], {**files, "extra.bin": file_sha256(outside)})
    with pytest.raises(ModelArtifactError, match="extra.bin is a symbolic link"):
        read_package(package_dir, public_key=keys[1])
    # the manifest itself may not be a link either
    real = package_dir.parent / "real-manifest.json"
    (package_dir / MANIFEST).rename(real)
    (package_dir / MANIFEST).symlink_to(real)
    with pytest.raises(ModelArtifactError, match="manifest.json is a symbolic link"):
        read_package(package_dir)


@pytest.mark.parametrize("name", ["../x", "/tmp/x", "d/x"])
def test_write_package_refuses_a_path_as_a_file_name(tmp_path, name):
    with pytest.raises(ModelArtifactError, match="expected a plain file name"):
        write_package(tmp_path / "p", onnx_model=b"x", manifest=MANIFEST_FIELDS,
                      model_card="#\n", extra_files={name: b"data"})
    assert not (tmp_path / "x").exists() and not (tmp_path / "p" / "d").exists()


def test_the_bundled_release_key_is_the_shipped_one():
    from pathlib import Path

    from vigil.core.signing import RELEASE_PUBLIC_KEY

    shipped = Path(__file__).resolve().parents[2] / "models"
    assert RELEASE_PUBLIC_KEY.read_bytes() == (shipped / "vigil-release.pub").read_bytes()
    assert read_package(shipped / "sepsis-federated", public_key=RELEASE_PUBLIC_KEY).signed


def test_an_unreadable_public_key_is_a_clear_error(package_dir, tmp_path):
    with pytest.raises(ModelArtifactError, match="cannot read it") as info:
        read_package(package_dir, public_key=tmp_path / "missing.pub")
    assert info.value.path == str(tmp_path / "missing.pub")
