"""``vigil package``: verify a model package byte for byte; make a signing key pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigil.cli._common import err_console, guarded, print_json

app = typer.Typer(help="Verify and sign model packages; make signing keys.", no_args_is_help=True)


@app.command("verify")
@guarded
def verify(
    package: Annotated[Path, typer.Argument(help="Model package directory.")],
    public_key: Annotated[
        Path | None,
        typer.Option(help="The publisher's Ed25519 public key (PEM); default: the key the "
                          "package includes, which proves integrity but not origin."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check every file's SHA-256, that no file is unlisted, and the manifest signature.

    Exits with code 2 naming the file on any changed byte.
    """
    from vigil.federation.integrity import verify_package

    report = verify_package(package, public_key=public_key)
    m = report.package.manifest
    if json_out:
        print_json({"package": str(package), "name": m.name, "version": m.version,
                    "files": list(report.files), "signature": report.signature, "ok": True})
        return
    err_console.print(f"ok: {m.name} {m.version}, {len(report.files)} files intact, "
                      f"signature: {report.signature}", highlight=False)


@app.command("keygen")
@guarded
def keygen(
    private_key: Annotated[Path, typer.Option(help="Private key file to create (mode 0600).")],
    public_key: Annotated[Path, typer.Option(help="Public key file to create.")],
) -> None:
    """Make an Ed25519 key pair for signing packages (``vigil federate --private-key``)."""
    from vigil.federation.integrity import write_keypair

    write_keypair(private_key, public_key)
    err_console.print(f"wrote {private_key} (keep it secret) and {public_key}", highlight=False)


@app.command("sign")
@guarded
def sign_cmd(
    package: Annotated[Path, typer.Argument(help="Model package directory (verified first).")],
    private_key: Annotated[Path, typer.Option(help="The publisher's Ed25519 private key (PEM).")],
) -> None:
    """Sign an intact package with a publisher's key (e.g. the release key), without retraining."""
    from vigil.core.errors import ModelArtifactError
    from vigil.federation.integrity import sign_package

    try:
        pem = private_key.read_bytes()
    except OSError as exc:
        raise ModelArtifactError(f"expected a readable private key file, got {exc.strerror}",
                                 path=str(private_key)) from None
    report = sign_package(package, pem)
    m = report.package.manifest
    err_console.print(f"signed: {m.name} {m.version}, {len(report.files)} files", highlight=False)
