"""``vigil evaluate``: AUROC, AUPRC, normalized utility and threshold metrics, per hospital."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from vigil.cli._common import DATA_HELP, err_console, guarded, print_json, print_table, read_table
from vigil.core.errors import ConfigError
from vigil.data.splits import Split
from vigil.features.baselines import Rule
from vigil.features.bootstrap import INTERVAL_METRICS, Scored

PREDICTIONS = "a predictions parquet file"
"""What --predictions and --versus name: another run's --out-predictions."""

if TYPE_CHECKING:

    from vigil.data.loader import PhysioNetTable

METRICS = ("auroc", "auprc", "utility", "sensitivity", "specificity", "ppv")


def show(result: dict[str, Any], title: str) -> None:
    """Print an evaluation as a table: overall and one row per hospital."""
    out = Table(title=title)
    out.add_column("hospital")
    for col in ("patients", "rows", *METRICS):
        out.add_column(col, justify="right")
    rows = [("all", result), *sorted(result["by_hospital"].items())]
    for name, r in rows:
        out.add_row(
            name, f"{r['n_patients']:,}", f"{r['n_rows']:,}", *(f"{r[m]:.4f}" for m in METRICS)
        )
    print_table(out)
    err_console.print(f"threshold: {result['threshold']:.4f}")


@guarded
def evaluate(
    data: Annotated[str, typer.Option(help=DATA_HELP, envvar="VIGIL_DATA")] = "sample",
    model: Annotated[Path | None, typer.Option(help="Model package directory.")] = None,
    predictions: Annotated[
        Path | None,
        typer.Option(
            help="Parquet of predictions made elsewhere: patient_id, ICULOS, "
            "probability, prediction."
        ),
    ] = None,
    baseline: Annotated[Rule | None, typer.Option(help="Evaluate a rule baseline instead.")] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="Calibration record to apply (probability and threshold).")
    ] = None,
    split: Annotated[
        Split, typer.Option(help="Patients to evaluate (vigil's deterministic patient split).")
    ] = Split.ALL,
    threshold: Annotated[
        float | None, typer.Option(help="Override the decision threshold.")
    ] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="Require the package signature to verify with this key.")
    ] = None,
    out_predictions: Annotated[
        Path | None, typer.Option(help="Write hourly predictions to this parquet file.")
    ] = None,
    versus: Annotated[
        Path | None,
        typer.Option(
            help="Predictions parquet of another model on the same patients (the "
            "--predictions format): also report this model minus that one, with paired "
            "patient-bootstrap intervals."
        ),
    ] = None,
    intervals: Annotated[
        bool,
        typer.Option(
            "--intervals",
            help="Add 95% patient-bootstrap intervals of AUROC and utility, overall and per "
            "hospital.",
        ),
    ] = False,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Patient resamples of --intervals and --versus.")
    ] = 1000,
    images: Annotated[
        Path | None,
        typer.Option(help="Imaging model: a folder of DICOM files (labels.csv beside them; scored "
                          "by the runtime's imaging cycle) or a MedMNIST .npz (its test split) "
                          "to score instead of --data."),
    ] = None,
    site_id: Annotated[
        str | None,
        typer.Option("--site-id", help="With --images: the site whose threshold of a federated "
                                       "imaging package applies (as imaging.site_id)."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score every hour causally and report metrics, overall and per hospital."""
    from vigil.data import load_physionet, patient_split
    from vigil.runtime import offline

    if images is not None:
        _evaluate_images(model, images, public_key, threshold, out_predictions, json_out,
                         calibration=calibration, site_id=site_id)
        return

    chosen = [x for x in (model, predictions, baseline) if x is not None]
    if len(chosen) != 1:
        raise ConfigError(
            "expected exactly one of --model, --predictions or --baseline", key="model"
        )
    table = load_physionet(data)
    if split is not Split.ALL:
        table = table.select(patient_split(table.grid.patient_ids, split).nonzero()[0])
    prediction = None
    if model is not None:
        from vigil.core.package import read_package
        from vigil.features import FEATURE_SCHEMA

        package = read_package(
            model, public_key=public_key, expected_schema_sha256=FEATURE_SCHEMA.sha256
        )
        probability = offline.score_table(package, table)
        cut = package.manifest.threshold
        if calibration is not None:
            from vigil.calibration.record import load_record

            record = load_record(calibration, package=package)
            probability = record.transform(probability)
            cut = record.threshold
        title = f"{package.manifest.name} {package.manifest.version}"
    elif baseline is not None:
        probability = offline.rule_scores(baseline, table).astype(float)
        cut = offline.rule_threshold(baseline)
        title = f"rule baseline {baseline.value}"
    else:
        assert predictions is not None
        probability, prediction = offline.scores_from_predictions(
            table, read_table(predictions, "--predictions", what=PREDICTIONS,
                              columns=offline.PREDICTION_COLUMNS))
        cut = float("nan")
        title = f"predictions {predictions.name}"
    if threshold is not None:
        cut, prediction = threshold, None
    result = offline.evaluate_rows(table, probability, threshold=cut, prediction=prediction)
    if out_predictions is not None:
        offline.predictions_frame(table, probability, threshold=cut).to_parquet(out_predictions)
    if intervals or versus is not None:
        _add_intervals(result, table, (probability, offline.alerts(probability, cut, prediction)),
                       versus, bootstrap)
    if json_out:
        print_json(result)
    else:
        show(result, title)
        if intervals:
            show_intervals(result["intervals"], f"{title}: AUROC and utility", signed=False)
        if versus is not None:
            show_intervals(result["versus"], f"{title} minus {versus.name}", signed=True)


def _evaluate_images(model: Path | None, images: Path, public_key: Path | None,
                     threshold: float | None, out_predictions: Path | None,
                     json_out: bool, *, calibration: Path | None = None,
                     site_id: str | None = None) -> None:
    from vigil.core.package import read_package
    from vigil.runtime.images import evaluate_images

    if model is None:
        raise ConfigError("expected --model PACKAGE with --images", key="model")
    package = read_package(model, public_key=public_key)
    record = None
    if calibration is not None:
        from vigil.calibration.record import load_record

        record = load_record(calibration, package=package)
    summary, frame = evaluate_images(package, images, threshold=threshold, calibration=record,
                                     site_id=site_id)
    if out_predictions is not None:
        frame.to_parquet(out_predictions)
    if json_out:
        print_json(summary)
        return
    out = Table(title=summary["model"])
    if "classes" in summary:  # multi-class: macro AUC and arg-max accuracy
        for key in ("n_images", "auroc", "accuracy", "label_counts", "prediction_counts"):
            out.add_column(key, justify="right")
        out.add_row(f"{summary['n_images']:,}", f"{summary['auroc']:.4f}",
                    f"{summary['accuracy']:.4f}", str(summary["label_counts"]),
                    str(summary["prediction_counts"]))
        print_table(out)
        for reason, count in sorted(summary["quarantine_reasons"].items()):
            err_console.print(f"quarantined {count}: {reason}", highlight=False)
        return
    for key in ("n_images", "auroc", "accuracy", "sensitivity", "specificity", "threshold"):
        out.add_column(key, justify="right")
    out.add_row(f"{summary['n_images']:,}", *(f"{summary[k]:.4f}" for k in
                ("auroc", "accuracy", "sensitivity", "specificity", "threshold")))
    print_table(out)
    for reason, count in sorted(summary["quarantine_reasons"].items()):
        err_console.print(f"quarantined {count}: {reason}", highlight=False)


def _add_intervals(
    result: dict[str, Any], table: PhysioNetTable, scored: Scored, versus: Path | None,
    n_boot: int,
) -> None:
    """Add ``intervals`` (the model's own) and, with a comparator, ``versus`` to a result."""
    from vigil.features.bootstrap import metric_intervals_by_hospital
    from vigil.runtime import offline

    def run(*other: Scored) -> dict[str, Any]:
        return metric_intervals_by_hospital(table.labels, table.grid.starts, table.hospital,
                                            scored, *other, n_boot=n_boot)

    with err_console.status(f"bootstrapping {n_boot} patient resamples"):
        result["intervals"] = run()
        if versus is not None:
            other = offline.scores_from_predictions(table, read_table(
                versus, "--versus", what=PREDICTIONS, columns=offline.PREDICTION_COLUMNS))
            result["versus"] = {"predictions": versus.name, **run(other)}


def show_intervals(intervals: dict[str, Any], title: str, *, signed: bool) -> None:
    """Print metrics (or differences) with their intervals, overall and per hospital."""
    out = Table(title=f"{title} ({intervals['level']:.0%} interval, "
                      f"{intervals['n_boot']} patient resamples)")
    out.add_column("hospital")
    for metric in INTERVAL_METRICS:
        out.add_column(f"{metric} difference" if signed else metric, justify="right")
    form = "+.4f" if signed else ".4f"
    for name, est in [("all", intervals["all"]), *sorted(intervals["by_hospital"].items())]:
        out.add_row(name, *(f"{est[m]['value']:{form}} [{est[m]['low']:{form}}, "
                            f"{est[m]['high']:{form}}]" for m in INTERVAL_METRICS))
    print_table(out)

