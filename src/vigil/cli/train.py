"""``vigil train`` and ``vigil reference``: the centralized reference model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vigil.cli._common import DATA_HELP, err_console, guarded, print_json, print_table
from vigil.federation.centralized import TorchSetup
from vigil.federation.reference_run import DEFAULT_NAME, DEFAULT_VERSION

__all__ = ["reference", "register", "train"]

SeedOption = Annotated[int, typer.Option(help="Seed of shuffling, dropout and boosting.")]
EpochsOption = Annotated[
    int | None, typer.Option(min=1, help="Maximum epochs (the best validation epoch is kept).")
]
NameOption = Annotated[str, typer.Option(help="Model package name.")]
VersionOption = Annotated[str, typer.Option(help="Model package version.")]
KeyOption = Annotated[
    Path | None,
    typer.Option(exists=True, dir_okay=False,
                 help="PEM Ed25519 private key to sign the package with."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
REFERENCE_COLUMNS = ("auroc", "auprc", "utility")


def _setup(seed: int, epochs: int | None) -> TorchSetup:
    return TorchSetup(seed=seed) if epochs is None else TorchSetup(seed=seed, epochs=epochs)


def _key(path: Path | None) -> bytes | None:
    return None if path is None else path.read_bytes()


def _say(line: str) -> None:
    err_console.print(line, highlight=False)


@guarded
def train(
    out: Annotated[Path, typer.Option(help="Model package directory to write.")],
    data: Annotated[str, typer.Option(help=DATA_HELP, envvar="VIGIL_DATA")] = "sample",
    hospital: Annotated[
        str | None, typer.Option(help="Train on this hospital's patients only (A or B).")
    ] = None,
    seed: SeedOption = 0,
    epochs: EpochsOption = None,
    name: NameOption = DEFAULT_NAME,
    version: VersionOption = DEFAULT_VERSION,
    private_key: KeyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Train the torch model centrally and write a parity-checked model package.

    Fits on training patients, picks the threshold that maximizes utility on
    validation patients, and reports on held-out test patients of every hospital.
    """
    from vigil.cli.evaluate import show
    from vigil.data import load_physionet
    from vigil.federation.reference_run import train_package

    table = load_physionet(data)
    package, fitted = train_package(
        table, out, hospital=hospital, setup=_setup(seed, epochs), name=name, version=version,
        private_key_pem=_key(private_key), progress=_say,
    )
    m = package.manifest
    if json_out:
        print_json({"package": str(package.path), "name": m.name, "version": m.version,
                    "threshold": m.threshold, "signed": package.signed,
                    "parity_max_abs_diff": m.model_extra["export"]["parity_max_abs_diff"],
                    "valid_utility": fitted.valid_utility, "test": m.validation})
        return
    show(m.validation, f"{m.name} {m.version} on test patients")
    err_console.print(f"wrote {package.path} (validation utility {fitted.valid_utility:.4f})")


@guarded
def reference(
    data: Annotated[str, typer.Option(help=DATA_HELP, envvar="VIGIL_DATA")] = "sample",
    out: Annotated[
        Path | None, typer.Option(help="Also write the torch model package here.")
    ] = None,
    seed: SeedOption = 0,
    epochs: EpochsOption = None,
    name: NameOption = DEFAULT_NAME,
    version: VersionOption = DEFAULT_VERSION,
    private_key: KeyOption = None,
    json_out: JsonOption = False,
) -> None:
    """Compare the rule baselines and the two centralized models on held-out test patients.

    qSOFA, SIRS and NEWS2 at their clinical cut-offs; the torch model and
    HistGradientBoosting fitted on training patients with the threshold that
    maximizes utility on validation patients. AUROC, AUPRC and utility per hospital.
    """
    from vigil.data import load_physionet
    from vigil.features.baselines import Rule
    from vigil.federation.centralized import HGBSetup
    from vigil.federation.reference_run import reference
    from vigil.runtime.offline import evaluate_rows, rule_scores, rule_threshold

    table = load_physionet(data)
    result = reference(
        table, torch_setup=_setup(seed, epochs), hgb_setup=HGBSetup(seed=seed), progress=_say,
        out_dir=out, name=name, version=version, private_key_pem=_key(private_key),
    )
    test = result.test
    metrics = {
        rule.value: evaluate_rows(test, rule_scores(rule, test).astype(float),
                                  threshold=rule_threshold(rule))
        for rule in Rule
    }
    metrics.update(result.metrics)
    if json_out:
        print_json({"data": data, "patients": result.patients, "methods": metrics,
                    "seconds": {"torch": result.torch.seconds, "hgb": result.hgb.seconds}})
        return
    hospitals = sorted(metrics["torch"]["by_hospital"])
    out_table = Table(title=f"test patients: {result.patients['test']:,}")
    out_table.add_column("method")
    for h in [*hospitals, "all"]:
        for col in REFERENCE_COLUMNS:
            out_table.add_column(f"{h} {col}", justify="right")
    for method, res in metrics.items():
        cells = [f"{r[c]:.3f}" for r in [*(res["by_hospital"][h] for h in hospitals), res]
                 for c in REFERENCE_COLUMNS]
        out_table.add_row(method, *cells)
    print_table(out_table)
    if out is not None:
        err_console.print(f"wrote the torch model package to {out}")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``reference`` to the ``vigil`` application."""
    app.command("train")(train)
    app.command("reference")(reference)
