"""Choose the DP-tree recipe on validation patients: the epsilon split and the tree plan.

For each share of epsilon given to the trees (``--shares``), trains the
full-data DP network once (FedProx mu 0.01, 10 rounds of one epoch, batch 4096,
lr 1e-3, dropout 0, clip 10, at ``(1 - share) * epsilon`` per site; cached in
``--cache``), then grows each tree plan of the grid across the same sites with
noisy histograms (:mod:`vigil.federation.tree_privacy`, the tree noise
calibrated so the composed epsilon per site is ``--epsilon``) and fuses it with
that network (:func:`vigil.federation.hybrid.grow_hybrid`). Every number is the
fused model's pooled **validation** metric (the sites' validation patients);
no test patient is read.

The grid is coordinate-wise around the recipe that was set by arithmetic
(50 trees of depth 4, 32 bins, 16 features, learning rate 0.1, hessian floor 2
noise SDs): each row changes one setting (``--plans``), each at every share.
One JSON line per result is appended to ``--out`` as it comes.

Usage: ``nice -n 10 .venv/bin/python bench/dp_tree_grid.py --shares 0.5 --plans base,trees100
--out grid.jsonl``

``--export KEY --package DIR`` then writes the model package of one grid cell (``KEY``
as in the cache, e.g. ``eps8-share0.5-base-44136fa3``) from the cached network and
trees, for ``vigil evaluate --split test``: the same package ``vigil federate`` writes
for that recipe and seed (the network, the trees and their seeded noise are
deterministic), without training it again. Only the chosen cell is ever scored on
test patients.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

BASE: dict[str, Any] = {"n_trees": 50, "max_depth": 4, "n_bins": 32, "learning_rate": 0.1,
                        "features": 16, "floor": 2.0}
PLANS: dict[str, dict[str, Any]] = {
    "base": {},
    "trees25": {"n_trees": 25}, "trees100": {"n_trees": 100},
    "depth3": {"max_depth": 3}, "depth5": {"max_depth": 5},
    "k8": {"features": 8}, "k32": {"features": 32},
    "lr0.2": {"learning_rate": 0.2}, "lr0.05": {"learning_rate": 0.05},
    "bins16": {"n_bins": 16}, "bins64": {"n_bins": 64},
    "floor1": {"floor": 1.0}, "floor4": {"floor": 4.0},
    "trees25-lr0.2": {"n_trees": 25, "learning_rate": 0.2},
    "depth2": {"max_depth": 2}, "depth4": {"max_depth": 4},
    "k4": {"features": 4}, "k16": {"features": 16}, "bins32": {"n_bins": 32},
}
RECIPE = {"rounds": 10, "batch_size": 4096, "lr": 1e-3, "mu": 0.01, "clip": 10.0}
"""The DP network of every cell; the chosen cell became :data:`vigil.federation.recipes.PRIVATE`
(a test holds the two equal)."""


def _network(sites: list[Any], share: float, epsilon: float, cache: Path) -> Any:
    """Train (or load) the DP network at ``(1 - share) * epsilon``; return the driver's result."""
    from vigil.federation.driver import run_federation
    from vigil.federation.site import ModelSpec
    from vigil.federation.strategies import make_strategy

    path = cache / f"net-eps{epsilon:g}-share{share:g}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())  # noqa: S301 - written by this script
    result = run_federation(sites, make_strategy("fedprox", mu=RECIPE["mu"]), network_plan(),
                            model=ModelSpec(dropout=0.0))
    cache.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(result))
    print(json.dumps({"share": share, "network_valid_auroc": result.pooled.auroc,
                      "network_valid_utility": result.pooled.utility}), flush=True)
    return result


def network_plan() -> Any:
    """The full-data DP network's plan (docs/federation.md, "Differentially private trees")."""
    from vigil.federation.driver import Plan

    return Plan(rounds=RECIPE["rounds"], batch_size=RECIPE["batch_size"], lr=RECIPE["lr"], seed=0)


def _export(cache: Path, key: str, package: Path, data: str) -> None:
    """Write the package of the grid cell ``key`` (module docstring)."""
    from vigil.data import load_physionet
    from vigil.federation.privacy import DPSettings
    from vigil.federation.simulation import FederatedRun, build_sites, export_run, run_summary
    from vigil.federation.site import ModelSpec
    from vigil.federation.strategies import make_strategy

    cell = pickle.loads((cache / f"trees-{key}.pkl").read_bytes())  # noqa: S301 - ours
    row, tree_dp = cell["row"], cell["tree_dp"]
    result = pickle.loads((cache / f"net-eps{row['epsilon']:g}-share{row['share']:g}.pkl")
                          .read_bytes())  # noqa: S301 - written by this script
    dp = DPSettings(row["epsilon"], max_grad_norm=RECIPE["clip"])
    sites = build_sites(load_physionet(data), "hospital-unit", model=ModelSpec(dropout=0.0))
    run = FederatedRun(result=result, strategy=make_strategy("fedprox", mu=RECIPE["mu"]),
                       plan=network_plan(), model=ModelSpec(dropout=0.0), dp=dp,
                       scheme="hospital-unit", data=Path(data).name, sites=sites,
                       hybrid=cell["hybrid"], tree_dp=tree_dp, tree_noise=cell["noise"],
                       tree_edges="public")
    packages = export_run(run, package, name="sepsis-dp-trees", version="0.1.0")
    print(json.dumps({"row": row, "validation": run_summary(run, packages)["validation"]},
                     default=str))


def main() -> None:
    import torch

    from vigil.data import load_physionet
    from vigil.federation.boosting import BoostingPlan
    from vigil.federation.hybrid import grow_hybrid
    from vigil.federation.privacy import ALPHAS, DPSettings, SiteAccountant
    from vigil.federation.public_edges import public_edges
    from vigil.federation.simulation import build_sites
    from vigil.federation.site import ModelSpec
    from vigil.federation.tree_privacy import TreeDPSettings, private_plan, site_tree_noise

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/physionet2019/sepsis_hourly.parquet")
    parser.add_argument("--sites", default="hospital-unit")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--shares", default="0.3,0.5,0.7")
    parser.add_argument("--plans", default="base")
    parser.add_argument("--base", default="{}", help="JSON overrides of the base plan")
    parser.add_argument("--cache", default="/tmp/dp-tree-grid",
                        help="networks and trees of the grid; one directory per data file")
    parser.add_argument("--out", default="dp-tree-grid.jsonl")
    parser.add_argument("--export", default=None, help="grid cell to write as a package")
    parser.add_argument("--package", default=None)
    args = parser.parse_args()
    if args.export is not None:
        _export(Path(args.cache), args.export, Path(args.package), args.data)
        return
    torch.set_num_threads(1)
    table = load_physionet(args.data)
    for share in (float(s) for s in args.shares.split(",")):
        net_dp = DPSettings(args.epsilon * (1 - share), max_grad_norm=RECIPE["clip"])
        sites = build_sites(table, args.sites, model=ModelSpec(dropout=0.0), dp=net_dp)
        result = _network(sites, share, args.epsilon, Path(args.cache))
        weights = result.weights
        counts = {s.name: s.train.n_rows for s in sites}
        for name in args.plans.split(","):
            cfg = BASE | json.loads(args.base) | PLANS[name]
            plan = BoostingPlan(n_trees=cfg["n_trees"], max_depth=cfg["max_depth"],
                                learning_rate=cfg["learning_rate"], n_bins=cfg["n_bins"])
            tree_dp = TreeDPSettings(tree_share=share, features_per_tree=cfg["features"],
                                     hessian_floor=cfg["floor"])
            noise = {}
            for s in sites:
                acc = SiteAccountant(net_dp, n_rows=s.train.n_rows,
                                     batch_size=RECIPE["batch_size"], local_epochs=1,
                                     total_rounds=RECIPE["rounds"])
                noise[s.name] = site_tree_noise(
                    epsilon=args.epsilon, delta=acc.delta, sample_rate=acc.sample_rate,
                    network_noise=acc.noise_multiplier, network_steps=acc.planned_steps,
                    plan=plan, settings=tree_dp, orders=ALPHAS)
                s.tree_noise = noise[s.name]
            grown = private_plan(plan, list(noise.values()), tree_dp.hessian_floor)
            t0 = time.perf_counter()
            hybrid = grow_hybrid(sites, weights, grown, counts=counts, min_sites=2,
                                 edges=public_edges(plan.n_bins), exact=False)
            row = {"epsilon": args.epsilon, "share": share, "plan": name, **cfg,
                   "valid_auroc": round(hybrid.pooled.auroc, 4),
                   "valid_utility": round(hybrid.pooled.utility, 4),
                   "composed_epsilon": round(max(n.epsilon for n in noise.values()), 3),
                   "tree_z": round(float(np.mean([n.noise_multiplier
                                                  for n in noise.values()])), 2),
                   "min_child_weight": round(grown.min_child_weight, 1),
                   "leaves": sum(int((t.feature < 0).sum()) for t in hybrid.part.trees),
                   "seconds": round(time.perf_counter() - t0, 1)}
            print(json.dumps(row), flush=True)
            key = f"eps{args.epsilon:g}-share{share:g}-{name}-" + hashlib.sha256(
                args.base.encode()).hexdigest()[:8]
            (Path(args.cache) / f"trees-{key}.pkl").write_bytes(
                pickle.dumps({"key": key, "row": row, "hybrid": hybrid, "noise": noise,
                              "tree_dp": tree_dp}))
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            for s in sites:
                s.tree_noise = None


if __name__ == "__main__":
    main()
