"""``vigil model``: install, promote and list the models a site runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vigil.cli._common import err_console, guarded, print_json, print_table, setup_logging

app = typer.Typer(help="Install, promote and list the site's models.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="Site settings (TOML); VIGIL_ variables override it.",
                 envvar="VIGIL_CONFIG"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _open(config: Path | None, *, lock: str | None = None):  # type: ignore[no-untyped-def]
    from vigil.runtime.settings import check_public_key, load_settings
    from vigil.runtime.store import StateStore

    settings = load_settings(config)
    check_public_key(settings.models.public_key, key="models.public_key")
    return settings, StateStore.open(settings.store.url, lock=lock)


@app.command("install")
@guarded
def install(
    package: Annotated[Path, typer.Argument(help="Model package directory.")],
    config: ConfigOption = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Site calibration record made for this model.")
    ] = None,
    role: Annotated[
        str | None,
        typer.Option(help="active, shadow or installed (default: active if none is active, "
                          "else installed)."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Verify a package (hashes, signature, feature schema, inference) and install it.

    A sepsis or an imaging package (manifest task ``imaging``); roles are held per task.
    """
    from vigil.runtime.models import install_model, model_summary

    settings, store = _open(config, lock="models")
    setup_logging()  # the unsigned opt-out is logged as a WARNING
    with store:
        row = install_model(
            store, package, models_dir=settings.models.dir,
            public_key=settings.models.trusted_key(), calibration=calibration, role=role,
            calibration_key=settings.models.calibration_key,
        )
    if json_out:
        print_json(model_summary(row))
    else:
        err_console.print(f"installed {row.key} as {row.role} ({row.path})")


@app.command("promote")
@guarded
def promote(
    version: Annotated[str, typer.Argument(help="Version of an installed model.")],
    name: Annotated[
        str | None, typer.Option(help="Model name, if several share the version.")
    ] = None,
    shadow: Annotated[
        bool, typer.Option("--shadow", help="Make it the shadow model instead.")
    ] = False,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Make an installed model the active one (or the shadow one); the previous holder retires.

    Roles are per task: promoting an imaging model leaves the sepsis model's role alone.
    """
    from vigil.runtime.models import model_summary, promote_model

    _, store = _open(config, lock="models")
    with store:
        row = promote_model(store, version, name=name, role="shadow" if shadow else "active")
    if json_out:
        print_json(model_summary(row))
    else:
        err_console.print(f"{row.key} is now {row.role}; the service uses it from its next cycle")


@app.command("list")
@guarded
def list_models(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """List installed models and their roles."""
    from vigil.runtime.models import model_summary

    _, store = _open(config)
    with store:
        rows = store.models()
    if json_out:
        print_json({"models": [model_summary(r) for r in rows]})
        return
    out = Table(title="installed models")
    for col in ("name", "version", "task", "role", "calibrated", "sha256"):
        out.add_column(col)
    for r in rows:
        calibrated = "yes" if r.calibration else "no"
        out.add_row(r.name, r.version, r.task, r.role, calibrated, r.model_sha256[:12])
    print_table(out)
