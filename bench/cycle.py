"""One scoring cycle for 1,000 ICU patients with 72 h of history: where the time goes.

The data: ``--patients`` PhysioNet stays of at least ``--hours`` hours (the full
shared file when it is beside the checkout, else the bundled sample, with stays
reused under new ids when there are too few), written as FHIR R4 by the synth's
resource builder, every patient admitted ``--hours`` hours (and up to 15
minutes) before the tick. Two sources serve it:

- ``ndjson``: the Bulk Data directory (the embedded mode; write-back to NDJSON);
- ``rest``: the real FHIR test server (sekmet-fhir from ``.venv-fhir``) on
  loopback, loaded with transaction Bundles (write-back ``PUT RiskAssessment``).

Each runs ``vigil serve``'s service (:func:`vigil.runtime.service.build_service`
from a ``site.toml``) in a child process, for three cycles: **cold** (first tick:
the whole 72 h history is fetched), **warm** (15 minutes later: the incremental
fetch; every patient is still at the same ICU hour, so the features are reused)
and **hour** (an hour after the first: every patient's scored hour has moved,
so every patient's features are computed again). Printed per cycle: total, FHIR I/O (REST:
HTTP requests and JSON decoding, including the write-back PUTs; NDJSON: reading and indexing
the files), parsing (Observation mapping and census; CPU time of the parsing threads), store,
features (grid and feature builder), inference (onnxruntime, calibration, alert policy), the
drift monitor, write-back building, the share of everything that is not FHIR I/O (target
<= 25%), and the child's peak RSS (target <= 500 MB), with its resident memory at the cycle's
steps in ``--json``.

REST searches use the request shape that scales on the test server (``--patients-per-request``
10, no ``category``, ``since_prefix = "sa"``: docs/runtime.md, "Benchmark"). Before the run,
the values charted in the last hour are written again, so that the server's newest writes are
recent as on a live EHR (:func:`rewrite_recent`).

Usage: ``.venv/bin/python bench/cycle.py [--patients 1000] [--hours 72]
[--sources ndjson,rest] [--workdir DIR] [--patients-per-request 10] [--categories ""]
[--json]``
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "physionet2019" / "sepsis_hourly.parquet"


# -- data ----------------------------------------------------------------------------------------


def _stays(n: int, hours: int) -> Any:
    import pandas as pd

    from vigil.data import load_physionet

    table = load_physionet(SHARED if SHARED.is_file() else "sample")
    frame = table.frame
    length = frame.groupby("patient_id", sort=False)["ICULOS"].transform("size")
    long = frame[length >= hours]
    long = long[long.groupby("patient_id", sort=False).cumcount() < hours]
    ids = long["patient_id"].unique()
    parts = []
    for i in range(n):
        rows = long[long["patient_id"] == ids[i % len(ids)]].copy()
        rows["patient_id"] = f"{ids[i % len(ids)]}-{i // len(ids)}" if i >= len(ids) else ids[i]
        rows["ICULOS"] = np.arange(1, hours + 1)
        parts.append(rows)
    return pd.concat(parts, ignore_index=True), len(ids)


def _shift(text: str, delta: timedelta) -> str:
    when = datetime.fromisoformat(text.replace("Z", "+00:00")) + delta
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def write_fhir(frame: Any, out: Path, *, tick: datetime, hours: int, bundles: bool) -> int:
    """Synth resources of every patient, moved so each is admitted ``hours`` before ``tick``."""
    from vigil.fhir_adapter.synth import icu_admission, location_resources, patient_resources

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {t: (out / f"{t}.ndjson").open("wb") for t in ("Location", "Patient", "Encounter",
                                                           "Observation")}
    n_obs, entries, n_bundles = 0, [], 0

    def flush() -> None:
        nonlocal entries, n_bundles
        if bundles and entries:
            (out / "bundles").mkdir(exist_ok=True)
            (out / "bundles" / f"b{n_bundles:05d}.json").write_bytes(orjson.dumps(
                {"resourceType": "Bundle", "type": "transaction", "entry": entries}))
            n_bundles += 1
        entries = []

    def put(r: dict[str, Any]) -> None:
        files[r["resourceType"]].write(orjson.dumps(r) + b"\n")
        entries.append({"resource": r, "request": {"method": "PUT",
                                                   "url": f"{r['resourceType']}/{r['id']}"}})

    for loc in location_resources(("A", "B")):
        put(loc)
    flush()
    for pid, rows in frame.groupby("patient_id", sort=False):
        admitted = tick - timedelta(hours=hours, minutes=int(rng.integers(0, 15)))
        delta = admitted - icu_admission(str(pid))
        patient, encounter, observations = patient_resources(rows)
        days = (admitted.date() - icu_admission(str(pid)).date()).days
        patient["birthDate"] = (datetime.fromisoformat(patient["birthDate"]).date()
                                + timedelta(days=days)).isoformat()
        for entry in encounter["location"]:
            entry["period"]["start"] = _shift(entry["period"]["start"], delta)
        if "period" in encounter:
            encounter["period"]["start"] = _shift(encounter["period"]["start"], delta)
        put(patient)
        put(encounter)
        for o in observations:
            when = _shift(o["effectiveDateTime"], delta)
            o["effectiveDateTime"] = o["issued"] = o["meta"]["lastUpdated"] = when
            put(o)
        n_obs += len(observations)
        if len(entries) >= 2000:
            flush()
    flush()
    for f in files.values():
        f.close()
    return n_obs


# -- the child: one service, two cycles ----------------------------------------------------------


def child(config: Path, tick: datetime) -> dict[str, Any]:
    """Run the cycles in this process with the parsers timed; returns timings and peak RSS."""
    import vigil.fhir_adapter.bulk as bulk
    import vigil.fhir_adapter.rest as rest
    from vigil.runtime.service import build_service
    from vigil.runtime.settings import load_settings

    spent = {"parse": 0.0}

    def timed(fn: Any) -> Any:
        # CPU time of the calling thread: the REST source parses in several threads at once,
        # and their wall times would add up the waits for the GIL too
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["parse"] += time.thread_time() - t0
        return wrapper

    for module, name in ((rest, "parse_fast"), (rest, "build_census"), (bulk, "parse_ndjson"),
                         (bulk, "build_census")):
        setattr(module, name, timed(getattr(module, name)))
    rss = {"start": current_rss_mb()}
    service = build_service(load_settings(config, environ=False))
    rss["service"] = current_rss_mb()
    step_rss: dict[str, float] = {}
    service.runner.checkpoint = lambda name: step_rss.__setitem__(name, current_rss_mb())
    out = []
    for label, now in (("cold", tick), ("warm", tick + timedelta(minutes=15)),
                       ("hour", tick + timedelta(hours=1))):
        spent["parse"] = 0.0
        step_rss.clear()
        result = service.run_cycle(now=now)
        out.append({"cycle": label, "status": result.status, "reason": result.reason,
                    "counts": result.counts, "timings": result.timings,
                    "parse": spent["parse"], "rss_mb": {**step_rss, "end": current_rss_mb(),
                                                        "peak": peak_rss_mb()}})
    service.close()
    return {"cycles": out, "rss_mb": rss, "peak_rss_mb": peak_rss_mb()}


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def current_rss_mb() -> float:
    """Resident memory of this process now, in MB (``VmRSS``; 0 where /proc is missing)."""
    return _status_mb("VmRSS:") if Path("/proc/self/status").is_file() else 0.0


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started, in MB.

    ``VmHWM`` of ``/proc/self/status`` (reset by ``exec``); ``ru_maxrss`` is not, on
    Linux it keeps the parent's size at ``fork``, which here holds the whole data set.
    """
    if Path("/proc/self/status").is_file():
        return _status_mb("VmHWM:")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def split(c: dict[str, Any]) -> dict[str, float]:
    """Return the time split of one cycle."""
    t = c["timings"]
    source = t.get("census", 0.0) + t.get("fetch", 0.0)
    io = max(0.0, source - c["parse"]) + t.get("writeback", 0.0)
    parts = {
        "total": t["total"],
        "fhir_io": io,
        "parsing": c["parse"],
        "store": t.get("store", 0.0),
        "features": t.get("features", 0.0),
        "inference": t.get("inference", 0.0),
        "monitor": t.get("monitor", 0.0),
        "writeback_build": t.get("build_writeback", 0.0),
    }
    parts["not_io_share"] = 1.0 - io / t["total"] if t["total"] else float("nan")
    return parts


# -- the parent ----------------------------------------------------------------------------------


def rewrite_recent(base_url: str, fhir_dir: Path, *, since: datetime) -> int:
    """PUT again the Observations charted after ``since``; returns how many.

    The server stamps ``meta.lastUpdated`` itself, so after a bulk load every value looks
    written within the load's few minutes, and the incremental fetch's 15-minute overlap
    would ask for most of them again. A live EHR's newest writes are the last values
    charted: writing those again (new versions, same content) makes the server look so.
    """
    import urllib.request

    entries = []
    with (fhir_dir / "Observation.ndjson").open("rb") as lines:
        for line in lines:
            o = orjson.loads(line)
            if datetime.fromisoformat(o["effectiveDateTime"].replace("Z", "+00:00")) > since:
                entries.append({"resource": o, "request": {
                    "method": "PUT", "url": f"Observation/{o['id']}"}})
    for lo in range(0, len(entries), 500):
        body = orjson.dumps({"resourceType": "Bundle", "type": "transaction",
                             "entry": entries[lo:lo + 500]})
        req = urllib.request.Request(base_url, data=body, method="POST",
                                     headers={"Content-Type": "application/fhir+json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            if r.status != 200:
                raise RuntimeError(f"expected HTTP 200 from the transaction, got {r.status}")
    return len(entries)


def _site(path: Path, work: Path, source: str, base_url: str | None, *,
          per_request: int, categories: str) -> Path:
    data = (f'source = "ndjson"\nndjson_dir = "{work / "fhir"}"\nwriteback = "ndjson"\n'
            f'writeback_dir = "{work / source / "out"}"\n') if source == "ndjson" else (
        'source = "fhir"\nwriteback = "fhir"\n')
    cats = ", ".join(f'"{c}"' for c in categories.split(",") if c)
    fhir = (f'[fhir]\nbase_url = "{base_url}"\npage_size = 1000\ntimeout_s = 600\n'
            f'patients_per_request = {per_request}\ncategories = [{cats}]\n'
            'since_prefix = "sa"\n') if base_url else ""
    path.write_text(f'site_id = "bench"\n[data]\n{data}{fhir}'
                    f'[store]\nurl = "sqlite:///{work / source / "state.db"}"\n'
                    f'[models]\ndir = "{work / source / "models"}"\n'
                    f'public_key = "{work / "test-release.pub"}"\n[ops]\nenabled = false\n'
                    # the three cycles measure one cycle each, not the back-fill of the ticks
                    # between them (docs/runtime.md, "Cycle status and missed ticks")
                    '[scheduler]\nbackfill_ticks = 0\n')
    return path


def run_source(source: str, work: Path, tick: datetime, package: Path, *,
               per_request: int, categories: str) -> dict[str, Any]:
    shutil.rmtree(work / source, ignore_errors=True)
    (work / source).mkdir(parents=True)
    server = None
    base_url = None
    extra: dict[str, Any] = {}
    if source == "rest":
        sys.path.insert(0, str(ROOT / "tests" / "runtime"))
        from rt_support import FHIRServer

        server = FHIRServer(work / "server").start()
        base_url = server.base_url
        loaded = work / "server" / "loaded"
        if not loaded.exists():  # the server keeps its data in the work directory
            t0 = time.perf_counter()
            server.load(work / "fhir" / "bundles")
            extra["load_seconds"] = round(time.perf_counter() - t0, 1)
            loaded.write_text(tick.isoformat())
        extra["rewritten"] = rewrite_recent(base_url, work / "fhir",
                                            since=tick - timedelta(hours=1))
    try:
        config = _site(work / source / "site.toml", work, source, base_url,
                       per_request=per_request, categories=categories)
        vigil = Path(sys.executable).with_name("vigil")
        subprocess.run([vigil, "model", "install", package, "--config", config], check=True,
                       capture_output=True)
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(config), "--tick", tick.isoformat()],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        result = json.loads(done.stdout)
    finally:
        if server is not None:
            server.stop()
    return {**result, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--hours", type=int, default=72)
    parser.add_argument("--sources", default="ndjson,rest")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Reuse the data (and the loaded server) of an earlier run here.")
    parser.add_argument("--patients-per-request", type=int, default=10,
                        help="Patients per Observation search (OR-list).")
    parser.add_argument("--categories", default="",
                        help="Observation?category= of the REST searches (comma-separated; "
                             "default none: on this server it costs seconds per request).")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tick", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        sys.stdout.write(json.dumps(child(args.child, datetime.fromisoformat(args.tick))) + "\n")
        return

    sys.path.insert(0, str(ROOT / "tests" / "runtime"))
    from rt_support import make_package, write_trusted_key

    work = args.workdir or Path(tempfile.mkdtemp(prefix="vigil-bench-cycle-"))
    made = work / "made.json"
    if made.exists():  # the data of an earlier run (same patients, hours and tick)
        report = json.loads(made.read_text())
        tick = datetime.fromisoformat(report["tick"])
    else:
        now = datetime.now(UTC)
        tick = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
        frame, distinct = _stays(args.patients, args.hours)
        t0 = time.perf_counter()
        n_obs = write_fhir(frame, work / "fhir", tick=tick, hours=args.hours, bundles=True)
        report = {
            "patients": args.patients, "distinct_stays": distinct, "hours": args.hours,
            "observations": n_obs, "write_seconds": round(time.perf_counter() - t0, 1),
            "data": str(SHARED if SHARED.is_file() else "bundled sample"),
            "tick": tick.isoformat(),
        }
        made.write_text(json.dumps(report))
    # A fresh package every run: it must match this vigil's feature schema.
    shutil.rmtree(work / "pkg", ignore_errors=True)
    make_package(work / "pkg")  # signed with the tests' key, which the sites trust
    write_trusted_key(work)
    report["sources"] = {}
    for source in args.sources.split(","):
        result = run_source(source, work, tick, work / "pkg",
                            per_request=args.patients_per_request, categories=args.categories)
        result["split"] = [split(c) for c in result["cycles"]]
        report["sources"][source] = result
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['patients']} patients ({report['distinct_stays']} distinct stays) x "
          f"{report['hours']} h, {report['observations']:,} observations ({report['data']})")
    head = ("source", "cycle", "total s", "FHIR I/O", "parsing", "store", "features",
            "computed", "inference", "monitor", "wb build", "not I/O", "peak RSS MB")
    print(" | ".join(head))
    for source, result in report["sources"].items():
        for c, s in zip(result["cycles"], result["split"], strict=True):
            print(" | ".join([
                source, c["cycle"], f"{s['total']:.2f}", f"{s['fhir_io']:.2f}",
                f"{s['parsing']:.2f}", f"{s['store']:.2f}", f"{s['features']:.2f}",
                str(c["counts"].get("features_computed", "")), f"{s['inference']:.3f}",
                f"{s['monitor']:.2f}", f"{s['writeback_build']:.2f}",
                f"{s['not_io_share']:.0%}", f"{result['peak_rss_mb']:.0f}",
            ]) + ("" if c["status"] == "ok" else f"  [{c['status']}: {c['reason']}]"))
        if "load_seconds" in result:
            print(f"  ({source}: loading the server took {result['load_seconds']} s)")
        if "rewritten" in result:
            print(f"  ({source}: the {result['rewritten']:,} values of the last hour were "
                  "written again before the run, as a live EHR's newest writes)")


if __name__ == "__main__":
    main()
