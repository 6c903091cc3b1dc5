import json

import pydicom
from typer.testing import CliRunner

from vigil.cli.main import app

runner = CliRunner()


def test_write_sites_then_check_them(tmp_path):
    result = runner.invoke(app, ["imaging", "write-sites", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [s["site"] for s in out["sites"]] == ["site-a", "site-b", "site-c", "site-d"]
    assert sum(s["n"] for s in out["sites"]) == 200  # the bundled sample's test split
    bad = tmp_path / "bad.dcm"
    ds = pydicom.dcmread(next((tmp_path / "site-b" / "test").glob("*.dcm")))
    ds.Modality = "MR"
    ds.save_as(bad)
    result = runner.invoke(app, ["imaging", "check", str(tmp_path / "site-b"), str(bad), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    n_b = out["sites"][1]["n"]
    assert (report["files"], report["accepted"], report["quarantined"]) == (n_b + 1, n_b, 1)
    assert report["checks"][-1]["reason"] == "expected Modality CR or DX, got 'MR'"


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    result = runner.invoke(app, ["imaging", "check", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "found nothing at" in result.output
    result = runner.invoke(app, ["imaging", "write-sites", "--out", str(tmp_path), "--split", "x"])
    assert result.exit_code == 2 and "expected keys ['x_images', 'x_labels']" in result.output
