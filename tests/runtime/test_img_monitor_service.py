"""The imaging drift monitor inside `vigil serve`: hourly checks, stored alarms, /metrics, /readyz.

The service is the one of ``test_img_service.py`` (sepsis over NDJSON, imaging over a drop
folder, the shipped imaging package active). Its store is filled with a site's imaging feed
from ``mon_img_support.py`` (real PneumoniaMNIST test images written by a simulated scanner,
scored by the shipped package through the runtime's code): three stable days, then a new
scanner (16-bit, MONOCHROME1). The service's own job function checks it hour by hour.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
from mon_img_support import SHIPPED, START, feed, shipped
from test_img_service import site  # noqa: F401 - the fixture
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.runtime.monitoring.alarms import AlarmKind, load_alarms
from vigil.runtime.service import build_service
from vigil.runtime.settings import load_settings
from vigil.runtime.store import StateStore, sqlite_path
from vigil.runtime.study_contracts import InstanceRecord


def _store(url: str, records: list[InstanceRecord]) -> None:
    """Write instance records to the store's ``imaging_instances`` (one study each)."""
    with StateStore.open(url) as store, store.transaction() as tx:
        tx.executemany(
            "INSERT INTO imaging_instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((f"1.2.826.0.1.{r.scored_at.timestamp():.0f}", f"1.2.826.0.2.{i}", r.model,
              r.scored_at.timestamp(), h.modality, h.manufacturer, h.model_name, h.bits_stored,
              h.photometric, None, h.transfer_syntax, json.dumps(r.histogram.tolist()),
              None if r.raw_probability != r.raw_probability else r.raw_probability,
              None if r.probability != r.probability else r.probability, r.quarantine_reason)
             for i, r in enumerate(records) for h in (r.headers,)))


@pytest.mark.slow  # the feed: 192 DICOM studies written, read back and scored (~7 s)
def test_serve_names_a_scanner_switch_and_exports_it(site, shared_pneumoniamnist):  # noqa: F811
    config, _, tmp_path = site
    settings = load_settings(config, environ=False)
    records, _ = feed(shared_pneumoniamnist, shipped(), seed=0, days=4, switch_day=3.0)
    switch = START + timedelta(days=3)
    _store(settings.store.url, [r for r in records if r.scored_at < switch])
    service = build_service(settings)
    try:
        service.imaging.live_models()  # what a poll loads first
        # three stable days, checked every hour (the site's baseline is its first 48 h):
        # nothing raised
        for hour in range(1, 73):
            check = service.monitor_imaging(START + timedelta(hours=hour))
            assert check.status == "ok" and check.raised == [], (hour, check.raised)
        assert check.records == 144
        # the hourly cadence: a tick within the hour of the last check does not check again
        assert service.monitor_imaging(switch + timedelta(minutes=15)).status == "skipped"
        _store(settings.store.url, [r for r in records if r.scored_at >= switch])
        raised = {}
        for hour in range(1, 7):
            check = service.monitor_imaging(switch + timedelta(hours=hour))
            assert check.status == "ok"
            raised |= {a.variable: (hour, a) for a in check.raised}
        headers = {v: a for v, (_, a) in raised.items() if a.kind is AlarmKind.HEADER_DRIFT}
        assert {"BitsStored", "PhotometricInterpretation"} <= set(headers)
        assert "16 share 0% → " in headers["BitsStored"].message
        assert "MONOCHROME1 share 0% → " in headers["PhotometricInterpretation"].message
        assert max(hour for hour, _ in raised.values()) <= 6
        text = service.metrics.exposition().decode()
        for variable in ("BitsStored", "PhotometricInterpretation"):
            assert (f'vigil_monitor_alarm{{kind="header_drift",severity="warning",'
                    f'variable="{variable}"}} 1.0') in text
        assert 'vigil_imaging_monitor_checks_total{status="ok"} 78.0' in text
        assert 'vigil_imaging_monitor_checks_total{status="skipped"} 1.0' in text
        monitor = service.readiness().imaging["monitor"]
        assert monitor["status"] == "ok" and monitor["failures"] == 0
        assert monitor["open_alarms"] == len(service.image_monitor.open_alarms()) >= 2
        assert service.run_cycle().ok  # the sepsis cycle goes on beside it
        assert all(a.variable not in headers for a in service.monitor.open_alarms())
    finally:
        service.close()
    with StateStore.open(settings.store.url, read_only=True) as store:
        stored = {a.variable: a for a in load_alarms(store.conn, open_only=True)
                  if a.kind is AlarmKind.HEADER_DRIFT}
        n_stats = store.conn.execute(
            "SELECT COUNT(*) FROM monitor_stats WHERE kind = 'input_drift' AND "
            "variable = 'image_intensity' AND statistic = 'psi'").fetchone()[0]
    assert set(headers) <= set(stored) and stored["BitsStored"].model == headers[
        "BitsStored"].model == "imaging-federated@" + shipped().manifest.version
    assert n_stats > 0
    # a restart: the sepsis monitor leaves the imaging alarms alone, the imaging monitor
    # takes them up again (extends the same rows)
    again = build_service(settings)
    try:
        assert again.run_cycle().ok
        assert not any(a.variable in headers for a in again.monitor.open_alarms())
        again.imaging.live_models()
        assert again.monitor_imaging(switch + timedelta(hours=7)).raised == []
        ids = {a.variable: a.alarm_id for a in again.image_monitor.open_alarms()}
        assert ids["BitsStored"] == stored["BitsStored"].alarm_id
    finally:
        again.close()
    # one code path: `vigil monitor images` over the same store (its default table) finds the
    # same alarms at the same checks
    replay = CliRunner(mix_stderr=False).invoke(app, [
        "monitor", "images", "--records", sqlite_path(settings.store.url), "--model",
        str(SHIPPED), "--json"])
    assert replay.exit_code == 0, replay.output
    offline = {a["variable"]: a["first_seen"] for a in json.loads(replay.stdout)["alarms"]
               if a["kind"] == "header_drift"}
    assert offline == {v: a.first_seen for v, a in headers.items()}


def test_a_failing_imaging_monitor_stops_nothing(site, monkeypatch, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    config, _, _ = site
    service = build_service(load_settings(config, environ=False))
    try:
        assert service.monitor_imaging(START).status == "skipped"  # no imaging model loaded yet
        assert service.readiness().imaging["monitor"]["status"] == "waiting"
        service.imaging.live_models()

        def broken(*args, **kwargs):
            raise RuntimeError("1.2.826.0.1.99 is broken")  # an identifier: must not leak

        monkeypatch.setattr("vigil.runtime.imaging_monitor.check_images", broken)
        failed = service.monitor_imaging(START)
        assert failed.status == "failed" and failed.error == "imaging monitor failed: RuntimeError"
        assert service.run_cycle().ok and service.poll_imaging().ok
        monitor = service.readiness().imaging["monitor"]
        assert monitor["status"] == "failed" and monitor["failures"] == 1
        assert "1.2.826" not in json.dumps(monitor)
        text = service.metrics.exposition().decode()
        assert 'vigil_imaging_monitor_checks_total{status="failed"} 1.0' in text
        assert "imaging monitor failed (RuntimeError)" in caplog.text
        assert "1.2.826" not in caplog.text
        # the next hour the monitor is back; nothing half-written stays from the failure
        monkeypatch.undo()
        back = service.monitor_imaging(START + timedelta(hours=1))
        assert back.status == "ok" and back.records == 6  # the six studies just polled
    finally:
        service.close()
