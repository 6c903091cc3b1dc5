"""DICOM parity: the same images through the training path and through each DICOM variant.

Each variant of :data:`PARITY_VARIANTS` encodes the test images with a
:class:`~vigil.dicom_adapter.scanners.Scanner` that has no acquisition shift,
writes them as Part 10 bytes, reads them back with pydicom and runs
:func:`~vigil.dicom_adapter.reading.read_image` and the pixel chain. The result is
compared with :func:`vigil.imaging.training_inputs` on the original arrays by
:func:`vigil.imaging.measure_parity`. Each of :data:`NEGATIVE_CONTROLS` is a
known field failure (a chain that skips a step) and must fail the same check.

There is no imaging CNN yet: :func:`fit_stand_in_scorer` is a **stand-in**
(logistic regression on the 28×28 normalized pixels), so the probability check
is real; the CNN's ONNX session replaces it through the same
:data:`~vigil.imaging.Scorer` signature.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pydicom
from numpy.typing import NDArray

from vigil.dicom_adapter.reading import DicomImage, read_image
from vigil.dicom_adapter.scanners import Scanner, build_instance
from vigil.imaging import (
    ParityReport,
    Photometric,
    PresentationShape,
    Scorer,
    apply_modality,
    apply_presentation,
    measure_parity,
    normalize,
    resize,
    to_model_input,
    training_inputs,
)

__all__ = [
    "NEGATIVE_CONTROLS",
    "PARITY_VARIANTS",
    "NegativeControl",
    "ParityRun",
    "dicom_inputs",
    "fit_stand_in_scorer",
    "run_parity",
]

_M1, _M2 = Photometric.MONOCHROME1, Photometric.MONOCHROME2
PARITY_VARIANTS: dict[str, Scanner] = {
    "8bit-mono2": Scanner("p-8bit", "CR", 8, _M2, 1.0, 0.0, 0.0, 255.0),
    "12bit-mono1": Scanner("p-12m1", "CR", 12, _M1, 0.5, -1024.0, -1000.0, 1000.0),
    "12bit-mono1-inverse-shape": Scanner(
        "p-12m1-inv", "DX", 12, _M1, 1.0, 0.0, 500.0, 3500.0,
        presentation_shape=PresentationShape.INVERSE,
    ),
    "12bit-mono2-inverse-shape": Scanner(
        "p-12m2-inv", "CR", 12, _M2, 1.0, 0.0, 500.0, 3500.0,
        presentation_shape=PresentationShape.INVERSE,
    ),
    "12bit-signed-rle": Scanner(
        "p-12s-rle", "CR", 12, _M2, 1.0, 0.0, -1800.0, 1800.0, syntax="rle", signed=True
    ),
    "16bit-negative-slope": Scanner("p-16neg", "CR", 16, _M2, -4.0, 65536.0, 0.0, 60000.0),
    "16bit-voi-lut": Scanner(
        "p-16lut", "CR", 16, _M2, -2.0, 70000.0, 1000.0, 5000.0, voi="voi_lut"
    ),
    "16bit-sigmoid": Scanner("p-16sig", "CR", 16, _M2, 1.0, 0.0, 768.0, 64768.0, voi="sigmoid"),
    "12bit-mono1-rle": Scanner(
        "p-12m1-rle", "CR", 12, _M1, 0.5, -1024.0, -1000.0, 1000.0, syntax="rle"
    ),
    "12bit-mono1-jpeg-ls": Scanner(
        "p-12m1-jls", "CR", 12, _M1, 0.5, -1024.0, -1000.0, 1000.0, syntax="jpeg-ls"
    ),
    "16bit-voi-lut-jpeg-ls": Scanner(
        "p-16lut-jls", "CR", 16, _M2, -2.0, 70000.0, 1000.0, 5000.0, voi="voi_lut",
        syntax="jpeg-ls",
    ),
}  # fmt: skip
"""DICOM encodings of the same displayed images (no acquisition shift), by name."""


def _skip_inversion(image: DicomImage) -> NDArray[np.float32]:
    """Chain without the MONOCHROME1 / INVERSE step (MONAI Deploy issue #282)."""
    params = dataclasses.replace(
        image.params, photometric=Photometric.MONOCHROME2, presentation_shape=None
    )
    return to_model_input(image.stored, params)


def _min_max(image: DicomImage) -> NDArray[np.float32]:
    """Per-image min-max of the modality values instead of the window."""
    m = apply_modality(image.stored, image.params)
    span = float(m.max() - m.min()) or 1.0
    return normalize(resize(apply_presentation((m - m.min()) / span, image.params)))


def _ignore_rescale(image: DicomImage) -> NDArray[np.float32]:
    """Chain with the Rescale Slope / Intercept dropped (pydicom issue #783, OHIF #127)."""
    return to_model_input(image.stored, dataclasses.replace(image.params, slope=1.0, intercept=0.0))


@dataclass(frozen=True)
class NegativeControl:
    """A wrong chain applied to one variant's instances.

    Attributes
    ----------
    variant : str
        Key of :data:`PARITY_VARIANTS` whose instances it reads.
    chain : callable
        DicomImage → model input, the wrong way.
    """

    variant: str
    chain: Callable[[DicomImage], NDArray[np.float32]]


NEGATIVE_CONTROLS: dict[str, NegativeControl] = {
    "skip-monochrome1-inversion": NegativeControl("12bit-mono1", _skip_inversion),
    "per-image-min-max": NegativeControl("12bit-mono1", _min_max),
    "ignore-rescale": NegativeControl("12bit-mono1", _ignore_rescale),
    "ignore-negative-slope": NegativeControl("16bit-negative-slope", _ignore_rescale),
}
"""Known field failures; each must fail the parity check."""


@dataclass(frozen=True)
class ParityRun:
    """Reports of every variant and every negative control.

    Attributes
    ----------
    variants : dict of str to ParityReport
        One per DICOM variant; all must pass.
    controls : dict of str to ParityReport
        One per negative control; none may pass.
    """

    variants: dict[str, ParityReport]
    controls: dict[str, ParityReport]

    @property
    def holds(self) -> bool:
        """Every variant passes and every negative control fails."""
        return all(r.passes for r in self.variants.values()) and not any(
            r.passes for r in self.controls.values()
        )


def _round_trip(images: NDArray[np.uint8], scanner: Scanner) -> list[DicomImage]:
    """Encode each image as a Part 10 file in memory, read it back, validate it."""
    out = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        build_instance(image, scanner, key=f"parity/{i}").save_as(
            buffer, enforce_file_format=True
        )
        buffer.seek(0)
        out.append(read_image(pydicom.dcmread(buffer)))
    return out


def dicom_inputs(
    images: NDArray[np.uint8],
    scanner: Scanner,
    chain: Callable[[DicomImage], NDArray[np.float32]] | None = None,
) -> NDArray[np.float32]:
    """Model inputs of images written as DICOM by ``scanner`` and read back.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, rows, columns)
        Displayed images.
    scanner : Scanner
        The encoding.
    chain : callable or None, optional
        DicomImage → model input; the pixel chain when None.

    Returns
    -------
    ndarray of float32, shape (n, 28, 28)
        The model inputs.
    """
    run = chain or (lambda image: to_model_input(image.stored, image.params))
    return np.stack([run(image) for image in _round_trip(images, scanner)])


def fit_stand_in_scorer(images: NDArray[np.uint8], labels: NDArray[np.integer]) -> Scorer:
    """Fit the **stand-in** scorer: logistic regression on the normalized training inputs.

    Not the imaging model (there is none yet): a fixed, fitted function of every pixel,
    so that pixel differences turn into real probability differences.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, 28, 28)
        Training images.
    labels : ndarray of int, shape (n,)
        Their binary labels.

    Returns
    -------
    Scorer
        Model inputs (n, 28, 28) → probability of class 1, shape (n,).
    """
    from sklearn.linear_model import LogisticRegression

    x = training_inputs(images).reshape(len(images), -1).astype(np.float64)
    model = LogisticRegression(C=0.1, max_iter=2000).fit(x, np.asarray(labels).reshape(-1))

    def score(inputs: NDArray[np.float32]) -> NDArray[np.float64]:
        flat = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
        return np.asarray(model.predict_proba(flat)[:, 1], dtype=np.float64)

    return score


def run_parity(images: NDArray[np.uint8], scorer: Scorer, *, threshold: float) -> ParityRun:
    """Measure every variant and every negative control against the training path.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, 28, 28)
        Test images.
    scorer : Scorer
        Model inputs → probabilities.
    threshold : float
        The decision threshold.

    Returns
    -------
    ParityRun
        The reports.
    """
    reference = training_inputs(images)
    variants = {
        name: measure_parity(reference, dicom_inputs(images, s), scorer, threshold=threshold)
        for name, s in PARITY_VARIANTS.items()
    }
    controls = {
        name: measure_parity(
            reference,
            dicom_inputs(images, PARITY_VARIANTS[c.variant], c.chain),
            scorer,
            threshold=threshold,
        )
        for name, c in NEGATIVE_CONTROLS.items()
    }
    return ParityRun(variants=variants, controls=controls)
