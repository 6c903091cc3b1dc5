"""``vigil fhir synth``: the time rule, R4B validity, the round trip back to the PhysioNet rows."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.location import Location
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir_support import pick_patients
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.fhir_adapter import (
    NDJSONSource,
    Stay,
    grid_from_observations,
    icu_admission,
    write_synth,
)
from vigil.fhir_adapter.synth import birth_date_for, location_resources, patient_resources


def test_icu_admission_rule() -> None:
    u = int.from_bytes(hashlib.sha256(b"vigil-synth-v1:p000001").digest()[:8], "big")
    assert icu_admission("p000001") == datetime(2020, 1, 1, tzinfo=UTC) + timedelta(
        minutes=u % 525600)
    times = [icu_admission(f"p{i:06d}") for i in range(200)]
    assert all(datetime(2020, 1, 1, tzinfo=UTC) <= t < datetime(2020, 12, 31, tzinfo=UTC)
               and t.second == 0 for t in times)
    assert len(set(times)) == 200


@settings(max_examples=300, deadline=None)
@given(hundredths=st.one_of(st.integers(1400, 8999), st.just(10000)),
       minute=st.integers(0, 525599))
def test_birth_date_gives_the_age_back(hundredths: int, minute: int) -> None:
    age = float(np.float32(hundredths / 100))  # as the parquet holds it
    admitted = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=minute)
    stay = Stay(patient="p", encounter="e", icu_admission=admitted, unit=None, gender=None,
                birth_date=datetime.fromisoformat(birth_date_for(age, admitted)).date(),
                hospital_admission=None)
    assert np.float32(stay.age) == np.float32(age)


def test_every_resource_validates_with_r4b(sample, tmp_path: Path) -> None:
    frame = pick_patients(sample.frame, 4)
    summary = write_synth(frame, tmp_path, bundles=True, bundle_size=300)
    kinds = {"Location": Location, "Patient": Patient, "Encounter": Encounter,
             "Observation": Observation}
    for name, model in kinds.items():
        for line in (tmp_path / f"{name}.ndjson").read_bytes().splitlines():
            model.model_validate(orjson.loads(line))
    bundles = [n for n in summary.files if n.startswith("bundles/")]
    assert len(bundles) == summary.bundles > 4
    for name in bundles:
        bundle = Bundle.model_validate(json.loads((tmp_path / name).read_text()))
        assert bundle.type == "transaction" and len(bundle.entry) <= 300
        assert all(e.request.method == "PUT" for e in bundle.entry)
    assert summary.observations == int(frame.iloc[:, 2:36].notna().to_numpy().sum())


def test_encounter_period_and_units(sample) -> None:
    rows = pick_patients(sample.frame, 1).copy()
    patient, encounter, observations = patient_resources(rows)
    admitted = icu_admission(patient["id"])
    assert encounter["location"][0]["period"]["start"] == admitted.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert encounter["location"][0]["location"]["reference"] == "Location/a-micu"
    hosp = datetime.fromisoformat(encounter["period"]["start"])
    assert (hosp - admitted).total_seconds() == round(float(rows["HospAdmTime"].iloc[0]) * 3600)
    first = observations[0]
    hour = int(rows["ICULOS"].iloc[np.flatnonzero(rows.iloc[:, 2:36].notna().any(axis=1))[0]])
    assert first["effectiveDateTime"] == (admitted + timedelta(hours=hour)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    rows["HospAdmTime"] = np.nan
    _, no_hosp, _ = patient_resources(rows)
    assert "period" not in no_hosp
    codes = {c["code"] for loc in location_resources(("B",)) for t in loc["type"]
             for c in t["coding"]}
    assert codes == {"ICU", "MICU", "SICU"}


@pytest.mark.parametrize("n", [40, pytest.param(500, marks=pytest.mark.slow)])
def test_round_trip_on_real_patients(sample, tmp_path: Path, n: int) -> None:
    table = sample.select(np.arange(n))
    write_synth(table.frame, tmp_path)
    with NDJSONSource(tmp_path) as source:
        source.check()
        census = source.census()
        got = source.observations(None)
    original = table.grid
    assert census.patients == original.patient_ids
    assert got.counts.values + got.counts.quarantined == got.counts.resources
    last = original.hours[original.starts[1:] - 1]
    grid = grid_from_observations(census, got.observations, until=[
        s.icu_admission + timedelta(hours=int(h)) for s, h in zip(census.stays, last, strict=True)])
    assert grid.n_rows == original.n_rows + int((original.hours[original.starts[:-1]] - 1).sum())
    for i in range(original.n_patients):
        a = original.values[original.starts[i]:original.starts[i + 1]]
        lead = int(original.hours[original.starts[i]]) - 1
        b = grid.values[grid.starts[i] + lead:grid.starts[i + 1]]
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-3)
        assert np.isnan(grid.values[grid.starts[i]:grid.starts[i] + lead, :34]).all()


def test_ndjson_source_windows_by_last_updated(sample, tmp_path: Path) -> None:
    frame = pick_patients(sample.frame, 2)
    write_synth(frame, tmp_path)
    with NDJSONSource(tmp_path) as source:
        census = source.census()
        start = min(s.icu_admission for s in census.stays)
        everything = source.observations(None)
        first = source.observations(None, start + timedelta(hours=5))
        rest = source.observations(first.watermark, None)
        only_one = source.observations(None, patients=[census.patients[0]])
        early = source.census(at=start)
    assert first.watermark == start + timedelta(hours=5)
    assert len(first.observations) + len(rest.observations) == len(everything.observations)
    cut = int((start + timedelta(hours=5)).timestamp() * 1e6)
    assert (first.observations.effective <= cut).all()
    assert set(only_one.observations.patient) == {census.patients[0]}
    assert len(early) == 1


def test_cli_synth(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["fhir", "synth", "--out", str(tmp_path), "--patients", "3",
                                      "--split", "test", "--bundles", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["patients"] == 3 and summary["bundles"] >= 2
    assert len((tmp_path / "Patient.ndjson").read_text().splitlines()) == 3
    ingest = CliRunner().invoke(app, ["fhir", "ingest", "--ndjson", str(tmp_path), "--json"])
    assert ingest.exit_code == 0, ingest.output
    report = json.loads(ingest.stdout)
    assert report["stays"] == 3
    assert report["counts"]["values"] + report["counts"]["quarantined"] == summary["observations"]
    assert math.isfinite(report["counts"]["resources"])
