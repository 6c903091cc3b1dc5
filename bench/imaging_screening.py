"""The direction rule on the label-skewed scanner sites: honest and sign-flipped scores per round.

FedAvg on PneumoniaMNIST's four scanner sites (every image through DICOM and the
pixel chain), with the direction rule switched off so that every honest update
is aggregated; each round's updates ``d_k = w_k - w_global`` are recorded and
scored both ways (:mod:`vigil.federation.checks`):

- *peers*: the median cosine with the other updates (the former rule);
- *previous step*: the cosine with the previous aggregated global step (the rule now).

For each, it prints the honest sites' worst ratio ``score / typical`` and the
ratio a sign-flipped copy of each site would get (``-cos`` against the same
reference); the rule rejects below ``-0.5`` (when the typical score is positive).

Usage::

    .venv/bin/python bench/imaging_screening.py [--seeds 0 1] [--rounds 10] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def _ratios(unit: NDArray[np.float64], step: NDArray[np.float64] | None) -> NDArray[np.float64]:
    """score / typical of each update, and of its sign flip (the others honest): (2, n)."""
    def scores(u: NDArray[np.float64]) -> NDArray[np.float64]:
        if step is not None:
            return u @ (step / np.linalg.norm(step))
        c = u @ u.T
        return np.array([np.median(np.delete(row, k)) for k, row in enumerate(c)])

    honest = scores(unit)
    flipped = []
    for k in range(len(unit)):
        u = unit.copy()
        u[k] = -u[k]
        s = scores(u)
        flipped.append(s[k] / np.median(s))
    return np.stack([honest / np.median(honest), np.array(flipped)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_file() else "sample")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    import vigil.federation.driver as driver
    from vigil.dicom_adapter.sites import medmnist_sites
    from vigil.federation.checks import ScreenRule
    from vigil.federation.image_run import IMAGING_RECIPE, federate_images
    from vigil.federation.strategies import make_strategy

    torch.set_num_threads(1)
    parts = medmnist_sites(args.data, seed=0, splits=("train", "val"))
    split = {k: [(s.site, s.inputs, s.labels) for s in v] for k, v in parts.items()}
    recorded: list[tuple[list[str], NDArray[np.float64], list[int]]] = []
    screen = driver.screen_updates

    def spy(updates: Any, reference: Any, **kw: Any) -> Any:
        deltas = np.stack([np.concatenate([(np.asarray(w, np.float64) - reference[k]).ravel()
                                           for k, w in u.weights.items()]) for u in updates])
        recorded.append(([u.site for u in updates], deltas, [u.num_examples for u in updates]))
        return screen(updates, reference, **kw)

    driver.screen_updates = spy  # type: ignore[assignment]
    out: dict[str, Any] = {"peers": {"honest_worst": [], "flipped_weakest": {}},
                           "previous step": {"honest_worst": [], "flipped_weakest": {}}}
    for seed in args.seeds:
        recorded.clear()
        plan = driver.Plan(rounds=args.rounds, local_epochs=IMAGING_RECIPE["local_epochs"],
                           batch_size=IMAGING_RECIPE["batch_size"], lr=IMAGING_RECIPE["lr"],
                           weight_decay=IMAGING_RECIPE["weight_decay"], seed=seed,
                           rule=ScreenRule(direction_min_sites=10**6))
        federate_images(split["train"], split["val"], strategy=make_strategy("fedavg"), plan=plan)
        previous = None
        for sites, deltas, examples in recorded:
            unit = deltas / np.linalg.norm(deltas, axis=1, keepdims=True)
            for name, step in (("peers", None), ("previous step", previous)):
                if name == "previous step" and step is None:
                    continue
                ratios = _ratios(unit, step)
                out[name]["honest_worst"].append(float(ratios[0].min()))
                for site, r in zip(sites, ratios[1], strict=True):
                    out[name]["flipped_weakest"].setdefault(site, []).append(float(r))
            previous = np.average(deltas, axis=0, weights=examples)  # FedAvg's step
    summary = {name: {"honest_lowest_ratio": min(v["honest_worst"]),
                      "flipped_highest_ratio": {s: max(r) for s, r in v["flipped_weakest"].items()}}
               for name, v in out.items()}
    if args.json:
        print(json.dumps(summary, indent=1))
        return
    for name, v in summary.items():
        flips = ", ".join(f"{s} {r:+.2f}" for s, r in v["flipped_highest_ratio"].items())
        print(f"{name}: lowest honest score/typical {v['honest_lowest_ratio']:+.2f}; "
              f"highest flipped score/typical: {flips} (rejected below -0.50)")


if __name__ == "__main__":
    main()
