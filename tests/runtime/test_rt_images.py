"""Scoring images as the runtime does (onnxruntime + pixel chain); ``vigil evaluate --images``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.core.errors import ModelArtifactError
from vigil.core.package import read_package, write_package
from vigil.data.medmnist import MEDMNIST_SAMPLE_PATH, load_medmnist
from vigil.dicom_adapter import prepare_batch, read_file
from vigil.dicom_adapter.sites import write_sites
from vigil.federation.cnn import SmallCNN
from vigil.federation.image_export import cnn_to_onnx, input_schema
from vigil.federation.image_task import CNNSpec, predict_images
from vigil.federation.model import get_weights
from vigil.imaging import training_inputs
from vigil.runtime.images import evaluate_images

runner = CliRunner()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """An imaging package of a seeded, untrained CNN (scores still vary with the pixels)."""
    torch.manual_seed(0)
    net = SmallCNN()
    net.eval()
    path = tmp_path_factory.mktemp("pkg")
    manifest = {"name": "img", "version": "0", "task": "imaging", "threshold": 0.5,
                "feature_schema": input_schema(CNNSpec()), "input_name": "image",
                "output_name": "probability"}
    write_package(path, onnx_model=cnn_to_onnx(get_weights(net), CNNSpec()), manifest=manifest,
                  model_card="# test\n")
    return read_package(path), net


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Site-c's DICOM files of 60 sample test images, one unreadable file and one MR."""
    test = load_medmnist("sample", "test")
    root = tmp_path_factory.mktemp("dcm")
    site = write_sites(test.images[:60], test.labels[:60], root, split="test", seed=0)[2]
    (site.folder / "broken.dcm").write_bytes(b"not dicom")
    ds = pydicom.dcmread(next(site.folder.glob("*.dcm")))
    ds.Modality, ds.SOPInstanceUID = "MR", "1.2.3.4"
    ds.save_as(site.folder / "mr.dcm")
    return site


def test_dicom_folder_scored_with_quarantine(package, folder):
    pkg, net = package
    summary, frame = evaluate_images(pkg, folder.folder)
    assert summary["n_images"] == folder.n == len(frame)
    # the runtime's code: the unreadable file is quarantined, the MR (not an image the
    # model scores, like the runtime's own SR) is skipped
    assert summary["quarantined"] == 1 and summary["skipped"] == 1
    assert set(summary["quarantine_reasons"].values()) == {1}
    files = sorted(p for p in folder.folder.glob("*.dcm") if p.name not in ("broken.dcm", "mr.dcm"))
    reference = predict_images(net, prepare_batch(read_file(f) for f in files).inputs)
    np.testing.assert_allclose(frame["probability"], reference, atol=1e-5)
    labels = pd.read_csv(folder.folder / "labels.csv").set_index("sop_instance_uid")["label"]
    y = labels.loc[frame["sop_instance_uid"]].to_numpy()
    assert summary["auroc"] == pytest.approx(roc_auc_score(y, frame["probability"]))
    hit = (frame["probability"].to_numpy() >= 0.5) == (y > 0)
    assert summary["accuracy"] == pytest.approx(hit.mean())
    assert summary["sensitivity"] == pytest.approx(hit[y == 1].mean())
    assert summary["specificity"] == pytest.approx(hit[y == 0].mean())


def test_npz_is_scored_on_its_test_split(package):
    pkg, net = package
    summary, frame = evaluate_images(pkg, MEDMNIST_SAMPLE_PATH, threshold=0.3)
    test = load_medmnist("sample", "test")
    assert summary["n_images"] == test.labels.size and summary["threshold"] == 0.3
    assert frame["image_index"].tolist() == list(range(test.labels.size))
    np.testing.assert_allclose(frame["probability"],
                               predict_images(net, training_inputs(test.images)), atol=1e-5)
    assert frame["prediction"].tolist() == (frame["probability"] >= 0.3).astype(int).tolist()


def test_a_sepsis_package_is_refused(package):
    sepsis = read_package("models/sepsis-federated")
    with pytest.raises(ModelArtifactError, match="expected an imaging model package"):
        evaluate_images(sepsis, MEDMNIST_SAMPLE_PATH)


def test_cli_evaluate_images(package, folder, tmp_path):
    pkg, _ = package
    out = tmp_path / "p.parquet"
    result = runner.invoke(app, ["evaluate", "--model", str(pkg.path), "--images",
                                 str(folder.folder), "--json", "--out-predictions", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"auroc", "accuracy", "sensitivity", "specificity", "threshold", "n_images"} <= set(
        summary)
    assert list(pd.read_parquet(out).columns) == ["sop_instance_uid", "probability", "prediction"]
    for args, message in (
        (["--images", str(folder.folder)], "expected --model PACKAGE with --images"),
        (["--model", str(pkg.path), "--images", str(tmp_path / "none")], "found nothing at"),
        (["--model", "models/sepsis-federated", "--images", str(folder.folder)],
         "task 'sepsis-6h'"),
    ):
        result = runner.invoke(app, ["evaluate", *args])
        assert result.exit_code == 2 and message in result.output
        assert result.output.strip().count("\n") == 0
