"""The SR template path: byte-identical to highdicom's SR for the same inputs, shape by shape."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from test_dicom_sr import CR, DX, IMAGE, score_of

from vigil.dicom_adapter import build_instance
from vigil.dicom_adapter.scanners import deterministic_uid
from vigil.dicom_adapter.sr import SRStudySink, build_sr, sr_bytes


def varied_study(k: int, n: int, scanner=CR, *, series: int = 1) -> list[Dataset]:
    """Study ``k``: its own UIDs, patient values of varying length, ``series`` series."""
    out = []
    for i in range(n):
        ds = build_instance(IMAGE, scanner, key=f"tpl/{k}/{i}")
        ds.PatientID = "P" + "7" * (k % 5) + str(k)
        ds.PatientName = f"Doe^{'J' * (1 + k % 4)}"
        ds.AccessionNumber = f"A{k}" * (1 + k % 3)
        ds.StudyDate, ds.StudyTime = f"2026030{1 + k % 9}", "1415" if k % 2 else "141507.25"
        if k % 4 == 3:  # Latin-1 names: the character set is copied, the names re-encoded
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.PatientName = f"Müller^Zoë{k}"
            ds.StudyDescription = "Thorax ä.p."
        ds.StudyInstanceUID = deterministic_uid("tpl", str(k), "study")
        ds.SeriesInstanceUID = deterministic_uid("tpl", str(k), "series", str(i % series))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
    return out


def golden(score, sources, sink: SRStudySink) -> bytes:
    """Today's path: highdicom builds the SR, pydicom writes it."""
    return sr_bytes(build_sr(score, sources, site=sink.site,
                             institution_name=sink.institution_name))


@pytest.mark.parametrize("scanner", [CR, DX], ids=["cr", "dx"])
@pytest.mark.parametrize(("n", "series"), [(1, 1), (3, 1), (3, 2)])
def test_templated_srs_are_byte_identical_to_highdicoms(scanner, n: int, series: int) -> None:
    sink = SRStudySink(lambda _: None, site="hospital-a", institution_name="General")
    rng = np.random.default_rng(n * 10 + series)
    for k in range(6):  # the four probability edges, a Latin-1 study (k = 3)
        sources = varied_study(k, n, scanner, series=series)
        p = rng.random(n)
        p[0] = [0.0, 1.0, 1 / 3, 0.5][k % 4]  # edges and a DS that needs rounding
        score = replace(score_of(sources, list(p), threshold=float(rng.random())),
                        scored_at=score_of(sources, [0.1]).scored_at
                        + timedelta(seconds=float(rng.random() * 1e6)))
        assert sink.encode(score, sources) == golden(score, sources, sink), k
    t = sink.templates
    assert t.refused == 0 and t.compiled >= 1 and t.hits >= 6 - t.compiled


def test_a_new_shape_is_built_by_highdicom_and_then_templated() -> None:
    sink = SRStudySink(lambda _: None, site="hospital-a")
    one, two = varied_study(1, 1), varied_study(2, 1)
    for score in (score_of(one, [0.9]), score_of(two, [0.8]), score_of(two, [0.1])):
        assert sink.encode(score, two if score.study_probability < 0.9 else one) == golden(
            score, two if score.study_probability < 0.9 else one, sink)
    # one shape: the decision (positive twice, then negative) is a value of the template
    assert (sink.templates.compiled, sink.templates.hits) == (1, 2)


def test_decisions_and_scanners_equipment_are_values_not_shapes() -> None:
    """Four scanners' equipment (names of other lengths, one empty), both decisions: one build."""
    sink = SRStudySink(lambda _: None, site="hospital-a", institution_name="General")
    equipment = [("Acme Medical", "CR-1"), ("Be Imaging Systems GmbH", "STATION-LONG-16C"),
                 ("X", ""), ("Acme Medical", "CR-2")]
    for k in range(8):
        sources = varied_study(10 + 2 * k, 1)  # same character set (k % 4 != 3) throughout
        manufacturer, station = equipment[k % 4]
        for ds in sources:
            ds.Manufacturer, ds.StationName = manufacturer, station
            ds.SoftwareVersions = ["1.0", f"fw {k}"] if k % 2 else f"v{k}"
        score = score_of(sources, [0.9 if k % 3 else 0.1])
        assert sink.encode(score, sources) == golden(score, sources, sink), k
    # the empty StationName is part of the shape (one more), the rest are values
    assert (sink.templates.compiled, sink.templates.refused) == (2, 0)
    assert sink.templates.hits == 6


def test_a_template_that_misses_the_second_build_is_never_used(monkeypatch) -> None:
    """The second check (every value slot changed) is real: a divergent build refuses the shape."""
    sink = SRStudySink(lambda _: None, site="hospital-a")
    sources = varied_study(5, 1)
    real = sink._build
    builds = []

    def divergent(score, srcs):
        builds.append(score.positive)
        return real(score, srcs) + (b"x" if len(builds) == 1 else b"")

    monkeypatch.setattr(sink, "_build", divergent)
    score = score_of(sources, [0.9])
    for _ in range(2):
        assert sink.encode(score, sources) == golden(score, sources, sink)
    assert builds == [False]  # the variant has the opposite decision
    assert (sink.templates.compiled, sink.templates.refused, sink.templates.hits) == (0, 1, 0)


def test_a_template_that_cannot_reproduce_its_sr_is_never_used(monkeypatch) -> None:
    from vigil.dicom_adapter import sr_template

    sink = SRStudySink(lambda _: None, site="hospital-a")
    real = sr_template._render
    monkeypatch.setattr(sr_template, "_render", lambda parts, values: real(parts, values) + b"x")
    sources = varied_study(3, 1)
    score = score_of(sources, [0.6])
    for _ in range(3):
        assert sink.encode(score, sources) == golden(score, sources, sink)
    assert (sink.templates.compiled, sink.templates.refused, sink.templates.hits) == (0, 1, 0)


def test_the_template_path_keeps_build_srs_errors() -> None:
    sink = SRStudySink(lambda _: None, site="hospital-a")
    sources = varied_study(4, 2)
    sink.encode(score_of(sources, [0.2]), sources)  # compile the shape
    with pytest.raises(Exception, match="probability and threshold in"):
        sink.encode(score_of(sources, [1.5]), sources)
    with pytest.raises(Exception, match="1 missing"):
        sink.encode(score_of(sources, [0.2, 0.3]), sources[:1])
