"""Periodic retraining of the imaging model: signed, versioned releases, in process and on Flower.

The Flower engine runs vigil's ServerApp over the fake grid of ``test_flower_transport``
(each node a scanner site prepared by ``prepare_image_site``) in place of ``flwr run``:
the retraining job's settings, the run's result on disk, its wrapping and export are the
real ones; the processes are ``test_flower_deploy``'s subject.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from test_flower_imaging import RecordingGrid
from test_flower_transport import _run_config, task  # noqa: F401

from vigil.core.errors import ConfigError
from vigil.core.package import read_package
from vigil.core.signing import generate_keypair
from vigil.federation.flower import launch, serverapp
from vigil.federation.flower import runner as flower_runner
from vigil.federation.flower.imagesite import prepare_image_site
from vigil.federation.flower.results import load_result
from vigil.federation.registry import Registry
from vigil.federation.retraining import Engine, load_retrain_config, retrain_once


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _config(tmp_path: Path, extra: str = "", top: str = "") -> Path:
    private, public = generate_keypair()
    (tmp_path / "release.pem").write_bytes(private)
    (tmp_path / "release.pub").write_bytes(public)
    path = tmp_path / "retrain.toml"
    path.write_text(top + 'task = "imaging"\nregistry = "registry"\nprivate_key = "release.pem"\n'
                    '[plan]\nrounds = 2\nbatch_size = 64\n' + extra)
    return path


@pytest.mark.slow
def test_imaging_retraining_releases_signed_versions_in_process(tmp_path: Path) -> None:
    config = load_retrain_config(_config(tmp_path, '[in_process]\ndata = "sample"\n'))
    assert config.name == "imaging-federated" and config.plan.lr == 1e-3  # imaging defaults
    first = retrain_once(config)
    second = retrain_once(dataclasses.replace(
        config, plan=dataclasses.replace(config.plan, seed=1)))
    assert (first.version, second.version) == ("1.0.0", "1.1.0")
    assert first.signed and second.signed
    package = read_package(config.registry / "1.1.0", public_key=tmp_path / "release.pub")
    assert package.manifest.task == "imaging"
    assert second.metrics["auroc"] == package.manifest.validation["pooled"]["auroc"]
    assert sorted(second.training["sites"]) == ["site-a", "site-b", "site-c", "site-d"]
    assert all(n > 0 for n in second.training["sites"].values())  # the sites' training images
    assert second.diff is not None and second.diff["weights"]["comparable"]
    assert second.diff["weights"]["relative_l2"] > 0
    assert Registry(config.registry).latest().version == "1.1.0"  # type: ignore[union-attr]


@pytest.mark.slow
def test_imaging_retraining_on_flower_releases_a_dp_model(tmp_path: Path, task,  # noqa: F811
                                                          monkeypatch) -> None:  # type: ignore[no-untyped-def]
    dirs = {}
    for name in ("site-a", "site-b"):
        dirs[name] = tmp_path / "sites" / name
        prepare_image_site(name, dirs[name], data="sample", seed=0)

    def run_on_fake_grid(coordinator, settings, run_dir, **_):  # type: ignore[no-untyped-def]
        settings = dataclasses.replace(settings, out_dir=str(Path(run_dir) / "result"))
        grid = RecordingGrid(dirs, settings)
        serverapp.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                     run_config=_run_config(settings)))  # type: ignore[arg-type]
        return load_result(settings.out_dir)

    monkeypatch.setattr(flower_runner, "run_on_flower", run_on_fake_grid)
    monkeypatch.setattr(launch.Coordinator, "from_certs", lambda *a, **k: None)  # no SuperLink
    config = load_retrain_config(_config(tmp_path, (
        '[dp]\ntarget_epsilon = 8.0\n'
        '[flower]\nwork = "coord"\ncerts = "pki"\nsites = 2\nwait = 5.0\n'),
        top='engine = "flower"\n'))
    config = dataclasses.replace(config, plan=dataclasses.replace(config.plan, min_sites=2,
                                                                  time_budget=120.0))
    assert config.engine is Engine.FLOWER
    release = retrain_once(config)
    package = read_package(config.registry / release.version, public_key=tmp_path / "release.pub")
    training = package.manifest.training
    assert training["method"].startswith("federated (Flower")
    assert sorted(training["differential_privacy"]["sites"]) == ["site-a", "site-b"]
    assert all(0 < s["epsilon"] <= 8.0 for s in training["differential_privacy"]["sites"].values())
    assert package.manifest.model_extra["architecture"]["norm"] == "group"
    assert package.manifest.model_extra["export"]["parity_max_abs_diff"] <= 1e-5


@pytest.mark.parametrize(("extra", "key", "match"), [
    ('[strategy]\nname = "fedbn"\n', "strategy", "FedBN imaging model is one package per site"),
    ('[trees]\nn_trees = 2\n', "trees", "no boosted trees with the imaging task"),
])
def test_imaging_retraining_refuses_what_it_cannot_release(tmp_path: Path, extra: str, key: str,
                                                           match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        load_retrain_config(_config(tmp_path, extra))
    assert info.value.key == key


def test_imaging_plan_defaults_to_the_imaging_recipe_and_sepsis_keeps_its_rounds(
        tmp_path: Path) -> None:
    """Without ``[plan]`` rounds, an imaging job trains the recipe's 20 rounds; sepsis its 10."""
    from vigil.federation.image_run import IMAGING_RECIPE

    path = tmp_path / "retrain.toml"
    path.write_text('task = "imaging"\nregistry = "registry"\n[plan]\nbatch_size = 64\n')
    partial = load_retrain_config(path).plan
    assert (partial.rounds, partial.batch_size, partial.keep_by) == (20, 64, "site")
    path.write_text('task = "imaging"\nregistry = "registry"\n')
    plan = load_retrain_config(path).plan
    assert {k: getattr(plan, k) for k in IMAGING_RECIPE if k != "max_shift"} == {
        k: v for k, v in IMAGING_RECIPE.items() if k != "max_shift"}
    assert IMAGING_RECIPE["rounds"] == 20 and IMAGING_RECIPE["max_shift"] == 0  # choose.txt
    path.write_text('registry = "registry"\n')
    assert load_retrain_config(path).plan.rounds == 10
