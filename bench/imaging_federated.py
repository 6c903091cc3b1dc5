"""Federated imaging model, measured: FedAvg, FedProx, FedBN, centralized, each site alone.

PneumoniaMNIST on the four scanner sites (site assignment seed 0, every image
written as DICOM in memory and read back through the pixel chain). For each
training seed, every arm of :func:`vigil.federation.image_compare.compare_images`
is trained (rounds kept and thresholds chosen on the validation split) and scored
on the official test split. Results go to ``--out`` as JSON, one file per run, so
seeds can run as separate processes; ``--summarize`` merges them into the
mean ± SD table of ``docs/imaging.md``.

Usage::

    .venv/bin/python bench/imaging_federated.py --seeds 0 1 2 --out results.json
    .venv/bin/python bench/imaging_federated.py --summarize seed0.json seed1.json ...
        [--n-boot 2000] [--json-out intervals.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def main() -> None:
    from vigil.federation.image_compare import ARMS, compare_markdown, summarize_seeds
    from vigil.federation.image_run import IMAGING_RECIPE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_file() else "sample")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=IMAGING_RECIPE["rounds"])
    parser.add_argument("--local-epochs", type=int, default=IMAGING_RECIPE["local_epochs"])
    parser.add_argument("--batch-size", type=int, default=IMAGING_RECIPE["batch_size"])
    parser.add_argument("--lr", type=float, default=IMAGING_RECIPE["lr"])
    parser.add_argument("--max-shift", type=int, default=IMAGING_RECIPE["max_shift"])
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summarize", type=Path, nargs="+")
    args = parser.parse_args()
    if args.summarize:
        from vigil.federation.image_intervals import comparison_markdown, standard_comparisons

        files = [json.loads(f.read_text()) for f in args.summarize]
        runs = [r for f in files for r in f["runs"]]
        results = [r["results"] for r in runs]
        print(compare_markdown(summarize_seeds(results), len(runs)))
        print(f"\nseconds per seed: {[round(r['seconds']) for r in runs]}")
        if "labels" in files[0]:
            labels = {k: np.asarray(v) for k, v in files[0]["labels"].items()}
            rows = standard_comparisons(labels, results, n_boot=args.n_boot)
            print("\n" + comparison_markdown(rows))
            if args.json_out:
                args.json_out.write_text(json.dumps({"seeds": [r["seed"] for r in runs],
                                                     "comparisons": rows}, indent=1))
        return

    from vigil.dicom_adapter.sites import medmnist_sites
    from vigil.federation.driver import Plan
    from vigil.federation.image_compare import compare_images

    t0 = time.perf_counter()
    parts = medmnist_sites(args.data, seed=0)
    split = {k: [(s.site, s.inputs, s.labels) for s in v] for k, v in parts.items()}
    print(f"site inputs through DICOM: {time.perf_counter() - t0:.0f} s", flush=True)
    runs = []
    recipe = {"rounds": args.rounds, "local_epochs": args.local_epochs,
              "batch_size": args.batch_size, "lr": args.lr, "max_shift": args.max_shift}
    labels = {name: [int(v) for v in y] for name, _, y in split["test"]}
    for seed in args.seeds:
        t = time.perf_counter()
        plan = Plan(rounds=args.rounds, local_epochs=args.local_epochs,
                    batch_size=args.batch_size, lr=args.lr,
                    weight_decay=IMAGING_RECIPE["weight_decay"], seed=seed)
        runs.append({"seed": seed, "seconds": 0.0, "results": {}})
        for arm in args.arms:  # written after every arm: a partial run keeps what it has
            runs[-1]["results"] |= compare_images(
                split["train"], split["val"], split["test"], plan=plan, arms=[arm],
                threads=args.threads, max_shift=args.max_shift, keep_predictions=True)
            runs[-1]["seconds"] = time.perf_counter() - t
            pooled = runs[-1]["results"][arm]["pooled"]
            print(json.dumps({"seed": seed, "arm": arm, "seconds": round(runs[-1]["seconds"]),
                              "pooled": pooled}), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"data": Path(args.data).name, "recipe": recipe,
                                                "labels": labels, "runs": runs}))

if __name__ == "__main__":
    main()
