"""Installed calibration records: content-addressed, and authenticated by the site key.

An installed record is stored as ``calibration-SHA256.json`` (:func:`installed_record_name`),
so that the registry row naming it, in the state store, holds its hash; the
runtime checks the bytes against that name at every cycle
(:func:`check_installed_record`). With a site key (``models.calibration_key``,
a file of at least 32 random bytes) the record also carries
``calibration-SHA256.json.hmac``, an HMAC-SHA256 of its bytes under that key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from vigil.core.errors import ConfigError, ModelArtifactError
from vigil.core.files import replace_durably

__all__ = ["check_installed_record", "install_record", "installed_record_name"]

_RECORD_NAME = re.compile(r"^calibration-([0-9a-f]{64})\.json$")


def installed_record_name(data: bytes) -> str:
    """Return the file name of an installed record with these bytes."""
    return f"calibration-{hashlib.sha256(data).hexdigest()}.json"


def _site_key(path: Path) -> bytes:
    try:
        key = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"models.calibration_key: expected a readable key file; {exc.strerror}",
            key="models.calibration_key",
        ) from None
    if len(key) < 32:
        raise ConfigError(
            f"models.calibration_key: expected at least 32 bytes of key, the file has {len(key)}",
            key="models.calibration_key",
        )
    return key


def _record_mac(data: bytes, key: bytes) -> str:
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def check_installed_record(path: Path, *, calibration_key: Path | None) -> None:
    """Refuse an installed record whose bytes are not those its name (in the registry) says.

    Raises
    ------
    ModelArtifactError
        If the name is not ``calibration-SHA256.json``, the bytes' SHA-256 differs,
        or (with ``calibration_key``) the ``.hmac`` beside it does not verify.
    ConfigError
        If the key file cannot be read or is shorter than 32 bytes.
    """
    named = _RECORD_NAME.match(path.name)
    if named is None:
        raise ModelArtifactError(
            "expected an installed calibration record named calibration-SHA256.json; "
            "re-install it with `vigil model install --calibration`", path=str(path),
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelArtifactError(
            f"the installed calibration record cannot be read ({exc.strerror})", path=str(path)
        ) from None
    if hashlib.sha256(data).hexdigest() != named.group(1):
        raise ModelArtifactError(
            "the installed calibration record has changed since it was installed (sha256 "
            "differs from the registry); re-install it with `vigil model install --calibration`",
            path=str(path),
        )
    if calibration_key is not None:
        mac = path.with_name(path.name + ".hmac")
        expected = _record_mac(data, _site_key(calibration_key))
        found = mac.read_bytes().strip() if mac.is_file() and not mac.is_symlink() else b""
        if not hmac.compare_digest(found, expected.encode()):
            raise ModelArtifactError(
                "the installed calibration record is not authenticated by the site key "
                "(models.calibration_key); re-install it with `vigil model install "
                "--calibration`", path=str(path),
            )


def install_record(path: Path, data: bytes, *, calibration_key: Path | None) -> None:
    """Write an installed record's bytes, and its HMAC under the site key when there is one.

    Each file is replaced atomically and synced (:func:`vigil.core.files.replace_durably`).
    """
    replace_durably(path, data)
    mac = path.with_name(path.name + ".hmac")
    if calibration_key is not None:
        replace_durably(mac, (_record_mac(data, _site_key(calibration_key)) + "\n").encode())
    elif mac.exists():
        mac.unlink()
