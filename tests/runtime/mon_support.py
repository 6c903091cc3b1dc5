"""Monitoring scenario support: reshape `vigil fhir synth` NDJSON into a site's week, degrade
a model package. Imported by ``test_mon_scenarios.py``; not a test module.

``vigil fhir synth`` spreads ICU admissions over a year, and ``vigil replay`` can stack them on
one day; a monitored site needs neither: :func:`site_week` moves each patient by whole days (so
ages and hours do not change) so admissions fall on ``days`` consecutive days, and can inject a
feed fault on the way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson

DAY0 = datetime(2021, 1, 1, tzinfo=UTC)
TEMP_LOINC = b'"code":"8310-5"'
LACTATE_LOINC = b'"code":"2524-7"'
_SUBJECT = b'"subject":{"reference":"Patient/'
_EFFECTIVE = b'"effectiveDateTime":"'

Pick = Callable[[str, str, np.random.Generator], int | None]


def at(hours: float) -> datetime:
    """``DAY0`` plus some hours."""
    return DAY0 + timedelta(hours=hours)


def _instant(when: datetime) -> bytes:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ").encode()


def _moved(stamp: str, days: int) -> str:
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(days=days)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def site_week(
    src: Path, dst: Path, *, days: int, seed: int = 0, pick: Pick | None = None,
    fahrenheit_from: datetime | None = None, fahrenheit_code: str = "Cel",
    lactate_until: datetime | None = None,
) -> dict[str, int]:
    """Copy synth NDJSON with admissions on ``DAY0 .. DAY0 + days`` and optional faults.

    Parameters
    ----------
    src, dst : Path
        ``vigil fhir synth`` output, and where to write.
    days : int
        Admissions fall uniformly on this many days.
    pick : callable (patient id, unit, rng) -> day or None, optional
        Chooses each patient's admission day (None leaves the patient out).
    fahrenheit_from : datetime, optional
        From then on temperatures are sent in degrees Fahrenheit, with UCUM code
        ``fahrenheit_code`` (``"Cel"``: the interface changed the number, not the label).
    lactate_until : datetime, optional
        No Lactate is sent from then on (the feed stops).

    Returns
    -------
    dict of str to int
        The day shift of every patient kept.
    """
    rng = np.random.default_rng(seed)
    dst.mkdir(parents=True, exist_ok=True)
    encounters = [orjson.loads(x) for x in (src / "Encounter.ndjson").read_bytes().splitlines()]
    shift: dict[str, int] = {}
    for e in encounters:
        pid = e["subject"]["reference"].split("/")[1]
        start = e["location"][0]["period"]["start"]
        admitted = datetime.fromisoformat(start.replace("Z", "+00:00"))
        unit = e["location"][0]["location"]["reference"].rsplit("-", 1)[1]
        day = int(rng.integers(0, days)) if pick is None else pick(pid, unit, rng)
        if day is not None:
            shift[pid] = ((DAY0 + timedelta(days=day)).date() - admitted.date()).days
    with open(dst / "Encounter.ndjson", "wb") as f:
        for e in encounters:
            d = shift.get(e["subject"]["reference"].split("/")[1])
            if d is None:
                continue
            for loc in e["location"]:
                loc["period"]["start"] = _moved(loc["period"]["start"], d)
            if "period" in e:
                e["period"]["start"] = _moved(e["period"]["start"], d)
            f.write(orjson.dumps(e) + b"\n")
    with open(dst / "Patient.ndjson", "wb") as f:
        for line in (src / "Patient.ndjson").read_bytes().splitlines():
            p = orjson.loads(line)
            if p["id"] not in shift:
                continue
            if "birthDate" in p:
                p["birthDate"] = (date.fromisoformat(p["birthDate"])
                                  + timedelta(days=shift[p["id"]])).isoformat()
            f.write(orjson.dumps(p) + b"\n")
    (dst / "Location.ndjson").write_bytes((src / "Location.ndjson").read_bytes())
    fahrenheit = None if fahrenheit_from is None else _instant(fahrenheit_from)
    lactate = None if lactate_until is None else _instant(lactate_until)
    dates: dict[tuple[bytes, int], bytes] = {}
    with open(dst / "Observation.ndjson", "wb") as f:
        for line in (src / "Observation.ndjson").read_bytes().splitlines():
            i = line.find(_SUBJECT) + len(_SUBJECT)
            d = shift.get(line[i:line.index(b'"', i)].decode())
            if d is None:
                continue
            # whole-day shift: only the date of the (identical) effective/issued/lastUpdated moves
            j = line.find(_EFFECTIVE) + len(_EFFECTIVE)
            old = line[j:j + 10]
            new = dates.get((old, d))
            if new is None:
                new = (date.fromisoformat(old.decode()) + timedelta(days=d)).isoformat().encode()
                dates[(old, d)] = new
            line = line.replace(old + b"T", new + b"T")
            effective = line[j:j + 20]
            if lactate is not None and LACTATE_LOINC in line and effective >= lactate:
                continue
            if fahrenheit is not None and TEMP_LOINC in line and effective >= fahrenheit:
                o = orjson.loads(line)
                q = o["valueQuantity"]
                q["value"] = round(q["value"] * 9 / 5 + 32, 1)
                q["unit"] = q["code"] = fahrenheit_code
                line = orjson.dumps(o)
            f.write(line + b"\n")
    return shift


def degrade(src: Path, dst: Path, *, amplitude: float) -> None:
    """Copy a model package with noise on its output logit.

    ``noise = amplitude * sin(1000 * sum(features))``: deterministic, different for every row,
    spread over ``[-amplitude, amplitude]``. The manifest (reference profile, validation
    metrics) is the original's: the site believes it runs the validated model.
    """
    import onnx
    from onnx import helper, numpy_helper

    from vigil.core.package import read_package, write_package

    package = read_package(src)
    model = onnx.load(str(package.model_path))
    graph = model.graph
    sigmoid = next(n for n in graph.node if n.op_type == "Sigmoid" and n.output[0] == "probability")
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1], dtype=np.int64), "noise_axes"),
        numpy_helper.from_array(np.array(1000.0, dtype=np.float32), "noise_freq"),
        numpy_helper.from_array(np.array(amplitude, dtype=np.float32), "noise_amp"),
    ])
    added = [
        helper.make_node("ReduceSum", ["features", "noise_axes"], ["noise_sum"], keepdims=1),
        helper.make_node("Mul", ["noise_sum", "noise_freq"], ["noise_arg"]),
        helper.make_node("Sin", ["noise_arg"], ["noise_sin"]),
        helper.make_node("Mul", ["noise_sin", "noise_amp"], ["noise"]),
        helper.make_node("Add", [sigmoid.input[0], "noise"], ["logit_noisy"]),
    ]
    sigmoid.input[0] = "logit_noisy"
    where = list(graph.node).index(sigmoid)
    for k, node in enumerate(added):
        graph.node.insert(where + k, node)
    onnx.checker.check_model(model)
    manifest = package.manifest.model_dump()
    manifest.pop("files", None)
    write_package(dst, onnx_model=model.SerializeToString(), manifest=manifest,
                  model_card="Degraded copy (noise on the output logit) for monitoring tests.\n")
