"""The imaging half of ``vigil demo``: train across scanner sites, score through a real PACS.

1. Federated training (FedAvg) of the imaging CNN across the four scanner sites of the
   bundled PneumoniaMNIST sample (train split, its held-out validation part choosing the
   kept round and threshold), exported signed with the demo's key.
2. The sample's test images written as the four scanners' DICOM
   (:func:`vigil.dicom_adapter.sites.write_sites`, with ``labels.csv``), sent to a private
   Orthanc (:class:`~vigil.dicom_adapter.orthanc_local.LocalOrthanc`,
   :func:`~vigil.dicom_adapter.send.send_folder`) and scored by the imaging loop built from
   a demo ``site.toml`` exactly as ``vigil serve`` builds it
   (:func:`~vigil.runtime.imaging_service.build_imaging`: the Orthanc change feed in, a
   FHIR DiagnosticReport + Observation per study to NDJSON and a DICOM SR stored back into
   Orthanc). Without Orthanc (:func:`~vigil.dicom_adapter.orthanc_local.local_orthanc_missing`
   says why) the same folder is scored through the folder source, and the report says so.
3. Classification of the scored studies against the labels (AUC, accuracy, sensitivity,
   specificity at the threshold the runtime applied) and parity: the same test images
   through the 8-bit training path and through DICOM (every variant of
   :data:`vigil.dicom_adapter.parity.PARITY_VARIANTS`), scored by the package's ONNX session.

The steps are library calls; this module sequences them and reads the results back.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError, PACSError

__all__ = ["POLL_TIMEOUT_S", "classification", "imaging_report", "run_imaging_demo"]

Log = Callable[[str], None]
POLL_TIMEOUT_S = 120.0
"""Seconds the demo waits for every sent study to be scored before it fails."""
_POLL_PAUSE_S = 0.3
_DATA = "sample"
_SITE = "demo-site"


def _train(out: Path, *, rounds: int, private_key: bytes, log: Log) -> Any:
    """FedAvg across the scanner sites; the signed package (with its image profile)."""
    from vigil.dicom_adapter.sites import medmnist_sites
    from vigil.federation.driver import Plan
    from vigil.federation.image_export import PARITY_IMAGES
    from vigil.federation.image_run import (
        IMAGING_RECIPE,
        export_imaging_run,
        federate_images,
        imaging_plan,
    )
    from vigil.federation.strategies import StrategyName, make_strategy

    parts = medmnist_sites(_DATA, seed=0, splits=("train", "val"))
    train = [(s.site, s.inputs, s.labels) for s in parts["train"]]
    valid = [(s.site, s.inputs, s.labels) for s in parts["val"]]
    plan = Plan(seed=0, **{**imaging_plan(), "rounds": rounds})  # the demo's own rounds
    run = federate_images(
        train, valid, strategy=make_strategy(StrategyName.FEDAVG), plan=plan, data="sample",
        max_shift=IMAGING_RECIPE["max_shift"],
        on_round=lambda r: log(f"  round {r.round}: pooled validation AUROC "
                               f"{r.valid_auroc:.4f}"),
    )
    check = np.concatenate([x for _, x, _ in train + valid])[:PARITY_IMAGES]
    profile = (np.concatenate([s.inputs for s in parts["val"]]),
               [h for s in parts["train"] for h in s.headers])
    (package,) = export_imaging_run(run, out, name="imaging-demo", version="0.1.0",
                                    check_inputs=check, private_key_pem=private_key,
                                    profile_data=profile)
    return package


def _read_labels(studies: Path) -> dict[str, int]:
    """SOPInstanceUID → label, from every ``labels.csv`` below ``studies``."""
    labels: dict[str, int] = {}
    for path in sorted(studies.rglob("labels.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                labels[row["sop_instance_uid"]] = int(row["label"])
    return labels


def _site_toml(root: Path, *, studies: Path, public_key: Path, pacs: Any) -> Path:
    """Write the demo site's ``site.toml`` (NDJSON write-back, SQLite store, imaging on)."""
    (root / "export").mkdir(parents=True, exist_ok=True)
    if pacs is None:
        source: dict[str, Any] = {"source": "folder", "folder": str(studies), "stable_seconds": 0}
    else:
        secret = root / "orthanc.pw"
        secret.write_text(pacs.password + "\n")
        secret.chmod(0o600)
        source = {"source": "orthanc", "url": pacs.url, "username": pacs.username,
                  "password_file": str(secret), "start": "now"}
    sections: dict[str, dict[str, Any]] = {
        "": {"site_id": _SITE},
        "data": {"source": "ndjson", "ndjson_dir": str(root / "export"),
                 "writeback": "ndjson", "writeback_dir": str(root / "out")},
        "store": {"url": f"sqlite:///{root / 'state.db'}"},
        "ops": {"enabled": False},
        "models": {"dir": str(root / "models"), "public_key": str(public_key)},
        "imaging": {"enabled": True, "page_limit": 100, **source},
        "imaging.writeback": {"fhir": True, "sr": pacs is not None},
    }
    config = root / "site.toml"
    config.write_text("".join(
        (f"[{name}]\n" if name else "") + "".join(f"{k} = {json.dumps(v)}\n"
                                                 for k, v in table.items())
        for name, table in sections.items()))  # JSON strings, numbers, booleans are TOML's
    return config


def _poll_all(loop: Any, n: int, *, timeout: float = POLL_TIMEOUT_S) -> dict[str, int]:
    """Poll ``loop`` until ``n`` studies are scored; the summed counts.

    Raises
    ------
    PACSError
        If fewer than ``n`` studies are scored within ``timeout`` seconds.
    """
    totals = {"scored": 0, "instances_quarantined": 0, "sink_failures": 0, "polls": 0}
    deadline, last_error = time.monotonic() + timeout, None
    while totals["scored"] < n:
        result = loop.poll()
        totals["polls"] += 1
        totals["scored"] += result.scored
        totals["instances_quarantined"] += sum(result.quarantine_reasons.values())
        totals["sink_failures"] += result.sink_failures
        last_error = result.error or last_error
        if totals["scored"] >= n:
            break
        if time.monotonic() > deadline:
            raise PACSError(f"expected {n} studies scored within {timeout:.0f} s, got "
                            f"{totals['scored']} (last poll error: {last_error or 'none'})")
        time.sleep(_POLL_PAUSE_S)
    return totals


def _scored(store_url: str) -> tuple[list[str], NDArray[np.float64], float, int]:
    """Read the scored instances back from the store: UIDs, probabilities, threshold, studies."""
    from vigil.runtime.store import StateStore

    with StateStore.open(store_url) as store:
        rows = store.conn.execute(
            "SELECT i.sop_instance_uid, i.probability, s.threshold FROM imaging_instances i "
            "JOIN imaging_studies s ON s.study_uid = i.study_uid AND s.model = i.model "
            "WHERE i.quarantine_reason IS NULL ORDER BY i.sop_instance_uid").fetchall()
        (studies,) = store.conn.execute(
            "SELECT COUNT(*) FROM imaging_studies WHERE role = 'active'").fetchone()
    thresholds = {float(t) for _, _, t in rows}
    if len(thresholds) != 1:
        raise DataError(f"expected one decision threshold over the scored studies, got "
                        f"{len(thresholds)}")
    return ([str(u) for u, _, _ in rows], np.array([p for _, p, _ in rows], dtype=np.float64),
            thresholds.pop(), int(studies))


def classification(labels: NDArray[np.integer], probability: NDArray[np.floating], *,
                   threshold: float) -> dict[str, float | int]:
    """AUC and the confusion-matrix rates of binary decisions ``probability >= threshold``.

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
        0/1 truth.
    probability : ndarray of float, shape (n,)
        Predicted probability of class 1.
    threshold : float
        Decision threshold.

    Returns
    -------
    dict
        ``n``, ``positives``, ``auc`` (Hanley & McNeil 1982, the Mann-Whitney statistic),
        ``accuracy``, ``sensitivity`` = TP / (TP + FN), ``specificity`` = TN / (TN + FP)
        (Altman & Bland 1994).

    Raises
    ------
    DataError
        If the arrays differ in length or one class is absent.
    """
    from vigil.features.metrics import auroc

    y = np.asarray(labels).reshape(-1).astype(np.int64)
    p = np.asarray(probability, dtype=np.float64).reshape(-1)
    if y.size != p.size or not (0 < y.sum() < y.size):
        raise DataError(f"expected n labels of both classes and n probabilities, got "
                        f"{y.size} labels ({int(y.sum())} positive) and {p.size} probabilities")
    decided = p >= threshold
    tp = int(np.count_nonzero(decided & (y == 1)))
    tn = int(np.count_nonzero(~decided & (y == 0)))
    pos, neg = int(y.sum()), int(y.size - y.sum())
    return {"n": int(y.size), "positives": pos, "auc": float(auroc(y, p)),
            "accuracy": (tp + tn) / y.size, "sensitivity": tp / pos, "specificity": tn / neg}


def _parity(package: Any, images: NDArray[np.uint8], threshold: float) -> dict[str, Any]:
    """Training path vs every DICOM variant, scored by the package's ONNX session."""
    from vigil.dicom_adapter.parity import run_parity
    from vigil.runtime.images import ImageScorer

    run = run_parity(images, ImageScorer(package).predict_images, threshold=threshold)
    reports = run.variants.values()
    return {"n": len(images), "variants": len(run.variants), "threshold": threshold,
            "max_abs_probability": max(r.max_abs_probability for r in reports),
            "flips": sum(r.flips for r in reports), "controls_fail": not any(
                r.passes for r in run.controls.values()), "holds": run.holds}


def _score_on_pacs(settings: Any, pacs: Any, studies: Path, n: int, log: Log) -> dict[str, Any]:
    """Build the loop, send the folder, poll until all are scored, check nothing is re-scored."""
    from prometheus_client import CollectorRegistry

    from vigil.dicom_adapter.orthanc import OrthancClient
    from vigil.dicom_adapter.send import send_folder
    from vigil.runtime.imaging_service import build_imaging

    loop = build_imaging(settings, registry=CollectorRegistry())
    assert loop is not None
    try:
        first = loop.poll()  # start = "now": the cursor is set at the feed's end
        if not first.ok:
            raise PACSError(f"the first imaging poll failed: {first.error}")
        with OrthancClient(pacs.url, username=pacs.username, password=pacs.password) as client:
            sent = send_folder(client, studies)
            log(f"  sent {sent.stored} DICOM files to Orthanc ({len(sent.refused)} refused)")
            totals = _poll_all(loop, n)
            # the SRs stored back change their studies again: skipped, never re-scored
            time.sleep(pacs.stable_age + 1.5)
            again = loop.poll()
            srs = client.count_instances("SR")
    finally:
        loop.close()
    return {**totals, "sent": sent.stored, "refused": len(sent.refused),
            "rescored": again.scored, "sr_stored": srs}


def _score_in_folder(settings: Any, n: int) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from vigil.runtime.imaging_service import build_imaging

    loop = build_imaging(settings, registry=CollectorRegistry())
    assert loop is not None
    try:
        totals = _poll_all(loop, n)
        again = loop.poll()
    finally:
        loop.close()
    return {**totals, "sent": 0, "refused": 0, "rescored": again.scored, "sr_stored": 0}


def run_imaging_demo(out: Path, *, rounds: int, private_key: bytes, public_key: Path,
                     log: Log) -> dict[str, Any]:
    """Train, write and send the test studies, score them as ``vigil serve`` does, report.

    Parameters
    ----------
    out : Path
        The demo's directory; this part writes ``imaging-model/``, ``imaging-studies/``
        and ``imaging-site/`` (``site.toml``, ``state.db``, ``out/`` FHIR NDJSON, ``pacs/``).
    rounds : int
        Federated rounds.
    private_key : bytes
        The demo's Ed25519 private key (PEM); ``public_key`` is the only key the site trusts.
    log : callable

    Returns
    -------
    dict
        The imaging summary (``REPORT.md`` section: :func:`imaging_report`).
    """
    from vigil.data.medmnist import load_medmnist
    from vigil.dicom_adapter.orthanc_local import LocalOrthanc, local_orthanc_missing
    from vigil.dicom_adapter.sites import write_sites
    from vigil.runtime.models import install_model
    from vigil.runtime.settings import load_settings
    from vigil.runtime.store import StateStore

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    log(f"6/8 imaging: {rounds} rounds of FedAvg across the four scanner sites of the "
        "PneumoniaMNIST sample; the package signed with the demo key")
    package = _train(out / "imaging-model", rounds=rounds, private_key=private_key, log=log)
    timings["imaging_train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    test = load_medmnist(_DATA, "test")
    studies = out / "imaging-studies"
    write_sites(test.images, test.labels, studies, split="test", seed=0)
    labels = _read_labels(studies)
    missing = local_orthanc_missing()
    root = out / "imaging-site"
    pacs = None if missing else LocalOrthanc(root / "pacs")
    log(f"7/8 imaging: {len(labels)} test images as the four scanners' DICOM, "
        + ("sent to a private Orthanc and scored by the runtime's imaging loop (Orthanc "
           "change feed in, FHIR NDJSON and DICOM SR out)" if pacs else
           f"scored through the folder source: the PACS step is skipped ({missing})"))
    try:
        if pacs is not None:
            pacs.start()
        settings = load_settings(_site_toml(root, studies=studies, public_key=public_key,
                                            pacs=pacs), environ=False)
        with StateStore.open(settings.store.url) as store:
            install_model(store, package.path, models_dir=settings.models.dir,
                          public_key=public_key)
        counts = (_score_on_pacs(settings, pacs, studies, len(labels), log) if pacs
                  else _score_in_folder(settings, len(labels)))
    finally:
        if pacs is not None:
            pacs.stop()
    timings["imaging_score"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    log("8/8 imaging: the scored studies vs their labels; parity of the training path and "
        "the DICOM path")
    uids, probability, threshold, n_studies = _scored(settings.store.url)
    unknown = [u for u in uids if u not in labels]
    if unknown:
        raise DataError(f"expected every scored instance among the {len(labels)} sent, got "
                        f"{len(unknown)} others")
    metrics = classification(np.array([labels[u] for u in uids]), probability,
                             threshold=threshold)
    parity = _parity(package, test.images, package.manifest.threshold)
    reports = root / "out" / "DiagnosticReport.ndjson"
    timings["imaging_parity"] = time.perf_counter() - t0
    return {
        "model": f"{package.manifest.name}-{package.manifest.version}",
        "validation_auroc": (package.manifest.validation.get("pooled") or {}).get("auroc"),
        "pacs": pacs is not None, "pacs_skipped_reason": missing,
        "studies_sent": counts["sent"] or len(labels), "studies_scored": n_studies,
        "studies_rescored": counts["rescored"], "instances_scored": len(uids),
        "instances_quarantined": counts["instances_quarantined"],
        "sink_failures": counts["sink_failures"], "polls": counts["polls"],
        "sr_stored": counts["sr_stored"],
        "fhir_reports": len(reports.read_text().splitlines()) if reports.is_file() else 0,
        "threshold": threshold, **metrics, "parity": parity,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }


def imaging_report(s: dict[str, Any]) -> str:
    """Return the ``## Imaging`` section of ``REPORT.md``."""
    p, t = s["parity"], s["timings_s"]
    where = ("sent to a private Orthanc (`imaging-site/pacs/`, its own network namespace, "
             "auth on) and scored by the imaging loop `vigil serve` runs (Orthanc change feed "
             "in; a FHIR DiagnosticReport + Observation per study to `imaging-site/out/`, a "
             "DICOM SR stored back into the study)" if s["pacs"] else
             "scored by the imaging loop `vigil serve` runs, through the folder source: "
             f"**the PACS step was skipped** ({s['pacs_skipped_reason']})")
    return f"""
## Imaging

| step | what | seconds |
|---|---|---:|
| 6 | federated training (FedAvg) of the CNN across the four scanner sites of the \
PneumoniaMNIST sample (train split; its held-out part chooses the round and threshold); \
`imaging-model/`, signed with the demo key | {t['imaging_train']} |
| 7 | the {s['studies_sent']} test images written as the four scanners' DICOM \
(`imaging-studies/`, `labels.csv`), {where} | {t['imaging_score']} |
| 8 | classification vs the labels; parity of the training path and the DICOM path \
| {t['imaging_parity']} |

| | |
|---|---|
| model | {s['model']} (pooled validation AUROC {_fmt(s['validation_auroc'])}) |
| studies {'sent' if s['pacs'] else 'in the folder'} / scored / scored again | \
{s['studies_sent']} / {s['studies_scored']} / {s['studies_rescored']} |
| instances scored / quarantined | {s['instances_scored']} / {s['instances_quarantined']} |
| FHIR DiagnosticReports written | {s['fhir_reports']} |
| DICOM SRs stored back into Orthanc | {s['sr_stored']} |
| threshold (the package's, as the runtime applied it) | {s['threshold']:.4f} |
| AUC | {s['auc']:.4f} ({s['n']} test images, {s['positives']} pneumonia) |
| accuracy | {s['accuracy']:.4f} |
| sensitivity | {s['sensitivity']:.4f} |
| specificity | {s['specificity']:.4f} |
| parity: max abs Δprobability, training path vs DICOM ({p['variants']} encodings, \
{p['n']} images) | {p['max_abs_probability']:.2e} |
| parity: decisions flipped at the threshold | {p['flips']} |
| parity: every negative control (a chain skipping a step) fails | {p['controls_fail']} |

The test images were never seen in training or in choosing the threshold. The four
scanners store them differently (bit depth, MONOCHROME1/2, rescale, VOI LUT, gamma,
noise); the runtime reads each through the DICOM pixel chain.
"""


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.4f}"
