"""``vigil imaging``: write the scanner sites as DICOM, check DICOM files against the chain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vigil.cli._common import err_console, guarded, print_json, print_table
from vigil.core.errors import ConfigError

app = typer.Typer(help="DICOM images: scanner sites, checks.", no_args_is_help=True)
MEDMNIST_HELP = ("PneumoniaMNIST .npz (four scanner sites) or RetinaMNIST .npz (three fundus "
                 "cameras), or 'sample' for the bundled PneumoniaMNIST sample.")


@app.command("write-sites")
@guarded
def write_sites_cmd(
    out: Annotated[Path, typer.Option(help="Folder to write <site>/<split>/*.dcm into.")],
    data: Annotated[str, typer.Option(help=MEDMNIST_HELP)] = "sample",
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    seed: Annotated[int, typer.Option(help="Seed of the site assignment and noise.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Write a MedMNIST split as real DICOM files, one folder per simulated scanner site."""
    from vigil.data.medmnist import load_medmnist
    from vigil.dicom_adapter.sites import write_sites

    images = load_medmnist(data, split)
    files = write_sites(images.images, images.labels, out, split=split, seed=seed)
    rows = [
        {"site": f.site, "folder": str(f.folder), "n": f.n, "positives": f.positives}
        for f in files
    ]
    if json_out:
        print_json({"split": split, "seed": seed, "sites": rows})
        return
    table = Table(title=f"sites, {split} split (positives: label > 0)")
    for col in ("site", "instances", "positives", "prevalence", "folder"):
        table.add_column(col, justify="right" if col in ("instances", "positives") else "left")
    for r in rows:
        share = f"{r['positives'] / r['n']:.1%}" if r["n"] else "-"
        table.add_row(r["site"], str(r["n"]), str(r["positives"]), share, r["folder"])
    print_table(table)


@app.command("check")
@guarded
def check_cmd(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (*.dcm below).")],
    channels: Annotated[int, typer.Option(help="1: the greyscale chain (CR/DX); 3: the colour "
                                          "chain (OP/XC fundus photographs).")] = 1,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Say, for each file, whether the pixel chain accepts it, or why it would be quarantined."""
    from vigil.dicom_adapter.reading import check_files

    if channels not in (1, 3):
        raise ConfigError(f"expected --channels 1 or 3, got {channels}", key="channels")
    checks = check_files(paths, channels=channels)
    accepted = sum(c.accepted for c in checks)
    if json_out:
        print_json(
            {
                "files": len(checks),
                "accepted": accepted,
                "quarantined": len(checks) - accepted,
                "checks": [c.__dict__ for c in checks],
            }
        )
        return
    table = Table(title=f"{accepted} of {len(checks)} files accepted")
    for col in ("file", "verdict", "reason or missing attributes"):
        table.add_column(col)
    for c in checks:
        note = c.reason if c.reason else ", ".join(c.missing)
        table.add_row(c.path, "accepted" if c.accepted else "quarantined", note)
    print_table(table)
    if not checks:
        err_console.print("no .dcm file found")
