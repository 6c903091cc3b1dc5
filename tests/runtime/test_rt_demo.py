import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vigil.cli.demo_imaging import classification, run_imaging_demo
from vigil.core.errors import DataError
from vigil.core.signing import generate_keypair

SCORED_INSTANCE = "urn:vigil:fhir:StructureDefinition:scored-instance"


def test_demo_admissions_on_three_days_keep_each_stay(tmp_path):
    from vigil.data import load_physionet
    from vigil.fhir_adapter.synth import write_synth
    from vigil.runtime.recorded import load_ndjson

    table = load_physionet("sample")
    write_synth(table.select(np.arange(60)).frame, tmp_path)
    one, _ = load_ndjson(tmp_path, stack_admissions=True)
    three, _ = load_ndjson(tmp_path, stack_admissions=True, stack_days=3)
    day0 = min(s.icu_admission for s, _ in one.stays).replace(hour=0, minute=0)
    a1 = {s.patient: (s, e) for s, e in one.stays}
    days = set()
    for stay, end in three.stays:
        before, end_before = a1[stay.patient]
        moved = stay.icu_admission - before.icu_admission
        assert moved.seconds == 0 and moved.microseconds == 0  # whole days only
        assert end - stay.icu_admission == end_before - before.icu_admission
        assert stay.birth_date - before.birth_date == moved  # ages unchanged
        days.add((stay.icu_admission - day0).days)
    assert days == {0, 1, 2}
    # every value moves with its stay: the same values, shifted by the stay's days
    assert len(three.recorded) == len(one.recorded)
    assert np.array_equal(np.sort(three.recorded.value), np.sort(one.recorded.value))


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    vigil = Path(sys.executable).with_name("vigil")
    # the demo's own model (default rounds): a 1-round model ranks the test patients worse
    # than its validation AUROC says, which the discrimination check rightly reports
    done = subprocess.run([vigil, "demo", "--out", out, "--hours", "24", "--json"],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["patients"] > 300 and summary["cycles"] in (24 * 4, 24 * 4 + 1)
    assert summary["failed_cycles"] == 0 and summary["calibrated"] is True
    assert summary["max_abs_diff_vs_offline"] <= 1e-5
    assert 0.5 < summary["auroc"] < 1.0 and -1.0 < summary["utility"] < 1.0
    assert summary["alerts_per_patient_day"] >= 0
    for name in ("model/manifest.json", "calibration.json", "fhir/Observation.ndjson",
                 "scores.parquet", "riskassessments/RiskAssessment.ndjson", "REPORT.md"):
        assert (out / name).is_file(), name
    report = (out / "REPORT.md").read_text()
    assert "alerts per patient-day" in report and "nan" not in report.lower()
    monitor = summary["monitor"]  # the replay ran with the monitor and its outcomes
    assert monitor["errors"] == 0 and monitor["labelled_hours"] > 100
    assert sum(monitor["alarms"].values()) == len(monitor["alarm_list"])
    # stable data, and an ICU holding every stay age from the first cycle: no alarm at all
    # (an ICU that starts empty raised six missingness alarms and score drift at 02:15)
    assert monitor["alarm_list"] == [], monitor["alarm_list"]
    assert summary["replay_start"].endswith("T00:00+00:00")
    assert "No alarm" in report
    assert "## Monitoring" in report
    _check_imaging(summary["imaging"], out, report)


def _fhir_scores(out: Path) -> tuple[dict[str, float], dict[str, bool]]:
    """SOPInstanceUID -> probability and -> positive, read from the written Observations."""
    p, positive = {}, {}
    for line in (out / "imaging-site/out/Observation.ndjson").read_text().splitlines():
        obs = json.loads(line)
        (uid,) = [e["valueOid"] for e in obs["extension"] if e["url"] == SCORED_INSTANCE]
        uid = uid.removeprefix("urn:oid:")
        p[uid] = obs["valueQuantity"]["value"]
        positive[uid] = obs["interpretation"][0]["coding"][0]["code"] == "POS"
    return p, positive


def _labels(out: Path) -> dict[str, int]:
    labels = {}
    for path in (out / "imaging-studies").rglob("labels.csv"):
        with path.open(newline="") as handle:
            labels.update({r["sop_instance_uid"]: int(r["label"]) for r in csv.DictReader(handle)})
    return labels


def _check_imaging(img: dict, out: Path, report: str) -> None:
    """The imaging part's numbers are real: recomputed from what the runtime wrote."""
    labels = _labels(out)
    assert len(labels) == img["studies_sent"] == 200  # the sample's test split
    # every study scored exactly once, nothing refused, nothing scored twice
    assert img["studies_scored"] == img["instances_scored"] == img["fhir_reports"] == 200
    assert img["studies_rescored"] == 0 and img["instances_quarantined"] == 0
    assert img["sink_failures"] == 0
    p, positive = _fhir_scores(out)
    assert sorted(p) == sorted(labels)
    uids = sorted(labels)
    y = np.array([labels[u] for u in uids])
    q = np.array([p[u] for u in uids])
    # the reported AUC and accuracy are those of the FHIR results the runtime wrote
    assert img["auc"] == pytest.approx(roc_auc_score(y, q), abs=1e-9)
    assert 0.5 < img["auc"] <= 1.0
    decided = np.array([positive[u] for u in uids])
    assert img["accuracy"] == pytest.approx(np.mean(decided == (y == 1)), abs=1e-12)
    assert img["sensitivity"] == pytest.approx(decided[y == 1].mean(), abs=1e-12)
    assert img["specificity"] == pytest.approx((~decided[y == 0]).mean(), abs=1e-12)
    parity = img["parity"]
    assert parity["n"] == 200 and parity["max_abs_probability"] <= 1e-3
    assert parity["flips"] == 0 and parity["controls_fail"] is True
    if img["pacs"]:  # Orthanc installed: one SR stored back per scored study
        assert img["sr_stored"] == img["studies_scored"]
        assert "DICOM SRs stored back into Orthanc | 200" in report
    else:
        assert img["pacs_skipped_reason"] and "PACS step was skipped" in report
    assert "## Imaging" in report and "nan" not in report.lower()


def test_demo_imaging_classification_matches_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.clip(0.35 * y + rng.uniform(0, 0.65, 300), 0, 1)
    got = classification(y, p, threshold=0.5)
    assert got["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    tp = np.sum((p >= 0.5) & (y == 1))
    tn = np.sum((p < 0.5) & (y == 0))
    assert got["sensitivity"] == pytest.approx(tp / y.sum())
    assert got["specificity"] == pytest.approx(tn / (y.size - y.sum()))
    assert got["accuracy"] == pytest.approx((tp + tn) / y.size)
    # hand-made: 2 of 3 positives and 1 of 2 negatives called at 0.5
    small = classification(np.array([1, 1, 1, 0, 0]), np.array([0.9, 0.6, 0.2, 0.7, 0.1]),
                           threshold=0.5)
    assert (small["sensitivity"], small["specificity"], small["accuracy"]) == (2 / 3, 0.5, 0.6)
    with pytest.raises(DataError, match="both classes"):
        classification(np.ones(4, dtype=int), np.full(4, 0.5), threshold=0.5)
    with pytest.raises(DataError, match="3 labels"):
        classification(np.array([0, 1, 1]), np.full(4, 0.5), threshold=0.5)


@pytest.mark.slow
def test_demo_imaging_without_orthanc_scores_the_folder_and_says_so(tmp_path, monkeypatch):
    # a machine without Orthanc (no root to install it): the same DICOM through the folder
    # source, the report saying the PACS step was skipped and why
    from vigil.cli.demo_imaging import imaging_report

    monkeypatch.setattr("vigil.dicom_adapter.orthanc_local.local_orthanc_missing",
                        lambda: "Orthanc is not installed (test)")
    private, public = generate_keypair()
    (tmp_path / "demo.pub").write_bytes(public)
    img = run_imaging_demo(tmp_path, rounds=1, private_key=private,
                           public_key=tmp_path / "demo.pub", log=lambda line: None)
    assert img["pacs"] is False and img["sr_stored"] == 0
    assert not (tmp_path / "imaging-site/pacs").exists()
    _check_imaging(img, tmp_path, imaging_report(img))
    assert "Orthanc is not installed (test)" in imaging_report(img)
