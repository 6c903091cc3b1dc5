"""The imaging loop on a real PACS: Orthanc's change feed in, FHIR and a DICOM SR out.

Orthanc runs privately (``tests/conftest.py`` ``orthanc``: its own network namespace,
authentication on). The loop is built from ``site.toml`` exactly as ``vigil serve``
builds it (:func:`vigil.runtime.imaging_service.build_imaging`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from img_support import SHIPPED
from rt_support import ndjson_site_toml

from vigil.runtime.imaging_service import build_imaging
from vigil.runtime.models import install_model
from vigil.runtime.settings import load_settings
from vigil.runtime.store import StateStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom_adapter"))
from orthanc_support import client_for, write_studies  # noqa: E402

pytestmark = pytest.mark.slow  # a real Orthanc (about 10 s with its start)


def _site(tmp_path: Path, orthanc, *, start: str) -> Path:  # type: ignore[no-untyped-def]
    secret = tmp_path / "orthanc.pw"
    secret.write_text(orthanc.password + "\n")
    config = tmp_path / "site.toml"
    config.write_text(ndjson_site_toml(tmp_path, site_id="site-a", port=None) + f"""\
[imaging]
enabled = true
source = "orthanc"
url = "{orthanc.url}"
username = "{orthanc.username}"
password_file = "{secret}"
start = "{start}"
[imaging.writeback]
fhir = true
sr = true
""")
    settings = load_settings(config, environ=False)
    with StateStore.open(settings.store.url) as store:
        install_model(store, SHIPPED, models_dir=tmp_path / "models")  # the release key
    return config


def _poll_until(loop, n: int, timeout: float = 30.0) -> int:  # type: ignore[no-untyped-def]
    scored, deadline = 0, time.monotonic() + timeout
    while scored < n and time.monotonic() < deadline:
        result = loop.poll()
        assert result.ok, result.error
        scored += result.scored
        time.sleep(0.3)
    return scored


def _sr_count(client) -> int:  # type: ignore[no-untyped-def]
    return client.count_instances("SR")


@pytest.fixture()
def client(orthanc):  # type: ignore[no-untyped-def]
    with client_for(orthanc) as c:
        yield c


def test_new_studies_scored_once_written_back_and_never_rescored(orthanc, client, tmp_path):
    old = write_studies(tmp_path / "before", 3, tag="imgpacs-old")
    for f in old:
        client.store(f.read_bytes())
    config = _site(tmp_path, orthanc, start="now")
    settings = load_settings(config, environ=False)
    loop = build_imaging(settings, registry=None)
    try:
        first = loop.poll()
        assert first.ok and first.scored == 0  # start = now: what the PACS held is left alone
        new = write_studies(tmp_path / "after", 4, tag="imgpacs-new")
        for f in new:
            client.store(f.read_bytes())
        assert _poll_until(loop, 4) == 4
        srs = _sr_count(client)
        assert srs == 4  # one SR per scored study, stored back into its study
        time.sleep(2.5)  # the SRs make their studies change again; the runtime skips its own
        again = loop.poll()
        assert again.ok and again.scored == 0
    finally:
        loop.close()
    out = tmp_path / "out"
    lines = (out / "DiagnosticReport.ndjson").read_text().splitlines()
    reports = [json.loads(line) for line in lines]
    observations = (out / "Observation.ndjson").read_text().splitlines()
    assert len({r["id"] for r in reports}) == 4 and len(observations) == 4
    assert {r["status"] for r in reports} == {"final"}
    # a restart on the same store: nothing re-scored, nothing re-written
    loop = build_imaging(load_settings(config, environ=False), registry=None)
    try:
        assert loop.poll().scored == 0
    finally:
        loop.close()
    assert _sr_count(client) == 4
    assert len((out / "DiagnosticReport.ndjson").read_text().splitlines()) == len(reports)


def test_start_beginning_reads_the_whole_feed(orthanc, client, tmp_path):
    config = _site(tmp_path, orthanc, start="beginning")
    loop = build_imaging(load_settings(config, environ=False), registry=None)
    try:
        # the other test's 7 image studies are in this module's Orthanc (order-independent:
        # at least the 3 stored here)
        for f in write_studies(tmp_path / "mine", 3, tag="imgpacs-begin"):
            client.store(f.read_bytes())
        assert _poll_until(loop, 3) >= 3
    finally:
        loop.close()
