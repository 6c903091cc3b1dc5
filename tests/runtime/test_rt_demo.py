import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    vigil = Path(sys.executable).with_name("vigil")
    done = subprocess.run([vigil, "demo", "--out", out, "--rounds", "1", "--hours", "24",
                           "--json"], capture_output=True, text=True, timeout=1500)
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
    assert "## Monitoring" in report
