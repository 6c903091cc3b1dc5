"""``vigil replay``: the runtime's own cycle on a simulated clock over recorded FHIR data."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from vigil.cli._common import err_console, guarded, print_json
from vigil.core.errors import ConfigError
from vigil.core.files import replace_durably


@guarded
def replay(
    model: Annotated[Path, typer.Option(help="Model package directory.")],
    out: Annotated[Path, typer.Option(help="Parquet of scores: patient_id, iculos, scored_at, "
                                           "probability, alert.")],
    ndjson: Annotated[
        Path | None, typer.Option(help="Bulk Data NDJSON directory (e.g. from `vigil fhir synth`).")
    ] = None,
    fhir_url: Annotated[str | None, typer.Option(help="FHIR server holding the data.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="Site settings (TOML) whose \\[fhir] section sets the source's options "
                          "(auth, categories, paging, ICU locations); --fhir-url overrides its "
                          "base_url."),
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Site calibration record for this model.")
    ] = None,
    db: Annotated[
        Path | None,
        typer.Option(help="State store file to keep; an existing one resumes the replay "
                          "(default: a temporary one)."),
    ] = None,
    labels: Annotated[
        str | None,
        typer.Option(help="PhysioNet parquet with SepsisLabel (or 'sample'): adds AUROC and "
                          "utility to the summary."),
    ] = None,
    hours: Annotated[
        float | None,
        typer.Option(help="Simulated hours to replay (default: to the last stay's end)."),
    ] = None,
    stack_admissions: Annotated[
        bool,
        typer.Option(help="Move stays by whole days so all ICU admissions fall on one day "
                          "(synth spreads them over a year)."),
    ] = True,
    go_live_days: Annotated[
        int | None,
        typer.Option(min=1, help="Replay as a site switching vigil on: admissions spread over "
                                 "N days (as `vigil demo`), the replay from the start of the "
                                 "last, so the ICU holds stays of every age."),
    ] = None,
    riskassessments: Annotated[
        Path | None, typer.Option(help="Also write the RiskAssessments as NDJSON here.")
    ] = None,
    site: Annotated[
        str, typer.Option(help="Site id in the RiskAssessment ids (deployment 'replay').")
    ] = "site",
    public_key: Annotated[
        Path | None, typer.Option(help="Require the package signature to verify with this key.")
    ] = None,
    suppression_hours: Annotated[
        float, typer.Option(help="Alert policy: no re-alert within this window.")
    ] = 6.0,
    monitor: Annotated[
        bool, typer.Option(help="Run the drift and performance monitor (`vigil monitor report`).")
    ] = True,
    monitor_reference: Annotated[
        str, typer.Option(help="Monitor against the package's 'profile' or the site 'baseline'.")
    ] = "profile",
    label_delay_hours: Annotated[
        float, typer.Option(help="With --labels: outcomes reach the monitor this late.")
    ] = 24.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score recorded FHIR data every 15 simulated minutes with the service's cycle."""
    from rich.progress import Progress

    from vigil.runtime.coverage import profile_rates
    from vigil.runtime.models import LiveModels, live_model
    from vigil.runtime.recorded import load_fhir, load_ndjson, require_coverage
    from vigil.runtime.replay import go_live_start, run_replay, summarize
    from vigil.runtime.settings import AlertSettings, check_public_key
    from vigil.runtime.store import StateStore

    if (ndjson is None) == (fhir_url is None and config is None):
        raise ConfigError("expected exactly one of --ndjson and --fhir-url (or --config with "
                          "[fhir])", key="ndjson")
    if go_live_days is not None and not stack_admissions:
        raise ConfigError("--go-live-days moves admissions by whole days; it cannot be used "
                          "with --no-stack-admissions", key="go_live_days")
    days = go_live_days or 1
    check_public_key(public_key, key="--public-key")
    active = live_model(model, calibration=calibration, public_key=public_key)
    if ndjson is not None:
        source, quarantined = load_ndjson(ndjson, stack_admissions=stack_admissions,
                                          stack_days=days)
    else:
        source, quarantined = load_fhir(_fhir_settings(fhir_url, config),
                                        stack_admissions=stack_admissions, stack_days=days)
    rates = profile_rates(active.scorer.package.manifest.reference_profile,
                          where=f"the manifest of {active.key}")
    require_coverage(source, rates, where=str(ndjson or fhir_url or config))
    sink = None
    if riskassessments is not None:
        from vigil.fhir_adapter.writers import NDJSONWriter
        from vigil.runtime.sources import FHIRSink

        riskassessments.mkdir(parents=True, exist_ok=True)
        sink = FHIRSink(NDJSONWriter(riskassessments), site=site, deployment="replay")
    table = None
    if labels is not None:
        import pandas as pd

        from vigil.data import resolve_data_path

        table = pd.read_parquet(resolve_data_path(labels), columns=["patient_id", "ICULOS",
                                                                     "SepsisLabel"])
    watch = None
    if monitor:
        from vigil.runtime.monitoring import Monitor
        from vigil.runtime.replay import physionet_labels

        outcomes = (None if table is None
                    else physionet_labels(table, delay_hours=label_delay_hours))
        watch = Monitor(labels=outcomes, reference=monitor_reference)
    start = None if go_live_days is None else go_live_start(source, go_live_days)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        path = db if db is not None else Path(scratch) / "state.db"
        with StateStore.open(f"sqlite:///{path}", durable=False, lock="cycles") as store, Progress(
            console=err_console, transient=True, disable=json_out
        ) as bar:
            task = bar.add_task("replaying", total=None)
            result, scores = run_replay(
                source, LiveModels(active=active, shadow=None), store=store, sink=sink,
                alerts=AlertSettings(suppression_hours=suppression_hours), hours=hours,
                progress=lambda i, _r: bar.update(task, completed=i + 1), monitor=watch,
                start=start,
            )
    export = io.BytesIO()
    scores.to_parquet(export, index=False)
    replace_durably(out, export.getvalue())  # a reader never sees half a file
    summary = summarize(scores, cycles=result.cycles + result.skipped, threshold=active.threshold,
                        labels=table)
    summary.update({
        "model": active.key, "calibrated": active.calibration is not None,
        "failed_cycles": result.failed, "resumed_cycles": result.skipped,
        "degraded_cycles": result.degraded,
        "withheld": sum(r.counts.get("withheld", 0) for r in result.results),
        "quarantined": quarantined, "out": str(out), "db": None if db is None else str(db),
        "read": source.counts.as_dict(), "ignored_codes": source.counts.top_ignored(10),
        "go_live_days": go_live_days,
        "replay_start": None if start is None else start.isoformat(timespec="minutes"),
    })
    if json_out:
        print_json(summary)
        return
    err_console.print(
        f"{summary['patients']} patients, {summary['cycles']} cycles, {summary['scores']} scores, "
        f"{summary['alerts']} alerts ({summary['alerts_per_patient_day']:.2f} per patient-day)"
        + (f"; AUROC {summary['auroc']:.4f}, utility {summary['utility']:.4f}" if table is not None
           else "")
        + f"; wrote {out}"
    )
    c = source.counts
    err_console.print(
        f"read {c.resources:,} Observations: {c.values:,} values, "
        f"{c.ignored_unknown_code:,} ignored (unknown code), {c.skipped_status:,} skipped "
        f"(status), {quarantined:,} quarantined"
        + (f"; degraded cycles {result.degraded}" if result.degraded else "")
    )
    for code, n in c.top_ignored(5).items():
        err_console.print(f"  ignored {n:>10,}  {code}")


def _fhir_settings(fhir_url: str | None, config: Path | None):  # type: ignore[no-untyped-def]
    """Return ``[fhir]`` of the site file (``--fhir-url`` overriding its URL), or the URL's.

    Both go through :func:`vigil.runtime.settings.load_settings`, so a bad URL or section is
    one :class:`ConfigError` line, with no secret of the file in it.
    """
    from vigil.runtime.settings import load_settings

    override = {} if fhir_url is None else {"fhir": {"base_url": fhir_url}}
    fhir = load_settings(config, environ=False, **override).fhir
    if fhir is None:
        raise ConfigError(f"expected a [fhir] section in {config}", key="fhir")
    return fhir
