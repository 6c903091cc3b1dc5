import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from rt_support import make_package, models_section
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.data import patient_split
from vigil.fhir_adapter.synth import write_synth

runner = CliRunner()


def run_json(*args):
    result = runner.invoke(app, [str(a) for a in args] + ["--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def recorded(sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    test = np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:6]
    table = sample.select(test)
    table.frame.to_parquet(root / "patients.parquet")
    write_synth(table.frame, root / "ndjson")
    make_package(root / "pkg")
    return root, table


def test_replay_equals_evaluate_on_the_same_patients(recorded):
    root, table = recorded
    summary = run_json("replay", "--model", root / "pkg", "--ndjson", root / "ndjson",
                       "--out", root / "scores.parquet", "--labels", root / "patients.parquet",
                       "--riskassessments", root / "ra")
    assert summary["patients"] == 6 and summary["failed_cycles"] == 0 and summary["cycles"] > 100
    assert 0.0 <= summary["auroc"] <= 1.0 and np.isfinite(summary["utility"])
    assert summary["calibrated"] is False
    evaluated = run_json("evaluate", "--model", root / "pkg", "--data", root / "patients.parquet",
                         "--out-predictions", root / "offline.parquet")
    assert evaluated["n_patients"] == 6
    scores = pd.read_parquet(root / "scores.parquet")
    assert list(scores.columns) == ["patient_id", "iculos", "scored_at", "probability", "alert"]
    offline = pd.read_parquet(root / "offline.parquet").rename(columns={"ICULOS": "iculos"})
    both = scores.merge(offline, on=["patient_id", "iculos"], suffixes=("", "_offline"))
    assert len(both) > 0.9 * len(scores)
    np.testing.assert_allclose(both["probability"], both["probability_offline"], atol=1e-5, rtol=0)
    # one RiskAssessment per score but those from empty inputs, flagged as not calibrated
    lines = (root / "ra" / "RiskAssessment.ndjson").read_text().splitlines()
    assert 0 < summary["withheld"] < 0.1 * len(scores) and summary["degraded_cycles"] == 0
    assert len(lines) == len(scores) - summary["withheld"]
    assert "Not calibrated" in json.loads(lines[0])["note"][1]["text"]


def test_replay_resumes_from_its_store(recorded):
    root, _ = recorded
    args = ["replay", "--model", root / "pkg", "--ndjson", root / "ndjson", "--hours", 30,
            "--db", root / "resume.db"]
    first = run_json(*args, "--out", root / "a.parquet")
    again = run_json(*args, "--out", root / "b.parquet")
    assert first["cycles"] == again["cycles"] == again["resumed_cycles"] > 100
    pd.testing.assert_frame_equal(pd.read_parquet(root / "a.parquet"),
                                  pd.read_parquet(root / "b.parquet"))


def test_replay_needs_one_source(recorded):
    root, _ = recorded
    result = runner.invoke(app, ["replay", "--model", str(root / "pkg"), "--out",
                                 str(root / "x.parquet")])
    assert result.exit_code == 2 and "exactly one of --ndjson and --fhir-url" in result.output


def test_model_commands(recorded, tmp_path):
    root, _ = recorded
    site = tmp_path / "site.toml"
    site.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "s.db"}"\n'
                    + models_section(tmp_path, tmp_path / "models"))
    make_package(tmp_path / "v2", version="2.0.0", seed=3)
    first = run_json("model", "install", root / "pkg", "--config", site)
    assert first["role"] == "active" and first["calibrated"] is False
    second = run_json("model", "install", tmp_path / "v2", "--config", site, "--role", "shadow")
    assert second["role"] == "shadow"
    run_json("model", "promote", "2.0.0", "--config", site)
    models = run_json("model", "list", "--config", site)["models"]
    listed = {m["version"]: m["role"] for m in models}
    assert listed == {"1.0.0": "retired", "2.0.0": "active"}
    (tmp_path / "v2" / "MODEL_CARD.md").write_text("changed\n")
    bad = runner.invoke(app, ["model", "install", str(tmp_path / "v2"), "--config", str(site)])
    assert bad.exit_code == 2 and "MODEL_CARD.md has changed" in bad.output


def test_the_runtime_imports_without_torch():
    code = (
        "import sys, importlib.abc\n"
        "class NoTraining(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'flwr', 'opacus'):\n"
        "            raise ImportError(f'{name} is not installed in the runtime image')\n"
        "sys.meta_path.insert(0, NoTraining())\n"
        "import vigil.runtime.service, vigil.runtime.replay, vigil.runtime.sources\n"
        "from vigil.cli.main import app\n"
        "for cmd in (['serve', '--help'], ['replay', '--help'], ['model', '--help']):\n"
        "    try:\n"
        "        app(cmd)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (cmd, e.code)\n"
        "assert not {'torch', 'onnx', 'flwr', 'opacus'} & set(sys.modules), sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
