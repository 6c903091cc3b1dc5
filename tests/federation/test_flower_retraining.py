"""Periodic retraining: the settings, the six-monthly cron schedule, and a scheduled release."""

from __future__ import annotations

import dataclasses
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED

from vigil.core.errors import ConfigError
from vigil.core.package import read_package
from vigil.core.signing import generate_keypair
from vigil.data import PhysioNetTable
from vigil.federation.boosting import BoostingPlan
from vigil.federation.registry import Registry
from vigil.federation.retraining import (
    DEFAULT_CRON,
    Engine,
    load_retrain_config,
    next_runs,
    retrain_once,
    schedule,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_default_schedule_is_every_six_months(tmp_path: Path) -> None:
    config = load_retrain_config(_write(tmp_path / "r.toml", 'registry = "reg"\n'))
    assert config.cron == DEFAULT_CRON and config.engine is Engine.IN_PROCESS
    assert config.registry == (tmp_path / "reg").resolve()
    runs = next_runs(config, after=datetime(2026, 3, 15, tzinfo=UTC))
    assert [r.isoformat() for r in runs] == [
        "2026-07-01T02:00:00+00:00", "2027-01-01T02:00:00+00:00", "2027-07-01T02:00:00+00:00"]


def test_the_schedule_is_configurable(tmp_path: Path) -> None:
    config = load_retrain_config(_write(tmp_path / "r.toml", (
        'registry = "reg"\ncron = "30 3 * * 0"\ntimezone = "Europe/Berlin"\n'
        '[plan]\nrounds = 3\n[strategy]\nname = "fedprox"\nmu = 0.1\n[model]\nhidden = [32]\n'
    )))
    (first, *_) = next_runs(config, after=datetime(2026, 6, 1, tzinfo=UTC))  # a Monday
    assert (first.weekday(), first.hour, first.minute, str(first.tzinfo)) == (
        6, 3, 30, "Europe/Berlin")
    assert config.plan.rounds == 3 and config.strategy.proximal_mu == 0.1
    assert config.model.hidden == (32,) and config.trees is None
    with_trees = load_retrain_config(_write(tmp_path / "t.toml", (
        'registry = "reg"\n[trees]\nn_trees = 30\nmax_depth = 4\n')))
    assert with_trees.trees is not None
    assert (with_trees.trees.n_trees, with_trees.trees.max_depth) == (30, 4)
    # the shipped recipe runs on Flower too: trees with engine = "flower" are accepted
    on_flower = load_retrain_config(_write(tmp_path / "f.toml", (
        'registry = "reg"\nengine = "flower"\n[trees]\nn_trees = 30\n'
        '[flower]\nwork = "w"\ncerts = "c"\nsites = 3\n')))
    assert on_flower.trees is not None and on_flower.trees.n_trees == 30
    # and DP trees, on either engine: [trees] with [dp], the split in [tree_dp]
    private = load_retrain_config(_write(tmp_path / "p.toml", (
        'registry = "reg"\nengine = "flower"\n[trees]\nn_trees = 30\nn_bins = 32\n'
        '[dp]\ntarget_epsilon = 8.0\n[tree_dp]\ntree_share = 0.3\nfeatures_per_tree = 8\n'
        '[flower]\nwork = "w"\ncerts = "c"\nsites = 3\n')))
    assert private.tree_dp is not None and private.dp is not None
    assert (private.tree_dp.tree_share, private.tree_dp.features_per_tree) == (0.3, 8)
    job = schedule(config, blocking=False).get_job("retrain")
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 86400)


@pytest.mark.parametrize(("text", "key", "match"), [
    ('cron = "0 2 1 1,7 *"\n', "registry", "expected `registry"),
    ('registry = "r"\ncadence = "often"\n', "cadence", "unknown settings"),
    ('registry = "r"\ncron = "every six months"\n', "cron", "five-field crontab"),
    ('registry = "r"\nengine = "flower"\n', "flower", "needs a \\[flower\\] section"),
    ('registry = "r"\n[plan]\nrounds = 2\nspeed = 3\n', "plan", "speed"),
    ('registry = "r"\nengine = "flower"\n[strategy]\nname = "fedbn"\n'
     '[flower]\nwork = "w"\ncerts = "c"\nsites = 3\n', "strategy", "FedBN"),
    ('registry = "r"\n[tree_dp]\ntree_share = 0.3\n[dp]\ntarget_epsilon = 8.0\n', "tree_dp",
     "only with \\[trees\\] and \\[dp\\]"),
    ('registry = "r"\n[trees]\nn_trees = 5\n[dp]\ntarget_epsilon = 8.0\n[tree_dp]\n'
     'tree_share = 1.5\n', "dp_tree_share", "expected 0 < tree share < 1"),
    ('registry = "r"\n[trees]\nn_trees = 0\n', "n_trees", "expected n_trees and max_depth >= 1"),
])
def test_bad_settings_name_their_key(tmp_path: Path, text: str, key: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        load_retrain_config(_write(tmp_path / "r.toml", text))
    assert info.value.key == key


@pytest.mark.slow
def test_the_scheduled_job_releases_signed_versions(sample: PhysioNetTable, tmp_path: Path) -> None:
    import torch

    torch.set_num_threads(1)
    sample.select(list(range(400))).frame.to_parquet(tmp_path / "small.parquet")  # type: ignore[arg-type]
    private, public = generate_keypair()
    (tmp_path / "release.pem").write_bytes(private)
    (tmp_path / "release.pub").write_bytes(public)
    config = load_retrain_config(_write(tmp_path / "retrain.toml", (
        'registry = "registry"\nprivate_key = "release.pem"\nname = "sepsis-test"\n'
        '[plan]\nrounds = 1\nbatch_size = 4096\n[model]\nhidden = [8]\n'
        '[in_process]\ndata = "small.parquet"\nsites = "random:2"\n'
    )))
    scheduler = schedule(config, blocking=False)
    ran = threading.Event()
    scheduler.add_listener(lambda _: ran.set(), EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start()
    try:
        scheduler.get_job("retrain").modify(next_run_time=datetime.now(UTC))
        assert ran.wait(timeout=600), "the scheduled retraining did not run"
    finally:
        scheduler.shutdown(wait=True)
    registry = Registry(config.registry)
    first = registry.latest()
    assert first is not None and first.version == "1.0.0" and first.signed

    second = retrain_once(dataclasses.replace(
        config, plan=dataclasses.replace(config.plan, seed=1)))
    assert second.version == "1.1.0" and second.diff is not None
    assert second.diff["previous"] == "1.0.0"
    assert second.diff["weights"]["comparable"] and second.diff["weights"]["relative_l2"] > 0
    package = read_package(config.registry / "1.1.0", public_key=tmp_path / "release.pub")
    assert package.manifest.training["method"] == "federated (in-process simulation)"
    assert second.metrics["auroc"] == package.manifest.validation["auroc"]
    assert second.diff["metrics"]["auroc"]["change"] == pytest.approx(
        second.metrics["auroc"] - first.metrics["auroc"])
    # a release with trees: the package holds them and says so
    third = retrain_once(dataclasses.replace(config, trees=BoostingPlan(n_trees=2, max_depth=2)))
    package = read_package(config.registry / third.version, public_key=tmp_path / "release.pub")
    assert third.version == "1.2.0"
    assert package.manifest.model_dump()["architecture"]["type"] == "SepsisNet+trees"
    assert package.manifest.training["boosting"]["n_trees"] == 2
