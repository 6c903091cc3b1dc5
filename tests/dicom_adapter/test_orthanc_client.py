"""The Orthanc client and source without a server: multipart parsing, errors, retries, the walk."""

from __future__ import annotations

import io
import json
import logging
import socket

import httpx
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from vigil.core.errors import ConfigError, DataError, PACSError
from vigil.dicom_adapter.dicomweb import (
    boundary_of,
    instances_from_parts,
    split_multipart,
)
from vigil.dicom_adapter.orthanc import (
    Change,
    ChangesPage,
    OrthancClient,
    OrthancSource,
    StudyInfo,
)
from vigil.dicom_adapter.send import send_folder
from vigil.runtime.study_contracts import StudyRef

BOUNDARY = "b0undary-1234"


def multipart(contents: list[bytes], *, preamble: bytes = b"", close: bool = True) -> bytes:
    body = preamble + (b"\r\n" if preamble else b"")
    for c in contents:
        body += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + c + b"\r\n"
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def part10(sop: str = "1.2.3.4", series: str = "1.2.3.5", modality: str = "SR") -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = sop
    ds.SeriesInstanceUID = series
    ds.StudyInstanceUID = "1.2.3.6"
    ds.PatientID = "PAT-SECRET-1"
    ds.Modality = modality
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


# --- multipart/related (RFC 2046 §5.1.1) -------------------------------------------------------


def test_boundary_is_read_quoted_or_not():
    assert boundary_of(f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"') \
        == BOUNDARY
    assert boundary_of(f"Multipart/Related; boundary={BOUNDARY}; type=application/dicom") \
        == BOUNDARY
    for bad in ("application/dicom", "multipart/related; type=application/dicom", ""):
        with pytest.raises(PACSError, match="expected a multipart/related answer"):
            boundary_of(bad)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5), st.binary(max_size=20))
def test_split_returns_each_part_exactly(contents, preamble):
    contents = [c.replace(BOUNDARY.encode(), b"x") for c in contents]
    preamble = preamble.replace(b"--", b"").replace(b"\r\n", b"")
    parts = split_multipart(multipart(contents, preamble=preamble), BOUNDARY)
    assert [p.content for p in parts] == contents
    assert all(p.headers == {"content-type": "application/dicom"} for p in parts)


def test_content_with_crlf_and_dashes_survives():
    tricky = [b"\r\n--not-the-boundary\r\n\r\n", b"--" + BOUNDARY.encode()[:-1], b""]
    assert [p.content for p in split_multipart(multipart(tricky), BOUNDARY)] == tricky


def test_truncated_or_foreign_body_is_an_error():
    with pytest.raises(PACSError, match="after 1 complete part.*truncated"):
        split_multipart(multipart([b"abc", b"def"], close=False)[:-3], BOUNDARY)
    with pytest.raises(PACSError, match="no part delimiter"):
        split_multipart(b"<html>proxy error</html>", BOUNDARY)


def test_instances_carry_uids_and_exact_bytes():
    data = part10("1.2.3.4", "1.2.3.5")
    (inst,) = instances_from_parts(split_multipart(multipart([data]), BOUNDARY))
    assert (inst.sop_instance_uid, inst.series_uid, inst.data) == ("1.2.3.4", "1.2.3.5", data)
    with pytest.raises(PACSError, match="part 2 of the WADO-RS answer is not a DICOM"):
        instances_from_parts(split_multipart(multipart([data, b"junk"]), BOUNDARY))


# --- the client's errors and retries (httpx.MockTransport) -------------------------------------


def client_with(handler, **kw) -> tuple[OrthancClient, list[float]]:
    slept: list[float] = []
    c = OrthancClient("http://pacs.test:8042/", username="u", password="p",
                      transport=httpx.MockTransport(handler), sleep=slept.append, **kw)
    return c, slept


def test_refused_credentials_are_one_clear_line():
    c, slept = client_with(lambda r: httpx.Response(401))
    with pytest.raises(PACSError, match="^Orthanc refused the credentials") as err:
        c.system()
    assert err.value.status == 401 and slept == []


def test_transport_errors_are_retried_then_reported_with_the_url():
    calls = []

    def down(request):
        calls.append(request)
        raise httpx.ConnectError("refused", request=request)

    c, slept = client_with(down, retries=3, backoff_s=0.5)
    with pytest.raises(PACSError, match=r"PACS at http://pacs.test:8042 could not be reached"):
        c.changes(0, 10)
    assert len(calls) == 4 and slept == [0.5, 1.0, 2.0]


def test_unreachable_real_port_names_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = OrthancClient(f"http://127.0.0.1:{port}", retries=0, timeout=2)
    with pytest.raises(PACSError, match=f"http://127.0.0.1:{port} could not be reached"):
        c.system()


def test_busy_answers_are_retried_and_refusals_keep_orthanc_error_only():
    answers = iter([httpx.Response(503), httpx.Response(200, json={"Status": "AlreadyStored"})])
    c, slept = client_with(lambda r: next(answers))
    assert c.store_status(b"x") == "AlreadyStored" and slept == [0.5]
    bad = {"OrthancError": "Bad file format", "Details": "PatientID PAT-SECRET-1 broken"}
    c, _ = client_with(lambda r: httpx.Response(400, json=bad))
    with pytest.raises(PACSError, match=r"HTTP 400 to storing an instance.*\(Bad file format\)$") \
            as err:
        c.store(b"x")
    assert "SECRET" not in str(err.value) and err.value.status == 400


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="must start with http"):
        OrthancClient("pacs.test:8042")
    with pytest.raises(ConfigError, match="must not carry credentials") as err:
        OrthancClient("http://u:secret@pacs.test")
    assert "secret" not in str(err.value)
    with pytest.raises(ConfigError, match="both a PACS user and a password"):
        OrthancClient("http://pacs.test", username="u")


def test_httpx_request_log_shows_no_uid(caplog):
    uid = "1.2.826.0.1.3680043.8.498.99"

    def answer(request):
        return httpx.Response(200, headers={"content-type": f"multipart/related; "
                                            f"boundary={BOUNDARY}"},
                              content=multipart([part10()]))

    c, _ = client_with(answer)
    with caplog.at_level(logging.INFO, logger="httpx"):
        c.retrieve_study(uid)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "http://pacs.test:8042/dicom-web/…" in text and uid not in text


def test_count_instances_sums_the_series_of_the_modality():
    asked = []

    def answer(request):
        asked.append(json.loads(request.content))
        return httpx.Response(200, json=[{"Instances": ["a", "b"]}, {"Instances": ["c"]}])

    c, _ = client_with(answer)
    assert c.count_instances("SR") == 3
    assert asked == [{"Level": "Series", "Query": {"Modality": "SR"}, "Expand": True}]
    c, _ = client_with(lambda r: httpx.Response(200, json=[{"ID": "x"}]))
    with pytest.raises(PACSError, match="lacks the series' Instances"):
        c.count_instances("SR")


# --- the source's walk over the change feed (a fake client) ------------------------------------


class FakeClient:
    """A change feed of NewStudy rows (plus noise), studies that turn stable on demand."""

    def __init__(self, studies: dict[str, StudyInfo | None]) -> None:
        self.info = studies
        rows, seq = [], 0
        for sid in studies:
            for kind in ("NewInstance", "NewSeries", "NewStudy", "NewPatient"):
                seq += 1
                rows.append(Change(seq, kind, "Study" if kind == "NewStudy" else "x", sid))
        self.rows = rows
        self.lookups: list[list[str]] = []

    def changes(self, since: int, limit: int) -> ChangesPage:
        after = [r for r in self.rows if r.seq > since][:limit]
        last = after[-1].seq if after else (self.rows[-1].seq if self.rows else 0)
        done = not after or after[-1].seq == self.rows[-1].seq
        return ChangesPage(tuple(after), last, done)

    def studies(self, orthanc_ids) -> dict[str, StudyInfo | None]:
        self.lookups.append(list(orthanc_ids))
        return {i: self.info[i] for i in orthanc_ids}


def info(sid: str, *, stable: bool = True, modalities=("CR",)) -> StudyInfo:
    return StudyInfo(StudyRef(f"uid-{sid}", sid, "p", tuple(modalities)), stable)


def test_walk_reports_each_kept_study_once_and_holds_at_an_unstable_one():
    studies = {"a": info("a"), "b": info("b", modalities=("SR",)), "c": None, "d": info("d"),
               "e": info("e", stable=False), "f": info("f")}
    fake = FakeClient(studies)
    source = OrthancSource(fake, modalities=("cr", "DX"))  # type: ignore[arg-type]
    page = source.poll(None, limit=1)
    assert [s.source_id for s in page.studies] == ["a"] and page.cursor == "3" and not page.done
    page = source.poll(page.cursor, limit=10)
    assert [s.source_id for s in page.studies] == ["d"] and page.done
    assert page.cursor == "18"  # just before e's NewStudy (seq 19): held until e is stable
    assert source.skipped == {"gone": 1, "other_modality": 1}
    assert source.poll(page.cursor, limit=10).studies == ()
    fake.info["e"] = info("e")
    page = source.poll(page.cursor, limit=10)
    assert [s.source_id for s in page.studies] == ["e", "f"] and page.cursor == "24" and page.done


def test_the_walk_looks_up_a_page_of_new_studies_together():
    fake = FakeClient({k: info(k, modalities=("SR",) if k == "b" else ("CR",)) for k in "abcdefg"})
    source = OrthancSource(fake, modalities=("CR",))  # type: ignore[arg-type]
    page = source.poll(None, limit=3)
    assert [s.source_id for s in page.studies] == ["a", "c", "d"]
    assert fake.lookups == [["a", "b", "c"], ["d"]]  # b (an SR study) left one place open
    fake.lookups.clear()
    assert [s.source_id for s in source.poll(page.cursor, limit=10).studies] == ["e", "f", "g"]
    assert fake.lookups == [["e", "f", "g"]]


def test_cursor_beyond_the_feed_rereads_from_zero_with_a_warning(caplog):
    source = OrthancSource(FakeClient({"a": info("a")}), modalities=("CR",))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="vigil.pacs"):
        page = source.poll("9999", limit=5)
    assert [s.source_id for s in page.studies] == ["a"] and page.cursor == "4"
    assert "reset or replaced" in caplog.text


def test_bad_cursor_limit_or_modalities_are_config_errors():
    source = OrthancSource(FakeClient({}), modalities=("CR",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="integer"):
        source.poll("abc", limit=1)
    with pytest.raises(ConfigError, match="at least 1"):
        source.poll(None, limit=0)
    with pytest.raises(ConfigError, match="image modality"):
        OrthancSource(FakeClient({}), modalities=())  # type: ignore[arg-type]


# --- send_folder --------------------------------------------------------------------------------


class FakeStore:
    def __init__(self) -> None:
        self.kept: set[bytes] = set()

    def store_status(self, data: bytes) -> str:
        if b"broken" in data:
            raise PACSError("Orthanc answered HTTP 400 (Bad file format)", status=400)
        if data in self.kept:
            return "AlreadyStored"
        self.kept.add(data)
        return "Success"


def test_send_folder_counts_every_outcome(tmp_path):
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "a.dcm").write_bytes(part10("1.1"))
    (tmp_path / "b.dcm").write_bytes(part10("1.2"))
    (tmp_path / "c.dcm").write_bytes(part10("1.2"))
    (tmp_path / "bad.dcm").write_bytes(part10("1.3") + b"broken")
    (tmp_path / "labels.csv").write_text("file,label\n")
    report = send_folder(FakeStore(), tmp_path)
    assert report.as_dict() == {
        "files": 4, "stored": 2, "already_stored": 1, "refused": 1, "not_dicom": 1,
        "refusals": [{"file": "bad.dcm", "reason": "Orthanc answered HTTP 400 (Bad file format)"}]}


def test_send_folder_bad_input(tmp_path):
    with pytest.raises(DataError, match="expected a folder of DICOM files.*missing"):
        send_folder(FakeStore(), tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="found none \\(1 other file"):
        send_folder(FakeStore(), tmp_path)


def test_unreachable_pacs_stops_the_send(tmp_path):
    (tmp_path / "a.dcm").write_bytes(part10(generate_uid()))

    class Down:
        def store_status(self, data):
            raise PACSError("the PACS at http://x could not be reached")

    with pytest.raises(PACSError, match="could not be reached"):
        send_folder(Down(), tmp_path)


def test_send_command_bad_input_is_one_line_and_exit_2(tmp_path):
    from typer.testing import CliRunner

    from vigil.cli.main import app

    (tmp_path / "a.dcm").write_bytes(part10(generate_uid()))
    (tmp_path / "empty").write_text("")
    runner = CliRunner()
    cases = [
        (["--pacs", "http://127.0.0.1:9", str(tmp_path / "missing")], "expected a folder"),
        (["--pacs", "ftp://x", str(tmp_path)], "must start with http"),
        (["--pacs", "http://x", "--user", "u", str(tmp_path)], "both --user and --password-file"),
        (["--pacs", "http://x", "--user", "u", "--password-file", str(tmp_path / "empty"),
          str(tmp_path)], "password file"),
        (["--pacs", "http://x", "--user", "u", "--password-file", str(tmp_path / "nope"),
          str(tmp_path)], "cannot read the PACS password file"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["imaging", "send", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.strip().count("\n") == 0, result.output
