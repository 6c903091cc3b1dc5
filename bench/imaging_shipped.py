"""The shipped imaging package against the bench's run of the same recipe (issue 15 follow-up).

``models/imaging-federated`` is made by ``vigil federate --task imaging`` (FedAvg, seed 0,
``IMAGING_RECIPE``); ``bench/imaging_federated.py`` trains the same arm on the same data,
seed and recipe and keeps every validation and test probability and each site's threshold
in its JSON. If they are the same model, the package (scored by the runtime's
:class:`vigil.runtime.images.ImageScorer`, onnxruntime) gives the bench's torch
probabilities up to the export's float error, the same site thresholds, hence the same
per-site AUC and accuracy. For every site and split this prints the largest
|Δprobability|, both thresholds, both AUCs and accuracies (each site at its own
validation threshold) and the decisions that differ; then the pooled test AUC and
accuracy at the sites' thresholds. The test scores are read, never used for a choice.

``--versus OLD`` also scores another package (a former release) on the same images and
prints ``package − OLD`` per site and pooled with 95 % paired bootstrap intervals
(:func:`vigil.federation.image_intervals.paired_interval`, ``--n-boot`` resamples of the test
images; for accuracy also with each site's validation images resampled and both
packages' thresholds re-chosen on them).

Usage::

    .venv/bin/python bench/imaging_shipped.py --bench grid-shift0.json [--arm fedavg] \
        [--seed 0] [--model models/imaging-federated] [--sites-cache sites.npz] \
        [--versus OLD_PACKAGE] [--n-boot 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging_federated import SHARED, _site_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    from vigil.core.package import read_package
    from vigil.features.metrics import auroc
    from vigil.runtime.images import ImageScorer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True, help="bench/imaging_federated.py JSON")
    parser.add_argument("--arm", default="fedavg")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_file() else "sample")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "imaging-federated")
    parser.add_argument("--sites-cache", type=Path)
    parser.add_argument("--versus", type=Path, help="a former package to compare with")
    parser.add_argument("--n-boot", type=int, default=2000)
    args = parser.parse_args()

    bench = json.loads(args.bench.read_text())
    run = _the_run(bench["runs"], args.seed, args.arm, args.bench)
    package = read_package(args.model)
    scorer = ImageScorer(package, threads=1)
    thresholds: dict[str, float] = package.manifest.model_extra["site_thresholds"]
    split = _site_inputs(args.data, args.sites_cache)
    print(f"{package.manifest.name} {package.manifest.version} against {args.bench.name} "
          f"({args.arm}, seed {args.seed}; bench recipe {json.dumps(bench['recipe'])})\n")
    print("| split | site | n | max abs Δp | threshold package / bench | AUC package / bench "
          "| accuracy package / bench | decisions differing |")
    print("|---|---|---:|---:|---|---|---|---:|")
    pooled: list[tuple[np.ndarray, np.ndarray]] = []
    for part, key in (("val", "validation"), ("test", "results")):
        for site, x, y in split[part]:
            ref = run[key][args.arm][site]
            p, q = scorer.predict_images(x), np.asarray(ref["probability"])
            y = np.asarray(y).astype(np.int8).ravel()
            mine, theirs = p >= thresholds[site], q >= ref["threshold"]
            print(f"| {part} | {site} | {y.size} | {np.max(np.abs(p - q)):.1e} | "
                  f"{thresholds[site]:.4f} / {ref['threshold']:.4f} | "
                  f"{auroc(y, p):.4f} / {ref['auc']:.4f} | "
                  f"{np.mean(mine == (y > 0)):.4f} / {ref['accuracy']:.4f} | "
                  f"{int(np.sum(mine != theirs))} |")
            if part == "test":
                pooled.append((y, p >= thresholds[site]))
    labels = np.concatenate([y for y, _ in pooled])
    decided = np.concatenate([d for _, d in pooled])
    ref = run["results"][args.arm]["pooled"]
    probability = np.concatenate([scorer.predict_images(x) for _, x, _ in split["test"]])
    print(f"\npooled test, each site at its own threshold: AUC {auroc(labels, probability):.4f} "
          f"/ bench {ref['auc']:.4f}, accuracy {np.mean(decided == (labels > 0)):.4f} "
          f"/ bench {ref['accuracy']:.4f} ({labels.size} images)")
    if args.versus is not None:
        print("\n" + _versus(package, read_package(args.versus), split, args.n_boot))


def _versus(new: Any, old: Any, split: dict[str, Any], n_boot: int) -> str:
    """Markdown: ``new − old`` per site and pooled, with paired bootstrap intervals."""
    from vigil.federation.image_intervals import paired_interval
    from vigil.runtime.images import ImageScorer

    names = {"new": new.manifest.version, "old": old.manifest.version}
    test: dict[str, Any] = {}
    valid: dict[str, Any] = {}
    for arm, package in (("new", new), ("old", old)):
        scorer = ImageScorer(package, threads=1)
        thresholds = package.manifest.model_extra["site_thresholds"]
        test[arm] = {site: {"probability": scorer.predict_images(x),
                            "threshold": thresholds[site]} for site, x, _ in split["test"]}
        valid[arm] = {site: {"probability": scorer.predict_images(x)}
                      for site, x, _ in split["val"]}
    labels = {site: np.asarray(y).ravel() for site, _, y in split["test"]}
    valid_labels = {site: np.asarray(y).ravel() for site, _, y in split["val"]}
    lines = [f"| site | AUC {names['new']} / {names['old']} | difference (95 % paired interval) "
             f"| accuracy {names['new']} / {names['old']} | difference, thresholds fixed "
             "| difference, thresholds re-chosen on resampled validation |",
             "|---|---|---|---|---|---|"]
    for site in [*labels, "pooled"]:
        one = {a: paired_interval(labels, [test], a, site=site, n_boot=n_boot)
               for a in ("new", "old")}
        fixed = paired_interval(labels, [test], "new", "old", site=site, n_boot=n_boot)
        rechosen = paired_interval(labels, [test], "new", "old", site=site, n_boot=n_boot,
                                   valid_labels=valid_labels, valid_runs=[valid])["accuracy"]
        auc, acc = fixed["auc"], fixed["accuracy"]
        lines.append(
            f"| {site} | {one['new']['auc'].value:.3f} / {one['old']['auc'].value:.3f} | "
            f"{auc.value:+.3f} [{auc.low:+.3f}, {auc.high:+.3f}] | "
            f"{one['new']['accuracy'].value:.3f} / {one['old']['accuracy'].value:.3f} | "
            f"{acc.value:+.3f} [{acc.low:+.3f}, {acc.high:+.3f}] | "
            f"[{rechosen.low:+.3f}, {rechosen.high:+.3f}] |")
    return "\n".join(lines)


def _the_run(runs: list[dict[str, Any]], seed: int, arm: str, path: Path) -> dict[str, Any]:
    """The bench run of ``seed`` holding ``arm``'s kept validation and test probabilities."""
    for run in runs:
        if run["seed"] == seed and arm in run["results"] and arm in run.get("validation", {}):
            return run
    raise SystemExit(f"expected seed {seed}'s {arm} arm with validation scores in {path}")


if __name__ == "__main__":
    main()
