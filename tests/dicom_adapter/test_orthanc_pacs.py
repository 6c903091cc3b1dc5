"""The Orthanc client, source and send command against a real, private Orthanc.

Slow: one Orthanc per module (about 1.3 s to start, 2.7 s to stop: Orthanc's HTTP server
takes 2 s to wind down), one restart, and waits of about StableAge (1 s) for studies to
turn stable.
"""

from __future__ import annotations

import io
import json
import os
import stat

import httpx
import numpy as np
import pydicom
import pytest
from orthanc_support import (
    alive,
    client_for,
    private_orthanc,
    source_for,
    walk,
    walk_until,
    write_studies,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.core.errors import ConfigError, PACSError

pytestmark = pytest.mark.slow


@pytest.fixture
def source(orthanc):
    """An OrthancSource (CR, DX) on the module's Orthanc, closed after the test."""
    src = source_for(orthanc)
    yield src
    src.client.close()


def sr_instance(study_uid: str, patient_id: str) -> bytes:
    """A minimal Basic Text SR in ``study_uid`` (what a write-back adds to a study)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.Modality = "SR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_the_private_orthanc_is_isolated_and_asks_for_credentials(orthanc):
    assert orthanc.orthanc_pid is not None
    assert os.readlink(f"/proc/{orthanc.orthanc_pid}/ns/net") != os.readlink("/proc/self/ns/net")
    mode = stat.S_IMODE(os.stat(orthanc.workdir / "orthanc.sock").st_mode)
    assert mode == 0o600 and stat.S_IMODE(os.stat(orthanc.workdir).st_mode) == 0o700
    assert httpx.get(f"{orthanc.url}/system").status_code == 401
    with client_for(orthanc) as good:
        assert good.system()["Version"].startswith("1.")
    with client_for(orthanc, password="wrong") as bad, pytest.raises(
            PACSError, match="^Orthanc refused the credentials") as err:
        bad.changes(0, 10)
    assert err.value.status == 401


def test_send_counts_then_finds_everything_already_stored(orthanc, tmp_path):
    files = write_studies(tmp_path / "dicom", 8, tag="send")
    secret = tmp_path / "pw"
    secret.write_text(orthanc.password + "\n")
    args = ["imaging", "send", str(tmp_path / "dicom"), "--pacs", orthanc.url,
            "--user", orthanc.username, "--password-file", str(secret), "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout) == {"files": 8, "stored": 8, "already_stored": 0,
                                        "refused": 0, "not_dicom": 4, "refusals": []}
    (tmp_path / "dicom" / "broken.dcm").write_bytes(files[0].read_bytes()[:200])
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1
    out = json.loads(again.stdout)
    assert (out["stored"], out["already_stored"], out["refused"]) == (0, 8, 1)
    assert out["refusals"][0]["file"] == "broken.dcm"
    assert "HTTP 400" in out["refusals"][0]["reason"]
    secret.write_text("wrong")
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "refused the credentials" in refused.output
    assert refused.output.strip().count("\n") == 0


def test_walk_reports_each_study_once_and_fetch_returns_what_was_sent(source, tmp_path):
    files = write_studies(tmp_path, 12, tag="walk")
    sent = {(d := pydicom.dcmread(f)).StudyInstanceUID: (f.read_bytes(), d) for f in files}
    cursor = source.latest_cursor()
    for f in files:
        source.client.store(f.read_bytes())
    studies, cursor = walk_until(source, cursor, len(files), limit=5)
    assert sorted(s.study_uid for s in studies) == sorted(sent)
    assert walk(source, cursor, limit=5)[0] == []  # nothing more, nothing twice
    for ref in studies:
        data, ds = sent[ref.study_uid]
        assert ref.patient_key == ds.PatientID and ref.modalities == ("CR",)
        (inst,) = source.fetch(ref)
        assert (inst.sop_instance_uid, inst.series_uid) == (ds.SOPInstanceUID,
                                                           ds.SeriesInstanceUID)
        assert inst.data == data  # byte for byte: no transcoding (transfer-syntax=*)
        back = pydicom.dcmread(io.BytesIO(inst.data))
        assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
        assert np.array_equal(back.pixel_array, ds.pixel_array)


def test_the_bulk_lookup_matches_the_per_study_lookup(source, tmp_path):
    files = write_studies(tmp_path, 3, tag="bulk")
    cursor = source.latest_cursor()
    for f in files:
        source.client.store(f.read_bytes())
    source.client.store(sr_instance(generate_uid(), "SR-ONLY"))
    walk_until(source, cursor, 3)  # all stable
    ids = [c.resource_id for c in source.client.changes(int(cursor), 500).changes
           if c.change_type == "NewStudy"]
    assert len(ids) == 4
    bulk = source.client.studies([*reversed(ids), "0" * 44])  # order kept; unknown: None
    assert list(bulk) == [*reversed(ids), "0" * 44] and bulk["0" * 44] is None
    assert all(bulk[i] == source.client.study(i) for i in ids)
    assert sorted(bulk[i].ref.modalities for i in ids) == [("CR",)] * 3 + [("SR",)]


def test_sr_only_studies_and_added_srs_are_not_reported(source, tmp_path):
    (image,) = write_studies(tmp_path, 1, tag="sr")
    ds = pydicom.dcmread(image)
    cursor = source.latest_cursor()
    source.client.store(image.read_bytes())
    source.client.store(sr_instance(generate_uid(), "SR-ONLY"))
    studies, cursor = walk_until(source, cursor, 1)
    assert [s.study_uid for s in studies] == [ds.StudyInstanceUID]
    source.client.store(sr_instance(ds.StudyInstanceUID, ds.PatientID))  # a write-back
    assert walk_until(source, cursor, 1, timeout=3)[0] == []
    assert source.skipped["other_modality"] == 1


def test_cursor_resumes_across_a_new_client_and_an_orthanc_restart(orthanc, source, tmp_path,
                                                                   request):
    files = write_studies(tmp_path, 12, tag="restart")
    uids = sorted(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files)
    cursor = source.latest_cursor()
    for f in files[:8]:
        source.client.store(f.read_bytes())
    studies, _ = walk_until(source, cursor, 8)
    page = source.poll(cursor, limit=3)
    first = list(page.studies)
    stored_cursor = page.cursor  # what the runtime keeps in its state store
    source.client.close()

    source = source_for(orthanc)  # a new client (the runtime restarted)
    request.addfinalizer(source.client.close)
    page = source.poll(stored_cursor, limit=2)
    second, stored_cursor = list(page.studies), page.cursor
    orthanc.restart()  # same storage, same URL
    for f in files[8:]:
        source.client.store(f.read_bytes())
    rest, _ = walk_until(source, stored_cursor, 12 - 5)
    got = [s.study_uid for s in first + second + rest]
    assert len(first) == 3 and len(second) == 2
    assert sorted(got) == uids  # nothing skipped, nothing twice


def test_studies_stored_just_before_a_restart_are_not_skipped(tmp_path):
    """Orthanc forgets unstable studies on restart: no StableStudy ever comes for them.

    Also the harness's own check: after the context, nothing of the Orthanc is left.
    """
    files = write_studies(tmp_path / "dicom", 3, tag="unstable")
    with private_orthanc(tmp_path / "pacs", stable_age=60) as server:
        pids, url = set(server.pids), server.url
        source = source_for(server)
        cursor = source.latest_cursor()
        for f in files:
            source.client.store(f.read_bytes())
        assert walk(source, cursor, limit=5)[0] == []  # unstable: the cursor is held
        server.restart()  # within StableAge of the last instance
        changes = source.client.changes(int(cursor), 100).changes
        assert not [c for c in changes if c.change_type == "StableStudy"]
        studies, _ = walk(source, cursor, limit=5)
        source.client.close()
        pids.update(server.pids)
    assert len({s.study_uid for s in studies}) == len(studies) == 3
    # the harness left nothing: no process (supervisor, Orthanc, before and after the
    # restart), no socket, no listener
    assert len(pids) == 4 and not any(alive(p) for p in pids)
    assert not (tmp_path / "pacs" / "orthanc.sock").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/system", timeout=2)


def test_a_cursor_beyond_the_database_reads_it_again(source, tmp_path, caplog):
    (image,) = write_studies(tmp_path, 1, tag="reset")
    cursor = source.latest_cursor()
    source.client.store(image.read_bytes())
    assert len(walk_until(source, cursor, 1)[0]) == 1  # stable now
    beyond = str(int(source.latest_cursor()) + 10_000)
    studies, cursor = walk_until(source, beyond, 1, limit=1000)
    uid = pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID
    assert uid in {s.study_uid for s in studies}
    assert int(cursor) <= int(source.latest_cursor())
    assert "reset or replaced" in caplog.text


def test_a_killed_launcher_leaves_no_orthanc_behind(tmp_path):
    """The process that started the PACS dies without stopping it: Orthanc goes too."""
    import subprocess
    import sys
    import time

    from vigil.dicom_adapter.orthanc_local import local_orthanc_missing

    if local_orthanc_missing():
        pytest.skip(local_orthanc_missing())
    script = (
        "import sys, time\nfrom pathlib import Path\n"
        "from vigil.dicom_adapter.orthanc_local import LocalOrthanc\n"
        f"s = LocalOrthanc(Path({str(tmp_path / 'pacs')!r})).start()\n"
        "print(*s.pids, flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + 20
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_the_forwarder_as_a_process_serves_and_leaves_nothing(tmp_path):
    """``forwarder="process"`` (the bench's): it serves the client, and no process is left."""
    from vigil.dicom_adapter.orthanc_local import LocalOrthanc, local_orthanc_missing

    if local_orthanc_missing():
        pytest.skip(local_orthanc_missing())
    with pytest.raises(ConfigError, match="forwarder 'thread' or 'process'"):
        LocalOrthanc(tmp_path / "x", forwarder="fork")
    (image,) = write_studies(tmp_path / "dicom", 1, tag="forwarder")
    server = LocalOrthanc(tmp_path / "pacs", forwarder="process").start()
    try:
        pids, url = set(server.pids), server.url
        assert len(pids) == 3 and all(alive(p) for p in pids)  # supervisor, Orthanc, forwarder
        client = client_for(server)
        client.store(image.read_bytes())
        assert client.system()["Name"] == "vigil-private-pacs"
        uid = str(pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID)
        assert len(client.retrieve_study(uid)) == 1
        client.close()
        pids.update(server.pids)
    finally:
        server.stop()
    assert not any(alive(p) for p in pids)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/system", timeout=2)
