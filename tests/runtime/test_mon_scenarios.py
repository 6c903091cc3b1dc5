"""Monitoring scenarios on real data replayed through the runtime (``vigil replay --db``).

The bundled sample's test patients become a site: ``vigil fhir synth``, admissions moved to
consecutive days (:func:`mon_support.site_week`), a fault injected into the feed or the model,
``vigil replay`` with the monitor on, then ``vigil monitor report --json``. Each scenario checks
the detection delay and that nothing else alarmed; ``docs/monitoring.md`` has the table.
"""

import json
from datetime import datetime
from pathlib import Path

import pytest
from mon_support import at, degrade, site_week
from typer.testing import CliRunner

from vigil.cli.main import app

pytestmark = pytest.mark.slow
CYCLE_H = 0.25


def cli(*args: object) -> dict:
    result = CliRunner(mix_stderr=False).invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("monitoring")
    cli("train", "--out", root / "model", "--data", "sample", "--epochs", "1", "--json")
    degrade(root / "model", root / "noisy", amplitude=3.0)
    cli("fhir", "synth", "--data", "sample", "--split", "test", "--out", root / "synth", "--json")
    return root


def replay(work: Path, name: str, *, hours: float, days: int = 10, model: str = "model",
           args: tuple = (), **faults) -> tuple[list[dict], dict]:
    """Replay a site week with ``faults``; its alarms (hours since DAY0) and the summary."""
    site = work / name
    site_week(work / "synth", site / "ndjson", days=days, **faults)
    summary = cli("replay", "--model", work / model, "--ndjson", site / "ndjson",
                  "--out", site / "scores.parquet", "--db", site / "state.db",
                  "--no-stack-admissions", "--hours", hours, "--labels", "sample", "--json", *args)
    assert summary["failed_cycles"] == 0
    report = cli("monitor", "report", "--db", site / "state.db", "--out", site / "report",
                 "--json")
    for a in report["alarms"]:
        a["hour"] = (datetime.fromisoformat(a["first_seen"]) - at(0)).total_seconds() / 3600
    return report["alarms"], summary


def test_a_stable_week_raises_no_alarm(work):
    alarms, summary = replay(work, "stable", hours=7 * 24)
    assert summary["cycles"] >= 7 * 24 * 4 - 4
    assert alarms == []


def test_b_temperature_in_fahrenheit_is_named_within_two_cycles(work):
    switch = 30.0
    alarms, _ = replay(work, "fahrenheit", hours=36, fahrenheit_from=at(switch))
    first = min(alarms, key=lambda a: a["hour"])
    assert (first["kind"], first["variable"]) == ("quarantine", "Temp")
    assert 0 < first["hour"] - switch <= 2 * CYCLE_H
    assert [a for a in alarms if a["variable"] != "Temp"] == []  # false alarms


def test_b2_temperature_correctly_coded_in_fahrenheit_is_a_unit_change_within_two_cycles(work):
    switch = 30.0  # after the 24 h in which the site's units are learned
    alarms, _ = replay(work, "fahrenheit-coded", hours=33, fahrenheit_from=at(switch),
                       fahrenheit_code="[degF]")
    (first,) = alarms  # converted correctly: nothing else moves
    assert (first["kind"], first["variable"]) == ("unit_change", "Temp")
    assert 0 < first["hour"] - switch <= 2 * CYCLE_H
    assert "'[degF]'" in first["message"]


def test_c_a_stopped_lactate_feed_is_reported_within_its_expected_interval(work):
    stop = 76.0  # after the 72 h in which the site's silences are learned
    alarms, _ = replay(work, "lactate", hours=90, lactate_until=at(stop))
    (down,) = [a for a in alarms if a["kind"] == "feed_down"]
    assert down["variable"] == "Lactate"
    interval = down["threshold"]  # the expected interval the silence exceeded
    assert 0 < down["hour"] - stop <= interval + CYCLE_H
    assert [a for a in alarms if a["variable"] != "Lactate"] == []


def test_d_a_case_mix_shift_raises_input_drift(work):
    switch = 3 * 24.0  # MICU admissions on days 0-2, SICU on days 3-5

    def unit_days(_patient, unit, rng):
        return {"micu": int(rng.integers(0, 3)), "sicu": int(rng.integers(3, 6))}.get(unit)

    alarms, _ = replay(work, "casemix", hours=132, pick=unit_days,
                       args=("--monitor-reference", "baseline"))
    drift = [a for a in alarms if a["kind"] == "input_drift"]
    assert {"Unit1", "Unit2"} <= {a["variable"] for a in drift}
    assert min(a["hour"] for a in drift) > switch
    assert [a for a in alarms if a["hour"] <= switch] == []  # false alarms


def test_e_a_noisy_model_raises_a_performance_alarm_once_labels_arrive(work):
    delay = 12.0
    alarms, _ = replay(work, "noisy", hours=84, days=4, model="noisy",
                       args=("--label-delay-hours", delay))
    performance = [a for a in alarms if a["kind"] in ("discrimination", "calibration")]
    assert performance and min(a["hour"] for a in performance) > delay
    output = {"discrimination", "calibration", "score_drift", "alert_rate"}
    assert [a for a in alarms if a["kind"] not in output] == []  # false alarms
