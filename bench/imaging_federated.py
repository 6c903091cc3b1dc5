"""Federated imaging model, measured: FedAvg, FedProx, FedBN, centralized, each site alone.

PneumoniaMNIST on the four scanner sites (site assignment seed 0, every image
written as DICOM in memory and read back through the pixel chain). For each
training seed, every arm of :func:`vigil.federation.image_compare.compare_images`
is trained (rounds kept and thresholds chosen on the validation split) and scored
on the official test split. Results go to ``--out`` as JSON, one file per run, so
seeds can run as separate processes; ``--summarize`` merges them into the
mean ± SD table of ``docs/imaging.md``, the paired intervals and, where the runs kept
their validation predictions, the same after site calibration
(:mod:`vigil.federation.image_calibrated`: each site's ``vigil calibrate`` map fitted on
its validation images, pooled over the sites' calibrated test probabilities).

Every arm is also scored on the **validation** split (each site at its own
validation-best threshold), stored under ``"validation"``: ``--choose`` reads only
those to pick each arm's recipe from a grid of runs (``docs/imaging.md``, "Recipe
chosen on validation"), the same rule for every arm.

Usage::

    .venv/bin/python bench/imaging_federated.py --seeds 0 1 2 --out results.json
    .venv/bin/python bench/imaging_federated.py --summarize seed0.json seed1.json ...
        [--n-boot 2000] [--json-out intervals.json]
    .venv/bin/python bench/imaging_federated.py --choose grid/*.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

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
    parser.add_argument("--mu", type=float, default=None, help="FedProx proximal strength")
    parser.add_argument("--sites-cache", type=Path,
                        help="NPZ of the site inputs read through DICOM (written if absent)")
    parser.add_argument("--summarize", type=Path, nargs="+")
    parser.add_argument("--choose", type=Path, nargs="+",
                        help="grid run files: pick each arm's recipe on validation only")
    args = parser.parse_args()
    if args.choose:
        _choose(args.choose)
        return
    if args.summarize:
        from vigil.federation.image_intervals import comparison_markdown, standard_comparisons

        files = [json.loads(f.read_text()) for f in args.summarize]
        runs = _merge_seeds([r for f in files for r in f["runs"]])
        results = [r["results"] for r in runs]
        print(compare_markdown(summarize_seeds(results), len(runs)))
        print(f"\nseconds per seed: {[round(r['seconds']) for r in runs]}")
        if "labels" in files[0]:
            labels = {k: np.asarray(v) for k, v in files[0]["labels"].items()}
            rows = standard_comparisons(labels, results, n_boot=args.n_boot)
            print("\n" + comparison_markdown(rows))
            calibrated: dict[str, Any] = {}
            if "valid_labels" in files[0]:
                print("\n" + _rechosen_markdown(files[0], runs, args.n_boot))
                calibrated = _calibrated(files[0], runs, args.n_boot)
            if args.json_out:
                args.json_out.write_text(json.dumps({"seeds": [r["seed"] for r in runs],
                                                     "comparisons": rows, **calibrated},
                                                    indent=1))
        return

    from vigil.federation.driver import Plan
    from vigil.federation.image_compare import score_arm, train_arm, validation_scores

    t0 = time.perf_counter()
    split = _site_inputs(args.data, args.sites_cache)
    print(f"site inputs through DICOM: {time.perf_counter() - t0:.0f} s", flush=True)
    runs = []
    recipe = {"rounds": args.rounds, "local_epochs": args.local_epochs,
              "batch_size": args.batch_size, "lr": args.lr, "max_shift": args.max_shift,
              "mu": args.mu, "keep_by": IMAGING_RECIPE["keep_by"]}
    labels = {name: [int(v) for v in y] for name, _, y in split["test"]}
    valid_labels = {name: [int(v) for v in y] for name, _, y in split["val"]}
    for seed in args.seeds:
        t = time.perf_counter()
        plan = Plan(rounds=args.rounds, local_epochs=args.local_epochs,
                    batch_size=args.batch_size, lr=args.lr,
                    weight_decay=IMAGING_RECIPE["weight_decay"], seed=seed,
                    keep_by=IMAGING_RECIPE["keep_by"])
        runs.append({"seed": seed, "seconds": 0.0, "results": {}, "validation": {}})
        for arm in args.arms:  # written after every arm: a partial run keeps what it has
            models, thresholds = train_arm(arm, split["train"], split["val"], plan=plan,
                                           mu=args.mu, threads=args.threads,
                                           max_shift=args.max_shift)
            runs[-1]["validation"][arm] = validation_scores(models, split["val"], keep=True)
            runs[-1]["results"][arm] = score_arm(models, thresholds, split["test"], keep=True)
            runs[-1]["seconds"] = time.perf_counter() - t
            pooled = runs[-1]["results"][arm]["pooled"]
            print(json.dumps({"seed": seed, "arm": arm, "seconds": round(runs[-1]["seconds"]),
                              "pooled": pooled}), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"data": Path(args.data).name, "recipe": recipe,
                                                "labels": labels, "valid_labels": valid_labels,
                                                "runs": runs}))

def _site_inputs(data: str, cache: Path | None) -> dict[str, list[tuple[str, Any, Any]]]:
    """Each split's (site, model inputs, labels), read through DICOM or from ``cache``."""
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            keys = sorted({k.rsplit("/", 1)[0] for k in z.files})
            out: dict[str, list[tuple[str, Any, Any]]] = {}
            for key in keys:
                part, site = key.split("/")
                out.setdefault(part, []).append((site, z[f"{key}/x"], z[f"{key}/y"]))
            return out
    from vigil.dicom_adapter.sites import medmnist_sites

    parts = medmnist_sites(data, seed=0)
    split = {k: [(s.site, s.inputs, s.labels) for s in v] for k, v in parts.items()}
    if cache is not None:
        np.savez(cache, **{f"{k}/{site}/{a}": v for k, sites in split.items()
                           for site, x, y in sites for a, v in (("x", x), ("y", y))})
    return split


def _merge_seeds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge runs of the same seed made as separate processes (one per arm or recipe)."""
    merged: dict[int, dict[str, Any]] = {}
    for r in runs:
        m = merged.setdefault(r["seed"], {"seed": r["seed"], "seconds": 0.0, "results": {},
                                          "validation": {}})
        m["seconds"] += r["seconds"]
        m["results"] |= r["results"]
        m["validation"] |= r.get("validation", {})
    return [merged[s] for s in sorted(merged)]


def _rechosen_markdown(file: dict[str, Any], runs: list[dict[str, Any]], n_boot: int) -> str:
    """Accuracy differences whose intervals also re-choose each arm's thresholds."""
    from vigil.federation.image_intervals import COMPARISONS, paired_interval

    labels = {k: np.asarray(v) for k, v in file["labels"].items()}
    valid = {k: np.asarray(v) for k, v in file["valid_labels"].items()}
    lines = ["| comparison | site | accuracy, thresholds re-chosen on resampled validation "
             "(95 % interval) |", "|---|---|---|"]
    for arm, versus, factor in COMPARISONS:
        if versus is None or any(a not in r["validation"] for r in runs for a in (arm, versus)):
            continue
        for site in [*labels, "pooled"]:
            e = paired_interval(labels, [r["results"] for r in runs], arm, versus, site=site,
                                factor=factor, n_boot=n_boot, valid_labels=valid,
                                valid_runs=[r["validation"] for r in runs])["accuracy"]
            what = f"{arm} − {factor:g} × {versus}" if factor != 1 else f"{arm} − {versus}"
            lines.append(f"| {what} | {site} | {e.value:+.3f} [{e.low:+.3f}, {e.high:+.3f}] |")
    return "\n".join(lines)


def _calibrated(file: dict[str, Any], runs: list[dict[str, Any]], n_boot: int
                ) -> dict[str, Any]:
    """Print and return the pooled metrics after site calibration (``vigil calibrate``'s map).

    Each arm's, seed's and site's calibrator is fitted on the site's validation images and
    applied to its test images; the tables give every arm per site and pooled (mean ± SD
    over seeds) and the pooled comparisons with both intervals (calibrators fixed, re-fit).
    """
    from vigil.calibration import DEFAULT_METHOD
    from vigil.federation.image_calibrated import (
        calibrate_runs,
        calibrated_comparisons,
        calibrated_markdown,
    )
    from vigil.federation.image_compare import compare_markdown, summarize_seeds

    if any(not r["validation"] for r in runs):
        return {}
    labels = {k: np.asarray(v) for k, v in file["labels"].items()}
    valid = {k: np.asarray(v) for k, v in file["valid_labels"].items()}
    results, held = [r["results"] for r in runs], [r["validation"] for r in runs]
    summary = summarize_seeds(calibrate_runs(labels, results, valid, held))
    print(f"\nAfter site calibration ({DEFAULT_METHOD.value} map fitted on each site's "
          "validation images, threshold re-chosen on them):\n")
    print(compare_markdown(summary, len(runs)))
    t = time.perf_counter()
    rows = calibrated_comparisons(labels, results, valid, held, n_boot=n_boot)
    print("\n" + calibrated_markdown(rows))
    print(f"\n(intervals after site calibration: {time.perf_counter() - t:.0f} s)")
    return {"calibration_method": DEFAULT_METHOD.value, "calibrated_summary": summary,
            "calibrated_comparisons": rows}


def _choose(paths: list[Path]) -> None:
    """Print, per arm, the grid's validation scores and the recipe it keeps.

    The rule, the same for every arm: the highest pooled validation accuracy after site
    calibration, then the highest pooled validation AUC. Test scores are not read.
    """
    rows = []
    for path in paths:
        f = json.loads(path.read_text())
        for run in f["runs"]:
            for arm, cells in run.get("validation", {}).items():
                rows.append((arm, f["recipe"], run["seed"], cells["pooled"]))
    best: dict[str, tuple[Any, ...]] = {}
    print("| arm | seed | lr | max_shift | mu | pooled validation accuracy | AUC |")
    print("|---|---|---|---|---|---|---|")
    for arm, recipe, seed, cell in sorted(rows, key=lambda r: (r[0], str(r[1]))):
        print(f"| {arm} | {seed} | {recipe['lr']:g} | {recipe['max_shift']} | {recipe.get('mu')} "
              f"| {cell['accuracy']:.4f} | {cell['auc']:.4f} |")
        key = (cell["accuracy"], cell["auc"])
        if arm not in best or key > best[arm][0]:
            best[arm] = (key, recipe)
    print()
    for arm, (key, recipe) in best.items():
        print(f"{arm}: keeps {json.dumps(recipe)} (validation accuracy {key[0]:.4f}, AUC "
              f"{key[1]:.4f})")


if __name__ == "__main__":
    main()
