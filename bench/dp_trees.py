"""The trees alone across the sites: public vs quantile edges, and at a per-site DP budget.

Builds the sites of ``--sites`` (train and validation patients, as ``vigil federate``
does), then grows trees across them in process, in one run, for each setting:

- ``quantiles``: non-private, edges from the sites' averaged quantiles (the shipped recipe);
- ``public``: non-private, public edges (:mod:`vigil.federation.public_edges`);
- ``dp eps=E``: noisy histograms (:mod:`vigil.federation.tree_privacy`), the tree
  noise calibrated per site against the network's planned DP-SGD of the full-data
  recipe (``--dp-clip 10 --batch-size 4096``, 10 rounds of one epoch, at
  ``(1 - tree_share) * E``), so the composed epsilon per site is ``E``.

Prints, per setting, the pooled validation AUROC of the trees' raw score (all
sites' validation patients; no test patient is used), the composed epsilon
range over sites, the tree noise multiplier and the hessian floor.

Usage: ``.venv/bin/python bench/dp_trees.py [--data PARQUET] [--json]``
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    from vigil.data import load_physionet
    from vigil.features.metrics import auroc
    from vigil.federation.boosting import BoostingPlan, predict_raw
    from vigil.federation.hybrid import grow_trees
    from vigil.federation.privacy import ALPHAS, DPSettings, SiteAccountant
    from vigil.federation.public_edges import public_edges
    from vigil.federation.simulation import build_sites
    from vigil.federation.tree_privacy import TreeDPSettings, private_plan, site_tree_noise

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/physionet2019/sepsis_hourly.parquet")
    parser.add_argument("--sites", default="hospital-unit")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sites = build_sites(load_physionet(args.data), args.sites)
    counts = {s.name: s.train.n_rows for s in sites}
    x_valid = np.concatenate([s.valid.X for s in sites])
    y_valid = np.concatenate([s.valid.y for s in sites]) > 0
    shipped = BoostingPlan(n_trees=100, max_depth=6)
    settings = [
        ("quantiles", shipped, None, None),
        ("public", shipped, None, None),
        ("dp eps=8", BoostingPlan(n_trees=50, max_depth=4, n_bins=32), 8.0,
         TreeDPSettings(features_per_tree=16)),
        ("dp eps=1", BoostingPlan(n_trees=30, max_depth=3, n_bins=16), 1.0,
         TreeDPSettings(features_per_tree=8)),
    ]
    rows = []
    for label, plan, epsilon, tree_dp in settings:
        edges = None if label == "quantiles" else public_edges(plan.n_bins)
        grown, noise = plan, {}
        for s in sites:
            s.tree_noise = None
        if epsilon is not None and tree_dp is not None:
            for s in sites:
                acc = SiteAccountant(DPSettings(epsilon * (1 - tree_dp.tree_share)),
                                     n_rows=s.train.n_rows, batch_size=4096, local_epochs=1,
                                     total_rounds=10)
                noise[s.name] = site_tree_noise(
                    epsilon=epsilon, delta=acc.delta, sample_rate=acc.sample_rate,
                    network_noise=acc.noise_multiplier, network_steps=acc.planned_steps,
                    plan=plan, settings=tree_dp, orders=ALPHAS)
                s.tree_noise = noise[s.name]
            grown = private_plan(plan, list(noise.values()))
        t0 = time.perf_counter()
        boosted, _ = grow_trees(sites, grown, counts=counts, edges=edges,
                                exact=epsilon is None)
        raw = predict_raw(x_valid, boosted.base, boosted.trees)
        eps = [n.epsilon for n in noise.values()]
        rows.append({
            "setting": label, "plan": f"{plan.n_trees}x{plan.max_depth} {plan.n_bins} bins",
            "valid_auroc": round(float(auroc(y_valid, raw)), 4),
            "epsilon": None if not eps else [round(min(eps), 3), round(max(eps), 3)],
            "tree_noise_multiplier": None if not noise else round(
                float(np.mean([n.noise_multiplier for n in noise.values()])), 2),
            "min_child_weight": round(grown.min_child_weight, 1),
            "seconds": round(time.perf_counter() - t0, 1),
        })
        if not args.json:
            print(rows[-1], flush=True)
    for s in sites:
        s.tree_noise = None
    if args.json:
        print(json.dumps({"sites": counts, "valid_rows": int(y_valid.size), "rows": rows}))


if __name__ == "__main__":
    main()
