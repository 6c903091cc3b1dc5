"""The colour five-class imaging model: CNN, loss, validation summary, export, runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.core.errors import DataError
from vigil.core.package import read_package
from vigil.core.signing import generate_keypair
from vigil.data.medmnist import MEDMNIST_SAMPLE_PATH, RETINA_SAMPLE_PATH, load_medmnist
from vigil.dicom_adapter.sites import medmnist_sites, write_sites
from vigil.features.multiclass import accuracy, macro_ovr_auroc
from vigil.federation.cnn import SmallCNN
from vigil.federation.driver import Plan
from vigil.federation.evaluation import pool_evaluations
from vigil.federation.image_export import (
    IMAGE_OUTPUT_CLASSES,
    PARITY_IMAGES,
    cnn_to_onnx,
    image_parity,
    input_schema,
    onnx_probabilities,
)
from vigil.federation.image_run import export_imaging_run, federate_images, spec_for
from vigil.federation.image_task import CNNSpec, predict_images
from vigil.federation.model import get_weights, set_weights
from vigil.federation.multiclass import (
    WeightedCrossEntropy,
    cross_entropy_hook,
    multiclass_evaluation,
)
from vigil.federation.strategies import make_strategy
from vigil.imaging import colour_training_inputs
from vigil.runtime.image_replay import replay_folder
from vigil.runtime.images import evaluate_images, load_images
from vigil.runtime.models import verify_package

RETINA = CNNSpec(channels=3, classes=5)
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "imaging-federated"
runner = CliRunner(mix_stderr=False)


def _random_cnn(spec: CNNSpec, seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    net = SmallCNN(spec)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return get_weights(net)


def test_the_binary_model_and_its_shipped_package_are_unchanged():
    net = SmallCNN()
    assert net.spec == CNNSpec(channels=1, classes=2) and net.spec.outputs == 1
    assert sum(p.numel() for p in net.parameters()) == 93249
    assert net(torch.zeros(3, 784)).shape == (3,)
    blob = (SHIPPED / "model.onnx").read_bytes()
    graph = onnx.load_from_string(blob).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    assert cnn_to_onnx(weights, CNNSpec()) == blob  # byte for byte
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    assert input_schema(CNNSpec()) == manifest["feature_schema"]
    assert SmallCNN().config() == {k: manifest["architecture"][k]
                                   for k in ("size", "widths", "parameters")}


def test_colour_five_class_cnn():
    net = SmallCNN(RETINA)
    assert net.conv1.weight.shape == (32, 3, 3, 3) and net.fc.weight.shape == (5, 128)
    assert net(torch.zeros(4, 3 * 784)).shape == (4, 5)
    assert net(torch.zeros(4, 3, 28, 28)).shape == (4, 5)
    assert net.config()["channels"] == 3 and net.config()["classes"] == 5
    schema = input_schema(RETINA)
    assert schema["channels"] == 3 and schema["classes"] == 5
    assert schema["chain"] == "vigil.imaging.stored_colour_input"
    assert schema["sha256"] != input_schema(CNNSpec())["sha256"]
    y = np.array([0, 1, 4, 2])
    x = np.zeros((4, 3, 28, 28), np.float32)
    assert spec_for([("a", x, y)]) == RETINA
    assert spec_for([("a", x[:, 0], np.array([0, 1, 1, 0]))]) == CNNSpec()


def test_group_norm_colour_five_class_cnn_exports_with_parity():
    """GroupNorm (the DP-SGD CNN) with 3 channels and 5 classes: torch and ONNX agree."""
    spec = CNNSpec(norm="group", channels=3, classes=5)
    net = SmallCNN(spec)
    assert net.norms == ("gn1", "gn2", "gn3") and net.fc.weight.shape == (5, 128)
    assert net.config()["norm"] == "group" and net.config()["classes"] == 5
    torch.manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    weights = get_weights(net)
    x = colour_training_inputs(load_medmnist("retina-sample", "test").images)
    blob = cnn_to_onnx(weights, spec)
    assert image_parity(weights, blob, x, spec) <= 1e-5
    assert onnx_probabilities(blob, x[:7], spec).shape == (7, 5)
    assert spec_for([("a", x, np.array([0, 4] * 50))], norm="group") == spec


def test_cross_entropy_hook_hands_the_swapped_loss_to_the_next_hook():
    """Under DP-SGD the privacy hook wraps the cross-entropy, not the binary loss."""
    seen = []

    def then(model, optimizer, loader, criterion):
        seen.append(criterion)
        return model, optimizer, loader, "wrapped"

    assert cross_entropy_hook(5, then=then)("m", "o", "l", "bce") == ("m", "o", "l", "wrapped")
    assert len(seen) == 1 and isinstance(seen[0], WeightedCrossEntropy)
    assert isinstance(cross_entropy_hook(5)("m", "o", "l", "bce")[3], WeightedCrossEntropy)


def test_weighted_cross_entropy_is_torchs():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 5), torch.tensor([0., 1., 4., 2., 2., 3.])
    w = torch.tensor([1., 2., 0., 1., 1., .5])
    loss = WeightedCrossEntropy()(logits, y, w)
    expected = (F.cross_entropy(logits, y.long(), reduction="none") * w).sum() / 6
    assert float(loss) == pytest.approx(float(expected))
    plain = WeightedCrossEntropy()(logits, y, torch.ones(6))
    assert float(plain) == pytest.approx(float(F.cross_entropy(logits, y.long())))


def test_validation_summary_pools_to_the_accuracy():
    rng = np.random.default_rng(0)
    y = [rng.integers(0, 5, 40), rng.integers(0, 5, 25)]
    p = [rng.dirichlet(np.ones(5), 40), rng.dirichlet(np.ones(5), 25)]
    evaluations = [multiclass_evaluation(f"s{i}", y[i], p[i]) for i in range(2)]
    assert evaluations[0].auroc == pytest.approx(macro_ovr_auroc(y[0], p[0]))
    pooled = pool_evaluations(evaluations)
    assert pooled.utility == pytest.approx(accuracy(np.concatenate(y), np.concatenate(p)))
    assert pooled.n_rows == 65
    assert pool_evaluations(evaluations[:1]).utility == pytest.approx(accuracy(y[0], p[0]))


def test_onnx_softmax_parity_on_1000_colour_images():
    images = np.concatenate([load_medmnist("retina-sample", s).images for s in ("train", "test")])
    x = colour_training_inputs(np.concatenate([images, images[:, ::-1], images[:, :, ::-1]]))
    x = x[:PARITY_IMAGES]
    assert x.shape == (PARITY_IMAGES, 3, 28, 28)
    weights = _random_cnn(RETINA, 0)
    blob = cnn_to_onnx(weights, RETINA)
    assert image_parity(weights, blob, x, RETINA) <= 1e-5
    graph = onnx.load_from_string(blob).graph
    assert [o.name for o in graph.output] == [IMAGE_OUTPUT_CLASSES]
    assert graph.node[-1].op_type == "Softmax"
    net = SmallCNN(RETINA)
    set_weights(net, weights, strict=False)
    p = predict_images(net, x[:10])
    assert p.shape == (10, 5) and np.allclose(p.sum(axis=1), 1.0)


@pytest.fixture(scope="module")
def retina_sites():
    return medmnist_sites("retina-sample", seed=0)


@pytest.mark.slow
def test_federate_export_and_score_through_dicom(retina_sites, tmp_path):
    """FedBN on the three cameras of the bundled sample, signed packages, runtime scoring."""
    private, public = generate_keypair()
    train, valid = ([(s.site, s.inputs, s.labels) for s in retina_sites[k]]
                    for k in ("train", "val"))
    run = federate_images(train, valid, strategy=make_strategy("fedbn"),
                          plan=Plan(rounds=2, batch_size=32, lr=1e-3, weight_decay=1e-4))
    assert run.spec == RETINA and run.thresholds() == {}
    check = np.concatenate([x for _, x, _ in train + valid])
    packages = export_imaging_run(run, tmp_path / "pkg", name="retina", version="0.0.1",
                                  check_inputs=check, private_key_pem=private)
    assert [p.path.name for p in packages] == ["camera-a", "camera-b", "camera-c"]
    package = read_package(packages[1].path, public_key=public)
    m = package.manifest
    assert m.output_name == "probabilities" and m.model_extra["classes"] == 5
    assert m.model_extra["preprocessing"]["channels"] == 3
    assert m.model_extra["decision"].startswith("the arg-max class")
    card = (packages[1].path / "MODEL_CARD.md").read_text()
    assert "diabetic-retinopathy" in card and "## Threshold" not in card
    assert card.endswith("- No DP-SGD: BatchNorm mixes the images of a batch (the GroupNorm CNN "
                         "does not; `--dp-epsilon`).\n")
    test = load_medmnist("retina-sample", "test")
    site = write_sites(test.images, test.labels, tmp_path / "dcm", split="test", seed=0)[1]
    summary, frame = evaluate_images(package, site.folder)
    # the runtime (onnxruntime, no torch) agrees with the site's torch model on the same images
    net = SmallCNN(RETINA)
    set_weights(net, run.site_weights("camera-b"), strict=False)
    inputs = next(s for s in medmnist_sites("retina-sample", seed=0, splits=("test",))["test"]
                  if s.site == "camera-b")
    torch_p = predict_images(net, inputs.inputs)
    assert summary["n_images"] == site.n == inputs.labels.size and summary["quarantined"] == 0
    by_uid = frame.set_index("sop_instance_uid")
    assert summary["auroc"] == pytest.approx(macro_ovr_auroc(inputs.labels, torch_p), abs=1e-6)
    assert summary["accuracy"] == pytest.approx(accuracy(inputs.labels, torch_p))
    assert summary["label_counts"] == np.bincount(inputs.labels, minlength=5).tolist()
    assert sum(summary["prediction_counts"]) == site.n
    assert list(frame.columns) == ["sop_instance_uid", "probability", "prediction",
                                   "p_0", "p_1", "p_2", "p_3", "p_4"]
    probs = by_uid[[f"p_{k}" for k in range(5)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(by_uid["prediction"], probs.argmax(axis=1))
    np.testing.assert_allclose(by_uid["probability"], probs.max(axis=1))
    # the binary pneumonia package, through the imaging cycle, skips every colour (XC) file
    # as not an image it scores (the service does the same), and the reader quarantines
    # colour files for a greyscale model with the reason
    grey = evaluate_images(read_package(SHIPPED), site.folder)[0]
    assert grey["n_images"] == 0 and grey["skipped"] == site.n and grey["quarantined"] == 0
    refused = load_images(site.folder, size=28, channels=1)
    assert refused.quarantined == {"expected Modality CR or DX, got 'XC'": site.n}
    # it installs (the runtime's check scores colour inputs), but the imaging cycle
    # (vigil serve) refuses the multi-class package in one line
    (tmp_path / "k.pub").write_bytes(public)
    assert verify_package(packages[1].path, public_key=tmp_path / "k.pub")[1].channels == 3
    with pytest.raises(DataError, match=r"^expected a binary imaging model for the imaging "
                       r"cycle \(one probability per image\), got retina-camera-b 0.0.1 with 5 "
                       r"classes; score it with `vigil evaluate --images` instead$"):
        replay_folder(package, site.folder)


@pytest.mark.slow
def test_cli_federate_retina_then_evaluate(tmp_path):
    keys = [str(tmp_path / "k.pem"), str(tmp_path / "k.pub")]
    assert runner.invoke(app, ["package", "keygen", "--private-key", keys[0],
                               "--public-key", keys[1]]).exit_code == 0
    out = tmp_path / "pkg"
    result = runner.invoke(app, ["federate", "--task", "imaging", "--data", "retina-sample",
                                 "--strategy", "fedavg", "--rounds", "1", "--private-key",
                                 keys[0], "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["signed"] and summary["site_thresholds"] == {}
    assert 0 <= summary["validation"]["accuracy"] <= 1
    assert summary["validation"]["decision"] == "argmax"
    preds = tmp_path / "p.parquet"
    result = runner.invoke(app, ["evaluate", "--model", str(out), "--images",
                                 str(RETINA_SAMPLE_PATH), "--public-key", keys[1], "--json",
                                 "--out-predictions", str(preds)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_images"] == 100 and summary["classes"] == 5
    assert 0 <= summary["accuracy"] <= 1 and 0 <= summary["auroc"] <= 1
    assert len(pd.read_parquet(preds)) == 100
    result = runner.invoke(app, ["evaluate", "--model", str(out), "--images",
                                 str(MEDMNIST_SAMPLE_PATH), "--json"])
    assert result.exit_code == 2
    assert "expected images of 3 channel(s) for this model" in result.stderr
    result = runner.invoke(app, ["evaluate", "--model", str(out), "--images",
                                 str(RETINA_SAMPLE_PATH), "--threshold", "0.3", "--json"])
    assert result.exit_code == 2
    assert ("expected no --threshold with a multi-class package (its decision is the arg-max "
            "class), got --threshold") in result.stderr


@pytest.mark.slow
def test_dp_sgd_group_norm_five_class_package(retina_sites, tmp_path):
    """DP-SGD wraps the cross-entropy: each camera spends at most its budget; no image_profile."""
    from vigil.federation.privacy import DPSettings

    train, valid = ([(s.site, s.inputs, s.labels) for s in retina_sites[k]]
                    for k in ("train", "val"))
    run = federate_images(train, valid, strategy=make_strategy("fedavg"),
                          plan=Plan(rounds=1, batch_size=32, lr=1e-3),
                          dp=DPSettings(target_epsilon=8.0))
    assert run.spec == CNNSpec(norm="group", channels=3, classes=5)
    check = np.concatenate([x for _, x, _ in train + valid])
    profile = (np.concatenate([s.inputs for s in retina_sites["val"]]),
               [h for s in retina_sites["train"] for h in s.headers])
    private, _ = generate_keypair()
    (package,) = export_imaging_run(run, tmp_path / "pkg", name="retina-dp", version="0.0.1",
                                    check_inputs=check, private_key_pem=private,
                                    profile_data=profile)
    manifest = json.loads((package.path / "manifest.json").read_text())
    assert "image_profile" not in manifest  # the profile is of the binary probability
    assert manifest["architecture"]["norm"] == "group"
    spent = manifest["training"]["differential_privacy"]["sites"]
    assert sorted(spent) == ["camera-a", "camera-b", "camera-c"]
    assert all(0 < s["epsilon"] <= 8.0 and s["steps"] > 0 for s in spent.values())
    card = (package.path / "MODEL_CARD.md").read_text()
    assert card.rstrip().endswith("the validation histograms are not privatized.")
    summary, frame = evaluate_images(package, RETINA_SAMPLE_PATH)
    assert summary["n_images"] == 100 and sum(summary["prediction_counts"]) == 100
    assert list(frame.columns)[3:] == [f"p_{k}" for k in range(5)]


def test_random_shifts_move_every_channel_of_a_colour_image_together():
    from vigil.federation.augment import random_shifts

    x = colour_training_inputs(load_medmnist("retina-sample", "test").images[:20])
    out = random_shifts(x, np.random.default_rng(3), 2)
    assert out.shape == x.shape and not np.array_equal(out, x)
    for k in range(3):  # each channel as the greyscale shift with the same offsets
        grey = random_shifts(x[:, k], np.random.default_rng(3), 2)
        np.testing.assert_array_equal(out[:, k], grey)
    with pytest.raises(ValueError, match="expected images"):
        random_shifts(x[:, :, :, :, None], np.random.default_rng(0), 2)
