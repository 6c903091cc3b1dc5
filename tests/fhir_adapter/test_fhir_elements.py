"""Modifier extensions and unknown elements: one policy, the same quarantine in both parsers."""

from __future__ import annotations

import copy
import json

import pytest
from fhir.resources.R4B import codeableconcept, coding, meta, observation, period, quantity
from fhir.resources.R4B import reference as fhir_reference
from fhir_support import DATA, LOINC, UCUM, parse_all
from fhir_support import observation as make_observation

from vigil.fhir_adapter import MappingOptions
from vigil.fhir_adapter import elements as el

NEGATED = "http://example.org/fhir/StructureDefinition/not-measured-on-patient"


def panel() -> dict:
    return make_observation("85354-9", valueQuantity=None, patient="pat-secret",
                            meta={"lastUpdated": "2024-03-01T10:25:00Z"}, component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": 107, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "valueQuantity": {"value": 60, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"}}])


def at(resource: dict, path: tuple) -> dict:
    for step in path:
        resource = resource[step]
    return resource


PLACES = [
    ((), "Observation"), (("code",), "code"), (("code", "coding", 0), "code.coding[0]"),
    (("subject",), "subject"), (("meta",), "meta"), (("component", 1), "component[1]"),
    (("component", 0, "valueQuantity"), "component[0].valueQuantity"),
    (("component", 1, "code", "coding", 0), "component[1].code.coding[0]"),
]


@pytest.mark.parametrize(("path", "where"), PLACES)
def test_a_modifier_extension_is_quarantined_with_its_url(path: tuple, where: str) -> None:
    res = panel()
    at(res, path)["modifierExtension"] = [{"url": NEGATED, "valueBoolean": True}]
    got = parse_all([res, make_observation(rid="ok")])
    assert [q.resource_id for q in got.quarantine] == ["o1"]
    assert got.quarantine[0].reason == (
        f"modifierExtension '{NEGATED}' on {where} is not understood; a modifier extension can "
        "change what the element means")
    assert "pat-secret" not in got.quarantine[0].reason and got.counts.values == 1
    # an understood modifier (data, empty by default) is ignored like an extension
    known = parse_all([res], options=MappingOptions(understood_modifiers=frozenset({NEGATED})))
    if where in ("Observation", "component[1]"):  # where R4 allows a modifierExtension
        assert known.counts.values == 2 and not known.quarantine
    else:  # on a data type R4 allows none: never understood
        assert known.quarantine[0].reason == got.quarantine[0].reason


def test_a_modifier_extension_on_a_single_value_and_its_period() -> None:
    obs = make_observation(effectiveDateTime=None, effectivePeriod={
        "start": "2024-03-01T09:00:00Z", "modifierExtension": [{"url": NEGATED}]})
    (q,) = parse_all([obs]).quarantine
    assert q.reason.startswith(f"modifierExtension '{NEGATED}' on effectivePeriod")
    obs = make_observation()
    obs["valueQuantity"]["modifierExtension"] = [{"valueBoolean": True}]
    (q,) = parse_all([obs]).quarantine
    assert q.reason.startswith("modifierExtension without a url on valueQuantity")


@pytest.mark.parametrize(("path", "where"), PLACES)
def test_an_unknown_element_is_quarantined_by_both_parsers(path: tuple, where: str) -> None:
    res = panel()
    at(res, path)["valueQuantiy"] = {"value": 1}
    got = parse_all([res, make_observation(rid="ok")])
    assert [(q.resource_id, q.reason) for q in got.quarantine] == [
        ("o1", f"unknown element 'valueQuantiy' in {where}; FHIR R4 does not define it there")]


def test_extensions_and_primitive_extensions_are_ignored() -> None:
    obs = make_observation(extension=[{"url": "http://example.org/x", "valueString": "a"}],
                           _status={"extension": [{"url": "http://example.org/y"}]})
    obs["valueQuantity"]["extension"] = [{"url": "http://example.org/z", "valueInteger": 1}]
    obs["valueQuantity"]["_value"] = {"extension": [{"url": "http://example.org/w"}]}
    got = parse_all([obs])
    assert got.counts.values == 1 and not got.quarantine


def test_the_official_examples_with_a_modifier_are_quarantined_by_both() -> None:
    base = json.loads((DATA / "observation-example-bloodpressure.json").read_text())
    fixed = copy.deepcopy(base)
    fixed["effectiveDateTime"] = "2012-09-17T10:30:00Z"
    flagged = copy.deepcopy(fixed)
    flagged["id"] = "flagged"
    flagged["component"][0]["modifierExtension"] = [{"url": NEGATED, "valueBoolean": True}]
    got = parse_all([fixed, flagged])
    assert got.counts.values == 2 and [q.resource_id for q in got.quarantine] == ["flagged"]


def model_names(model: type) -> frozenset[str]:
    return frozenset((f.alias or n) for n, f in model.model_fields.items()) - {"fhir_comments"}


@pytest.mark.parametrize(("ours", "model"), [
    (el.OBSERVATION - {"resourceType"}, observation.Observation),
    (el.COMPONENT, observation.ObservationComponent), (el.META, meta.Meta),
    (el.CODEABLE_CONCEPT, codeableconcept.CodeableConcept), (el.CODING, coding.Coding),
    (el.REFERENCE, fhir_reference.Reference), (el.PERIOD, period.Period),
    (el.QUANTITY, quantity.Quantity),
])
def test_the_element_names_are_those_of_the_fhir_resources_models(ours: frozenset[str],
                                                                   model: type) -> None:
    assert ours == model_names(model)


def test_a_site_lists_understood_modifiers_in_its_settings(tmp_path) -> None:
    from vigil.fhir_adapter import FHIRSettings, NDJSONSource

    settings = FHIRSettings(base_url="http://127.0.0.1:1/fhir", understood_modifiers=[NEGATED])
    assert settings.understood_modifiers == frozenset({NEGATED})
    assert FHIRSettings(base_url="http://127.0.0.1:1/fhir").understood_modifiers == frozenset()
    obs = make_observation(modifierExtension=[{"url": NEGATED, "valueBoolean": True}])
    (tmp_path / "Observation.ndjson").write_text(json.dumps(obs) + "\n")
    with NDJSONSource(tmp_path) as source:
        assert len(source.observations(None).quarantine) == 1
    with NDJSONSource(tmp_path, understood_modifiers=[NEGATED]) as source:
        got = source.observations(None)
        assert not got.quarantine and len(got.observations) == 1


@pytest.mark.parametrize("path", [(), ("valueQuantity",), ("code",), ("code", "coding", 0),
                                  ("subject",), ("meta",)])
def test_the_inline_path_sends_an_unknown_element_to_the_checks(path: tuple) -> None:
    """After a first sighting the fast parser maps such a value inline: not with a stray key."""
    warm = [make_observation(rid=f"w{i}", meta={"lastUpdated": "2024-03-01T10:25:00Z"})
            for i in range(3)]
    odd = make_observation(rid="odd", meta={"lastUpdated": "2024-03-01T10:25:00Z"})
    at(odd, path)["vendorFlag"] = True
    got = parse_all([*warm, odd, *warm])
    assert [q.resource_id for q in got.quarantine] == ["odd"]
    assert got.quarantine[0].reason.startswith("unknown element 'vendorFlag'")
    assert got.counts.values == 6
