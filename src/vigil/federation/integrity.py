"""Integrity of a model package on disk: every byte, every file, the signature.

:func:`vigil.core.package.read_package` checks the hash of every file the
manifest lists and, given a key, the Ed25519 signature over the manifest.
:func:`verify_package` adds what a release check needs on top:

- a file in the package directory that the manifest does not list is an error
  (nothing can ride along unsigned);
- without ``--public-key``, a signed package is checked against the
  ``public_key.pem`` it ships (this proves integrity, not origin: pin the
  publisher's key with ``--public-key`` for that);
- a signature that does not verify names both files it involves.

:func:`sign_package` (re-)signs an intact package with a publisher's key: a release
engineer signs what a federation run wrote with a development key, or re-signs after
a key rotation, without retraining; ``model.onnx`` and every other file stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vigil.core.errors import ModelArtifactError
from vigil.core.files import replace_durably
from vigil.core.package import MANIFEST, SIGNATURE, ModelPackage, read_package
from vigil.core.signing import generate_keypair, public_key_of, sign

__all__ = ["PUBLIC_KEY_FILE", "IntegrityReport", "sign_package", "verify_package",
           "write_keypair"]

PUBLIC_KEY_FILE = "public_key.pem"


@dataclass(frozen=True)
class IntegrityReport:
    """The outcome of a successful verification.

    Attributes
    ----------
    package : ModelPackage
    files : tuple of str
        Every file checked, manifest included.
    signature : str
        ``"publisher key"``, ``"included key"`` or ``"unsigned"``.
    """

    package: ModelPackage
    files: tuple[str, ...]
    signature: str


def verify_package(path: str | Path, *, public_key: str | Path | None = None) -> IntegrityReport:
    """Check every byte of a package.

    Parameters
    ----------
    path : str or Path
        The package directory.
    public_key : str, Path or None, optional
        The publisher's PEM Ed25519 public key file.

    Returns
    -------
    IntegrityReport

    Raises
    ------
    ModelArtifactError
        Naming the file, on any changed, missing or unlisted file, or a bad signature.
    """
    root = Path(path)
    key: Path | None = Path(public_key) if public_key is not None else None
    how = "publisher key"
    if key is None and (root / SIGNATURE).is_file() and (root / PUBLIC_KEY_FILE).is_file():
        key, how = root / PUBLIC_KEY_FILE, "included key"
    elif key is None:
        how = "unsigned"
    try:
        package = read_package(root, public_key=key)
    except ModelArtifactError as exc:
        if "signature does not match" in str(exc):
            raise ModelArtifactError(
                f"{SIGNATURE} does not verify {MANIFEST} with the {how}: one of the two "
                "files was changed (or the key is not the publisher's)",
                path=str(root / SIGNATURE),
            ) from None
        raise
    listed = {MANIFEST, SIGNATURE, *package.manifest.files}
    unlisted = sorted(p.name for p in root.iterdir() if p.name not in listed)
    if unlisted:
        raise ModelArtifactError(
            f"{unlisted[0]} is in the package but not listed in {MANIFEST}; remove it or "
            "rebuild the package", path=str(root / unlisted[0]),
        )
    files = tuple(sorted(n for n in listed if (root / n).is_file()))
    return IntegrityReport(package=package, files=files,
                           signature=how if package.signed else "unsigned")


def write_keypair(private_path: str | Path, public_path: str | Path) -> None:
    """Write a new Ed25519 key pair as PEM files (the private one readable by its owner only).

    Raises
    ------
    ModelArtifactError
        If either file exists already (keys are never overwritten).
    """
    for p in (private_path, public_path):
        if Path(p).exists():
            raise ModelArtifactError(f"{p} exists; refusing to overwrite a key", path=str(p))
    private, public = generate_keypair()
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    Path(public_path).write_bytes(public)


def sign_package(path: str | Path, private_key_pem: bytes) -> IntegrityReport:
    """Sign an intact package with ``private_key_pem`` (replacing any earlier signature).

    The package is verified first (every file against the manifest, no unlisted file,
    the signature under its included key if it has one), so only what was verified is
    signed. The included ``public_key.pem`` becomes the signer's, its hash in the
    manifest follows, and ``manifest.sig`` is the Ed25519 signature of the new manifest
    (RFC 8032). Every other file is unchanged.

    Parameters
    ----------
    path : str or Path
        The package directory.
    private_key_pem : bytes
        The publisher's PEM Ed25519 private key.

    Returns
    -------
    IntegrityReport
        The package verified under the new key (``signature == "publisher key"``).

    Raises
    ------
    ModelArtifactError
        If the package is not intact or the key is not an Ed25519 private key.
    """
    root = Path(path)
    verify_package(root)
    public = public_key_of(private_key_pem)
    body = json.loads((root / MANIFEST).read_bytes())
    body["files"][PUBLIC_KEY_FILE] = hashlib.sha256(public).hexdigest()
    body["files"] = dict(sorted(body["files"].items()))
    raw = json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"
    replace_durably(root / PUBLIC_KEY_FILE, public)
    replace_durably(root / MANIFEST, raw)
    replace_durably(root / SIGNATURE, sign(raw, private_key_pem))
    return verify_package(root, public_key=root / PUBLIC_KEY_FILE)
