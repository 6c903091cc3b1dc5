import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from vigil.cli.main import app

runner = CliRunner()
KEYS = {
    "auroc",
    "auprc",
    "utility",
    "threshold",
    "sensitivity",
    "specificity",
    "ppv",
    "n_patients",
    "n_rows",
}


def run_json(*args):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_help_works():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "evaluate" in result.stdout


def test_baseline_json_has_every_key_per_hospital():
    out = run_json("evaluate", "--baseline", "sirs", "--data", "sample", "--split", "test")
    assert KEYS <= set(out)
    assert set(out["by_hospital"]) == {"A", "B"}
    assert KEYS <= set(out["by_hospital"]["A"])
    assert (
        out["n_patients"]
        == out["by_hospital"]["A"]["n_patients"] + out["by_hospital"]["B"]["n_patients"]
    )
    assert out["threshold"] == 2.0
    assert 0.5 < out["auroc"] < 0.8


def test_predictions_made_elsewhere_score_the_same(tmp_path):
    preds = tmp_path / "p.parquet"
    direct = run_json(
        "evaluate", "--baseline", "news2", "--split", "valid", "--out-predictions", str(preds)
    )
    frame = pd.read_parquet(preds)
    assert list(frame.columns) == ["patient_id", "ICULOS", "probability", "prediction"]
    again = run_json("evaluate", "--predictions", str(preds), "--split", "valid")
    for k in ("auroc", "auprc", "utility", "sensitivity", "ppv", "n_rows"):
        assert again[k] == pytest.approx(direct[k])


def test_missing_predictions_are_an_error(tmp_path):
    preds = tmp_path / "p.parquet"
    run_json("evaluate", "--baseline", "qsofa", "--split", "test", "--out-predictions", str(preds))
    pd.read_parquet(preds).iloc[10:].to_parquet(preds)
    result = runner.invoke(app, ["evaluate", "--predictions", str(preds), "--split", "test"])
    assert result.exit_code == 2
    assert "10 of" in result.output and "rows have none" in result.output


def test_a_comparator_that_is_no_predictions_parquet_is_a_one_line_error(tmp_path):
    """A package directory or a non-parquet file given as --versus / --predictions: exit 2,
    one line saying what was expected (not a pyarrow traceback)."""
    package = tmp_path / "some-package"
    package.mkdir()
    (package / "MODEL_CARD.md").write_text("# card\n")
    text = tmp_path / "notes.parquet"
    text.write_text("not parquet")
    for option, path, came in [("--versus", package, "got a directory: some-package"),
                               ("--predictions", text, "got notes.parquet")]:
        args = ["evaluate", "--split", "test", option, str(path)]
        if option == "--versus":
            args += ["--baseline", "sirs"]
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert f"expected {option} to be a predictions parquet file" in result.output
        assert came in result.output and "Traceback" not in result.output


def test_versus_reports_metric_intervalss(tmp_path):
    sirs = tmp_path / "sirs.parquet"
    alone = run_json("evaluate", "--baseline", "sirs", "--split", "test", "--out-predictions",
                     str(sirs))
    news2 = run_json("evaluate", "--baseline", "news2", "--split", "test")
    out = run_json("evaluate", "--baseline", "news2", "--split", "test", "--versus", str(sirs),
                   "--bootstrap", "50")
    versus = out["versus"]
    assert versus["predictions"] == "sirs.parquet" and versus["n_boot"] == 50
    for scope, a, b in [("all", news2, alone),
                        *((h, news2["by_hospital"][h], alone["by_hospital"][h]) for h in "AB")]:
        diff = versus["all"] if scope == "all" else versus["by_hospital"][scope]
        for metric in ("auroc", "utility"):
            assert diff[metric]["value"] == pytest.approx(a[metric] - b[metric], abs=1e-9)
            assert diff[metric]["low"] <= diff[metric]["value"] <= diff[metric]["high"]
    assert out["intervals"]["all"]["auroc"]["value"] == pytest.approx(news2["auroc"])
    table = runner.invoke(app, ["evaluate", "--baseline", "sirs", "--split", "test", "--versus",
                                str(sirs), "--bootstrap", "20"])
    assert table.exit_code == 0 and "+0.0000 [+0.0000, +0.0000]" in table.stdout


def test_intervals_bracket_each_metric():
    plain = run_json("evaluate", "--baseline", "news2", "--split", "test")
    out = run_json("evaluate", "--baseline", "news2", "--split", "test", "--intervals",
                   "--bootstrap", "50")
    assert "versus" not in out and out["intervals"]["n_boot"] == 50
    for scope, metrics in [("all", plain), *((h, plain["by_hospital"][h]) for h in "AB")]:
        est = out["intervals"]["all"] if scope == "all" else out["intervals"]["by_hospital"][scope]
        for metric in ("auroc", "utility"):
            assert est[metric]["value"] == pytest.approx(metrics[metric], abs=1e-9)
            assert est[metric]["low"] < est[metric]["value"] < est[metric]["high"]


def test_exactly_one_source_required():
    result = runner.invoke(app, ["evaluate", "--baseline", "sirs", "--predictions", "x.parquet"])
    assert (
        result.exit_code == 2
        and "exactly one of --model, --predictions or --baseline" in result.output
    )


def test_data_sites_json():
    result = runner.invoke(app, ["data", "sites", "--scheme", "hospital-unit", "--json"])
    assert result.exit_code == 0
    sites = json.loads(result.stdout)["sites"]
    assert [s["site"] for s in sites] == ["A-MICU", "A-SICU", "B-MICU", "B-SICU"]
    assert sum(s["patients"] for s in sites) == 3000
