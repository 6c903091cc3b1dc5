import json

import pytest
from typer.testing import CliRunner

from vigil.cli.main import app

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--rounds", "1", "--hours", "24",
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["patients"] > 300 and summary["cycles"] == 24 * 4 + 1
    assert summary["failed_cycles"] == 0 and summary["calibrated"] is True
    assert summary["max_abs_diff_vs_offline"] <= 1e-5
    assert 0.5 < summary["auroc"] < 1.0 and -1.0 < summary["utility"] < 1.0
    assert summary["alerts_per_patient_day"] >= 0
    for name in ("model/manifest.json", "calibration.json", "fhir/Observation.ndjson",
                 "scores.parquet", "riskassessments/RiskAssessment.ndjson", "REPORT.md"):
        assert (out / name).is_file(), name
    report = (out / "REPORT.md").read_text()
    assert "alerts per patient-day" in report and "nan" not in report.lower()
