"""``vigil federate``, ``vigil federate history`` and ``vigil package`` end to end on the sample."""

import json

import pytest
from typer.testing import CliRunner

from vigil.cli.main import app

runner = CliRunner(mix_stderr=False)  # --json: stdout holds only the JSON object


@pytest.fixture(scope="module")
def federated(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    keys = (root / "k.pem", root / "k.pub")
    made = runner.invoke(app, ["package", "keygen", "--private-key", str(keys[0]),
                               "--public-key", str(keys[1])])
    assert made.exit_code == 0, made.output
    out = root / "pkg"
    result = runner.invoke(app, [
        "federate", "--data", "sample", "--sites", "hospital", "--strategy", "fedprox",
        "--mu", "0.1", "--robust", "median", "--rounds", "2", "--hidden", "8", "--dropout", "0",
        "--lr", "1e-3", "--out", str(out), "--private-key", str(keys[0]), "--json",
    ])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out, keys


def test_federate_writes_a_signed_package_and_reports(federated):
    summary, out, _ = federated
    assert summary["packages"] == [str(out)] and summary["signed"] is True
    assert summary["best_round"] in (1, 2) and summary["rejections"] == []
    assert 0.5 < summary["validation"]["auroc"] <= 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    strategy = manifest["training"]["strategy"]
    assert (strategy["name"], strategy["proximal_mu"], strategy["robust"]) == ("fedprox", 0.1,
                                                                                 "median")


def test_history_prints_every_round_and_site(federated):
    _, out, _ = federated
    result = runner.invoke(app, ["federate", "history", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rounds = json.loads(result.stdout)["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert [s["site"] for s in rounds[0]["sites"]] == ["A", "B"]
    table = runner.invoke(app, ["federate", "history", str(out)])
    assert "round history" in table.stdout and "accepted" in table.stdout


def test_verify_passes_then_names_the_changed_file(federated, tmp_path):
    import shutil

    _, out, keys = federated
    ok = runner.invoke(app, ["package", "verify", str(out), "--public-key", str(keys[1]), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["signature"] == "publisher key"
    copy = tmp_path / "pkg"
    shutil.copytree(out, copy)
    onnx = copy / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF
    onnx.write_bytes(bytes(data))
    bad = runner.invoke(app, ["package", "verify", str(copy), "--public-key", str(keys[1])])
    assert bad.exit_code == 2 and "model.onnx has changed" in bad.stderr


def test_option_errors_exit_2_with_a_message(tmp_path):
    no_out = runner.invoke(app, ["federate", "--rounds", "1"])
    assert no_out.exit_code == 2 and "expected --out DIR" in no_out.stderr
    mu = runner.invoke(app, ["federate", "--mu", "0.1", "--out", str(tmp_path / "x")])
    assert mu.exit_code == 2 and "--mu applies to --strategy fedprox only" in mu.stderr
    exists = runner.invoke(app, ["package", "keygen", "--private-key", str(tmp_path),
                                 "--public-key", str(tmp_path / "p")])
    assert exists.exit_code == 2 and "refusing to overwrite" in exists.stderr
    fedbn = runner.invoke(app, ["federate", "--strategy", "fedbn", "--boost-trees", "3",
                                "--out", str(tmp_path / "x")])
    assert fedbn.exit_code == 2 and "FedBN keeps a network per site" in fedbn.stderr
    edges = runner.invoke(app, ["federate", "--data", "sample", "--boost-trees", "3",
                                "--boost-edges", "mine", "--out", str(tmp_path / "x")])
    assert edges.exit_code == 2 and "expected --boost-edges quantiles or public" in edges.stderr
    share = runner.invoke(app, ["federate", "--data", "sample", "--dp-epsilon", "8",
                                "--boost-trees", "3", "--dp-tree-share", "1",
                                "--out", str(tmp_path / "x")])
    assert share.exit_code == 2 and "expected 0 < tree share < 1" in share.stderr


@pytest.mark.slow
def test_federate_accepts_dp_with_trees_and_states_the_composed_epsilon(tmp_path):
    out = tmp_path / "dp"
    result = runner.invoke(app, [
        "federate", "--data", "sample", "--strategy", "fedavg", "--rounds", "1", "--hidden", "8",
        "--dp-epsilon", "8", "--boost-trees", "2", "--boost-depth", "2",
        "--dp-tree-features", "8", "--out", str(out), "--json",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    dp = json.loads((out / "manifest.json").read_text())["training"]["differential_privacy"]
    assert set(dp["composed_epsilon"]) == set(summary["privacy"]) and len(summary["privacy"]) == 4
    for name, eps in dp["composed_epsilon"].items():
        assert summary["privacy"][name]["epsilon"] <= 5.6 + 1e-6 < eps <= 8.0 + 1e-9
        assert summary["tree_privacy"][name]["epsilon"] == eps
    assert dp["split"]["tree_share"] == 0.3 and dp["trees"]["features_per_tree"] == 8
    # the options left unset took the private recipe's values (vigil.federation.recipes)
    manifest = json.loads((out / "manifest.json").read_text())
    plan = manifest["training"]["plan"]
    assert (plan["batch_size"], plan["lr"]) == (4096, 1e-3)
    assert {s["max_grad_norm"] for s in dp["sites"].values()} == {10.0}
    assert manifest["architecture"]["dropout"] == 0.0
    trees = manifest["training"]["boosting"]["plan"]
    assert (trees["max_depth"], trees["learning_rate"], trees["n_bins"]) == (2, 0.2, 32)
    card = (out / "MODEL_CARD.md").read_text()
    assert card.count("network + trees (delta") == 4


def test_federate_with_trees_ships_the_fused_model(tmp_path):
    out = tmp_path / "hyb"
    result = runner.invoke(app, [
        "federate", "--data", "sample", "--strategy", "fedavg", "--rounds", "1", "--hidden", "8",
        "--dropout", "0", "--lr", "1e-3", "--boost-trees", "3", "--boost-depth", "2",
        "--out", str(out), "--json",
    ])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    boosting = summary["boosting"]
    assert boosting["n_trees"] == 3 and boosting["plan"]["max_depth"] == 2
    assert boosting["exclusions"] == [] and len(boosting["sites"]) == 4
    assert summary["validation"] != summary["network_validation"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["threshold"] == summary["validation"]["threshold"]
    assert manifest["architecture"]["type"] == "SepsisNet+trees"
    assert manifest["export"]["parity_max_abs_diff"] <= 1e-5
    shown = runner.invoke(app, ["federate", "--data", "sample", "--rounds", "1", "--hidden", "8",
                                "--boost-trees", "1", "--boost-depth", "1",
                                "--out", str(tmp_path / "h2")])
    assert shown.exit_code == 0 and "with 1 trees" in shown.stderr


@pytest.mark.parametrize("command", [
    ["federate", "--task", "sepsis"],
    ["federate", "--task", "imaging"],
    ["federation", "run", "--work", "w", "--certs", "c", "--sites", "2"],
])
@pytest.mark.parametrize(("args", "message"), [
    (["--dp-epsilon", "0"], "expected --dp-epsilon > 0, got 0.0"),
    (["--dp-epsilon", "1", "--dp-clip", "0"], "expected a clipping norm > 0, got 0.0"),
])
def test_every_training_command_builds_dp_settings_alike(tmp_path, command, args, message):
    """One builder (``cli.federate._dp``) behind the three commands: the same refusal,
    one line, exit 2, before any data, site or coordinator is touched."""
    result = runner.invoke(app, [*command, *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()
