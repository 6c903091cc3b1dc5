"""Feed faults against real processes: `vigil serve --once`, `vigil replay`, `vigil fhir ingest`.

Each scenario writes a small ICU feed charted up to the present (so that a healthy
cycle is ``ok``), breaks it the way a hospital interface does, and runs the real
commands: over NDJSON files, and over the FHIR test server (sekmet) on loopback.
"""

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rt_support (no test packages)
from rt_support import FHIRServer, make_package, write_trusted_key  # noqa: E402

from vigil.runtime.store import StateStore  # noqa: E402

pytestmark = pytest.mark.slow

VIGIL = Path(sys.executable).with_name("vigil")
LOINC, UCUM, SNOMED = "http://loinc.org", "http://unitsofmeasure.org", "http://snomed.info/sct"
VITALS = (("8867-4", "/min", 80.0), ("9279-1", "/min", 18.0), ("8310-5", "Cel", 37.0),
          ("2708-6", "%", 97.0))


def stamp(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def obs(rid: str, patient: str, when: datetime, code: str, unit: str, value: float, *,
        system: str = LOINC, updated: datetime | None = None) -> dict:
    """An Observation with no ``category`` (many feeds leave it out)."""
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "meta": {"lastUpdated": stamp(updated or when)},
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": stamp(when),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}


def icu_feed(now: datetime, *, patients: int = 3, hours: int = 10, system: str = LOINC
             ) -> dict[str, list[dict]]:
    """An ICU typed in SNOMED CT, with a ward and beds inside it (``partOf``), and its patients."""
    locations = [
        {"resourceType": "Location", "id": "icu-a",
         "type": [{"coding": [{"system": SNOMED, "code": "309904001"}]}]},
        {"resourceType": "Location", "id": "icu-a-ward", "partOf": {"reference": "Location/icu-a"}},
    ]
    out: dict[str, list[dict]] = {"Location": locations, "Patient": [], "Encounter": [],
                                  "Observation": []}
    admitted = now - timedelta(hours=hours)
    for i in range(patients):
        pid, bed = f"fp{i}", f"icu-a-bed{i}"
        locations.append({"resourceType": "Location", "id": bed,
                          "partOf": {"reference": "Location/icu-a-ward"}})
        out["Patient"].append({"resourceType": "Patient", "id": pid, "gender": "female",
                               "birthDate": "1950-01-01"})
        out["Encounter"].append({
            "resourceType": "Encounter", "id": f"enc-{pid}", "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                      "code": "IMP"},
            "subject": {"reference": f"Patient/{pid}"}, "period": {"start": stamp(admitted)},
            "location": [{"location": {"reference": f"Location/{bed}"},
                          "period": {"start": stamp(admitted)}}]})
        for h in range(hours + 1):
            when = admitted + timedelta(hours=h, minutes=-5 if h else 5)
            for code, unit, value in VITALS:
                code = code if system == LOINC else f"LOCAL-{code}"
                out["Observation"].append(obs(f"o-{pid}-{code}-{h}", pid, when, code, unit,
                                              value + i, system=system))
    return out


def write_ndjson(directory: Path, feed: dict[str, list[dict]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for rtype, resources in feed.items():
        (directory / f"{rtype}.ndjson").write_bytes(
            b"".join(orjson.dumps(r) + b"\n" for r in resources))


def site_toml(root: Path, data: str, extra: str = "") -> Path:
    path = root / "site.toml"
    path.write_text(f"""site_id = "faults"
[data]
{data}
[store]
url = "sqlite:///{root / 'state.db'}"
[models]
dir = "{root / 'models'}"
public_key = "{write_trusted_key(root)}"
[ops]
enabled = false
[scheduler]
minute = "*"
{extra}""")
    make_package(root / "pkg")
    subprocess.run([VIGIL, "model", "install", root / "pkg", "--config", path], check=True,
                   capture_output=True, timeout=120)
    return path


def serve_once(site: Path) -> tuple[int, dict, str]:
    done = subprocess.run([VIGIL, "serve", "--config", site, "--once"], capture_output=True,
                          text=True, timeout=300)
    return done.returncode, json.loads(done.stdout), done.stderr


def next_minute() -> None:
    """Wait for the next one-minute tick (the site runs a cycle every minute)."""
    now = time.time()
    time.sleep(60 - now % 60 + 0.5)


def vigil(*args) -> subprocess.CompletedProcess:
    return subprocess.run([VIGIL, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_ndjson_feed_faults_degrade_quarantine_and_lose_nothing(tmp_path):
    now = datetime.now(UTC)
    feed_dir, out = tmp_path / "feed", tmp_path / "out"
    feed = icu_feed(now)
    write_ndjson(feed_dir, feed)
    site = site_toml(tmp_path, f'source = "ndjson"\nndjson_dir = "{feed_dir}"\n'
                               f'writeback = "ndjson"\nwriteback_dir = "{out}"')
    code, first, err = serve_once(site)
    assert code == 0 and first["status"] == "ok", (first, err)
    assert first["counts"]["census"] == first["counts"]["scored"] == 3
    assert first["counts"]["read"] == len(feed["Observation"]) and first["ignored_codes"] == {}
    ras = (out / "RiskAssessment.ndjson").read_bytes().splitlines()
    assert len(ras) == 3

    # the interface breaks: every Encounter line mangled (truncated, a BOM, a foreign
    # resource); a value stamped in the year 2999; a value charted late with an old time
    encounters = [orjson.dumps(e) for e in feed["Encounter"]]
    (feed_dir / "Encounter.ndjson").write_bytes(b"\n".join([
        encounters[0][:40], b"\xef\xbb\xbf" + encounters[1],
        orjson.dumps({"resourceType": "Observation", "id": "stray"})]) + b"\n")
    late_time = now - timedelta(hours=3)
    with (feed_dir / "Observation.ndjson").open("ab") as fh:
        fh.write(orjson.dumps(obs("o-future", "fp0", now, "8867-4", "/min", 90.0,
                                  updated=datetime(2999, 1, 1, tzinfo=UTC))) + b"\n")
        fh.write(orjson.dumps({**obs("o-late", "fp1", late_time, "8867-4", "/min", 77.0),
                               "meta": {}}) + b"\n")
    next_minute()
    code, broken, err = serve_once(site)
    assert code == 1 and broken["status"] == "degraded", broken
    assert broken["reason"].startswith("the census is empty (it had 3 patients)")
    assert broken["counts"]["quarantined"] >= 3 and broken["counts"]["census"] == 0
    assert len((out / "RiskAssessment.ndjson").read_bytes().splitlines()) == 3  # none written
    for pid in ("fp0", "fp1", "fp2", "enc-fp"):
        assert pid not in broken["reason"] and pid not in err
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", read_only=True) as store:
        mark = datetime.fromisoformat(store.watermark(f"ndjson:{feed_dir.resolve()}"))
        reasons = [r[0] for r in store.conn.execute("SELECT reason FROM quarantine")]
    assert mark <= datetime.now(UTC)  # not held at the year 2999
    assert "malformed NDJSON line 1 of Encounter.ndjson: not JSON (truncated?)" in reasons
    assert any("byte-order mark" in r for r in reasons)
    assert "line 3 of Encounter.ndjson: expected a Encounter, got 'Observation'" in reasons

    # repaired: the census is back, the late value is in the store, the cycle is ok
    write_ndjson(feed_dir, {"Encounter": feed["Encounter"]})
    next_minute()
    code, repaired, err = serve_once(site)
    assert code == 0 and repaired["status"] == "ok", (repaired, err)
    assert repaired["counts"]["census"] == repaired["counts"]["scored"] == 3
    with StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", read_only=True) as store:
        ids = {r[0] for r in store.conn.execute("SELECT resource_id FROM observations")}
    assert {"o-late", "o-future"} <= ids


def test_a_feed_in_local_codes_is_an_error_and_a_degraded_cycle(tmp_path):
    now = datetime.now(UTC)
    feed_dir, out = tmp_path / "feed", tmp_path / "out"
    write_ndjson(feed_dir, icu_feed(now, system="urn:site:vitals"))
    ingest = vigil("fhir", "ingest", "--ndjson", feed_dir)
    assert ingest.returncode == 2 and "Traceback" not in ingest.stderr
    assert "none mapped to a catalog variable" in ingest.stderr
    assert "urn:site:vitals|LOCAL-" in ingest.stderr
    make_package(tmp_path / "pkg-replay")
    replay = vigil("replay", "--model", tmp_path / "pkg-replay", "--ndjson", feed_dir,
                   "--out", tmp_path / "scores.parquet", "--json")
    assert replay.returncode == 2 and "none mapped" in replay.stderr
    assert not (tmp_path / "scores.parquet").exists()
    site = site_toml(tmp_path, f'source = "ndjson"\nndjson_dir = "{feed_dir}"\n'
                               f'writeback = "ndjson"\nwriteback_dir = "{out}"')
    code, record, _ = serve_once(site)
    assert code == 1 and record["status"] == "degraded"
    assert "none mapped to a catalog variable" in record["reason"]
    assert record["counts"]["ignored_unknown_code"] == record["counts"]["read"] > 0
    assert sum(record["ignored_codes"].values()) == record["counts"]["read"]
    assert not (out / "RiskAssessment.ndjson").exists() or not (
        out / "RiskAssessment.ndjson").read_bytes().strip()


@pytest.fixture()
def server(tmp_path):
    server = FHIRServer(tmp_path / "server").start()
    yield server
    server.stop()


def test_rest_feed_without_category_in_beds_of_a_snomed_icu(tmp_path, server):
    now = datetime.now(UTC)
    feed = icu_feed(now)
    entries = [{"resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for rtype in ("Location", "Patient", "Encounter", "Observation")
               for r in feed[rtype]]
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "feed.json").write_bytes(orjson.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    server.load(bundles)
    site = site_toml(tmp_path, 'source = "fhir"\nwriteback = "fhir"',
                     f'[fhir]\nbase_url = "{server.base_url}"\nretries = 0\n')
    code, record, err = serve_once(site)
    assert code == 0 and record["status"] == "ok", (record, err)
    assert record["counts"]["census"] == record["counts"]["scored"] == 3
    assert record["counts"]["observations"] == len(feed["Observation"])
    assert len(server.search("RiskAssessment")) == 3

    # replay from the server; --config sets the source options (here a category filter,
    # which this feed does not fill: an error naming the cause, not zero scores)
    make_package(tmp_path / "pkg-replay")
    args = ["replay", "--model", tmp_path / "pkg-replay", "--fhir-url", server.base_url,
            "--out", tmp_path / "scores.parquet", "--json", "--no-monitor"]
    done = vigil(*args)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["patients"] == 3 and summary["read"]["values"] == len(feed["Observation"])
    filtered = tmp_path / "filtered.toml"
    filtered.write_text('[fhir]\nbase_url = "http://127.0.0.1:1/fhir"\n'
                        'categories = ["vital-signs"]\nretries = 0\n')
    done = vigil(*args[:-2], "--config", filtered, "--json")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "3 ICU stays but the feed delivered no Observation" in done.stderr
