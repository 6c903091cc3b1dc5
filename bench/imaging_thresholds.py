"""How much of a site's test accuracy is the threshold's doing: a diagnostic of site calibration.

For an imaging package (default the shipped ``models/imaging-federated``) and each
PneumoniaMNIST scanner site: the validation and test sizes and prevalences, the
threshold chosen on the site's validation images (score-bin edge maximizing
validation accuracy, as the site calibration does), the test accuracy at it, the
test accuracy an oracle threshold chosen on the test images would reach (a bound,
never a method), and the spread of the test accuracy when the threshold is chosen
again on ``--n-boot`` bootstrap resamples of the validation images (the
threshold-selection noise that the paired test-set intervals of
:mod:`vigil.federation.image_intervals` do not include). onnxruntime only.

``--shift`` prints instead the shift that remains after the pixel chain: the
official test images put through each site's acquisition map (gamma, contrast,
noise; the chain undoes the rest exactly), as model inputs, against site-a's
(none): the mean per-image brightness change, the input SD and the mean
absolute per-pixel change, on the same images.

Usage::

    .venv/bin/python bench/imaging_thresholds.py [--model models/imaging-federated] \
        [--sites-cache sites.npz] [--n-boot 1000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging_federated import SHARED, _site_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import onnxruntime as ort

    from vigil.features.metrics import auroc
    from vigil.federation.evaluation import SCORE_EDGES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_file() else "sample")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "imaging-federated")
    parser.add_argument("--sites-cache", type=Path)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--shift", action="store_true", help="print the residual site shift")
    args = parser.parse_args()
    if args.shift:
        _residual_shift(args.data)
        return

    split = _site_inputs(args.data, args.sites_cache)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(args.model / "model.onnx"), options)

    def probability(x: np.ndarray) -> np.ndarray:
        return session.run(None, {"image": x[:, None].astype(np.float32)})[0].ravel()

    def accuracy(y: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Accuracy at every score-bin edge, shape (len(SCORE_EDGES),)."""
        return ((p[None, :] >= SCORE_EDGES[:, None]) == (y[None, :] > 0)).mean(axis=1)

    rng = np.random.default_rng(0)
    print("| site | validation n (normal) / prevalence | test n (normal) / prevalence | "
          "AUC validation / test | threshold (validation) | test accuracy at it | "
          "oracle test accuracy | SD of test accuracy, threshold re-chosen on resampled "
          "validation (5-95 %) |")
    print("|---|---|---|---|---|---|---|---|")
    test = {name: (x, y) for name, x, y in split["test"]}
    for name, xv, yv in split["val"]:
        xt, yt = test[name]
        pv, pt = probability(xv), probability(xt)
        on_test = accuracy(yt, pt)
        chosen = on_test[int(np.argmax(accuracy(yv, pv)))]
        again = []
        for _ in range(args.n_boot):
            i = rng.integers(0, yv.size, yv.size)
            again.append(on_test[int(np.argmax(accuracy(yv[i], pv[i])))])
        spread = np.asarray(again)
        print(f"| {name} | {yv.size} ({int((yv == 0).sum())}) / {yv.mean():.2f} | {yt.size} "
              f"({int((yt == 0).sum())}) / {yt.mean():.2f} | {auroc(yv, pv):.3f} / "
              f"{auroc(yt, pt):.3f} | {SCORE_EDGES[int(np.argmax(accuracy(yv, pv)))]:.3f} | "
              f"{chosen:.3f} | {on_test.max():.3f} | {spread.std():.3f} "
              f"({np.percentile(spread, 5):.3f}-{np.percentile(spread, 95):.3f}) |")


def _residual_shift(data: str) -> None:
    """Print each site's acquisition shift on the same test images, in model-input units."""
    from vigil.data.medmnist import load_medmnist
    from vigil.dicom_adapter.sites import SITES

    images = load_medmnist(data, "test").images.astype(np.float64) / 255.0
    base = (images - 0.5) / 0.5
    rng = np.random.default_rng(0)
    print("| site | gamma, contrast, noise sd | mean brightness change | input SD (site-a "
          f"{base.std():.3f}) | mean \\|Δ\\| per pixel |")
    print("|---|---|---|---|---|")
    for site in SITES:
        sc = site.scanner
        p = sc.contrast * (images**sc.gamma - 0.5) + 0.5
        if sc.noise:
            p = p + rng.normal(0.0, sc.noise, images.shape)
        x = (np.clip(p, 0.0, 1.0) - 0.5) / 0.5
        print(f"| {sc.name} | {sc.gamma:g}, {sc.contrast:g}, {sc.noise:g} | "
              f"{(x - base).mean():+.3f} | {x.std():.3f} | {np.abs(x - base).mean():.3f} |")


if __name__ == "__main__":
    main()
