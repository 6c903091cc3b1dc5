"""``vigil monitor report``: the page, a PNG per alarmed variable, the JSON, the errors."""

import json

import pytest
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.runtime.monitoring.alarms import (
    AlarmBook,
    AlarmKind,
    Finding,
    Severity,
    put_alarms,
    put_stats,
)
from vigil.runtime.monitoring.report import load_report, write_report
from vigil.runtime.store import StateStore

T0 = 1_609_459_200.0  # 2021-01-01T00:00Z
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def db(tmp_path):
    """A store with 12 cycles of Lactate feed statistics and one feed-down alarm."""
    path = tmp_path / "state.db"
    book = AlarmBook()
    with StateStore.open(f"sqlite:///{path}") as store:
        for c in range(12):
            tick = T0 + c * 900
            gap = 0.25 * max(0, c - 4)
            with store.transaction() as tx:
                put_stats(tx, tick, [("feed_down", "Lactate", "hours_since_value", gap),
                                     ("feed_down", "Lactate", "expected_interval", 1.5),
                                     ("input_drift", "HR", "psi", 0.01)])
                findings = [Finding(AlarmKind.FEED_DOWN, "Lactate", Severity.CRITICAL, gap, 1.5,
                                    f"no Lactate value for {gap} h")] if gap > 1.5 else []
                changed, _ = book.update(findings, tick=tick, model="m@1")
                book.stored(put_alarms(tx, changed))
    return path


def test_html_report_has_the_alarm_and_its_chart(db, tmp_path):
    report = load_report(db)
    assert report.cycles == 12 and len(report.alarms) == 1
    page = write_report(report, tmp_path / "out")
    text = page.read_text()
    assert page.name == "index.html" and "feed_down" in text and "Lactate" in text
    assert "2021-01-01T02:45+00:00" in text  # first seen: the cycle where the gap passed 1.5 h
    chart = tmp_path / "out" / "feed_down-Lactate.png"
    assert chart.read_bytes()[:8] == PNG and "feed_down-Lactate.png" in text
    assert not (tmp_path / "out" / "input_drift-HR.png").exists()  # no alarm, no chart


def test_markdown_report(db, tmp_path):
    page = write_report(load_report(db), tmp_path / "md", fmt="md")
    text = page.read_text()
    assert page.name == "report.md"
    assert "| feed_down | Lactate | critical | 2021-01-01T02:45+00:00 | open |" in text
    assert "![feed_down: Lactate](feed_down-Lactate.png)" in text


def test_cli_json(db, tmp_path):
    result = CliRunner(mix_stderr=False).invoke(app, ["monitor", "report", "--db", str(db), "--out",
                                      str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    (alarm,) = out["alarms"]
    assert {k: alarm[k] for k in ("kind", "variable", "severity", "first_seen")} == {
        "kind": "feed_down", "variable": "Lactate", "severity": "critical",
        "first_seen": "2021-01-01T02:45+00:00"}
    assert out["open"] == 1 and out["report"].endswith("index.html")


def test_cli_errors_are_clean(tmp_path):
    missing = CliRunner().invoke(app, ["monitor", "report", "--db", str(tmp_path / "no.db"),
                                       "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "expected a state store" in missing.output
    other = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    result = CliRunner().invoke(app, ["monitor", "report", "--db", str(other), "--out",
                                      str(tmp_path / "r")])
    assert result.exit_code == 2 and "holds no readable monitoring tables" in result.output
