"""``vigil demo`` (``make demo``): both models end to end on the bundled samples.

1. Federated training (FedAvg) across the sample's hospital units, a few rounds,
   on the training patients only, then boosted trees grown across the same sites
   and fused with the network (as the shipped model is); export of the model
   package.
2. Site calibration (logistic recalibration, utility threshold) on the
   validation patients.
3. ``vigil fhir synth`` of the test patients (never seen by 1 or 2) to FHIR NDJSON.
4. Replay: the runtime's cycle every 15 simulated minutes over that NDJSON,
   RiskAssessments written to NDJSON, state in SQLite, with the drift and
   performance monitor on (reference: the package's profile; outcomes: the test
   patients' labels, known :data:`LABEL_DELAY_HOURS` after each hour). The ICU
   admissions are moved by whole days onto :data:`ADMISSION_DAYS` consecutive
   days and the replay starts on the last of them, so that, like a site switching
   vigil on, it finds an ICU already holding patients of every stay age up to
   two days, not an empty one that fills with first ICU hours.
5. Summary (patients, cycles, alerts per patient-day, AUROC, utility, monitor
   alarms by kind) and a check that the replayed probabilities equal the offline
   ones.
6.-8. The imaging model (:mod:`vigil.cli.demo_imaging`): FedAvg across the four
   scanner sites of the PneumoniaMNIST sample, its test images sent as DICOM to a
   private Orthanc and scored by the imaging loop of ``vigil serve`` (FHIR and DICOM
   SR write-back; the folder source when Orthanc is not installed), AUC, accuracy,
   sensitivity, specificity and training-path vs DICOM-path parity; then ``REPORT.md``.

The steps are library calls; this module only sequences them and reports.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from vigil.cli._common import err_console, guarded, print_json

Log = Callable[[str], None]
LABEL_DELAY_HOURS = 12.0
"""Outcomes reach the demo's monitor this long after each scored hour."""
ADMISSION_DAYS = 3
"""The test patients' ICU admissions fall on this many days; the replay starts on the last."""


def _train(
    table: Any, out: Path, *, rounds: int, trees: int, log: Log, private_key: bytes
) -> Any:
    from vigil.federation.boosting import BoostingPlan
    from vigil.federation.driver import Plan
    from vigil.federation.simulation import export_run, federate
    from vigil.federation.strategies import StrategyName, make_strategy

    plan = Plan(rounds=rounds, local_epochs=1, batch_size=2048, lr=1e-3, seed=0)
    run = federate(
        table, scheme="hospital-unit", strategy=make_strategy(StrategyName.FEDAVG), plan=plan,
        data="bundled sample",
        on_round=lambda r: log(f"  round {r.round}: pooled validation AUROC {r.valid_auroc:.4f}"),
        trees=BoostingPlan(n_trees=trees, max_depth=4) if trees else None,
    )
    if run.hybrid is not None:
        log(f"  {trees} trees across the sites: pooled validation AUROC "
            f"{run.hybrid.pooled.auroc:.4f}")
    (package,) = export_run(run, out, name="sepsis-demo", version="0.1.0",
                            private_key_pem=private_key)
    return package


def _calibrate(package: Any, valid: Any, out: Path) -> Any:
    from vigil.calibration import ModelRef, ScoredHours, calibrate_site, parse_policy
    from vigil.calibration.record import write_record
    from vigil.runtime.offline import score_table

    hours = ScoredHours.from_table(valid, score_table(package, valid))
    result = calibrate_site(
        hours, method="logistic", policy=parse_policy("utility"),
        model_threshold=package.manifest.threshold, n_boot=200, source="bundled sample (valid)",
    )
    write_record(result.to_record(site="demo-site", model=ModelRef.of(package)), out)
    return result


def _equality(package: Any, record: Any, test: Any, scores: Any) -> float:
    """Largest |replay - offline| probability over the replayed patient-hours."""
    import numpy as np

    from vigil.runtime.offline import score_table

    offline = record.transform(score_table(package, test))
    key = dict(zip(zip(test.frame["patient_id"], test.grid.hours.tolist(), strict=True),
                   offline.tolist(), strict=True))
    pairs = [(key.get((p, h)), q) for p, h, q in zip(scores["patient_id"], scores["iculos"],
                                                      scores["probability"], strict=True)]
    diffs = [abs(a - b) for a, b in pairs if a is not None]
    return float(np.max(diffs)) if diffs else float("nan")


def run_demo(out: Path, *, rounds: int, hours: float, log: Log, trees: int = 20,
             imaging_rounds: int = 3) -> dict[str, Any]:
    """Run the eight steps into ``out``; returns the summary (imaging under ``"imaging"``)."""
    import numpy as np

    from vigil.calibration.record import load_record
    from vigil.cli.demo_imaging import imaging_report, run_imaging_demo
    from vigil.core.signing import generate_keypair
    from vigil.data import load_physionet, patient_split
    from vigil.fhir_adapter.synth import write_synth
    from vigil.fhir_adapter.writers import NDJSONWriter
    from vigil.runtime.models import LiveModels, live_model
    from vigil.runtime.monitoring import Monitor
    from vigil.runtime.recorded import load_ndjson
    from vigil.runtime.replay import (
        go_live_start,
        monitor_summary,
        physionet_labels,
        run_replay,
        summarize,
    )
    from vigil.runtime.sources import FHIRSink
    from vigil.runtime.store import StateStore

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    table = load_physionet("sample")
    ids = table.grid.patient_ids
    test = table.select(np.flatnonzero(patient_split(ids, "test")))
    valid = table.select(np.flatnonzero(patient_split(ids, "valid")))
    log(f"1/8 federated training: {rounds} rounds of FedAvg across the sample's hospital units"
        + (f", then {trees} trees" if trees else "") + "; the package signed with a demo key")
    # The demo is its own publisher: it signs with a fresh key and trusts only that key,
    # as a site trusts its federation's (never the unsigned opt-out).
    private_key, public_key = generate_keypair()
    (out / "demo-release.pub").write_bytes(public_key)
    package = _train(table, out / "model", rounds=rounds, trees=trees, log=log,
                     private_key=private_key)
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log(f"2/8 site calibration on {valid.grid.n_patients} validation patients")
    record_path = out / "calibration.json"
    _calibrate(package, valid, record_path)
    record = load_record(record_path, package=package)
    timings["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log(f"3/8 vigil fhir synth: {test.grid.n_patients} test patients to FHIR NDJSON")
    write_synth(test.frame, out / "fhir")
    source, quarantined = load_ndjson(out / "fhir", stack_admissions=True,
                                      stack_days=ADMISSION_DAYS)
    timings["synth"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    start = go_live_start(source, ADMISSION_DAYS)
    log(f"4/8 replay: the runtime cycle every 15 simulated minutes for {hours:g} hours, "
        f"admissions on {ADMISSION_DAYS} days, from the start of the last")
    active = live_model(package.path, calibration=record_path,
                        public_key=out / "demo-release.pub")
    (out / "riskassessments").mkdir()
    monitor = Monitor(labels=physionet_labels(test.frame, delay_hours=LABEL_DELAY_HOURS))
    with StateStore.open(f"sqlite:///{out / 'state.db'}", durable=False) as store:
        result, scores = run_replay(
            source, LiveModels(active=active, shadow=None), store=store,
            sink=FHIRSink(NDJSONWriter(out / "riskassessments"), site="demo", deployment="demo"),
            hours=hours, monitor=monitor, start=start,
        )
        monitoring = monitor_summary(store, monitor)
    scores.to_parquet(out / "scores.parquet", index=False)
    timings["replay"] = time.perf_counter() - t0

    log("5/8 sepsis summary")
    summary = summarize(scores, cycles=result.cycles, threshold=active.threshold,
                        labels=test.frame.loc[:, ["patient_id", "ICULOS", "SepsisLabel"]])
    summary.update({
        "model": active.key,
        "calibrated": True,
        "failed_cycles": result.failed,
        "quarantined": quarantined,
        "simulated_hours": hours,
        "replay_start": start.isoformat(timespec="minutes"),
        "max_abs_diff_vs_offline": _equality(package, record, test, scores),
        "validation_auroc": package.manifest.validation.get("auroc"),
        "monitor": monitoring,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "out": str(out),
    })
    summary["imaging"] = run_imaging_demo(
        out, rounds=imaging_rounds, private_key=private_key,
        public_key=out / "demo-release.pub", log=log)
    summary["timings_s"].update(summary["imaging"]["timings_s"])
    (out / "REPORT.md").write_text(_report(summary, test.grid.n_patients)
                                   + imaging_report(summary["imaging"]))
    return summary


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"


def _report(s: dict[str, Any], n_test: int) -> str:
    t = s["timings_s"]
    return f"""# vigil demo

Both models on the bundled samples: sepsis on PhysioNet 2019 (replayed FHIR NDJSON, no
server), imaging on PneumoniaMNIST (DICOM through a private Orthanc; see "Imaging").

| step | what | seconds |
|---|---|---:|
| 1 | federated training (FedAvg, hospital units as sites) and boosted trees grown across \
the same sites, training patients only; `model/`, signed with a fresh demo key whose public \
half `demo-release.pub` is the only key the replay trusts | {t['train']} |
| 2 | site calibration (logistic, utility threshold) on validation patients; \
`calibration.json` | {t['calibrate']} |
| 3 | `vigil fhir synth` of the {n_test} test patients to `fhir/` (NDJSON) | {t['synth']} |
| 4 | replay of {s['simulated_hours']:g} simulated hours from {s['replay_start']}, a cycle \
every 15 minutes (admissions moved by whole days onto {ADMISSION_DAYS} days, the replay \
starting on the last: the ICU holds patients of every stay age from the first cycle); \
`scores.parquet`, `riskassessments/`, `state.db` | {t['replay']} |

## Results (test patients, replayed hours)

| | |
|---|---|
| model | {s['model']} (calibrated: {s['calibrated']}) |
| patients scored (test patients in the ICU during the replay) | {s['patients']} |
| cycles | {s['cycles']} (failed: {s['failed_cycles']}) |
| scores | {s['scores']} |
| alerts | {s['alerts']} |
| alerts per patient-day | {s['alerts_per_patient_day']:.3f} |
| threshold | {s['threshold']:.4f} |
| AUROC (hourly, last tick of each hour) | {s['auroc']:.4f} |
| normalized utility (PhysioNet 2019) | {s['utility']:.4f} |
| labelled patient-hours | {s['labelled_hours']} |
| max abs difference replay vs offline (`vigil evaluate`) | {s['max_abs_diff_vs_offline']:.2e} |
| pooled validation AUROC at training | {_fmt(s['validation_auroc'])} |

The replayed probabilities are those of the offline evaluation of the same hours:
the deployed path (FHIR NDJSON -> mapping -> state store -> hourly grid ->
features -> onnxruntime -> calibration) and the offline path agree.

## Monitoring

{_monitoring(s['monitor'])}
"""


def _monitoring(m: dict[str, Any]) -> str:
    head = (f"The drift and performance monitor ran in every cycle against the package's "
            f"reference profile, with the test patients' outcomes {LABEL_DELAY_HOURS:g} h late "
            f"({m['labelled_hours']} labelled hours in the last window; monitor errors: "
            f"{m['errors']}). `vigil monitor report --db state.db --out report` draws it.\n\n")
    if not m["alarm_list"]:
        return head + "No alarm.\n"
    rows = "\n".join(f"| {a['kind']} | {a['variable'] or '-'} | {a['severity']} | "
                     f"{a['first_seen']} |" for a in m["alarm_list"])
    return (head + f"{sum(m['alarms'].values())} alarm(s), {m['open']} open:\n\n"
            "| kind | variable | severity | first seen |\n|---|---|---|---|\n" + rows + "\n")


@guarded
def demo(
    out: Annotated[Path, typer.Option(help="Directory for everything the demo writes.")] = Path(
        "runs/demo"
    ),
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds (sepsis).")] = 3,
    imaging_rounds: Annotated[
        int, typer.Option(min=1, help="Federated rounds of the imaging CNN.")
    ] = 3,
    boost_trees: Annotated[
        int, typer.Option(min=0, help="Boosted trees grown across the sites after the rounds.")
    ] = 20,
    hours: Annotated[
        float, typer.Option(min=24, help="Simulated hours to replay (at least 24).")
    ] = 48.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Both models: train across sites, calibrate, replay FHIR; imaging through a PACS; report."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.perf_counter()
    summary = run_demo(out, rounds=rounds, hours=hours, trees=boost_trees,
                       imaging_rounds=imaging_rounds,
                       log=lambda line: err_console.print(line, highlight=False))
    summary["total_s"] = round(time.perf_counter() - started, 1)
    if json_out:
        print_json(summary)
        return
    err_console.print(
        f"{summary['patients']} test patients, {summary['cycles']} cycles, "
        f"{summary['alerts_per_patient_day']:.3f} alerts per patient-day, AUROC "
        f"{summary['auroc']:.4f}, utility {summary['utility']:.4f}; replay vs offline max "
        f"|diff| {summary['max_abs_diff_vs_offline']:.1e}; monitor alarms "
        f"{summary['monitor']['alarms'] or 'none'}",
        highlight=False,
    )
    img = summary["imaging"]
    err_console.print(
        f"imaging: {img['studies_scored']} of {img['studies_sent']} test studies scored "
        f"{'through Orthanc' if img['pacs'] else 'from the folder (PACS skipped)'}, AUC "
        f"{img['auc']:.4f}, accuracy {img['accuracy']:.4f}, sensitivity "
        f"{img['sensitivity']:.4f}, specificity {img['specificity']:.4f}; SRs stored "
        f"{img['sr_stored']}; parity max |dp| {img['parity']['max_abs_probability']:.1e}, "
        f"{img['parity']['flips']} flips; {summary['total_s']} s; report: {out / 'REPORT.md'}",
        highlight=False,
    )
