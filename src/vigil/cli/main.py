"""The ``vigil`` command: one typer application, one module per command group."""

from __future__ import annotations

import typer

from vigil import __version__
from vigil.cli import (
    calibrate,
    data,
    demo,
    evaluate,
    federate,
    fhir,
    imaging,
    model,
    package,
    replay,
    serve,
    train,
)

app = typer.Typer(
    name="vigil",
    help="Federated sepsis risk models: train across hospitals, run on premises.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.command("evaluate")(evaluate.evaluate)
app.add_typer(fhir.app, name="fhir")
app.add_typer(imaging.app, name="imaging")
app.add_typer(model.app, name="model")
app.command("serve")(serve.serve)
app.command("replay")(replay.replay)
app.command("demo")(demo.demo)
app.command("calibrate")(calibrate.calibrate)
train.register(app)
app.add_typer(federate.app, name="federate")
app.add_typer(package.app, name="package")
app.add_typer(__import__("vigil.cli.federation").cli.federation.app, name="federation")
app.add_typer(__import__("vigil.cli.monitor").cli.monitor.app, name="monitor")


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """Federated sepsis risk models: train across hospitals, run on premises."""
    if version:
        typer.echo(__version__)
        raise typer.Exit()
