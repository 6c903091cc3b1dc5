"""Ed25519 signatures over model-package manifests (RFC 8032, via ``cryptography``).

:data:`RELEASE_PUBLIC_KEY` is vigil's release public key, installed with vigil (the
same bytes as ``models/vigil-release.pub``): the key a site trusts when its settings
name no other.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from vigil.core.errors import ModelArtifactError

__all__ = ["RELEASE_PUBLIC_KEY", "generate_keypair", "public_key_of", "sign", "verify"]

RELEASE_PUBLIC_KEY = Path(__file__).with_name("vigil-release.pub")
"""vigil's release public key (PEM), bundled with the install."""


def generate_keypair() -> tuple[bytes, bytes]:
    """Generate an Ed25519 key pair as (private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return private, public_key_of(private)


def _private(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise ModelArtifactError(f"expected a PEM Ed25519 private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ModelArtifactError(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def public_key_of(private_pem: bytes) -> bytes:
    """Return the public PEM of a private PEM."""
    return (
        _private(private_pem)
        .public_key()
        .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )


def sign(data: bytes, private_pem: bytes) -> bytes:
    """Ed25519 signature of ``data`` (64 bytes)."""
    return _private(private_pem).sign(data)


def verify(data: bytes, signature: bytes, public_key: bytes | str | Path) -> bool:
    """Whether ``signature`` is a valid signature of ``data`` under ``public_key``.

    Parameters
    ----------
    data, signature : bytes
    public_key : bytes, str or Path
        PEM bytes, or the path of a PEM file.

    Raises
    ------
    ModelArtifactError
        If the key is not a PEM Ed25519 public key.
    """
    if isinstance(public_key, str | Path):
        try:
            pem = Path(public_key).read_bytes()
        except OSError as exc:
            raise ModelArtifactError(
                f"expected a PEM Ed25519 public key file; cannot read it ({exc.strerror})",
                path=str(public_key),
            ) from None
    else:
        pem = public_key
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise ModelArtifactError(f"expected a PEM Ed25519 public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ModelArtifactError(f"expected an Ed25519 public key, got {type(key).__name__}")
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
