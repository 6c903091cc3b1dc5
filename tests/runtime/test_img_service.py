"""`vigil serve` with the imaging loop beside the sepsis cycle: one process, one store, one ops."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from img_support import SHIPPED, write_studies
from rt_support import (
    current_feed,
    free_port,
    http_get,
    make_package,
    ndjson_site_toml,
    running,
    terminate,
    wait_ready,
)

from vigil.core.errors import ConfigError, DataError
from vigil.runtime.imaging_service import build_imaging
from vigil.runtime.models import install_model
from vigil.runtime.service import build_service
from vigil.runtime.settings import load_settings
from vigil.runtime.store import StateStore

VIGIL = Path(sys.executable).with_name("vigil")


@pytest.fixture()
def site(tmp_path, sample):
    current_feed(sample, tmp_path / "export")
    write_studies(tmp_path / "incoming", 6)
    port = free_port()
    config = tmp_path / "site.toml"
    config.write_text(ndjson_site_toml(tmp_path, site_id="site-a", port=port) + f"""\
allow_unsigned = true
[imaging]
enabled = true
source = "folder"
folder = "{tmp_path / 'incoming'}"
stable_seconds = 0
poll_seconds = 2
""")
    settings = load_settings(config, environ=False)
    with StateStore.open(settings.store.url) as store:
        install_model(store, make_package(tmp_path / "pkg").path, models_dir=tmp_path / "models")
        imaging = install_model(store, SHIPPED, models_dir=tmp_path / "models")
        rows = {r.task: r.role for r in store.models()}
    assert imaging.task == "imaging" and rows == {"sepsis": "active", "imaging": "active"}
    return config, port, tmp_path


def test_one_service_scores_patients_and_studies(site):
    config, _, tmp_path = site
    service = build_service(load_settings(config, environ=False))
    try:
        assert service.readiness().imaging["status"] == "starting"
        cycle = service.run_cycle()
        assert cycle.ok and cycle.counts["scored"] == 3
        polled = service.poll_imaging()
        assert polled.ok and polled.scored == 6 and polled.instances_scored == 6
        ready = service.readiness()
        assert ready.ready and ready.model == "sepsis-tiny@1.0.0"
        assert ready.imaging["status"] == "ok" and ready.imaging["source"] == "folder"
        text = service.metrics.exposition().decode()
        for line in ('vigil_imaging_studies_scored_total{role="active"} 6.0',
                     "vigil_imaging_instances_scored_total 6.0",
                     'vigil_imaging_polls_total{status="ok"} 1.0',
                     "vigil_imaging_model_loaded 1.0", "vigil_imaging_last_poll_age_seconds",
                     "vigil_imaging_cursor_position", 'vigil_cycles_total{status="ok"} 1.0'):
            assert line in text, line
        # the PACS goes away: imaging degraded, the sepsis cycle goes on and stays ready
        shutil.rmtree(tmp_path / "incoming")
        down = service.poll_imaging()
        assert not down.ok
        later = service.run_cycle(datetime.now(UTC) + timedelta(minutes=15))
        assert later.ok and later.counts["scored"] == 3
        ready = service.readiness()
        assert ready.ready and ready.imaging["status"] == "degraded"
        assert "folder" in ready.imaging["reason"] and str(tmp_path) not in ready.imaging["reason"]
        assert 'vigil_imaging_polls_total{status="failed"} 1.0' in (
            service.metrics.exposition().decode())
    finally:
        service.close()
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", read_only=True) as store:
        assert store.count("imaging_studies") == 6
        assert store.conn.execute("SELECT COUNT(DISTINCT model) FROM scores").fetchone()[0] == 1


def test_imaging_settings_errors_are_one_line(site, tmp_path):
    config, _, _ = site
    base = load_settings(config, environ=False)
    for overrides, key in (({"writeback": {"sr": True}}, "imaging.writeback.sr"),
                           ({"folder": None}, "imaging.folder"),
                           ({"source": "orthanc"}, "imaging.url")):
        settings = load_settings(config, environ=False, imaging=overrides)
        with pytest.raises(ConfigError) as err:
            build_imaging(settings, registry=None)
        assert err.value.key == key and "\n" not in str(err.value)
    no_fhir = load_settings(config, environ=False, imaging={"writeback": {"fhir": True}},
                            data={"writeback": "none"})
    with pytest.raises(ConfigError, match="needs data.writeback = 'fhir'") as err:
        build_imaging(no_fhir, registry=None)
    assert err.value.key == "imaging.writeback.fhir"
    with pytest.raises(ConfigError, match="'imaging.poll_seconds'"):
        load_settings(config, environ=False, imaging={"poll_seconds": 0})
    with pytest.raises(ConfigError, match="'imaging.password_file'") as err:
        load_settings(config, environ=False, imaging={"password_file": 12345678912})
    assert "12345678912" not in str(err.value)  # a misplaced secret is never echoed
    assert base.imaging.modalities == ("CR", "DX")
    # a drop folder that is not there: the service refuses to start, and holds nothing
    gone = load_settings(config, environ=False, imaging={"folder": str(tmp_path / "none")})
    with pytest.raises(DataError, match="expected imaging.folder to be a directory") as err:
        build_service(gone)
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)
    build_service(base).close()  # the store's writer lock was released


@pytest.mark.slow  # two real `vigil` processes
def test_vigil_serve_runs_both_and_stops_cleanly(site):
    config, port, tmp_path = site
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    with running([VIGIL, "serve", "--config", config], env) as proc:
        base = f"http://127.0.0.1:{port}"
        ready = wait_ready(base, proc)
        assert ready is not None and ready[0] == 200, ready
        for _ in range(100):
            body = json.loads(http_get(base + "/readyz")[1])
            if body["imaging"]["status"] == "ok":
                break
            time.sleep(0.2)
        assert body["imaging"]["status"] == "ok", body
        metrics = http_get(base + "/metrics")[1]
        assert 'vigil_imaging_studies_scored_total{role="active"} 6.0' in metrics
        assert 'vigil_cycles_total{status="ok"} 1.0' in metrics
        _, err = terminate(proc)
    assert proc.returncode == 0, err
    assert "imaging polls every 2 s" in err and "stopped" in err
    assert "2.25." not in err and "SYN" not in err  # no UID, no patient id in the log
    once = subprocess.run([VIGIL, "serve", "--config", config, "--once"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert once.returncode == 0, once.stderr
    record = json.loads(once.stdout)
    assert record["imaging"]["scored"] == 0 and record["imaging"]["error"] is None
