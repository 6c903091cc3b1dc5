"""Alarm life cycle, storage in the state store's migrated tables, Prometheus export."""

import math

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from vigil.runtime.monitoring.alarms import (
    Alarm,
    AlarmBook,
    AlarmCollector,
    AlarmKind,
    Finding,
    Severity,
    load_alarms,
    load_stats,
    put_alarms,
    put_stats,
)
from vigil.runtime.store import SCHEMA_VERSION, StateStore

DOWN = Finding(AlarmKind.FEED_DOWN, "Lactate", Severity.WARNING, 5.0, 4.0, "no Lactate for 5 h")
WORSE = Finding(AlarmKind.FEED_DOWN, "Lactate", Severity.CRITICAL, 9.0, 4.0, "no Lactate for 9 h")
TEMP = Finding(AlarmKind.QUARANTINE, "Temp", Severity.CRITICAL, 7.0, 0.25, "7 Temp values")


def test_first_seen_is_kept_and_severity_only_rises():
    book = AlarmBook(clear_after=2)
    changed, raised = book.update([DOWN], tick=100.0, model="m@1")
    assert [a.first_seen for a in raised] == [100.0] and len(changed) == 1
    _, raised = book.update([WORSE], tick=200.0, model="m@1")
    assert raised == []
    (alarm,) = book.open()
    assert (alarm.first_seen, alarm.last_seen, alarm.severity, alarm.value) == (
        100.0, 200.0, Severity.CRITICAL, 9.0)
    book.update([DOWN], tick=300.0, model="m@1")
    assert book.open()[0].severity is Severity.CRITICAL


def test_alarm_resolves_after_quiet_cycles_and_a_recurrence_is_new():
    book = AlarmBook(clear_after=2)
    book.update([DOWN], tick=0.0, model="m@1", checked=[AlarmKind.FEED_DOWN])
    changed, _ = book.update([], tick=1.0, model="m@1", checked=[AlarmKind.FEED_DOWN])
    assert changed == [] and len(book) == 1
    changed, _ = book.update([], tick=2.0, model="m@1", checked=[AlarmKind.FEED_DOWN])
    assert [a.resolved for a in changed] == [2.0] and len(book) == 0
    _, raised = book.update([DOWN], tick=3.0, model="m@1")
    assert raised[0].first_seen == 3.0


def test_a_check_that_did_not_run_neither_extends_nor_clears():
    book = AlarmBook(clear_after=1)
    book.update([DOWN, TEMP], tick=0.0, model="m@1")
    changed, _ = book.update([], tick=1.0, model="m@1", checked=[AlarmKind.QUARANTINE])
    assert [a.key for a in changed] == [("quarantine", "Temp")]
    assert [a.key for a in book.open()] == [("feed_down", "Lactate")]


def test_store_migration_creates_the_monitor_tables_and_round_trips():
    with StateStore.open("sqlite://") as store:
        assert store.schema_version == SCHEMA_VERSION >= 2
        book = AlarmBook(clear_after=1)
        with store.transaction() as tx:
            changed, _ = book.update([DOWN], tick=10.0, model="m@1")
            book.stored(put_alarms(tx, changed))
            put_stats(tx, 10.0, [("feed_down", "Lactate", "hours_since_value", 5.0),
                                 ("input_drift", "HR", "psi", math.nan)])
        (stored,) = load_alarms(store.conn)
        assert stored.alarm_id is not None and stored.first_seen == 10.0
        with store.transaction() as tx:
            changed, _ = book.update([WORSE], tick=20.0, model="m@1")
            put_alarms(tx, changed)
        (again,) = load_alarms(store.conn, open_only=True)
        assert (again.alarm_id, again.first_seen, again.last_seen, again.severity) == (
            stored.alarm_id, 10.0, 20.0, Severity.CRITICAL)
        stats = load_stats(store.conn)
        assert stats[0][:4] == (10.0, "feed_down", "Lactate", "hours_since_value")
        assert math.isnan(stats[1][4])  # NaN is stored as NULL and read back as NaN


def test_collector_exports_open_alarms():
    alarm = Alarm(AlarmKind.FEED_DOWN, "Lactate", Severity.CRITICAL, 1_700_000_000.0,
                  1_700_000_900.0, None, 9.0, 4.0, "m@1", "no Lactate")
    registry = CollectorRegistry()
    registry.register(AlarmCollector(lambda: [alarm]))
    text = generate_latest(registry).decode()
    labels = 'kind="feed_down",severity="critical",variable="Lactate"'
    assert f"vigil_monitor_alarm{{{labels}}} 1.0" in text
    assert ('vigil_monitor_alarm_first_seen_timestamp_seconds{kind="feed_down",variable="Lactate"} '
            "1.7e+09") in text
    assert "vigil_monitor_alarms_open 1.0" in text


def test_alarm_dict_has_the_cli_keys():
    alarm = Alarm(AlarmKind.QUARANTINE, "Temp", Severity.CRITICAL, 1.0, 2.0, None, 7.0, 0.25,
                  "m@1", "7 Temp values")
    assert list(alarm.to_dict())[:4] == ["kind", "variable", "severity", "first_seen"]


@pytest.mark.parametrize("bad", ["loud", ""])
def test_severity_is_a_closed_set(bad):
    with pytest.raises(ValueError, match="is not a valid Severity"):
        Severity(bad)


def test_the_ops_endpoint_serves_the_alarms_on_metrics():
    import urllib.request

    from vigil.runtime.ops import OpsServer, Readiness, RuntimeMetrics

    book = AlarmBook()
    book.update([TEMP], tick=1_700_000_000.0, model="m@1")
    metrics = RuntimeMetrics()
    metrics.registry.register(AlarmCollector(book.open))  # as vigil.runtime.service does
    server = OpsServer(host="127.0.0.1", port=0, metrics=metrics, patient_scores=lambda _k: [],
                       ready=lambda: Readiness(True, "m@1", 0.0, "ok")).start()
    try:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop()
    labels = 'kind="quarantine",severity="critical",variable="Temp"'
    assert f"vigil_monitor_alarm{{{labels}}} 1.0" in text
    assert "vigil_monitor_alarms_open 1.0" in text
