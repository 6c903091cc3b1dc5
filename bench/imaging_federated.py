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
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def main() -> None:
    from vigil.federation.image_compare import ARMS, compare_markdown, summarize_seeds

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_file() else "sample")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--arms", nargs="+", default=list(ARMS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summarize", type=Path, nargs="+")
    args = parser.parse_args()
    if args.summarize:
        runs = [r for f in args.summarize for r in json.loads(f.read_text())["runs"]]
        print(compare_markdown(summarize_seeds([r["results"] for r in runs]), len(runs)))
        return

    from vigil.dicom_adapter.sites import medmnist_sites
    from vigil.federation.driver import Plan
    from vigil.federation.image_compare import compare_images

    t0 = time.perf_counter()
    parts = medmnist_sites(args.data, seed=0)
    split = {k: [(s.site, s.inputs, s.labels) for s in v] for k, v in parts.items()}
    print(f"site inputs through DICOM: {time.perf_counter() - t0:.0f} s", flush=True)
    runs = []
    for seed in args.seeds:
        t = time.perf_counter()
        plan = Plan(rounds=args.rounds, local_epochs=args.local_epochs,
                    batch_size=args.batch_size, lr=args.lr, weight_decay=1e-4, seed=seed)
        results = compare_images(split["train"], split["val"], split["test"], plan=plan,
                                 arms=args.arms, threads=args.threads)
        runs.append({"seed": seed, "seconds": time.perf_counter() - t, "results": results})
        print(json.dumps(runs[-1]), flush=True)
        if args.out:
            args.out.write_text(json.dumps({"data": Path(args.data).name, "rounds": args.rounds,
                                            "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
