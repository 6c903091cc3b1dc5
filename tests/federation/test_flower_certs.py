"""The test PKI: a CA, the SuperLink certificate (checked by a real TLS handshake), site keys."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from vigil.core.errors import ConfigError
from vigil.federation.flower.certs import make_site_key, make_test_pki


def _handshake(cert: Path, key: Path, ca: Path, server_name: str) -> str:
    """Serve TLS with ``cert`` on loopback and connect verifying against ``ca``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(ca))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.recv(2).decode()
    finally:
        listener.close()
        thread.join(timeout=5)


def test_server_certificate_passes_a_tls_handshake_for_each_name(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path, hosts=("127.0.0.1", "localhost", "coordinator.example"))
    for name in ("127.0.0.1", "localhost", "coordinator.example"):
        assert _handshake(pki.server_cert, pki.server_key, pki.ca_cert, name) == "ok"
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert oct(pki.server_key.stat().st_mode & 0o777) == "0o600"


def test_another_ca_or_name_fails_the_handshake(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "a")
    other = make_test_pki(tmp_path / "b")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(pki.server_cert, pki.server_key, other.ca_cert, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(pki.server_cert, pki.server_key, pki.ca_cert, "elsewhere.example")


def test_site_keys_are_p384_openssh_pairs_flower_can_load(tmp_path: Path) -> None:
    key = make_site_key(tmp_path, "hospital-a")
    private = load_ssh_private_key(key.private_key.read_bytes(), password=None)
    public = load_ssh_public_key(key.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()
    assert oct(key.private_key.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError, match="expected a site name"):
        make_site_key(tmp_path, "../escape")


def test_certs_command_writes_everything(tmp_path: Path) -> None:
    from vigil.cli.main import app

    result = CliRunner().invoke(app, ["federation", "certs", "--out", str(tmp_path), "--site",
                                      "a", "--site", "b", "--json"])
    assert result.exit_code == 0, result.output
    for name in ("ca.crt", "ca.key", "server.crt", "server.key", "sites/a.key", "sites/b.pub"):
        assert (tmp_path / name).is_file()
