"""``vigil monitor report`` and ``vigil monitor images``: the monitors' alarms and charts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vigil.cli._common import err_console, guarded, print_json, read_table

IMAGE_TABLE = "imaging_instances"
"""The state store's table of imaging instance records (:mod:`vigil.runtime.imaging_store`)."""

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
    image_model: Annotated[
        Path | None, typer.Option(help="Imaging package whose image profile the imaging "
                                       "records are checked against (default: site baseline).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Write the monitoring report: every alarm, and a chart per drifting variable over time.

    When the store holds imaging instance records, their drift is checked too (as
    ``vigil monitor images``) and reported after the sepsis alarms, unless ``vigil serve``
    already monitored them: its imaging alarms are then among the stored alarms.
    """
    from vigil.runtime.monitoring.report import load_report, write_report

    found = load_report(db)
    page = write_report(found, out, fmt="md" if markdown else "html")
    imaging = _stored_imaging(db, image_model)
    if json_out:
        extra = {} if imaging is None else {"imaging": imaging.to_dict()}
        print_json({**found.to_dict(), "report": str(page), **extra})
        return
    err_console.print(
        f"{found.cycles} cycles, {len(found.alarms)} alarms "
        f"({sum(a.resolved is None for a in found.alarms)} open); wrote {page}", highlight=False,
    )
    _print_alarms(found.alarms)
    if imaging is not None:
        _print_imaging(imaging)


def _print_alarms(alarms: Any) -> None:
    for a in alarms:
        err_console.print(f"  {a.severity:8} {a.kind:14} {a.variable or '-':16} {a.message}",
                          highlight=False, soft_wrap=True)


def _print_imaging(run: Any) -> None:
    for note in run.notes:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    err_console.print(f"imaging: {run.checks} checks, {len(run.alarms)} alarms "
                      f"({sum(a.resolved is None for a in run.alarms)} open)", highlight=False)
    _print_alarms(run.alarms)


def _stored_imaging(db: Path, model: Path | None) -> Any:
    """Replay the imaging monitor on a store's instance records; None when it has none.

    None too when ``vigil serve`` monitored them (imaging statistics in ``monitor_stats``):
    its alarms are the stored ones, and a replay would list them twice.
    """
    import sqlite3

    from vigil.runtime.monitoring.images import IMAGING_VARIABLES

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (IMAGE_TABLE,)).fetchone() is None:
            return None
        if conn.execute(f"SELECT 1 FROM {IMAGE_TABLE} LIMIT 1").fetchone() is None:  # noqa: S608
            return None  # a store of a site without imaging
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        ("monitor_stats",)).fetchone() is not None:
            marks = ", ".join("?" * len(IMAGING_VARIABLES))
            served = conn.execute(
                f"SELECT 1 FROM monitor_stats WHERE variable IN ({marks}) LIMIT 1",  # noqa: S608
                tuple(sorted(IMAGING_VARIABLES))).fetchone()
            if served is not None:
                return None
    finally:
        conn.close()
    return _image_run(db, table=IMAGE_TABLE, model=model)


def _image_run(records: Path, *, table: str, model: Path | None, **options: Any) -> Any:
    from vigil.core.package import read_package
    from vigil.imaging.profile import ImageProfile
    from vigil.runtime.monitoring.image_records import load_instance_records
    from vigil.runtime.monitoring.image_replay import replay_image_monitor, study_outcomes
    from vigil.runtime.monitoring.images import ImageDriftMonitor

    frame = load_instance_records(records, table=table)
    profile, name = None, ""
    if model is not None:
        package = read_package(model)
        profile = ImageProfile.from_manifest(package.manifest.model_dump(),
                                             where=f"the manifest of {model}")
        name = f"{package.manifest.name}@{package.manifest.version}"
        frame = frame[frame["model"] == name] if (frame["model"] == name).any() else frame
    every = options.pop("every_hours", 1.0)
    studies, labels = options.pop("studies", None), options.pop("labels", None)
    outcomes = None
    if studies is not None and labels is not None:
        outcomes = study_outcomes(
            read_table(studies, "--studies", what="study scores (.parquet or .csv)",
                       columns=("study_key", "scored_at", "probability"), csv=True),
            read_table(labels, "--labels", what="delayed study labels (.csv)",
                       columns=("study_key", "label", "known_at"), csv=True))
    monitor = ImageDriftMonitor(profile, **options)
    return replay_image_monitor(frame, monitor, every_hours=every, outcomes=outcomes, model=name)


@app.command("images")
@guarded
def images(
    records: Annotated[Path, typer.Option(
        help="Instance records: a state store (table --table) or a .parquet of the same columns.")],
    model: Annotated[Path | None, typer.Option(
        help="Imaging package: its image profile (headers never trained on) and its records.")
    ] = None,
    table: Annotated[str, typer.Option(help="The store's table of instance records.")
                     ] = IMAGE_TABLE,
    reference: Annotated[str, typer.Option(
        help="Intensities and scores against the site's 'baseline' or the package 'profile'.")
    ] = "baseline",
    window_hours: Annotated[float, typer.Option(help="Window of studies checked.")] = 24.0,
    baseline_hours: Annotated[float, typer.Option(help="The site's first hours: its baseline.")
                              ] = 48.0,
    every_hours: Annotated[float, typer.Option(help="Hours between checks.")] = 1.0,
    studies: Annotated[Path | None, typer.Option(
        help="Study scores (study_key, scored_at, probability; .csv or .parquet), with --labels.")
    ] = None,
    labels: Annotated[Path | None, typer.Option(
        help="Delayed study labels (study_key, label, known_at; .csv), with --studies.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Check imaging records for header, intensity, score and quarantine drift (and performance)."""
    from vigil.core.errors import ConfigError

    if (studies is None) != (labels is None):
        raise ConfigError("expected --studies and --labels together (performance needs both); "
                          "got one", key="labels")
    run = _image_run(records, table=table, model=model, reference=reference,
                     window_hours=window_hours, baseline_hours=baseline_hours,
                     every_hours=every_hours, studies=studies, labels=labels)
    if json_out:
        print_json(run.to_dict())
        return
    _print_imaging(run)
