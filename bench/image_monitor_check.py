"""Cost of one hourly imaging drift check of ``vigil serve`` on a week of a busy site's records.

Fills a state store's ``imaging_instances`` with ``--days`` days of ``--per-day`` one-image
studies (headers of the simulated site-a scanner, as the shipped profile knows them;
model-input histograms and raw probabilities drawn at random: the check's cost does not
depend on their values), then runs the service's job
(:class:`vigil.runtime.imaging_monitor.ImagingMonitor`, the shipped package's profile) at
``--checks`` successive hourly ticks and prints the records judged and the wall time per
check (median), with the share of the hour it takes.

Usage: ``nice -n 10 .venv/bin/python bench/image_monitor_check.py [--days 7] [--per-day 500]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from prometheus_client import CollectorRegistry

from vigil.core.package import read_package
from vigil.imaging.histogram import N_BINS
from vigil.runtime.imaging_monitor import ImagingMonitor
from vigil.runtime.store import StateStore

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2026, 3, 2, tzinfo=UTC)


def fill(store: StateStore, *, days: int, per_day: int, model: str, seed: int = 0) -> int:
    """Write ``days * per_day`` instance records evenly spaced from :data:`START`."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    step = 86400.0 / per_day
    hist = rng.multinomial(784, np.full(N_BINS, 1 / N_BINS), size=n)
    raw = rng.beta(0.6, 0.6, size=n)
    with store.transaction() as tx:
        tx.executemany(
            "INSERT INTO imaging_instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((f"1.2.826.0.1.{i}", f"1.2.826.0.2.{i}", model, START.timestamp() + i * step,
              "CR", "vigil simulated scanner site-a", "", 8, "MONOCHROME2", None,
              "1.2.840.10008.1.2.1", json.dumps(hist[i].tolist()), float(raw[i]), float(raw[i]),
              None) for i in range(n)))
    return n


def main() -> None:
    """Fill a store, run the checks, print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--per-day", type=int, default=500)
    parser.add_argument("--checks", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    package = read_package(ROOT / "models" / "imaging-federated")
    key = f"{package.manifest.name}@{package.manifest.version}"
    active = SimpleNamespace(key=key, scorer=SimpleNamespace(package=package))
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore.open(f"sqlite:///{Path(tmp) / 'state.db'}", durable=False)
        n = fill(store, days=args.days, per_day=args.per_day, model=key)
        job = ImagingMonitor(store=store, active=lambda: active, registry=CollectorRegistry())
        end = START + timedelta(days=args.days)
        times, records = [], 0
        for k in range(args.checks):
            t0 = time.perf_counter()
            result = job.run(end + timedelta(hours=k))
            times.append(time.perf_counter() - t0)
            assert result.status == "ok", result.error
            records = result.records
        job.close()
    median = statistics.median(times)
    out = {"records_stored": n, "records_judged": records, "checks": args.checks,
           "seconds_per_check_median": round(median, 3),
           "seconds_per_check_max": round(max(times), 3),
           "share_of_the_hour": round(median / 3600.0, 6)}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{records:,} instance records ({args.days} days x {args.per_day} studies): one check "
          f"{median:.2f} s (median of {args.checks}; max {max(times):.2f} s), "
          f"{median / 36:.3f} % of the hour")


if __name__ == "__main__":
    main()
