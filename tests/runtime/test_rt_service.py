import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rt_support import (
    current_feed,
    make_package,
    ndjson_site_toml,
    wait_ready,
    write_trusted_key,
)

from vigil.runtime.service import _trigger, last_fire_time
from vigil.runtime.settings import load_settings

VIGIL = Path(sys.executable).with_name("vigil")
serve_process = pytest.mark.slow  # real `vigil` processes: about 10 s each to start


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ticks_are_aligned_to_the_quarter_hours():
    trigger = _trigger(load_settings(None, environ=False))
    at = datetime(2026, 5, 1, 10, 29, 59, tzinfo=UTC)
    assert last_fire_time(trigger, at) == datetime(2026, 5, 1, 10, 15, tzinfo=UTC)
    half_past = at.replace(minute=30, second=0)
    assert last_fire_time(trigger, half_past) == half_past
    hourly = _trigger(load_settings(None, environ=False, scheduler={"minute": "5"}))
    assert last_fire_time(hourly, at) == datetime(2026, 5, 1, 10, 5, tzinfo=UTC)


@pytest.fixture()
def site(tmp_path, sample):
    table = current_feed(sample, tmp_path / "export")
    make_package(tmp_path / "pkg")
    port = free_port()
    config = tmp_path / "site.toml"
    config.write_text(ndjson_site_toml(tmp_path, site_id="test-site", port=port)
                      + f'public_key = "{write_trusted_key(tmp_path)}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    subprocess.run([VIGIL, "model", "install", tmp_path / "pkg", "--config", config],
                   check=True, env=env, capture_output=True)
    return config, port, env, tmp_path, table.grid.patient_ids


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@serve_process
def test_serve_runs_a_cycle_and_stops_cleanly_on_sigterm(site):
    config, port, env, tmp_path, patients = site
    proc = subprocess.Popen([VIGIL, "serve", "--config", config], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = wait_ready(base, proc)
        assert ready is not None and ready[0] == 200, ready
        assert json.loads(ready[1])["model"] == "sepsis-tiny@1.0.0"
        assert get(base + "/healthz")[0] == 200
        metrics = get(base + "/metrics")[1]
        assert 'vigil_cycles_total{status="ok"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "received signal 15" in err and "stopped" in err
    lines = (tmp_path / "out" / "RiskAssessment.ndjson").read_text().splitlines()
    subjects = sorted(json.loads(x)["subject"]["reference"] for x in lines)
    assert subjects == sorted(f"Patient/{p}" for p in patients)  # one per census patient


@serve_process
def test_serve_once_and_a_bad_setting(site):
    config, _, env, _, _ = site
    done = subprocess.run([VIGIL, "serve", "--config", config, "--once"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "ok" and record["counts"]["scored"] == 3
    bad = subprocess.run([VIGIL, "serve", "--config", config], env={**env, "VIGIL_OPS__PORT": "x"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'ops.port'" in bad.stderr
