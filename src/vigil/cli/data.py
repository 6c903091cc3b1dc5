"""``vigil data``: look at the data and its site partitions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vigil.cli._common import DATA_HELP, err_console, guarded, print_json, print_table

app = typer.Typer(help="Inspect the PhysioNet data and its site partitions.", no_args_is_help=True)


@app.command("sites")
@guarded
def sites(
    data: Annotated[str, typer.Option(help=DATA_HELP, envvar="VIGIL_DATA")] = "sample",
    scheme: Annotated[
        str, typer.Option(help="hospital, hospital-unit, random:N or dirichlet:N:ALPHA")
    ] = "hospital",
    seed: Annotated[int, typer.Option(help="Seed of the Dirichlet draw.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print patients, rows, septic patients and prevalence per site."""
    from vigil.data import load_physionet, partition, site_summary

    table = load_physionet(data)
    summary = site_summary(table, partition(table, scheme, seed=seed))
    if json_out:
        print_json({"scheme": scheme, "sites": summary.to_dict(orient="records")})
        return
    out = Table(title=f"sites: {scheme}")
    for col in ("site", "patients", "rows", "septic patients", "prevalence"):
        out.add_column(col, justify="left" if col == "site" else "right")
    for r in summary.itertuples(index=False):
        out.add_row(
            r.site, f"{r.patients:,}", f"{r.rows:,}", f"{r.septic:,}", f"{r.prevalence:.2%}"
        )
    print_table(out)


@app.command("make-sample")
@guarded
def make_sample_cmd(
    data: Annotated[
        Path, typer.Option(help="The full sepsis_hourly.parquet.", envvar="VIGIL_DATA")
    ],
    out: Annotated[Path, typer.Option(help="Parquet file to write.")],
) -> None:
    """Write the bundled sample (1,500 patients per hospital) from the full data."""
    import pandas as pd

    from vigil.data.sample import make_sample

    sample = make_sample(pd.read_parquet(data), out)
    err_console.print(
        f"wrote {sample['patient_id'].nunique():,} patients, {len(sample):,} rows to {out}"
    )
