"""Two retrains end to end under the sites' lifetime privacy budgets, and a third one refused.

In process (``engine = "in-process"``, the simulated sites' ledgers in ``[in_process]
ledgers``): retrain 1 and 2 release signed 1.0.0 and 1.1.0, a site pulls each, verifies
it, installs it as shadow and promotes it; a tampered release is refused at pull and at
install; retrain 3 passes one site's budget: that site refuses (recorded in its ledger
and in the registry) and the other two make 1.2.0; a run that needs all three sites then
stops with a clear error and releases nothing. The Flower path of a refusal (the
ClientApp's error reply, the coordinator's record) is ``test_fed_budget``'s.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vigil.core.errors import AggregationError
from vigil.core.signing import generate_keypair
from vigil.data import PhysioNetTable, partition
from vigil.federation.budget import BUDGET_REASON, PrivacyLedger, SiteBudget, write_budget
from vigil.federation.registry import Registry
from vigil.federation.retraining import load_retrain_config, retrain_once

pytestmark = pytest.mark.slow


def _cli(*args: str) -> dict:  # type: ignore[type-arg]
    from vigil.cli.main import app

    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _refused(*args: str) -> str:
    from vigil.cli.main import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, result.output
    return result.output


def test_two_retrains_pulled_and_promoted_then_a_site_refuses_the_third(
        sample: PhysioNetTable, tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    small = sample.select(list(range(400)))
    small.frame.to_parquet(tmp_path / "small.parquet")  # type: ignore[arg-type]
    names = sorted(partition(small, "random:3"))
    strict, *others = names
    write_budget(tmp_path / "ledgers" / strict, SiteBudget(epsilon=2.5, delta=1e-4))
    for name in others:
        write_budget(tmp_path / "ledgers" / name, SiteBudget(epsilon=10.0, delta=1e-4))
    private, public = generate_keypair()
    (tmp_path / "release.pem").write_bytes(private)
    (tmp_path / "release.pub").write_bytes(public)
    (tmp_path / "retrain.toml").write_text(
        'registry = "registry"\nprivate_key = "release.pem"\nname = "sepsis-test"\n'
        '[plan]\nrounds = 1\nbatch_size = 4096\nmin_sites = 2\n[model]\nhidden = [8]\n'
        '[dp]\ntarget_epsilon = 1.0\ndelta = 1e-5\n'
        '[in_process]\ndata = "small.parquet"\nsites = "random:3"\nledgers = "ledgers"\n')
    config = load_retrain_config(tmp_path / "retrain.toml")
    site = tmp_path / "site.toml"
    site.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/state.db"\n\n'
                    f'[models]\ndir = "{tmp_path}/models"\npublic_key = "{tmp_path}/release.pub"\n')
    registry = str(config.registry)

    # two retrains, each pulled, verified, installed as shadow and promoted at the site
    for round_, version in enumerate(("1.0.0", "1.1.0"), 1):
        release = retrain_once(config)
        assert (release.version, release.signed) == (version, True)
        privacy = release.training["privacy"]
        assert privacy["refused"] == {} and privacy["trained"] == names
        for name in names:
            assert 0 < privacy["sites"][name]["epsilon"] <= 1.0
            assert privacy["cumulative"][name]["epsilon"] == pytest.approx(1.0 * round_)
            assert privacy["cumulative"][name]["runs"] == round_
        pulled = _cli("federation", "pull", "--registry", registry, "--config", str(site))
        assert (pulled["release"], pulled["model"]["role"]) == (version, "shadow")
        _cli("model", "promote", version, "--config", str(site))
    listed = _cli("model", "list", "--config", str(site))["models"]
    roles = {m["version"]: m["role"] for m in listed}
    assert roles["1.1.0"] == "active" and "1.0.0" in roles and roles["1.0.0"] != "active"
    assert (tmp_path / "models" / "sepsis-test-1.0.0" / "model.onnx").is_file()  # v1 kept

    # the third retrain passes the strict site's lifetime ε (3 x 1.0 > 2.5): it refuses
    third = retrain_once(config)
    privacy = third.training["privacy"]
    assert third.version == "1.2.0" and list(privacy["refused"]) == [strict]
    assert privacy["refused"][strict].startswith(BUDGET_REASON)
    assert privacy["trained"] == others
    assert privacy["cumulative"][strict]["epsilon"] == pytest.approx(2.0)
    for name in names:  # the registry's sum is each site's own ledger (all runs released)
        spent = PrivacyLedger(name, tmp_path / "ledgers" / name).spent()
        assert spent.epsilon == pytest.approx(privacy["cumulative"][name]["epsilon"])
        assert spent.delta == pytest.approx(privacy["cumulative"][name]["delta"])
    assert PrivacyLedger(strict, tmp_path / "ledgers" / strict).spent().runs == 2

    # a tampered release is refused at pull and at install; nothing is installed
    tampered = tmp_path / "tampered"
    shutil.copytree(config.registry, tampered)
    onnx = tampered / "1.2.0" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    assert "sha256" in _refused("federation", "pull", "--registry", str(tampered), "--config",
                                str(site)).lower()
    assert "sha256" in _refused("model", "install", str(tampered / "1.2.0"), "--role", "shadow",
                                "--config", str(site)).lower()
    listed = _cli("model", "list", "--config", str(site))["models"]
    assert sorted(m["version"] for m in listed) == ["1.0.0", "1.1.0"]

    # a run that needs all three sites stops clearly and releases nothing
    everyone = dataclasses.replace(config, plan=dataclasses.replace(config.plan, min_sites=3))
    with pytest.raises(AggregationError, match="no round had 3 acceptable updates"):
        retrain_once(everyone)
    assert Registry(config.registry).latest().version == "1.2.0"  # type: ignore[union-attr]
