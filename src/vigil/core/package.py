"""Model packages: reading, verifying and writing (no torch here).

A model package is a directory::

    model.onnx        the model: input ``features`` (n, n_features) float32,
                      output ``probability`` (n,) or (n, 1) float32
    manifest.json     what the model is (see :class:`Manifest`), with the
                      SHA-256 of every other file
    MODEL_CARD.md     the model card, for people
    manifest.sig      optional Ed25519 signature over the exact bytes of manifest.json

Verifying a package checks that every name the manifest lists is a plain file
name (no directory part, no ``..``, not absolute) of a regular file in the
package directory (not a symlink), every listed file's hash against the
manifest, that no listed file is missing, and, given a public key, the
signature. Because the manifest holds the hashes, a valid signature covers
every byte of the package; because the names are plain, nothing that copies a
package's files (``vigil model install``, ``vigil federation pull``) can read or
write outside the package directory.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vigil.core.errors import ModelArtifactError
from vigil.core.signing import public_key_of, sign, verify

__all__ = [
    "MANIFEST",
    "MODEL_CARD",
    "MODEL_FILE",
    "PACKAGE_FORMAT",
    "SIGNATURE",
    "Manifest",
    "ModelPackage",
    "check_file_name",
    "file_sha256",
    "read_package",
    "write_package",
]

PACKAGE_FORMAT = "vigil-model-package/1"
MODEL_FILE = "model.onnx"
MANIFEST = "manifest.json"
MODEL_CARD = "MODEL_CARD.md"
SIGNATURE = "manifest.sig"


class Manifest(BaseModel):
    """The manifest of a model package.

    Fields not named here (e.g. a strategy's own training details) are kept as they are.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    format: str = PACKAGE_FORMAT
    name: str
    version: str
    task: str = "sepsis-6h"
    created: str
    feature_schema: dict[str, Any]
    input_name: str = "features"
    output_name: str = "probability"
    threshold: float = Field(ge=0.0, le=1.0)
    training: dict[str, Any] = Field(default_factory=dict)
    validation: dict[str, Any] = Field(default_factory=dict)
    reference_profile: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)

    @property
    def schema_sha256(self) -> str:
        """SHA-256 of the feature schema the model was trained on."""
        return str(self.feature_schema.get("sha256", ""))

    @property
    def model_sha256(self) -> str:
        """SHA-256 of ``model.onnx``."""
        return self.files.get(MODEL_FILE, "")


class ModelPackage:
    """A verified model package on disk.

    Parameters
    ----------
    path : Path
        The package directory.
    manifest : Manifest
        Its parsed manifest.
    signed : bool
        Whether the signature was checked against a public key.
    """

    def __init__(self, path: Path, manifest: Manifest, *, signed: bool) -> None:
        self.path = path
        self.manifest = manifest
        self.signed = signed

    @property
    def model_path(self) -> Path:
        """Path of ``model.onnx``."""
        return self.path / MODEL_FILE

    def __repr__(self) -> str:
        m = self.manifest
        return f"ModelPackage(name={m.name!r}, version={m.version!r}, signed={self.signed})"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_file_name(name: str, *, path: str | None = None) -> str:
    """Return ``name`` if it is a plain file name a package may list, else raise.

    A plain name has no directory part (no slash or backslash), is not ``.``, ``..`` or
    empty, holds no NUL or control character, and is not one of the package's
    own ``manifest.json`` / ``manifest.sig``.

    Raises
    ------
    ModelArtifactError
        Saying what was expected; the name is shown with ``repr``.
    """
    bad = (
        not name
        or name in (".", "..", MANIFEST, SIGNATURE)
        or any(c in name for c in "/\\")
        or any(ord(c) < 32 for c in name)
    )
    if bad:
        raise ModelArtifactError(
            f"expected a plain file name in the manifest's file list (no directory, no '..', "
            f"not absolute), got {name!r}; the package is refused",
            path=path,
        )
    return name


def _regular_file(fpath: Path, name: str) -> None:
    if fpath.is_symlink():
        raise ModelArtifactError(
            f"{name} is a symbolic link; a package holds regular files only", path=str(fpath)
        )
    if not fpath.is_file():
        raise ModelArtifactError(f"{name} is listed in the manifest but missing", path=str(fpath))


def read_package(
    path: str | Path,
    *,
    public_key: bytes | str | Path | None = None,
    expected_schema_sha256: str | None = None,
) -> ModelPackage:
    """Read and verify a model package.

    Parameters
    ----------
    path : str or Path
        The package directory.
    public_key : bytes, str, Path or None, optional
        PEM Ed25519 public key (or its file); when given, ``manifest.sig``
        must exist and verify.
    expected_schema_sha256 : str or None, optional
        The feature schema the caller implements; a package made for another
        one is refused.

    Returns
    -------
    ModelPackage

    Raises
    ------
    ModelArtifactError
        Naming the file, if anything is missing, malformed, changed or unsigned.
    """
    root = Path(path)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ModelArtifactError(
            f"expected a model package directory with {MANIFEST}; none found", path=str(mpath)
        )
    _regular_file(mpath, MANIFEST)
    raw = mpath.read_bytes()
    try:
        manifest = Manifest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelArtifactError(
            f"{MANIFEST} is not a valid manifest: {exc}", path=str(mpath)
        ) from exc
    if manifest.format != PACKAGE_FORMAT:
        raise ModelArtifactError(
            f"expected package format {PACKAGE_FORMAT!r}, got {manifest.format!r}", path=str(mpath)
        )
    if MODEL_FILE not in manifest.files:
        raise ModelArtifactError(f"{MANIFEST} lists no hash for {MODEL_FILE}", path=str(mpath))
    for name in manifest.files:
        check_file_name(name, path=str(mpath))
    for name, digest in manifest.files.items():
        fpath = root / name
        _regular_file(fpath, name)
        actual = file_sha256(fpath)
        if actual != digest:
            raise ModelArtifactError(
                f"{name} has changed: manifest says sha256 {digest[:16]}…, file has {actual[:16]}…",
                path=str(fpath),
            )
    signed = False
    if public_key is not None:
        spath = root / SIGNATURE
        if not spath.is_file():
            raise ModelArtifactError(
                f"a public key was given but the package has no {SIGNATURE}", path=str(spath)
            )
        _regular_file(spath, SIGNATURE)
        if not verify(raw, spath.read_bytes(), public_key):
            raise ModelArtifactError(
                f"the signature does not match {MANIFEST} (changed manifest or wrong key)",
                path=str(mpath),
            )
        signed = True
    if expected_schema_sha256 is not None and manifest.schema_sha256 != expected_schema_sha256:
        raise ModelArtifactError(
            f"the package was trained on feature schema {manifest.schema_sha256[:12]} but this "
            f"vigil implements {expected_schema_sha256[:12]}; install a vigil that matches it or "
            "retrain the model",
            path=str(mpath),
        )
    return ModelPackage(root, manifest, signed=signed)


def write_package(
    path: str | Path,
    *,
    onnx_model: bytes,
    manifest: dict[str, Any],
    model_card: str,
    private_key_pem: bytes | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> ModelPackage:
    """Write a model package and return it verified.

    Parameters
    ----------
    path : str or Path
        Directory to create (or overwrite the package files in).
    onnx_model : bytes
        The serialized ONNX model.
    manifest : dict
        Manifest fields except ``files``, ``format`` (filled in here) and
        ``created`` (now, if absent).
    model_card : str
        Markdown text.
    private_key_pem : bytes or None, optional
        PEM Ed25519 private key; when given, ``manifest.sig`` is written.
    extra_files : dict of str to bytes, optional
        More files to include and hash (e.g. the round history).

    Returns
    -------
    ModelPackage
    """
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    contents = {MODEL_FILE: onnx_model, MODEL_CARD: model_card.encode(), **(extra_files or {})}
    for name in contents:
        check_file_name(name)
    for name, data in contents.items():
        (root / name).write_bytes(data)
    body = {
        "format": PACKAGE_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **manifest,
        "files": {
            name: hashlib.sha256(data).hexdigest() for name, data in sorted(contents.items())
        },
    }
    Manifest.model_validate(body)
    raw = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
    (root / MANIFEST).write_bytes(raw)
    sig = root / SIGNATURE
    public: bytes | None = None
    if private_key_pem is not None:
        sig.write_bytes(sign(raw, private_key_pem))
        public = public_key_of(private_key_pem)
    elif sig.exists():
        sig.unlink()
    return read_package(root, public_key=public)
