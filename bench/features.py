"""Feature build time on a whole table, against the one-minute target (issue 2, point 4).

Loads the table (not timed), then times :func:`vigil.features.build_features` on all
of its rows: wall time and CPU time of this process (``time.process_time``, less
sensitive to other jobs on a shared machine). Also builds the runtime's
incremental features for 2,000 patients' last rows and checks them against the
batch rows (``identical``).

Target: ``target_over_wall >= 1`` on the full shared file (60 s / wall seconds).

Usage: ``.venv/bin/python bench/features.py [--data PARQUET] [--json]``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from vigil.features import FEATURE_SCHEMA, build_features, build_latest_features
from vigil.features.grid import HourlyGrid

TARGET_SECONDS = 60.0


def main() -> None:
    from vigil.data import load_physionet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/physionet2019/sepsis_hourly.parquet")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    grid = load_physionet(args.data).grid
    wall, cpu = time.perf_counter(), time.process_time()
    x = build_features(grid)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    some = np.arange(min(grid.n_patients, 2000))
    last = grid.starts[some + 1] - 1
    sub = HourlyGrid(
        patient_ids=tuple(grid.patient_ids[i] for i in some),
        starts=grid.starts[: some.size + 1],
        hours=grid.hours[: int(grid.starts[some.size])],
        values=grid.values[: int(grid.starts[some.size])],
    )
    identical = bool(np.array_equal(build_latest_features(sub), x[last]))
    result = {
        "rows": grid.n_rows, "patients": grid.n_patients, "features": len(FEATURE_SCHEMA),
        "schema": FEATURE_SCHEMA.version, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "target_over_wall": round(TARGET_SECONDS / wall, 2), "identical": identical,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>18}: {value}")


if __name__ == "__main__":
    main()
