"""``vigil fhir``: PhysioNet rows to FHIR, and a look at FHIR NDJSON through the adapter."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from vigil.cli._common import DATA_HELP, err_console, guarded, print_json

app = typer.Typer(help="FHIR R4: synthesize from PhysioNet rows, ingest NDJSON.",
                  no_args_is_help=True)


@app.command("synth")
@guarded
def synth(
    out: Annotated[Path, typer.Option(help="Directory for the NDJSON files (and bundles/).")],
    data: Annotated[str, typer.Option(help=DATA_HELP, envvar="VIGIL_DATA")] = "sample",
    bundles: Annotated[bool, typer.Option(help="Also write transaction Bundles.")] = False,
    split: Annotated[str, typer.Option(help="train, valid, test or all.")] = "all",
    patients: Annotated[int | None, typer.Option(help="Only the first N patients.")] = None,
    bundle_size: Annotated[int, typer.Option(help="Entries per Bundle.")] = 1000,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Write PhysioNet rows as FHIR R4 NDJSON: Location, Patient, Encounter, Observation."""
    import numpy as np
    from rich.progress import Progress

    from vigil.data import load_physionet, patient_split
    from vigil.fhir_adapter import write_synth

    table = load_physionet(data)
    chosen = np.flatnonzero(patient_split(table.grid.patient_ids, split))
    if patients is not None:
        chosen = chosen[:patients]
    frame = table.select(chosen).frame
    with Progress(console=err_console, transient=True, disable=json_out) as bar:
        task = bar.add_task("writing FHIR", total=len(chosen))
        summary = write_synth(frame, out, bundles=bundles, bundle_size=bundle_size,
                              on_patient=lambda: bar.advance(task))
    result = {"out": str(out), "patients": summary.patients, "observations": summary.observations,
              "bundles": summary.bundles, "files": len(summary.files)}
    if json_out:
        print_json(result)
    else:
        err_console.print(f"wrote {summary.patients:,} patients, {summary.observations:,} "
                          f"Observations, {summary.bundles:,} bundles to {out}")


@app.command("ingest")
@guarded
def ingest(
    ndjson: Annotated[Path, typer.Option(help="Directory of FHIR NDJSON (synth or $export).")],
    strict: Annotated[bool, typer.Option(help="Validate with fhir.resources R4B.")] = False,
    model: Annotated[Path | None, typer.Option(
        help="Also require the values expected by this package's reference profile.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Read FHIR NDJSON through the adapter: census, counters, ignored codes, quarantine reasons.

    Fails (exit 2) when the Observations delivered map to no catalog variable, or, with
    ``--model``, to far fewer values than the package's reference profile expects.
    """
    from vigil.core.errors import DataError
    from vigil.fhir_adapter import (
        IngestCounts,
        NDJSONSource,
        ndjson_files,
        parse_ndjson,
        parse_ndjson_strict,
    )

    source = NDJSONSource(ndjson)
    source.check()
    census = source.census()
    parse = parse_ndjson_strict if strict else parse_ndjson
    counts = IngestCounts()
    reasons: Counter[str] = Counter(q.reason for q in census.quarantine)
    batches = []
    for path in ndjson_files(ndjson)["Observation"]:
        result = parse(path)
        counts = counts + result.counts
        reasons.update(q.reason for q in result.quarantine)
        if model is not None:
            batches.append(result.observations)
    result_dict = {
        "stays": len(census.stays),
        "units": dict(Counter(s.unit or "unknown" for s in census.stays)),
        "counts": counts.as_dict(),
        "census_quarantined": len(census.quarantine),
        "ignored_codes": counts.top_ignored(10),
        "quarantine_reasons": dict(reasons.most_common(10)),
    }
    unmapped = counts.unmapped()
    if unmapped is not None:
        raise DataError(f"{unmapped}; map the site's codes to LOINC (docs/fhir.md, 'What is "
                        "counted, ignored, quarantined')", source=str(ndjson))
    if model is not None:
        from vigil.core.package import read_package
        from vigil.fhir_adapter import ObservationBatch
        from vigil.runtime.coverage import profile_rates
        from vigil.runtime.recorded import clocked, require_coverage

        rates = profile_rates(read_package(model).manifest.reference_profile,
                              where=f"the manifest of {model}")
        coverage = require_coverage(clocked(census, ObservationBatch.concat(batches),
                                            counts=counts), rates, where=str(ndjson))
        result_dict["coverage"] = round(coverage.ratio, 3) if rates else None
    if json_out:
        print_json(result_dict)
        return
    err_console.print(f"{result_dict['stays']:,} ICU stays; units {result_dict['units']}")
    if result_dict.get("coverage") is not None:
        err_console.print(f"coverage {result_dict['coverage']:.2f} of the hourly values the "
                          "reference profile expects")
    for key, value in result_dict["counts"].items():
        err_console.print(f"  {key:<22} {value:>10,}")
    for code, n in result_dict["ignored_codes"].items():
        err_console.print(f"  ignored {n:>12,}  {code}")
    for reason, n in reasons.most_common(10):
        err_console.print(f"  quarantined {n:>8,}  {reason}")
