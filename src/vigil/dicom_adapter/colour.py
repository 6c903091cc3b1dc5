"""Reading a colour DICOM photograph (fundus camera) into stored samples, or a quarantine reason.

The colour twin of :func:`vigil.dicom_adapter.reading.read_image`: it accepts a
single-frame, 8-bit, 3-sample image whose Photometric Interpretation is RGB,
YBR_FULL or YBR_FULL_422 (PS3.3 C.7.6.3.1.2), PlanarConfiguration 0
(interleaved) or 1 (by plane), uncompressed, RLE, JPEG-LS or JPEG Baseline
(the last decoded by Pillow through pydicom's plugin). The samples are decoded
*raw* (no colour conversion by the decoder), and the colour space is converted
by the pure chain (:func:`vigil.imaging.stored_colour_input`). Anything else
raises :class:`~vigil.core.errors.DICOMError` whose message is the quarantine
reason; a greyscale image is refused here as a colour image is refused by the
greyscale reader, so a model only ever sees the channels its package declares.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

from vigil.core.errors import DICOMError
from vigil.imaging import ColourSpace

__all__ = ["COLOUR_MODALITIES", "ColourImage", "read_colour_image"]

COLOUR_MODALITIES: tuple[str, ...] = ("OP", "XC")
"""Ophthalmic Photography and External-camera Photography (VL Photographic)."""
_SIZE_COINCIDENCE = "The number of bytes of compressed pixel data matches the expected number"


@dataclass(frozen=True, eq=False)
class ColourImage:
    """One colour frame ready for the colour chain.

    Attributes
    ----------
    stored : ndarray of uint8, shape (rows, columns, 3)
        Decoded samples, channel last, in ``space`` (no conversion applied).
    space : ColourSpace
        The Photometric Interpretation.
    """

    stored: NDArray[np.uint8]
    space: ColourSpace

    def __repr__(self) -> str:
        return f"ColourImage(shape={self.stored.shape}, space={self.space.value})"


def _int(ds: Dataset, keyword: str, default: int) -> int:
    raw = ds.get(keyword, default)
    try:
        return int(raw if raw not in (None, "") else default)
    except (TypeError, ValueError) as exc:
        raise DICOMError(f"expected an integer in {keyword}, got a value that is not one",
                         attribute=keyword) from exc


def read_colour_image(ds: Dataset, *, modalities: Sequence[str] = COLOUR_MODALITIES
                      ) -> ColourImage:
    """Validate a colour instance and return its decoded samples and colour space.

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance, with its pixel data.
    modalities : sequence of str, optional
        Accepted values of Modality (0008,0060).

    Returns
    -------
    ColourImage

    Raises
    ------
    DICOMError
        With the quarantine reason: wrong modality, no pixel data, several frames, a
        photometric interpretation other than RGB / YBR_FULL / YBR_FULL_422 or not 3
        samples (MONOCHROME*, PALETTE COLOR, YBR_ICT/RCT...), bits other than 8, a
        PlanarConfiguration other than 0/1, undecodable pixel data or a wrong shape.
    """
    modality = str(ds.get("Modality", "") or "")
    if modality not in modalities:
        raise DICOMError(f"expected Modality {' or '.join(modalities)}, got {modality or 'none'!r}",
                         attribute="Modality")
    if "PixelData" not in ds:
        raise DICOMError("expected Pixel Data (7FE0,0010), got none", attribute="PixelData")
    frames = _int(ds, "NumberOfFrames", 1)
    if frames != 1:
        raise DICOMError(f"expected a single frame, got NumberOfFrames {frames}",
                         attribute="NumberOfFrames")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    samples = _int(ds, "SamplesPerPixel", 1)
    if photometric not in ColourSpace.__members__ or samples != 3:
        raise DICOMError(
            "expected PhotometricInterpretation RGB, YBR_FULL or YBR_FULL_422 with 3 samples per "
            f"pixel, got {photometric or 'none'!r} with {samples}",
            attribute="PhotometricInterpretation")
    bits = (_int(ds, "BitsAllocated", 0), _int(ds, "BitsStored", 0),
            _int(ds, "PixelRepresentation", 0))
    if bits != (8, 8, 0):
        raise DICOMError(
            "expected BitsAllocated 8, BitsStored 8 and PixelRepresentation 0 for a colour "
            f"image, got {bits[0]}, {bits[1]} and {bits[2]}", attribute="BitsStored")
    planar = _int(ds, "PlanarConfiguration", 0)
    if planar not in (0, 1):
        raise DICOMError(f"expected PlanarConfiguration 0 or 1, got {planar}",
                         attribute="PlanarConfiguration")
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SIZE_COINCIDENCE, category=UserWarning)
            stored = pixel_array(ds, raw=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a quarantine reason
        name = getattr(syntax, "name", None) or "unknown transfer syntax"
        raise DICOMError(
            f"expected decodable pixel data, the {name} decoder failed ({type(exc).__name__})",
            attribute="PixelData") from exc
    expected = (_int(ds, "Rows", 0), _int(ds, "Columns", 0), 3)
    if stored.shape != expected or stored.dtype != np.uint8:
        raise DICOMError(f"expected uint8 pixel data of shape {expected} (Rows, Columns, "
                         f"samples), got {stored.dtype} {stored.shape}", attribute="PixelData")
    return ColourImage(stored=stored, space=ColourSpace(photometric))
