"""The imaging reference profile: what the training sites' images looked like, in aggregates.

An imaging model package's manifest carries ``image_profile`` (format
:data:`IMAGE_PROFILE_FORMAT`), written at export from the training sites and read by the
imaging drift monitor (:mod:`vigil.runtime.monitoring.images`)::

    {"format": "vigil-image-profile/1",
     "images": n,                                 # validation images of the input histogram
     "input_histogram": {"edges": [...17], "counts": [...16]},   # summed model-input values
     "headers": {field: {value: count}},          # training instances' watched headers
     "header_images": m,                          # training instances counted in "headers"
     "score": {"edges": [...51], "counts": [...50]}}  # validation probabilities

``headers`` counts :func:`header_value` of each :class:`~vigil.dicom_adapter.HeaderRecord`
field (pixel spacing binned to 0.01 mm). Only aggregates: no image or identifier leaves a
site. It sits beside the sepsis ``reference_profile`` (a different format, which the sepsis
monitor reads) so neither monitor ever reads the other's profile. numpy only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError, ModelArtifactError
from vigil.imaging.histogram import INPUT_EDGES, N_BINS

if TYPE_CHECKING:
    from vigil.dicom_adapter.headers import HeaderRecord

__all__ = [
    "IMAGE_PROFILE_FORMAT",
    "SCORE_BINS",
    "WATCHED_HEADERS",
    "ImageProfile",
    "build_image_profile",
    "header_value",
]

IMAGE_PROFILE_FORMAT = "vigil-image-profile/1"

SCORE_BINS = 50
"""Uniform bins of the validation-probability histogram on [0, 1] (the monitor merges them)."""

WATCHED_HEADERS: dict[str, str] = {
    "manufacturer": "Manufacturer",
    "model_name": "ManufacturerModelName",
    "modality": "Modality",
    "bits_stored": "BitsStored",
    "photometric": "PhotometricInterpretation",
    "pixel_spacing_mm": "PixelSpacing",
    "transfer_syntax": "TransferSyntaxUID",
}
""":class:`HeaderRecord` field → the DICOM keyword alarms name it by."""


def header_value(field: str, value: Any) -> str:
    """Return the category one header value counts in (``"absent"`` for a missing value).

    Pixel spacing is rounded to 0.01 mm (``"0.14"``), so the same detector reads it
    as the text fields; BitsStored 0 (unreadable) is ``"absent"``.

    Examples
    --------
    >>> header_value("pixel_spacing_mm", 0.1389), header_value("bits_stored", 12)
    ('0.14', '12')
    >>> header_value("pixel_spacing_mm", float("nan")), header_value("manufacturer", "")
    ('absent', 'absent')
    """
    if field == "pixel_spacing_mm":
        x = float(value)
        return "absent" if not math.isfinite(x) else f"{round(x, 2):.2f}"
    if field == "bits_stored":
        return str(int(value)) if int(value) > 0 else "absent"
    text = str(value).strip()
    return text if text else "absent"


def build_image_profile(
    histograms: NDArray[np.integer],
    headers: Iterable[HeaderRecord],
    probabilities: NDArray[np.floating],
) -> dict[str, Any]:
    """Build the manifest's ``image_profile``.

    Parameters
    ----------
    histograms : ndarray of int, shape (n, N_BINS)
        :func:`~vigil.imaging.input_histogram` of the validation model inputs.
    headers : iterable of HeaderRecord
        The training sites' instances, as their scanners stored them.
    probabilities : ndarray of float, shape (m,)
        The package's probabilities of the validation images.

    Returns
    -------
    dict
        JSON-ready; see the module docstring.

    Raises
    ------
    DataError
        If the histograms are not (n, N_BINS) or a probability is outside [0, 1].
    """
    h = np.asarray(histograms, dtype=np.int64)
    if h.ndim != 2 or h.shape[1] != N_BINS:
        raise DataError(f"expected input histograms of shape (n, {N_BINS}), got {h.shape}")
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if p.size and not (np.all(np.isfinite(p)) and p.min() >= 0.0 and p.max() <= 1.0):
        raise DataError("expected validation probabilities in [0, 1]")
    counts: dict[str, Counter[str]] = {f: Counter() for f in WATCHED_HEADERS}
    n_headers = 0
    for record in headers:
        n_headers += 1
        for field in WATCHED_HEADERS:
            counts[field][header_value(field, getattr(record, field))] += 1
    edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    score = np.histogram(p, edges)[0]
    return {
        "format": IMAGE_PROFILE_FORMAT,
        "images": int(h.shape[0]),
        "input_histogram": {"edges": [float(x) for x in INPUT_EDGES],
                            "counts": [int(x) for x in h.sum(axis=0)]},
        "headers": {f: dict(sorted(c.items())) for f, c in counts.items()},
        "header_images": n_headers,
        "score": {"edges": [float(x) for x in edges], "counts": [int(x) for x in score]},
    }


@dataclass(frozen=True, eq=False)
class ImageProfile:
    """A parsed ``image_profile``.

    Attributes
    ----------
    images : int
        Validation images behind ``input_counts`` and ``score_counts``.
    input_counts : ndarray of float64, shape (N_BINS,)
        Summed model-input histogram over :data:`~vigil.imaging.INPUT_EDGES`.
    headers : dict of str to dict of str to int
        Field → category → training instances.
    score_edges : ndarray of float64, shape (k + 1,)
    score_counts : ndarray of float64, shape (k,)
    """

    images: int
    input_counts: NDArray[np.float64]
    headers: dict[str, dict[str, int]]
    score_edges: NDArray[np.float64]
    score_counts: NDArray[np.float64]

    def __repr__(self) -> str:
        return f"ImageProfile(images={self.images}, header_fields={len(self.headers)})"

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], *, where: str = "the manifest"
                      ) -> ImageProfile | None:
        """Read ``manifest["image_profile"]``; None when the package has none (older packages).

        Raises
        ------
        ModelArtifactError
            When a profile is present but not of the expected format or malformed.
        """
        profile = manifest.get("image_profile")
        if not profile:
            return None
        fmt = profile.get("format") if isinstance(profile, Mapping) else None
        if fmt != IMAGE_PROFILE_FORMAT:
            raise ModelArtifactError(
                f"expected an image profile of format {IMAGE_PROFILE_FORMAT!r} in {where}, got "
                f"{fmt!r}; re-export the package with this vigil or monitor against the site "
                "baseline")
        try:
            edges = np.asarray(profile["input_histogram"]["edges"], dtype=np.float64)
            counts = np.asarray(profile["input_histogram"]["counts"], dtype=np.float64)
            if counts.shape != (N_BINS,) or not np.allclose(edges, INPUT_EDGES):
                raise ValueError(f"input histogram of {counts.size} bins on other edges than "
                                 "vigil.imaging.INPUT_EDGES")
            score_edges = np.asarray(profile["score"]["edges"], dtype=np.float64)
            score_counts = np.asarray(profile["score"]["counts"], dtype=np.float64)
            if score_edges.size != score_counts.size + 1 or np.any(np.diff(score_edges) <= 0):
                raise ValueError("score histogram edges and counts do not match")
            headers = {str(f): {str(k): int(v) for k, v in values.items()}
                       for f, values in profile["headers"].items()}
            images = int(profile["images"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelArtifactError(
                f"the image profile in {where} is malformed ({type(exc).__name__}: {exc}); "
                "re-export the package") from exc
        if np.any(counts < 0) or np.any(score_counts < 0):
            raise ModelArtifactError(f"the image profile in {where} has negative counts")
        return cls(images, counts, headers, score_edges, score_counts)
