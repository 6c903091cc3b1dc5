"""Imaging write-back as a DICOM SR: TID 1500 content, same bytes and UIDs, own-output test."""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from vigil.core.errors import DataError, ScoringError
from vigil.dicom_adapter import Scanner, build_instance
from vigil.dicom_adapter.scanners import deterministic_uid
from vigil.dicom_adapter.sr import (
    OWN_MANUFACTURER,
    PNEUMONIA,
    SERIES_DESCRIPTION,
    SRStudySink,
    build_sr,
    is_own_output,
    sr_bytes,
    sr_uids,
)
from vigil.imaging import Photometric, PresentationShape
from vigil.runtime.study_contracts import StudyRef, StudyScore

SECRETS = ("PAT-0042-SECRET", "Doe^Jane", "ACC-777-SECRET")
IMAGE = (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)
CR = Scanner("t-12m1", "CR", 12, Photometric.MONOCHROME1, 0.5, -1024.0, -1000.0, 1000.0)
DX = Scanner("t-dx16", "DX", 16, Photometric.MONOCHROME2, 1.0, 0.0, 0.0, 65535.0,
             presentation_shape=PresentationShape.IDENTITY)
# 15:15 at UTC+1 is 14:15 UTC: the SR's dates and times are the scoring time in UTC.
SCORED_AT = datetime(2026, 3, 2, 15, 15, 7, 250000, tzinfo=timezone(timedelta(hours=1)))


def study(scanner: Scanner = CR, n: int = 3) -> list[Dataset]:
    """``n`` instances of one study with identifying values set, read back from bytes."""
    out = []
    for i in range(n):
        ds = build_instance(IMAGE, scanner, key=f"sr-test/{i}")
        ds.PatientID, ds.PatientName, ds.AccessionNumber = SECRETS
        ds.StudyInstanceUID = deterministic_uid("sr-test", scanner.name, "study")
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return out


def score_of(sources: list[Dataset], probability: list[float], *, threshold: float = 0.4,
             role: str = "active", version: str = "1.0.0",
             quarantined: tuple[tuple[str, str], ...] = ()) -> StudyScore:
    ref = StudyRef(str(sources[0].StudyInstanceUID), "orthanc-id", SECRETS[0], ("CR",), SECRETS[2])
    uids = tuple(str(ds.SOPInstanceUID) for ds in sources[: len(probability)])
    p = np.asarray(probability, dtype=np.float64)
    return StudyScore(ref, "imaging-federated", version, role, threshold, SCORED_AT, uids,
                      raw_probability=p / 2, probability=p, calibrated=True,
                      quarantined=quarantined)


def read(data: bytes) -> hd.sr.ComprehensiveSR:
    sr = hd.sr.srread(io.BytesIO(data))
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    return sr


def test_the_sr_holds_the_tid1500_result_of_the_score() -> None:
    sources = study()
    score = score_of(sources, [0.2, 0.55])  # the third instance was not scored
    sr = read(sr_bytes(build_sr(score, sources, site="hospital-a", institution_name="General")))
    assert str(sr.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR Storage
    assert (sr.Modality, sr.Manufacturer) == ("SR", "vigil")
    assert sr.SeriesDescription == SERIES_DESCRIPTION
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    assert (sr.PatientID, sr.AccessionNumber) == (SECRETS[0], SECRETS[2])  # it joins the study
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert sr.InstitutionName == "General"
    assert sr.ContentSequence is not None
    (group,) = sr.content.get_image_measurement_groups()
    assert group.finding_type == PNEUMONIA
    assert group.tracking_identifier == "vigil pneumonia assessment"
    assert [s.referenced_sop_instance_uid for s in group.source_images] == list(
        score.sop_instance_uids)
    (measurement,) = group.get_measurements()
    assert measurement.name == codes.DCM.Probability and measurement.unit == codes.UCUM.NoUnits
    assert measurement.value == pytest.approx(0.55)  # the study's: max over its scored images
    for node in (group[0], measurement[0]):  # TID 4019 Algorithm Identification, in both
        items = node.ContentSequence
        assert [i.value for i in items.find(codes.DCM.AlgorithmName)] == ["imaging-federated"]
        assert [i.value for i in items.find(codes.DCM.AlgorithmVersion)] == ["1.0.0"]
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.name == PNEUMONIA and evaluation.value == codes.SCT.Present
    # CurrentRequestedProcedureEvidenceSequence references exactly the scored instances.
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    referenced = {str(sop.ReferencedSOPInstanceUID) for series in evidence.ReferencedSeriesSequence
                  for sop in series.ReferencedSOPSequence}
    assert referenced == set(score.sop_instance_uids)


@pytest.mark.parametrize(("p", "threshold", "expected"), [
    (0.39, 0.4, codes.SCT.Absent), (0.4, 0.4, codes.SCT.Present), (0.9, 0.4, codes.SCT.Present),
    (0.0, 0.05, codes.SCT.Absent)])
def test_the_finding_follows_the_site_calibrated_decision(p: float, threshold: float,
                                                          expected) -> None:  # type: ignore[no-untyped-def]
    sources = study(n=1)
    sr = read(sr_bytes(build_sr(score_of(sources, [p], threshold=threshold), sources, site="a")))
    (group,) = sr.content.get_image_measurement_groups()
    assert group.get_qualitative_evaluations()[0].value == expected


def _dates(ds: Dataset) -> list[str]:
    out = []
    for element in ds.iterall():
        if element.VR in ("DA", "DT", "TM") and element.value not in (None, ""):
            out.append(f"{element.keyword}={element.value}")
    return out


def test_the_same_score_gives_the_same_bytes_with_no_wall_clock_time() -> None:
    sources = study()
    score = score_of(sources, [0.2, 0.55, 0.1])
    first = sr_bytes(build_sr(score, sources, site="a"))
    again = sr_bytes(build_sr(score, list(reversed(sources)), site="a"))  # order is irrelevant
    assert first == again
    ds = pydicom.dcmread(io.BytesIO(first))
    # Every date/time is the scoring time in UTC (14:15:07.25) or the source study's (copied).
    for item in _dates(ds):
        keyword, value = item.split("=", 1)
        if keyword in ("StudyDate", "StudyTime"):
            continue
        assert value.startswith(("20260302", "141507.25")), item
    assert ds.TimezoneOffsetFromUTC == "+0000"
    assert (ds.ContentDate, ds.ContentTime) == ("20260302", "141507.250000")


def test_uids_are_deterministic_2_25_uids_that_change_with_model_version_role_and_site() -> None:
    sources = study()
    score = score_of(sources, [0.5])
    sr = build_sr(score, sources, site="a")
    series, sop = sr_uids(site="a", study_uid=score.study.study_uid, model_name="imaging-federated",
                          model_version="1.0.0", role="active")
    assert (str(sr.SeriesInstanceUID), str(sr.SOPInstanceUID)) == (series, sop)
    for uid in (series, sop):
        assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    others = {
        build_sr(score_of(sources, [0.5], version="1.0.1"), sources, site="a").SOPInstanceUID,
        build_sr(score_of(sources, [0.5], role="shadow"), sources, site="a").SOPInstanceUID,
        build_sr(score, sources, site="b").SOPInstanceUID,
        sop,
    }
    assert len(others) == 4
    # A different probability is the same result slot: same UIDs (the PACS keeps the first copy).
    assert build_sr(score_of(sources, [0.9]), sources, site="a").SOPInstanceUID == sop


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("scanner", [CR, DX], ids=["CR", "DX"])
def test_dciodvfy_finds_no_error_or_warning(scanner: Scanner, tmp_path: Path) -> None:
    sources = study(scanner)
    path = tmp_path / "sr.dcm"
    path.write_bytes(sr_bytes(build_sr(score_of(sources, [0.3, 0.7]), sources, site="a")))
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "ComprehensiveSR" in report  # it recognised the IOD it checked
    assert not re.search(r"^(Error|Warning)", report, flags=re.M), report


def test_dciodvfy_fails_an_sr_missing_a_type_1_attribute(tmp_path: Path) -> None:
    """The check above can fail: dciodvfy reports a removed CompletionFlag."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    sources = study(n=1)
    sr = build_sr(score_of(sources, [0.3]), sources, site="a")
    del sr.CompletionFlag
    path = tmp_path / "bad.dcm"
    path.write_bytes(sr_bytes(sr))
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "CompletionFlag" in done.stdout + done.stderr


def test_absent_type_2_patient_and_study_attributes_are_written_empty(tmp_path: Path) -> None:
    sources = study(n=1)
    for keyword in ("PatientSex", "PatientBirthDate", "StudyID", "ReferringPhysicianName"):
        delattr(sources[0], keyword)
    data = sr_bytes(build_sr(score_of(sources, [0.2]), sources, site="a"))
    sr = pydicom.dcmread(io.BytesIO(data))
    assert (sr.PatientSex, sr.PatientBirthDate, sr.StudyID) == ("", "", "")
    assert "PatientSex" not in sources[0]  # the caller's dataset is left as it was
    if shutil.which("dciodvfy") is not None:
        (tmp_path / "sr.dcm").write_bytes(data)
        done = subprocess.run(["dciodvfy", str(tmp_path / "sr.dcm")], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def test_is_own_output_from_a_dataset_keyword_tags_or_dicom_json() -> None:
    sources = study(n=1)
    own = pydicom.dcmread(io.BytesIO(sr_bytes(build_sr(score_of(sources, [0.3]), sources,
                                                       site="a"))))
    assert is_own_output(own)
    assert is_own_output({"Modality": "SR", "Manufacturer": "vigil",
                          "SeriesDescription": SERIES_DESCRIPTION})  # Orthanc MainDicomTags
    header = Dataset()
    header.Modality, header.Manufacturer = "SR", OWN_MANUFACTURER
    header.SOPClassUID = own.SOPClassUID
    assert is_own_output(header.to_json_dict())  # QIDO-RS / WADO-RS metadata
    assert not is_own_output(sources[0])  # an acquired image
    assert not is_own_output({"Modality": "SR", "Manufacturer": "Other AI Inc"})
    assert not is_own_output({"Modality": "SR", "Manufacturer": "vigil simulated scanner x"})
    assert not is_own_output({"Modality": "CR", "Manufacturer": "vigil"})
    assert not is_own_output({"Modality": "SR", "Manufacturer": "vigil",
                              "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1"})  # a CR image class
    assert not is_own_output({})


def test_the_sink_stores_once_per_role_and_skips_shadow_and_empty_scores() -> None:
    sources = study()
    stored: list[bytes] = []
    sink = SRStudySink(stored.append, site="a")
    assert sink.name == "dicom-sr"
    sink.write(score_of(sources, [0.3, 0.8]), sources)
    sink.write(score_of(sources, [0.3, 0.8]), sources)
    assert len(stored) == 2 and stored[0] == stored[1]  # the PACS keeps one (same UID)
    sink.write(score_of(sources, [0.3], role="shadow"), sources)
    empty = score_of(sources, [], quarantined=((str(sources[0].SOPInstanceUID), "RGB"),))
    sink.write(empty, sources)
    assert len(stored) == 2
    shadows: list[bytes] = []
    SRStudySink(shadows.append, site="a", include_shadow=True).write(
        score_of(sources, [0.3], role="shadow"), sources)
    shadow = pydicom.dcmread(io.BytesIO(shadows[0]))
    assert shadow.SeriesDescription == SERIES_DESCRIPTION + " (shadow)"
    assert shadow.SOPInstanceUID != pydicom.dcmread(io.BytesIO(stored[0])).SOPInstanceUID
    assert SECRETS[0] not in repr(sink)


def test_bad_scores_and_sources_raise_without_identifiers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sources = study()
    cases = [
        (ScoringError, "expected a study probability and threshold in \\[0, 1\\], got nan",
         score_of(sources, [float("nan")]), sources),
        (ScoringError, "got 1.5", score_of(sources, [1.5]), sources),
        (DataError, "naive", replace(score_of(sources, [0.2]), scored_at=datetime(2026, 1, 1)),
         sources),
        (DataError, "a source instance for each of the 2 scored instances, 1 missing",
         score_of(sources, [0.2, 0.3]), sources[:1]),
        (DataError, "at least one scored instance", score_of(sources, []), sources),
    ]
    moved = study(n=1)[0]
    moved.StudyInstanceUID = "1.2.3.4"
    cases.append((DataError, "got 1 from another study", score_of(sources, [0.2]), [moved]))
    lacking = study(n=1)
    del lacking[0].SOPClassUID
    cases.append((DataError, "lack an attribute", score_of(lacking, [0.2]), lacking))
    for error, message, score, given in cases:
        with pytest.raises(error, match=message) as info:
            build_sr(score, given, site="a")
        for secret in (*SECRETS, score.study.study_uid, *score.sop_instance_uids):
            assert secret not in str(info.value)
    build_sr(score_of(sources, [0.2]), sources, site="a")
    for secret in (*SECRETS, *(str(ds.SOPInstanceUID) for ds in sources)):
        assert secret not in caplog.text  # highdicom's own INFO/WARNING records are kept out
