"""``vigil federation site``: preparing a hospital's site, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.data import PhysioNetTable, partition, patient_split
from vigil.federation.flower.sitedata import load_site


def test_site_prepares_its_own_partition_only(sample: PhysioNetTable, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "federation", "site", "--data", "sample", "--partition", "random:3", "--name", "site2",
        "--work", str(tmp_path / "site2"), "--prepare-only"])
    assert result.exit_code == 0, result.output
    site = load_site(tmp_path / "site2")
    mine = sample.select(partition(sample, "random:3")["site2"])
    ids = mine.grid.patient_ids
    train = mine.select(np.flatnonzero(patient_split(ids, "train")))
    assert site.name == "site2"
    assert site.train.n_rows == train.grid.n_rows
    assert np.array_equal(site.train.y, train.labels)


def test_site_without_the_coordinator_details_is_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    wrong = runner.invoke(app, ["federation", "site", "--data", "sample", "--partition",
                                "random:3", "--name", "site9", "--work", str(tmp_path / "a")])
    assert wrong.exit_code == 2 and "has sites ['site1', 'site2', 'site3'], not 'site9'" in \
        wrong.output
    missing = runner.invoke(app, ["federation", "site", "--data", "sample", "--partition",
                                  "random:3", "--name", "site1", "--work", str(tmp_path / "b")])
    assert missing.exit_code == 2 and "expected --superlink HOST:PORT" in missing.output


def test_run_with_dp_trees_refuses_a_bad_split_in_one_line(tmp_path: Path) -> None:
    # trees with DP run on Flower (noisy at each site, test_flower_dp_trees); a bad split not
    result = CliRunner().invoke(app, [
        "federation", "run", "--work", str(tmp_path / "w"), "--certs", str(tmp_path / "c"),
        "--sites", "3", "--out", str(tmp_path / "pkg"), "--boost-trees", "5",
        "--dp-epsilon", "8", "--dp-tree-share", "1"])
    assert result.exit_code == 2, result.output
    assert "expected 0 < tree share < 1" in result.output
    assert "Traceback" not in result.output


def test_run_defaults_each_task_to_its_recipe(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No --rounds / --batch-size / --lr: imaging takes IMAGING_RECIPE's, sepsis its own."""
    from types import SimpleNamespace

    from vigil.cli import federation as federation_cli
    from vigil.core.errors import ConfigError
    from vigil.federation.flower import runner
    from vigil.federation.image_run import IMAGING_RECIPE
    from vigil.federation.recipes import NON_PRIVATE, SEPSIS_ROUNDS

    seen = []

    def stop(coordinator, settings, run_dir, **_):  # type: ignore[no-untyped-def]
        seen.append(settings.plan)
        raise ConfigError("stopped before training", key="test")

    monkeypatch.setattr(federation_cli, "_coordinator",
                        lambda *a: SimpleNamespace(work_dir=tmp_path / "w"))
    monkeypatch.setattr(runner, "train_on_flower", stop)
    for task in ("imaging", "sepsis"):
        result = CliRunner().invoke(app, [
            "federation", "run", "--work", str(tmp_path / "w"), "--certs", str(tmp_path / "c"),
            "--sites", "2", "--out", str(tmp_path / "pkg"), "--task", task])
        assert result.exit_code == 2 and "stopped before training" in result.output
    imaging, sepsis = seen
    assert {k: getattr(imaging, k) for k in IMAGING_RECIPE if k != "max_shift"} == {
        k: v for k, v in IMAGING_RECIPE.items() if k != "max_shift"}
    assert imaging.rounds == 20
    assert (sepsis.rounds, sepsis.batch_size, sepsis.lr, sepsis.keep_by) == (
        SEPSIS_ROUNDS, NON_PRIVATE.batch_size, NON_PRIVATE.lr, "pooled")
    # under DP-SGD each task falls back on its DP recipe
    for task in ("imaging", "sepsis"):
        result = CliRunner().invoke(app, [
            "federation", "run", "--work", str(tmp_path / "w"), "--certs", str(tmp_path / "c"),
            "--sites", "2", "--out", str(tmp_path / "pkg"), "--task", task,
            "--dp-epsilon", "8"])
        assert result.exit_code == 2 and "stopped before training" in result.output
    imaging, sepsis = seen[2:]
    assert (imaging.rounds, imaging.batch_size, imaging.lr) == (20, 256, 3e-3)
    assert (sepsis.rounds, sepsis.batch_size, sepsis.lr) == (SEPSIS_ROUNDS, 4096, 1e-3)
