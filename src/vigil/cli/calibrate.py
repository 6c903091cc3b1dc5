"""``vigil calibrate``: recalibrate a model to a site and choose its alert threshold."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vigil.calibration.alerts import DEFAULT_SUPPRESSION_HOURS
from vigil.calibration.methods import DEFAULT_METHOD
from vigil.cli._common import (
    DATA_HELP,
    err_console,
    guarded,
    print_json,
    print_table,
    read_table,
    warn,
)

_SHOWN = (("ECE", "calibration", "ece"), ("calibration intercept", "calibration", "intercept"),
          ("calibration slope", "calibration", "slope"), ("AUROC", "calibration", "auroc"),
          ("sensitivity", "operating", "sensitivity"), ("specificity", "operating", "specificity"),
          ("PPV", "operating", "ppv"), ("false-positive rate", "operating", "false_positive_rate"),
          ("alerts / patient-day", "operating", "alerts_per_patient_day"),
          ("patients detected by onset", "operating", "patient_sensitivity"))


def _value(metrics: dict[str, Any], part: str, key: str) -> float:
    value = metrics[part] if part == "calibration" else metrics[part]["metrics"]
    v = value[key]
    return float(v["value"] if isinstance(v, dict) else v)


_IMAGING_SHOWN = tuple(row for row in _SHOWN if row[2] not in (
    "alerts_per_patient_day", "patient_sensitivity"))


def show(summary: dict[str, Any]) -> None:
    """Print the before/after table of a calibration."""
    unit = "studies" if summary.get("unit") == "study" else "patients"
    out = Table(title=f"calibration at site {summary['site']}: {summary['method']}, "
                      f"{summary['policy']['text']} (later {unit})")
    out.add_column("metric")
    out.add_column("before", justify="right")
    out.add_column("after", justify="right")
    before, after = summary["metrics"]["before"], summary["metrics"]["after"]
    out.add_row("threshold", f"{summary['model_threshold']:.4g}", f"{summary['threshold']:.4g}")
    for name, part, key in _IMAGING_SHOWN if unit == "studies" else _SHOWN:
        out.add_row(name, f"{_value(before, part, key):.4f}", f"{_value(after, part, key):.4f}")
    print_table(out)
    a = summary["achieved"]
    err_console.print(f"achieved {a['metric']} {a['value']:.4f} "
                      f"[{a['low']:.4f}, {a['high']:.4f}]; record: {summary['record']}")


@guarded
def calibrate(
    model: Annotated[Path, typer.Option(help="Model package directory.")],
    policy: Annotated[
        str,
        typer.Option(help="Threshold policy: sensitivity=S, patient-sensitivity=S, "
                          "alerts-per-patient-day=A, ppv=P or utility."),
    ],
    out: Annotated[Path, typer.Option(help="Calibration record to write (calibration.json).")],
    data: Annotated[str, typer.Option(help=DATA_HELP, envvar="VIGIL_DATA")] = "sample",
    method: Annotated[
        str, typer.Option(help="in-the-large, logistic (also: platt, sigmoid), beta or isotonic.")
    ] = DEFAULT_METHOD.value,
    scores: Annotated[
        Path | None,
        typer.Option(help="Stored scores (patient_id, ICULOS or iculos, probability[, "
                          "scored_at]) instead of scoring --data with the model."),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Directory for the report (Markdown + PNG plots).")
    ] = None,
    hospital: Annotated[
        str | None, typer.Option(help="Use only this hospital's patients (e.g. B).")
    ] = None,
    site: Annotated[
        str | None, typer.Option(help="Site id written into the record (default: --hospital).")
    ] = None,
    fit_fraction: Annotated[
        float, typer.Option(help="Share of earlier patients (by patient_id) to fit on.")
    ] = 0.5,
    suppression_hours: Annotated[
        float, typer.Option(help="Re-alert suppression window of the alert policy.")
    ] = DEFAULT_SUPPRESSION_HOURS,
    hysteresis: Annotated[
        float | None, typer.Option(help="Re-arm only below threshold minus this.")
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="Patient bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    min_events: Annotated[
        int | None, typer.Option(help="Override the method's minimum number of events.")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="Require the package signature to verify with this key.")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="Imaging model: the site's labelled studies, a folder of DICOM files "
                          "with labels.csv (as `vigil imaging write-sites` writes them).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Fit on earlier patients (studies), choose the threshold, report on later ones, write it."""
    import numpy as np

    from vigil.calibration import ModelRef, ScoredHours, calibrate_site, parse_method, parse_policy
    from vigil.calibration.record import write_record
    from vigil.calibration.site import TIE_TOLERANCE, tie_warning
    from vigil.core.errors import ConfigError, DataError
    from vigil.core.package import read_package
    from vigil.data import load_physionet
    from vigil.features import FEATURE_SCHEMA

    chosen_method, chosen_policy = parse_method(method), parse_policy(policy)
    package = read_package(model, public_key=public_key)
    if package.manifest.task == "imaging":
        if images is None:
            raise ConfigError("expected --images DIR (the site's labelled DICOM studies) for an "
                              "imaging model; got none", key="images")
        if scores is not None or report is not None or hospital is not None:
            raise ConfigError("expected neither --scores, --report nor --hospital for an imaging "
                              "model (its studies are scored from --images by the runtime's "
                              "code)", key="images")
        from vigil.cli._calibrate_images import calibrate_images

        summary = calibrate_images(
            package, images, method=chosen_method, policy=chosen_policy, out=out,
            site=site or "site", fit_fraction=fit_fraction, n_boot=bootstrap, seed=seed,
            min_events=min_events)
        if json_out:
            print_json(summary)
        else:
            show(summary)
        return
    if images is not None:
        raise ConfigError(f"expected an imaging model package with --images; "
                          f"{package.manifest.name} is a {package.manifest.task!r} model",
                          key="images")
    package = read_package(model, public_key=public_key,
                           expected_schema_sha256=FEATURE_SCHEMA.sha256)
    table = load_physionet(data)
    if hospital is not None:
        keep = np.flatnonzero(table.patient_hospital == hospital)
        if keep.size == 0:
            raise DataError(f"expected patients of hospital {hospital!r} in the data; found none")
        table = table.select(keep)
    if scores is not None:
        frame = read_table(scores, "--scores", what="a scores parquet file",
                           columns=("patient_id", ("ICULOS", "iculos"), "probability"))
        hours = ScoredHours.from_scores(table.frame, frame)
    else:
        from vigil.runtime.offline import score_table

        with err_console.status(f"scoring {table.grid.n_rows:,} hours"):
            hours = ScoredHours.from_table(table, score_table(package, table))
    with err_console.status("fitting and bootstrapping"):
        result = calibrate_site(
            hours, method=chosen_method, policy=chosen_policy,
            model_threshold=package.manifest.threshold, fit_fraction=fit_fraction,
            suppression_hours=suppression_hours, hysteresis=hysteresis, n_boot=bootstrap,
            seed=seed, min_events=min_events, source=Path(str(data)).name,
        )
    site_id = site or hospital or "site"
    ref = ModelRef.of(package)
    record = result.to_record(site=site_id, model=ref)
    write_record(record, out)
    page = None
    if report is not None:
        from vigil.calibration.report import write_report

        page = write_report(result, report, site=site_id, model=ref)
    if result.overshoot > TIE_TOLERANCE:
        warn(tie_warning(result))
    summary = {
        "record": str(out),
        "report": None if page is None else str(page),
        "site": site_id,
        "model": ref.model_dump(),
        "method": record.method,
        "policy": record.policy,
        "threshold": record.threshold,
        "model_threshold": result.model_threshold,
        "achieved": record.achieved,
        "metrics": record.metrics,
        "data_window": record.data_window,
    }
    if json_out:
        print_json(summary)
    else:
        show(summary)
