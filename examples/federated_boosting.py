"""Measure boosted trees grown across sites, alone and added to the shipped network.

The measurement behind docs/federation.md, "Next lever". It uses the package's
own pieces and no pooled rows for the trees:

1. the sites of ``--sites`` (``vigil.data.partition``), each with its training
   and validation patients (:class:`vigil.federation.site.Site`);
2. bin edges from the sites' quantiles, weighted by rows
   (:func:`vigil.federation.boosting.bin_edges`);
3. ``--trees`` trees grown from the summed site histograms
   (:func:`vigil.federation.boosting.boost`), fitted to ``SepsisLabel``;
4. the shipped network's probabilities (``--model``), and the sum of the two
   models' standardized logits, standardized on the validation rows;
5. thresholds from the pooled validation patients, metrics on the test
   patients, and patient-bootstrap intervals
   (:func:`vigil.features.bootstrap.metric_intervals_by_hospital`).

Steps 4-5 pool the validation rows here for brevity; in a federation the means,
variances and utility histograms would be summed from the sites, as
:mod:`vigil.federation.evaluation` does for the network.

Usage: ``.venv/bin/python examples/federated_boosting.py --data PARQUET
[--model models/sepsis-federated] [--sites hospital-unit] [--trees 25] [--depth 6]``
(about 8 minutes on the full shared data, 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.package import read_package
from vigil.data import PhysioNetTable, load_physionet, partition, patient_split
from vigil.features import FEATURE_SCHEMA, build_features
from vigil.features.bootstrap import metric_intervals_by_hospital
from vigil.features.utility import best_utility_threshold
from vigil.federation.boosting import (
    BoostingPlan,
    BoostingSite,
    bin_edges,
    bin_rows,
    boost,
    predict_raw,
    site_quantiles,
)
from vigil.federation.site import Site
from vigil.runtime import offline


def _logit(p: NDArray[np.floating]) -> NDArray[np.float64]:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def _split(table: PhysioNetTable, name: str) -> PhysioNetTable:
    return table.select(np.flatnonzero(patient_split(table.grid.patient_ids, name)))


def _report(table: PhysioNetTable, scores: dict[str, tuple[NDArray[np.float64], float]],
            n_boot: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (score, threshold) in scores.items():
        scored = (score, (score >= threshold).astype(np.int8))
        own = metric_intervals_by_hospital(table.labels, table.grid.starts, table.hospital,
                                           scored, n_boot=n_boot)
        out[name] = {"threshold": threshold, "test": own}
    shipped, sum_ = scores["network"], scores["network + trees"]
    out["network + trees minus network"] = metric_intervals_by_hospital(
        table.labels, table.grid.starts, table.hospital,
        (sum_[0], (sum_[0] >= sum_[1]).astype(np.int8)),
        (shipped[0], (shipped[0] >= shipped[1]).astype(np.int8)), n_boot=n_boot)
    return out


def main() -> None:
    """Run the measurement and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="models/sepsis-federated")
    parser.add_argument("--sites", default="hospital-unit")
    parser.add_argument("--trees", type=int, default=25)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    t0 = time.perf_counter()
    table = load_physionet(args.data)
    plan = BoostingPlan(n_trees=args.trees, max_depth=args.depth)
    sites = [Site.from_table(name, table.select(idx))
             for name, idx in partition(table, args.sites, seed=0).items()]
    edges = bin_edges([site_quantiles(s.train.X, plan.n_bins) for s in sites],
                      [s.train.n_rows for s in sites])
    boosting = [BoostingSite(s.name, bin_rows(s.train.X, edges), s.train.y.astype(float),
                             np.ones(s.train.n_rows)) for s in sites]
    base, trees = boost(boosting, edges, plan)
    seconds = time.perf_counter() - t0

    package = read_package(args.model, expected_schema_sha256=FEATURE_SCHEMA.sha256)
    valid, test = _split(table, "valid"), _split(table, "test")
    raw = {t: predict_raw(build_features(part.grid), base, trees)
           for t, part in (("valid", valid), ("test", test))}
    net = {t: _logit(offline.score_table(package, part)) for t, part in
           (("valid", valid), ("test", test))}

    def standardized(kind: dict[str, NDArray[np.float64]], t: str) -> NDArray[np.float64]:
        return (kind[t] - kind["valid"].mean()) / kind["valid"].std()

    scores: dict[str, tuple[NDArray[np.float64], float]] = {}
    for name, by_split in (
        ("network", net),
        ("trees", raw),
        ("network + trees",
         {t: standardized(net, t) + standardized(raw, t) for t in ("valid", "test")}),
    ):
        threshold, _ = best_utility_threshold(valid.labels, by_split["valid"], valid.grid.starts)
        scores[name] = (by_split["test"], threshold)
    result = {"sites": [s.name for s in sites], "plan": asdict(plan),
              "boosting_seconds": round(seconds, 1), **_report(test, scores, args.bootstrap)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
