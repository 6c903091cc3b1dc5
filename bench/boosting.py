"""Time of one boosted tree at one site: the subtraction trick against direct histograms.

Loads the table and builds the first site of ``--sites`` (not timed), then grows
``--trees`` trees of depth 6 on its training rows twice, in one run: with every
node's histograms summed directly, and with :class:`vigil.federation.boosting.BoostingSite`'s
subtraction trick (the smaller child summed, the other from its parent). Prints
the seconds per tree of each, their ratio (``direct_over_subtraction``), and
whether the two grew the same trees (``same_trees``: features and bins equal).

Usage: ``.venv/bin/python bench/boosting.py [--data PARQUET] [--trees 3] [--json]``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from numpy.typing import NDArray

from vigil.federation.boosting import (
    BoostingPlan,
    BoostingSite,
    bin_edges,
    bin_rows,
    site_quantiles,
)
from vigil.federation.treegrowth import boost


class _Direct(BoostingSite):
    """Every node's histograms summed from its rows (no subtraction)."""

    def histograms(self, nodes: NDArray[np.int64], n_bins: int) -> NDArray[np.float64]:
        return self._direct(np.asarray(nodes, dtype=np.int64), n_bins)


def main() -> None:
    from vigil.data import load_physionet, partition
    from vigil.federation.site import Site

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/physionet2019/sepsis_hourly.parquet")
    parser.add_argument("--sites", default="hospital-unit")
    parser.add_argument("--trees", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = load_physionet(args.data)
    name, idx = next(iter(partition(table, args.sites, seed=0).items()))
    site = Site.from_table(name, table.select(idx))
    plan = BoostingPlan(n_trees=args.trees, max_depth=6)
    edges = bin_edges([site_quantiles(site.train.X, plan.n_bins)], [site.train.n_rows])
    y = site.train.y.astype(np.float64)
    seconds, grown = {}, {}
    for label, cls in (("direct", _Direct), ("subtraction", BoostingSite)):
        one = cls(name, bin_rows(site.train.X, edges), y, np.ones_like(y))
        t0 = time.perf_counter()
        grown[label] = boost([one], edges, plan).trees
        seconds[label] = (time.perf_counter() - t0) / plan.n_trees
    same = all(np.array_equal(a.feature, b.feature) and np.array_equal(a.bin, b.bin)
               for a, b in zip(grown["direct"], grown["subtraction"], strict=True))
    result = {
        "site": name, "rows": site.train.n_rows, "trees": plan.n_trees,
        "seconds_per_tree_direct": round(seconds["direct"], 3),
        "seconds_per_tree_subtraction": round(seconds["subtraction"], 3),
        "direct_over_subtraction": round(seconds["direct"] / seconds["subtraction"], 2),
        "same_trees": same,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
