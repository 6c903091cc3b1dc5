import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.core.errors import DataError
from vigil.core.package import read_package
from vigil.data.splits import Split
from vigil.features.utility import normalized_utility
from vigil.federation.centralized import split_table, training_targets

runner = CliRunner(mix_stderr=False)


def invoke_json(*args):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_utility_targets_golden():
    # one septic patient of 20 rows, first label at row 14 -> t_sepsis = 20, d = t - 20
    labels = np.r_[np.zeros(14), np.ones(6)].astype(np.int8)
    y, w = training_targets(labels, np.array([0, 20]), target="utility")
    # d <= -12 (rows 0..8): predicting 1 costs 0.05 -> 0; from d = -11 (row 9) on, 1 pays
    assert y.tolist() == [0.0] * 9 + [1.0] * 11
    raw = np.r_[np.full(8, 0.05), 0.0, np.arange(1, 7) / 6, 1 / 3 - np.arange(-5, 0) / 9
                + 2 * (np.arange(-5, 0) + 6) / 9]
    np.testing.assert_allclose(w, raw / raw.mean(), rtol=1e-6)


def test_utility_targets_are_the_best_decision():
    labels = np.r_[np.zeros(30), np.zeros(5), np.ones(10)].astype(np.int8)
    starts = np.array([0, 30, 45])
    y, _ = training_targets(labels, starts, target="utility")
    best = normalized_utility(labels, y.astype(np.int8), starts)
    assert best.normalized == pytest.approx(1.0)


def test_label_target_is_unweighted_and_unknown_is_refused():
    y, w = training_targets(np.array([0, 1], dtype=np.int8), np.array([0, 2]), target="label")
    assert y.tolist() == [0.0, 1.0] and w is None
    with pytest.raises(ValueError, match="got 'auc'"):
        training_targets(np.array([0]), np.array([0, 1]), target="auc")


def test_split_table_is_disjoint_and_filters_hospital(sample):
    parts = split_table(sample)
    ids = [set(parts[s].grid.patient_ids) for s in (Split.TRAIN, Split.VALID, Split.TEST)]
    assert sum(len(i) for i in ids) == sample.grid.n_patients
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    only_a = split_table(sample, hospital="A")
    assert set(only_a[Split.TRAIN].patient_hospital.tolist()) == {"A"}
    assert set(only_a[Split.TEST].grid.patient_ids) <= ids[2]
    with pytest.raises(DataError, match=r"among \['A', 'B'\], got 'C'"):
        split_table(sample, hospital="C")


def test_train_then_evaluate_round_trip(tmp_path):
    out = tmp_path / "pkg"
    trained = invoke_json("train", "--data", "sample", "--out", str(out), "--epochs", "1",
                          "--hospital", "A", "--version", "9.9")
    assert trained["parity_max_abs_diff"] <= 1e-5
    package = read_package(out)
    m = package.manifest
    assert m.version == "9.9" and m.threshold == trained["threshold"]
    assert [s["site"] for s in m.training["sites"]] == ["A"]
    assert set(m.validation["by_hospital"]) == {"A", "B"}  # transfer to B is reported
    assert m.reference_profile["format"] == "vigil-reference-profile/1"
    evaluated = invoke_json("evaluate", "--model", str(out), "--data", "sample", "--split", "test")
    for key in ("auroc", "auprc", "utility", "n_rows"):
        assert evaluated[key] == pytest.approx(m.validation[key], abs=1e-4)
    assert evaluated["threshold"] == m.threshold


def test_train_refuses_an_unknown_hospital(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--hospital", "Z"])
    assert result.exit_code == 2 and "got 'Z'" in result.stderr


@pytest.mark.slow
def test_reference_on_the_sample_reports_every_method(tmp_path):
    out = invoke_json("reference", "--data", "sample", "--epochs", "2",
                      "--out", str(tmp_path / "p"))
    assert list(out["methods"]) == ["qsofa", "sirs", "news2", "torch", "hgb"]
    for res in out["methods"].values():
        assert set(res["by_hospital"]) == {"A", "B"}
    # both learned models beat every rule on discrimination, even on 2,000 training patients
    rules = max(out["methods"][r]["auroc"] for r in ("qsofa", "sirs", "news2"))
    assert out["methods"]["torch"]["auroc"] > rules and out["methods"]["hgb"]["auroc"] > rules
    assert read_package(tmp_path / "p").manifest.validation["auroc"] == pytest.approx(
        out["methods"]["torch"]["auroc"])
