"""What the command line prints on stderr: an error naming a TOML section keeps its brackets."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from vigil.cli.main import app

runner = CliRunner()


def test_an_error_naming_toml_sections_prints_them_as_written(tmp_path: Path) -> None:
    # rich markup would read "[tree_dp]", "[trees]" and "[dp]" as style tags and drop them
    (tmp_path / "retrain.toml").write_text('registry = "reg"\n[tree_dp]\ntree_share = 0.3\n')
    result = runner.invoke(app, ["federation", "schedule", "--config",
                                 str(tmp_path / "retrain.toml")])
    assert result.exit_code == 2
    assert "error: expected [tree_dp] only with [trees] and [dp]" in result.output
    assert len(result.output.strip().splitlines()) == 1
