"""`vigil calibrate` and `vigil evaluate --calibration` end to end, with a tiny ONNX model."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vigil.calibration import load_record
from vigil.cli.main import app
from vigil.core.package import read_package, write_package
from vigil.features import FEATURE_SCHEMA

runner = CliRunner()


def tiny_package(path, version="1"):
    """A logistic model on four features, deliberately miscalibrated (threshold 0.05)."""
    from onnx import TensorProto, helper, numpy_helper

    names = list(FEATURE_SCHEMA.names)
    w = np.zeros((len(names), 1), np.float32)
    for name, value in {"news2": 0.25, "ICULOS": 0.01, "sirs": 0.3, "HR": 0.01}.items():
        w[names.index(name), 0] = value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["logit"]),
         helper.make_node("Sigmoid", ["logit"], ["probability"])],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(names)])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(w, "W"),
         numpy_helper.from_array(np.array([-6.0], np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return write_package(path, onnx_model=model.SerializeToString(), model_card="tiny",
                         manifest={"name": "tiny", "version": version, "threshold": 0.05,
                                   "feature_schema": FEATURE_SCHEMA.to_dict()})


def run(*args, code=0):
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cal")
    tiny_package(root / "pkg")
    out = run("calibrate", "--model", str(root / "pkg"), "--hospital", "B", "--policy",
              "sensitivity=0.8", "--out", str(root / "calibration.json"), "--report",
              str(root / "report"), "--bootstrap", "200", "--json")
    return root, json.loads(out.stdout)


def test_calibrate_writes_record_report_and_json(work):
    root, summary = work
    record = load_record(root / "calibration.json", package=read_package(root / "pkg"))
    assert summary["threshold"] == record.threshold
    assert summary["site"] == record.site == "B"
    assert summary["model_threshold"] == 0.05
    assert summary["achieved"]["metric"] == "sensitivity"
    a = summary["achieved"]
    assert a["low"] <= a["value"] <= a["high"] and a["value"] == pytest.approx(0.8, abs=0.1)
    window = summary["data_window"]
    assert window["fit"]["hospitals"] == window["report"]["hospitals"] == ["B"]
    assert window["fit"]["patients"] == window["report"]["patients"] == 750
    before, after = summary["metrics"]["before"], summary["metrics"]["after"]
    assert after["calibration"]["ece"] < before["calibration"]["ece"]
    assert after["calibration"]["auroc"] == pytest.approx(before["calibration"]["auroc"])
    for name in ("report.md", "reliability.png", "score_histograms.png"):
        assert (root / "report" / name).is_file()


def test_stored_scores_give_the_same_calibration(work):
    root, summary = work
    preds = root / "preds.parquet"
    run("evaluate", "--model", str(root / "pkg"), "--out-predictions", str(preds), "--json")
    # the runtime's format: lower-case iculos, repeated 15-minute scores of an hour
    frame = pd.read_parquet(preds).rename(columns={"ICULOS": "iculos"}).drop(columns="prediction")
    stale = frame.assign(probability=0.99, scored_at=pd.Timestamp("2025-01-01T00:00"))
    fresh = frame.assign(scored_at=pd.Timestamp("2025-01-01T00:15"))
    pd.concat([fresh, stale]).to_parquet(root / "runtime_scores.parquet")
    out = run("calibrate", "--model", str(root / "pkg"), "--hospital", "B", "--scores",
              str(root / "runtime_scores.parquet"), "--policy", "sensitivity=0.8", "--out",
              str(root / "again.json"), "--bootstrap", "200", "--json")
    again = json.loads(out.stdout)
    assert again["threshold"] == pytest.approx(summary["threshold"], rel=1e-9)
    assert again["achieved"] == pytest.approx(summary["achieved"])


@pytest.mark.parametrize("alias", ["platt", "sigmoid", "Platt"])
def test_platt_and_sigmoid_name_the_logistic_method(work, alias):
    root, summary = work
    out = run("calibrate", "--model", str(root / "pkg"), "--hospital", "B", "--policy",
              "sensitivity=0.8", "--out", str(root / f"{alias}.json"), "--bootstrap", "200",
              "--method", alias, "--json")
    again = json.loads(out.stdout)
    assert again["method"] == summary["method"] == "logistic"  # the canonical name is stored
    assert json.loads((root / f"{alias}.json").read_text())["method"] == "logistic"
    assert again["threshold"] == pytest.approx(summary["threshold"], rel=1e-12)


def test_evaluate_applies_the_record(work):
    root, _ = work
    record = load_record(root / "calibration.json")
    out = json.loads(run("evaluate", "--model", str(root / "pkg"), "--calibration",
                         str(root / "calibration.json"), "--split", "test", "--json").stdout)
    raw = json.loads(run("evaluate", "--model", str(root / "pkg"), "--split", "test", "--json",
                         "--out-predictions", str(root / "test_preds.parquet")).stdout)
    assert out["threshold"] == record.threshold != raw["threshold"]
    preds = pd.read_parquet(root / "test_preds.parquet")
    from vigil.data import load_physionet, patient_split

    sample = load_physionet("sample")
    test = sample.select(patient_split(sample.grid.patient_ids, "test").nonzero()[0])
    y = test.labels > 0
    positive = record.transform(preds["probability"].to_numpy()) >= record.threshold
    assert out["sensitivity"] == pytest.approx((positive & y).sum() / y.sum())
    assert out["ppv"] == pytest.approx((positive & y).sum() / positive.sum())
    assert out["auroc"] == pytest.approx(raw["auroc"])  # a monotone map keeps the ranking


def test_evaluate_refuses_a_record_of_another_model_version(work):
    root, _ = work
    tiny_package(root / "pkg2", version="2")
    result = run("evaluate", "--model", str(root / "pkg2"), "--calibration",
                 str(root / "calibration.json"), "--split", "valid", code=2)
    assert "made for model tiny 1" in result.output and "model package is tiny 2" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "sensitivity=2"], r"target in (0, 1]"),
    (["--policy", "utility", "--method", "plat"],
     "unknown calibration method 'plat'; expected one of in-the-large, logistic, beta, isotonic, "
     "platt, sigmoid. Did you mean 'platt'?"),
    (["--policy", "utility", "--hospital", "C"], "hospital 'C'"),
])
def test_bad_options_exit_2_with_a_message(work, args, message):
    root, _ = work
    result = run("calibrate", "--model", str(root / "pkg"), "--out", str(root / "x.json"), *args,
                 code=2)
    assert message in result.output


@pytest.mark.slow
@pytest.mark.shared
def test_recalibration_meets_the_targets_on_the_full_data_of_hospital_b(work, shared_parquet):
    """Issue 6 targets on real data: sensitivity 0.80 +- 0.05 on later patients, ECE <= 0.02."""
    root, _ = work
    out = json.loads(run("calibrate", "--model", str(root / "pkg"), "--data", str(shared_parquet),
                         "--hospital", "B", "--policy", "sensitivity=0.8", "--out",
                         str(root / "full.json"), "--bootstrap", "200", "--json").stdout)
    assert out["data_window"]["report"]["patients"] > 5000
    assert out["achieved"]["value"] == pytest.approx(0.8, abs=0.05)
    assert out["metrics"]["after"]["calibration"]["ece"] <= 0.02
    assert abs(out["metrics"]["after"]["calibration"]["intercept"]) < abs(
        out["metrics"]["before"]["calibration"]["intercept"])


def test_scores_that_are_no_scores_parquet_are_a_one_line_error(tmp_path):
    """--scores naming a directory, a file that is not parquet, or a parquet without the
    score columns: exit 2, one line saying what was expected and what came."""
    tiny_package(tmp_path / "pkg")
    text = tmp_path / "scores.parquet"
    text.write_text("patient_id,ICULOS,probability\n")
    other = tmp_path / "other.parquet"
    pd.DataFrame({"patient_id": ["p1"], "hour": [1], "probability": [0.2]}).to_parquet(other)
    for path, came in [(tmp_path / "pkg", "got a directory: pkg"),
                       (text, "got scores.parquet: ArrowInvalid"),
                       (other, "got other.parquet without ICULOS or iculos"),
                       (tmp_path / "absent.parquet", "found nothing at")]:
        result = run("calibrate", "--model", str(tmp_path / "pkg"), "--hospital", "B",
                     "--scores", str(path), "--policy", "sensitivity=0.8", "--out",
                     str(tmp_path / "c.json"), code=2)
        assert "expected --scores to be a scores parquet file with columns patient_id, ICULOS "\
               "or iculos, probability" in result.output
        assert came in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "c.json").exists()
