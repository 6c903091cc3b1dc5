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
