"""The fast and the strict parser give identical results on every corpus of the adapter tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fhir_support import (
    DATA,
    LOINC,
    R4_EXAMPLES,
    SYNTHEA,
    UCUM,
    assert_same,
    parse_all,
    pick_patients,
)

from vigil.core.catalog import MEASURED, variable
from vigil.fhir_adapter import (
    parse_fast,
    parse_ndjson,
    parse_ndjson_strict,
    parse_strict,
    write_synth,
)
from vigil.fhir_adapter.mapping import CODE_INDEX


def load(paths: list[Path]) -> list[dict]:
    return [json.loads(p.read_text()) for p in paths]


def test_bundled_official_examples() -> None:
    docs = load(sorted(DATA.glob("*.json")))
    fast, strict = parse_fast(docs), parse_strict(docs)
    assert_same(fast, strict)
    got = {(r.resource_id, r.variable): (r.value, r.effective) for r in fast.observations.records()}
    assert got == {
        # SpO2 95 % coded 2708-6 + 59408-5: pulse oximetry, at 09:30:10+01:00
        ("satO2", "O2Sat"): (95.0, datetime(2014, 12, 5, 8, 30, 10, tzinfo=UTC)),
        # bicarbonate with a SNOMED-coded unit whose text is mmol/L; time from `issued`
        ("f203", "HCO3"): (28.0, datetime(2013, 4, 4, 13, 34, tzinfo=UTC)),
        # mean arterial pressure over a period: its end
        ("map-sitting", "MAP"): (60.0, datetime(2018, 4, 5, 9, 30, 10, tzinfo=UTC)),
    }
    assert [d.resource_id for d in fast.observations.deletions] == ["f202"]  # entered-in-error
    reasons = {q.resource_id: q.reason for q in fast.quarantine}
    assert reasons["heart-rate"] == reasons["blood-pressure"] == (
        "effectiveDateTime has no time of day; an hourly grid cannot place it")
    assert "r6" in reasons and "no effective time" in reasons["r6"]  # CBC report: no times


@pytest.mark.slow
def test_all_official_examples_and_synthea_bundles() -> None:
    paths = sorted(R4_EXAMPLES.glob("*.json")) + sorted(SYNTHEA.glob("*/*.json"))
    if not paths:
        pytest.skip(f"needs the shared data at {R4_EXAMPLES} and {SYNTHEA}")
    assert len(paths) == 36 + 60
    docs = load(paths)
    fast, strict = parse_fast(docs), parse_strict(docs)
    assert_same(fast, strict)
    varied = [v for i, d in enumerate(docs[:36]) for v in variants(d, i)]
    assert_same(parse_fast(varied), parse_strict(varied))
    assert fast.counts.values > 900 and fast.counts.ignored_unknown_code > 2000

    # Independent reading: every Synthea vital or lab with a single catalog LOINC code, a final
    # status, a time of day and a value in the canonical UCUM unit is there, unchanged.
    mapped = {(r.resource_id, r.variable): r.value for r in fast.observations.records()}
    checked = 0
    for doc in docs[36:]:
        for entry in doc["entry"]:
            res = entry["resource"]
            codings = res.get("code", {}).get("coding", [])
            q = res.get("valueQuantity")
            if (res["resourceType"] != "Observation" or len(codings) != 1 or q is None
                    or codings[0]["system"] != LOINC or codings[0]["code"] not in CODE_INDEX
                    or res.get("status") != "final" or "T" not in res.get("effectiveDateTime", "")):
                continue
            name = MEASURED[CODE_INDEX[codings[0]["code"]][0]]
            if q.get("system") != UCUM or q.get("code") != variable(name).unit:
                continue
            if variable(name).is_plausible(float(q["value"])):
                assert mapped[(res["id"], name)] == float(q["value"])
                checked += 1
    assert checked > 500


def variants(doc: dict, i: int) -> list[dict]:
    """Real-shaped variations of one example: its versions in a history Bundle (newest
    first), a modifier extension, an unknown element, an extension (ignored)."""
    if doc.get("resourceType") != "Observation":
        return []
    history = {"resourceType": "Bundle", "type": "history", "entry": [
        {"fullUrl": f"http://example.org/fhir/Observation/{doc.get('id')}",
         "resource": {**doc, "meta": {"versionId": str(n),
                                      "lastUpdated": f"2020-01-0{n}T00:00:00Z"}},
         "request": {"method": "PUT", "url": f"Observation/{doc.get('id')}"}}
        for n in (3, 2, 1)]}
    flagged = {**doc, "id": f"mod-{i}",
               "modifierExtension": [{"url": "http://example.org/negated", "valueBoolean": True}]}
    unknown = {**doc, "id": f"unknown-{i}", "valueQuantityy": {"value": 1}}
    extended = {**doc, "id": f"ext-{i}", "extension": [{"url": "http://example.org/x",
                                                        "valueString": "x"}]}
    return [history, flagged, unknown, extended]


def test_every_bundled_example_and_its_variations_read_the_same_in_all_readers() -> None:
    docs = load(sorted(DATA.glob("*.json")))
    everything = docs + [v for i, d in enumerate(docs) for v in variants(d, i)]
    res = parse_all(everything)  # NDJSON, dicts and strict agree
    reasons = [q.reason for q in res.quarantine]
    assert sum("modifierExtension 'http://example.org/negated'" in r for r in reasons) == 7
    assert sum("unknown element 'valueQuantityy' in Observation" in r for r in reasons) == 7


def test_a_synth_corpus_reads_the_same_with_both_parsers(sample, tmp_path: Path) -> None:
    """``vigil fhir synth`` output (NDJSON files and transaction Bundles), as the demo reads it."""
    summary = write_synth(pick_patients(sample.frame, 3), tmp_path, bundles=True, bundle_size=200)
    blob = (tmp_path / "Observation.ndjson").read_bytes()
    fast = parse_ndjson(blob)
    assert len(fast.observations) > 300
    assert_same(fast, parse_ndjson_strict(blob))
    bundles = [json.loads((tmp_path / n).read_text()) for n in summary.files
               if n.startswith("bundles/")]
    assert_same(parse_fast(bundles), parse_strict(bundles))
