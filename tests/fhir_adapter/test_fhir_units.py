"""The adapter records the unit each value came in, and counts them per variable."""

import numpy as np
import orjson
import pytest
from fhir_support import assert_same, observation, parse_all

from vigil.fhir_adapter import parse_ndjson, parse_ndjson_strict
from vigil.fhir_adapter.records import SOURCE_UNITS, ObservationBatch

TEMP, CREATININE, BP_PANEL = "8310-5", "2160-0", "85354-9"


def units_of(result):
    return [None if u < 0 else SOURCE_UNITS[u] for u in result.observations.unit.tolist()]


def test_one_celsius_and_two_fahrenheit_temperatures_are_counted_by_source_unit():
    result = parse_all([
        observation(TEMP, 37.0, "Cel", rid="t1"),
        observation(TEMP, 98.6, "[degF]", rid="t2"),
        observation(TEMP, 99.5, "[degF]", rid="t3"),
    ])
    assert result.observations.unit_counts() == {"Temp": {"Cel": 1, "[degF]": 2}}
    np.testing.assert_allclose(result.observations.value, [37.0, 37.0, 37.5])


def test_quarantined_values_are_not_counted_and_every_reader_agrees_on_each_unit():
    resources = [
        observation(TEMP, 98.6, "Cel", rid="t1"),  # Fahrenheit number labelled Celsius
        observation(CREATININE, 88.4, "umol/L", rid="c1"),
        observation(CREATININE, 1.2, "mg/dL", rid="c2"),
        observation(TEMP, 37.2, "Cel", rid="t2"),
        observation(TEMP, 37.0, "furlong", rid="t3"),  # unknown unit
    ]
    result = parse_all(resources)
    assert len(result.quarantine) == 2
    assert result.observations.unit_counts() == {"Creatinine": {"mg/dL": 1, "umol/L": 1},
                                                 "Temp": {"Cel": 1}}
    assert units_of(result) == ["umol/L", "mg/dL", "Cel"]
    # the NDJSON reader's inline path (values after the first sighting) records them too
    lines = b"\n".join(orjson.dumps(r) for r in resources)
    twice = parse_ndjson(lines + b"\n" + lines.replace(b'"id":"', b'"id":"again-'))
    assert_same(twice, parse_ndjson_strict(lines + b"\n" + lines.replace(b'"id":"',
                                                                          b'"id":"again-')))
    assert units_of(twice) == ["umol/L", "mg/dL", "Cel"] * 2


def test_a_unit_text_without_code_is_counted_under_the_text():
    panel = observation(BP_PANEL, None, None, rid="bp1")
    panel.pop("valueQuantity")
    panel["component"] = [
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
         "valueQuantity": {"value": 120.0, "unit": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
         "valueQuantity": {"value": 80.0, "system": "http://unitsofmeasure.org",
                           "code": "mm[Hg]", "unit": "mmHg"}},
    ]
    result = parse_all([panel])
    assert result.observations.unit_counts() == {"DBP": {"mm[Hg]": 1}, "SBP": {"mm[Hg]": 1}}


def test_take_and_concat_keep_the_units_and_a_batch_without_them_counts_nothing():
    result = parse_all([observation(TEMP, 37.0, "Cel", rid="t1"),
                        observation(TEMP, 98.6, "[degF]", rid="t2")])
    batch = result.observations
    assert batch.take(np.array([1])).unit_counts() == {"Temp": {"[degF]": 1}}
    stored = ObservationBatch(patient=batch.patient, variable=batch.variable,
                              effective=batch.effective, value=batch.value,
                              resource_id=batch.resource_id, last_updated=batch.last_updated,
                              seq=batch.seq)
    assert stored.unit_counts() == {}
    both = ObservationBatch.concat([batch, stored])
    assert both.unit.tolist()[2:] == [-1, -1]
    assert both.unit_counts() == {"Temp": {"Cel": 1, "[degF]": 1}}


def test_concat_with_masks_needs_one_mask_per_batch():
    batch = parse_all([observation(TEMP, 37.0, "Cel", rid="t1")]).observations
    joined = ObservationBatch.concat([batch, batch], masks=[np.array([True]), np.array([False])])
    assert joined.resource_id.tolist() == ["t1"]
    assert joined.unit.tolist() == [SOURCE_UNITS.index("Cel")]
    with pytest.raises(ValueError, match=r"one mask per batch \(2\), got 1"):
        ObservationBatch.concat([batch, batch], masks=[np.array([True])])
