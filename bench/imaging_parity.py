"""DICOM parity, measured: training path vs each DICOM variant (issue 15, point 5).

Fits the **stand-in** scorer (logistic regression on normalized 28×28 pixels; there
is no imaging CNN yet) on the train split, then feeds the test split through the
training path and through every variant of
:data:`vigil.dicom_adapter.parity.PARITY_VARIANTS` (written as DICOM, read back)
and every negative control. Reports max |Δpixel|, max |Δprobability| and decision
flips at the threshold; ``holds`` is true when every variant passes
(max |Δp| <= 1e-3, 0 flips) and every negative control fails.

With ``--model PKG`` the scorer is an imaging model package instead (the federated CNN,
scored by ``vigil.runtime.images.ImageScorer``: onnxruntime, the code the runtime runs) and
the threshold defaults to the package's.

Usage: ``.venv/bin/python bench/imaging_parity.py [--data NPZ] [--model PKG] [--threshold T]
[--json]``
(``--data`` defaults to the shared PneumoniaMNIST file, or the bundled sample when absent).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def main() -> None:
    from vigil.data.medmnist import load_medmnist
    from vigil.dicom_adapter.parity import fit_stand_in_scorer, run_parity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_file() else "sample")
    parser.add_argument("--model", type=Path, help="imaging model package to score with")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    train, test = load_medmnist(args.data, "train"), load_medmnist(args.data, "test")
    if args.model is None:
        scorer = fit_stand_in_scorer(train.images, train.labels)
        name = "stand-in logistic regression on normalized pixels"
        args.threshold = 0.5 if args.threshold is None else args.threshold
    else:
        from vigil.core.package import read_package
        from vigil.runtime.images import ImageScorer

        package = read_package(args.model)
        scorer = ImageScorer(package).predict_images
        name = f"{package.manifest.name} {package.manifest.version} (onnxruntime)"
        if args.threshold is None:
            args.threshold = package.manifest.threshold
    run = run_parity(test.images, scorer, threshold=args.threshold)
    result = {
        "data": "sample" if args.data == "sample" else Path(args.data).name,
        "n_train": int(train.labels.size),
        "n_test": int(test.labels.size),
        "scorer": name,
        "threshold": args.threshold,
        "variants": {k: v.as_dict() for k, v in run.variants.items()},
        "controls": {k: v.as_dict() for k, v in run.controls.items()},
        "holds": run.holds,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['data']}: {result['n_test']} test images, threshold {args.threshold}")
    print(f"{'path':<30} {'max|dpix|':>10} {'max|dp|':>10} {'flips':>6}  passes")
    for kind in ("variants", "controls"):
        for name, r in result[kind].items():
            print(
                f"{name:<30} {r['max_abs_pixel']:>10.2e} {r['max_abs_probability']:>10.2e} "
                f"{r['flips']:>6}  {r['passes']}"
            )
    print(f"holds: {run.holds}")


if __name__ == "__main__":
    main()
