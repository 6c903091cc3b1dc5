"""Observations per second: orjson alone, the fast parser, the strict (fhir.resources R4B) parser.

The Observations are generated with ``vigil fhir synth`` from the bundled PhysioNet
sample (whole patients until at least ``--observations``), held in memory as NDJSON.
Each path reads the same bytes: ``json`` is ``orjson.loads`` of every line (nothing
else), ``fast`` is :func:`vigil.fhir_adapter.parse_ndjson`, ``strict`` is
:func:`vigil.fhir_adapter.parse_ndjson_strict`. Times are CPU time of this process
(``time.process_time``, less sensitive to other load on a shared machine); ``json`` and
``fast`` take the best of ``--repeats`` interleaved runs, ``strict`` one run. The two
parsers must agree on every value (``identical``).

Targets (issue 4): ``fast_over_strict >= 15`` and ``fast_over_json >= 0.5``.

Usage: ``.venv/bin/python bench/ingest.py [--observations 100000] [--repeats 5] [--json]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

from vigil.data import load_physionet
from vigil.fhir_adapter import parse_ndjson, parse_ndjson_strict, write_synth


def generate(n_obs: int) -> bytes:
    table = load_physionet("sample")
    measured = table.frame.iloc[:, 2:36].notna().to_numpy().sum(axis=1)
    per_patient = np.add.reduceat(measured, table.grid.starts[:-1])
    n_patients = int(np.searchsorted(np.cumsum(per_patient), n_obs) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        write_synth(table.select(np.arange(n_patients)).frame, Path(tmp))
        return (Path(tmp) / "Observation.ndjson").read_bytes()


def json_only(blob: bytes) -> None:
    loads = orjson.loads
    for line in blob.splitlines():
        loads(line)


def cpu_time(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--observations", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    blob = generate(args.observations)
    n = blob.count(b"\n")
    parse_ndjson(blob)  # warm the caches the way a running service has them
    t_json = t_fast = float("inf")
    for _ in range(args.repeats):
        t_json = min(t_json, cpu_time(lambda: json_only(blob)))
        t_fast = min(t_fast, cpu_time(lambda: parse_ndjson(blob)))
    fast, strict = parse_ndjson(blob), None
    start = time.process_time()
    strict = parse_ndjson_strict(blob)
    t_strict = time.process_time() - start
    a, b = fast.observations, strict.observations
    identical = bool(
        fast.counts == strict.counts and fast.quarantine == strict.quarantine
        and all(np.array_equal(getattr(a, f), getattr(b, f))
                for f in ("patient", "variable", "effective", "value", "resource_id",
                          "last_updated", "seq")))
    result = {
        "observations": n,
        "json_per_s": round(n / t_json),
        "fast_per_s": round(n / t_fast),
        "strict_per_s": round(n / t_strict),
        "fast_over_strict": round(t_strict / t_fast, 2),
        "fast_over_json": round(t_json / t_fast, 3),
        "identical": identical,
        "timer": "process_time",
        "repeats": args.repeats,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{n:,} Observations (synth from the bundled sample), CPU time, best of {args.repeats}")
    print(f"  json alone  {result['json_per_s']:>10,} /s")
    print(f"  fast        {result['fast_per_s']:>10,} /s")
    print(f"  strict      {result['strict_per_s']:>10,} /s")
    print(f"  fast / strict = {result['fast_over_strict']}  (target >= 15)")
    print(f"  fast / json   = {result['fast_over_json']}  (target >= 0.5)")
    print(f"  parsers identical: {identical}")


if __name__ == "__main__":
    main()
