"""``vigil federate --task imaging``: signed packages, then ``vigil evaluate --images`` on them."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.core.package import read_package
from vigil.data.medmnist import MEDMNIST_SAMPLE_PATH
from vigil.imaging.profile import ImageProfile

runner = CliRunner(mix_stderr=False)  # --json: stdout holds only the JSON object


@pytest.mark.slow
def test_federate_imaging_then_evaluate(tmp_path):
    keys = [str(tmp_path / "k.pem"), str(tmp_path / "k.pub")]
    assert runner.invoke(app, ["package", "keygen", "--private-key", keys[0],
                               "--public-key", keys[1]]).exit_code == 0
    out = tmp_path / "pkg"
    result = runner.invoke(app, ["federate", "--task", "imaging", "--data", "sample",
                                 "--strategy", "fedavg", "--rounds", "1", "--private-key",
                                 keys[0], "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["packages"] == [str(out)] and summary["signed"]
    manifest = read_package(out, public_key=keys[1]).manifest
    assert manifest.task == "imaging" and manifest.model_extra["preprocessing"]["size"] == 28
    profile = ImageProfile.from_manifest(manifest.model_dump())  # the drift monitor's reference
    assert profile is not None
    assert profile.images == sum(s["images"] for s in summary["sites"].values())
    assert profile.score_counts.sum() == profile.images
    assert profile.input_counts.sum() == profile.images * 28 * 28
    assert set(profile.headers["bits_stored"]) == {"8", "12", "16"}
    assert set(profile.headers["photometric"]) == {"MONOCHROME1", "MONOCHROME2"}
    result = runner.invoke(app, ["evaluate", "--model", str(out), "--images",
                                 str(MEDMNIST_SAMPLE_PATH), "--public-key", keys[1], "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_images"] == 200  # the sample's test split


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "imaging", "--boost-trees", "5"], "expected --boost-trees 0 with --task imaging"),
    (["--task", "scans"], "expected --task sepsis or imaging; got 'scans'"),
    (["--task", "imaging", "--data", "/no/such.npz"], "expected a MedMNIST .npz file"),
])
def test_bad_imaging_options_are_one_line_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["federate", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_federate_imaging_defaults_to_the_imaging_recipe(tmp_path, monkeypatch):
    """No --rounds / --batch-size / --lr: the run gets IMAGING_RECIPE's plan (20 rounds)."""
    from vigil.cli import federate as federate_cli
    from vigil.federation.image_run import IMAGING_RECIPE

    seen = {}
    monkeypatch.setattr(federate_cli, "_federate_images", lambda **kw: seen.update(kw))
    result = runner.invoke(app, ["federate", "--task", "imaging", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    plan = seen["plan"]
    assert (plan.rounds, plan.local_epochs, plan.batch_size, plan.lr, plan.weight_decay,
            plan.keep_by) == (20, 1, 128, 1e-3, 1e-4, "site")
    assert plan.rounds == IMAGING_RECIPE["rounds"]
    result = runner.invoke(app, ["federate", "--task", "imaging", "--rounds", "3",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 0 and seen["plan"].rounds == 3
    # under DP-SGD: the recipe chosen at epsilon 8 on validation (IMAGING_DP_RECIPE)
    result = runner.invoke(app, ["federate", "--task", "imaging", "--dp-epsilon", "8",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    plan = seen["plan"]
    assert (plan.rounds, plan.batch_size, plan.lr, plan.keep_by) == (20, 256, 3e-3, "site")
    assert seen["dp"].max_grad_norm == 1.0
