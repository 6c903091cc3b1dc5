"""``vigil monitor report``: the drift and performance monitor's alarms and charts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigil.cli._common import err_console, guarded, print_json

app = typer.Typer(help="Drift and performance monitoring of the deployed model.",
                  no_args_is_help=True)


@app.command("report")
@guarded
def report(
    db: Annotated[Path, typer.Option(help="State store of `vigil replay --db` or `vigil serve`.")],
    out: Annotated[Path, typer.Option(help="Directory for the page and the PNG charts.")],
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Write report.md instead of index.html.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Write the monitoring report: every alarm, and a chart per drifting variable over time."""
    from vigil.runtime.monitoring.report import load_report, write_report

    found = load_report(db)
    page = write_report(found, out, fmt="md" if markdown else "html")
    if json_out:
        print_json({**found.to_dict(), "report": str(page)})
        return
    err_console.print(
        f"{found.cycles} cycles, {len(found.alarms)} alarms "
        f"({sum(a.resolved is None for a in found.alarms)} open); wrote {page}", highlight=False,
    )
    for a in found.alarms:
        err_console.print(f"  {a.severity:8} {a.kind:14} {a.variable or '-':16} {a.message}",
                          highlight=False, soft_wrap=True)
