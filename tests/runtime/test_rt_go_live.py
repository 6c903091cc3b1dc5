"""``vigil replay --go-live-days``: a replay as a site switching vigil on (as ``vigil demo``)."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from rt_support import make_package
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.core.errors import ConfigError
from vigil.data import patient_split
from vigil.fhir_adapter.synth import write_synth
from vigil.runtime.recorded import load_ndjson
from vigil.runtime.replay import go_live_start

runner = CliRunner()
HOURS = 6


@pytest.fixture(scope="module")
def recorded(sample, tmp_path_factory):
    root = tmp_path_factory.mktemp("golive")
    test = np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:40]
    write_synth(sample.select(test).frame, root / "ndjson")
    make_package(root / "pkg")
    return root


def replay(root, name, *extra):
    result = runner.invoke(app, [str(a) for a in (
        "replay", "--model", root / "pkg", "--ndjson", root / "ndjson", "--hours", HOURS,
        "--out", root / f"{name}.parquet", "--no-monitor", "--json", *extra)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), pd.read_parquet(root / f"{name}.parquet")


def test_go_live_starts_on_the_last_admission_day_with_stays_of_every_age(recorded):
    root = recorded
    cold, cold_scores = replay(root, "cold")
    live, live_scores = replay(root, "live", "--go-live-days", 3)
    source, _ = load_ndjson(root / "ndjson", stack_admissions=True, stack_days=3)
    admissions = sorted(stay.icu_admission.astimezone(UTC) for stay, _ in source.stays)
    midnight = admissions[0].replace(hour=0, minute=0, second=0, microsecond=0)
    assert live["replay_start"] == (midnight + timedelta(days=2)).isoformat(timespec="minutes")
    assert cold["replay_start"] is None and cold["go_live_days"] is None
    # every stay admitted before the start and still in the ICU is scored at the first tick
    first = live_scores[live_scores["scored_at"] == live_scores["scored_at"].min()]
    start = datetime.fromisoformat(live["replay_start"])
    present = [s for s, end in source.stays if s.icu_admission <= start - timedelta(hours=1)
               and end > start]
    assert len(first) == len(present) > 10
    assert first["iculos"].max() > 24 and first["iculos"].min() <= 24  # ages from hours to days
    # a cold start finds an empty ICU that fills with first ICU hours
    cold_first = cold_scores[cold_scores["scored_at"] == cold_scores["scored_at"].min()]
    assert cold_first["iculos"].max() <= 2 and len(cold_first) < len(first)
    assert live["scores"] > cold["scores"]


def test_go_live_days_errors(recorded):
    root = recorded
    result = runner.invoke(app, [str(a) for a in (
        "replay", "--model", root / "pkg", "--ndjson", root / "ndjson", "--out",
        root / "x.parquet", "--go-live-days", 2, "--no-stack-admissions")])
    assert result.exit_code == 2 and "--no-stack-admissions" in result.output
    source, _ = load_ndjson(root / "ndjson")
    with pytest.raises(ConfigError, match="at least 1 admission day"):
        go_live_start(source, 0)
