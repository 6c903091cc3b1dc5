"""Certificates and keys of a Flower federation: test CA, SuperLink TLS certificate, site keys.

Flower 1.42 secures the one HTTPS port of the SuperLink with a server
certificate (SuperNodes verify it against a root CA; there are no client
certificates) and authenticates each SuperNode by an elliptic-curve key pair
whose public half the coordinator registers (``flwr supernode register``).
This module makes both with ``cryptography`` (no ``openssl`` binary):

- :func:`make_ca` and :func:`make_server_cert` write ``ca.crt``/``ca.key`` and
  ``server.crt``/``server.key`` (subject alternative names for every host and
  IP the sites dial, e.g. ``127.0.0.1`` and ``localhost`` on loopback);
- :func:`make_site_key` writes a site's ``NAME.key`` (OpenSSH private key,
  NIST P-384, mode 0600) and ``NAME.pub`` (OpenSSH public key). A hospital
  makes its own pair and sends only the ``.pub`` to the coordinator.

These certificates are for tests and pilots. A production federation uses the
hospitals' own PKI: any PEM CA and server certificate work the same way.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vigil.core.errors import ConfigError

__all__ = ["Pki", "SiteKey", "make_ca", "make_server_cert", "make_site_key", "make_test_pki"]

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
"""Names in the SuperLink certificate when none are given (loopback)."""
DEFAULT_DAYS = 365
_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class SiteKey:
    """A SuperNode's authentication key pair.

    Attributes
    ----------
    name : str
    private_key, public_key : Path
        OpenSSH files; only ``public_key`` leaves the site.
    """

    name: str
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class Pki:
    """Everything :func:`make_test_pki` wrote.

    Attributes
    ----------
    ca_cert, ca_key : Path
    server_cert, server_key : Path
    sites : tuple of SiteKey
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    sites: tuple[SiteKey, ...]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_key(
    path: Path, key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_ca(out_dir: str | Path, *, name: str = "vigil test CA", days: int = DEFAULT_DAYS) -> tuple[
    Path, Path
]:
    """Write a self-signed CA certificate and its key (P-384, ECDSA-SHA384).

    Parameters
    ----------
    out_dir : str or Path
    name : str, optional
        Common name of the CA.
    days : int, optional
        Validity.

    Returns
    -------
    (Path, Path)
        ``ca.crt`` and ``ca.key``.
    """
    out = Path(out_dir)
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write_key(out / "ca.key", key, serialization.PrivateFormat.PKCS8)
    (out / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out / "ca.crt", out / "ca.key"


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_server_cert(
    out_dir: str | Path,
    *,
    ca_cert: str | Path,
    ca_key: str | Path,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
) -> tuple[Path, Path]:
    """Write the SuperLink's TLS certificate, signed by the CA, and its key.

    Parameters
    ----------
    out_dir : str or Path
    ca_cert, ca_key : str or Path
        PEM files of :func:`make_ca` (or any EC/RSA CA).
    hosts : sequence of str, optional
        Every DNS name or IP address sites use to reach the SuperLink.
    days : int, optional

    Returns
    -------
    (Path, Path)
        ``server.crt`` and ``server.key``.

    Raises
    ------
    ConfigError
        If no host is given or the CA files cannot be read.
    """
    if not hosts:
        raise ConfigError("expected at least one host name or IP for the SuperLink certificate",
                          key="hosts")
    try:
        issuer_cert = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
        issuer_key = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"expected a readable PEM CA certificate and key: {exc}",
                          key="ca") from None
    out = Path(out_dir)
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(issuer_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(issuer_key, hashes.SHA384())  # type: ignore[arg-type]
    )
    _write_key(out / "server.key", key, serialization.PrivateFormat.TraditionalOpenSSL)
    (out / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out / "server.crt", out / "server.key"


def make_site_key(out_dir: str | Path, name: str) -> SiteKey:
    """Write a SuperNode authentication key pair ``NAME.key`` / ``NAME.pub`` (NIST P-384, OpenSSH).

    Parameters
    ----------
    out_dir : str or Path
    name : str
        The site's name (letters, digits, ``.``, ``_``, ``-``).

    Returns
    -------
    SiteKey

    Raises
    ------
    ConfigError
        For a name that is not a plain file name.
    """
    if not _SITE_NAME.match(name):
        raise ConfigError(
            f"expected a site name of letters, digits, '.', '_' or '-' (up to 64), got {name!r}",
            key="name",
        )
    out = Path(out_dir)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_key(out / f"{name}.key", key, serialization.PrivateFormat.OpenSSH)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    (out / f"{name}.pub").write_bytes(public + f" {name}\n".encode())
    return SiteKey(name, out / f"{name}.key", out / f"{name}.pub")


def make_test_pki(
    out_dir: str | Path,
    *,
    sites: Sequence[str] = (),
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
) -> Pki:
    """Write a test CA, the SuperLink certificate and one key pair per site.

    Parameters
    ----------
    out_dir : str or Path
        Receives ``ca.*``, ``server.*`` and ``sites/NAME.{key,pub}``.
    sites : sequence of str, optional
    hosts : sequence of str, optional
    days : int, optional

    Returns
    -------
    Pki
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(out, days=days)
    server_cert, server_key = make_server_cert(out, ca_cert=ca_cert, ca_key=ca_key, hosts=hosts,
                                               days=days)
    keys = tuple(make_site_key(out / "sites", name) for name in sites)
    return Pki(ca_cert, ca_key, server_cert, server_key, keys)
