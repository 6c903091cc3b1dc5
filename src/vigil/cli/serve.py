"""``vigil serve``: the on-prem service (a cycle every 15 minutes, and the ops endpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigil.cli._common import guarded, print_json, setup_logging


@guarded
def serve(
    config: Annotated[
        Path,
        typer.Option("--config", help="Site settings (TOML); VIGIL_ variables override it.",
                     envvar="VIGIL_CONFIG"),
    ],
    once: Annotated[
        bool, typer.Option("--once", help="Run the cycle of the current tick once, print it, exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Score every ICU patient at minutes 0, 15, 30 and 45 (and new imaging studies) until SIGTERM.

    With ``[imaging]`` enabled, ``--once`` also runs one imaging poll (key ``imaging``).
    """
    from vigil.runtime.service import build_service
    from vigil.runtime.settings import load_settings

    settings = load_settings(config)
    setup_logging(verbose)
    service = build_service(settings)
    if once:
        try:
            result = service.run_cycle()
            imaging = service.poll_imaging()
        finally:
            service.close()
        print_json({
            "cycle_id": result.cycle_id, "tick": result.tick.isoformat(), "status": result.status,
            "reason": result.reason, "counts": result.counts, "timings": result.timings,
            "ignored_codes": result.ignored_codes,
            **({"imaging": imaging.to_dict()} if imaging is not None else {}),
        })
        if not result.ok or (imaging is not None and not imaging.ok):
            raise typer.Exit(code=1)
        return
    service.serve()
