"""Reading a DICOM instance into stored values and display parameters, or a quarantine reason.

:func:`read_image` validates a pydicom ``Dataset`` against what the pixel chain
(:mod:`vigil.imaging`) can handle and returns ``(stored values,
DisplayParameters)``; anything else raises :class:`~vigil.core.errors.DICOMError`
whose message is the quarantine reason.
:func:`~vigil.dicom_adapter.batches.prepare_batch` runs it over many instances and
keeps going past the rejected ones. Reasons name DICOM keywords and
values of the image's structure only: never a Patient, Study or Accession
identifier, and never a file name (which may embed one).

The validation is :func:`display_parameters`, which reads through ``get``/``in`` only, so it
runs unchanged on the light reader's header (:mod:`vigil.dicom_adapter.light`):
:func:`read_image_light` / :func:`read_image_bytes` read the common instance without
pydicom and give :func:`read_image`'s result and reasons.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from vigil.dicom_adapter.light import LightInstance
    from vigil.dicom_adapter.light_dataset import HeaderView

from vigil.core.errors import DataError, DICOMError
from vigil.imaging import (
    DisplayParameters,
    LookupTable,
    Photometric,
    PresentationShape,
    VOIFunction,
    Window,
)

__all__ = [
    "ACCEPTED_MODALITIES",
    "DicomImage",
    "Header",
    "display_parameters",
    "read_file",
    "read_image",
    "read_image_bytes",
    "read_image_light",
    "unreadable_element",
]

ACCEPTED_MODALITIES: tuple[str, ...] = ("CR", "DX")
"""Modalities of projection radiographs, the chest X-ray model's input."""
_SIZE_COINCIDENCE = "The number of bytes of compressed pixel data matches the expected number"


class Header(Protocol):
    """What the validation reads of an instance.

    A pydicom ``Dataset``, or the light reader's
    :class:`~vigil.dicom_adapter.light.LightHeader` (the same values).
    """

    def __contains__(self, keyword: object, /) -> bool:
        """Whether the instance has the element ``keyword``."""
        ...

    def get(self, keyword: str, default: Any = None, /) -> Any:
        """Return the value of ``keyword``, ``default`` when absent."""
        ...


@dataclass(frozen=True, eq=False)
class DicomImage:
    """One greyscale frame ready for the pixel chain.

    Attributes
    ----------
    stored : ndarray of integers, shape (rows, columns)
        Stored pixel values (decoded, sign-extended), no transformation applied.
    params : DisplayParameters
        The image's Modality, VOI and Presentation parameters.
    """

    stored: NDArray[np.integer]
    params: DisplayParameters

    def __repr__(self) -> str:
        return f"DicomImage(shape={self.stored.shape}, params={self.params!r})"


def unreadable_element(exc: Exception) -> str:
    """Return the quarantine reason of an instance with an element pydicom cannot convert.

    pydicom converts element values when they are first read; a damaged one raises
    there (``BytesLengthException`` for a value of the wrong length, ``ValueError``,
    ...), wherever that is. The reason names the exception type and pydicom's tag,
    never a value.
    """
    tag = re.search(r"\([0-9A-Fa-f]{4},[0-9A-Fa-f]{4}\)", str(exc))
    where = f" {tag.group(0)}" if tag else ""
    return (f"expected readable DICOM elements, pydicom could not convert one{where} "
            f"({type(exc).__name__})")


def read_file(path: str | Path) -> Dataset:
    """Read a DICOM Part 10 file.

    Raises
    ------
    DICOMError
        If the file cannot be read as DICOM (the message does not repeat the path).
    """
    try:
        return pydicom.dcmread(path)
    except Exception as exc:  # noqa: BLE001 - on damaged bytes the parser raises struct.error,
        # KeyError, ... besides InvalidDicomError: every one is an unreadable file
        raise DICOMError(
            f"expected a DICOM Part 10 file, could not read it ({type(exc).__name__})"
        ) from exc


def _first(value: Any) -> Any:
    """First value of a possibly multi-valued element."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return value
    return value[0] if len(value) else None


def _number(ds: Header, keyword: str, default: float | None = None) -> float | None:
    """Read a numeric element (first value) as float, ``default`` when absent or empty."""
    raw = _first(ds.get(keyword)) if keyword in ds else None
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except (TypeError, ValueError) as exc:
        raise DICOMError(
            f"expected a number in {keyword}, got a value that is not one", attribute=keyword
        ) from exc


def _lut(item: Header, sequence: str, *, signed: bool) -> LookupTable:
    """Build a LookupTable from an item of a Modality or VOI LUT Sequence."""
    descriptor = item.get("LUTDescriptor")
    data = item.get("LUTData")
    if descriptor is None or data is None or len(descriptor) != 3:
        raise DICOMError(
            f"expected LUTDescriptor (3 values) and LUTData in {sequence}, got an incomplete item",
            attribute=sequence,
        )
    n, first, bits = (int(v) for v in descriptor)
    n = 65536 if n == 0 else n
    if signed and first >= 32768:
        first -= 65536
    if isinstance(data, bytes):
        entries = np.frombuffer(data, dtype="<u2" if bits > 8 else np.uint8)
    elif isinstance(data, np.ndarray):  # the light reader's US entries
        entries = data
    else:
        entries = np.asarray([int(v) for v in (data if hasattr(data, "__len__") else [data])])
    if entries.size != n:
        raise DICOMError(
            f"expected {n} LUT entries in {sequence} (LUTDescriptor), got {entries.size}",
            attribute=sequence,
        )
    try:
        return LookupTable(first_mapped=first, bits=bits, data=entries.astype(np.int64))
    except DataError as exc:
        raise DICOMError(f"{sequence}: {exc}", attribute=sequence) from exc


def _check_structure(ds: Header, modalities: Sequence[str]) -> tuple[Photometric, bool]:
    """Modality, pixel data, frames, photometric interpretation, bits; what the chain needs."""
    modality = str(ds.get("Modality", "") or "")
    if modality not in modalities:
        raise DICOMError(
            f"expected Modality {' or '.join(modalities)}, got {modality or 'none'!r}",
            attribute="Modality",
        )
    if "PixelData" not in ds:
        other = [k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds]
        got = f"only {other[0]}" if other else "none"
        raise DICOMError(f"expected Pixel Data (7FE0,0010), got {got}", attribute="PixelData")
    frames = int(_number(ds, "NumberOfFrames", 1.0) or 1)
    if frames != 1:
        raise DICOMError(
            f"expected a single frame, got NumberOfFrames {frames}", attribute="NumberOfFrames"
        )
    photometric = str(ds.get("PhotometricInterpretation", "") or "")
    samples = int(_number(ds, "SamplesPerPixel", 1.0) or 1)
    if photometric not in Photometric.__members__ or samples != 1:
        raise DICOMError(
            "expected PhotometricInterpretation MONOCHROME1 or MONOCHROME2 with 1 sample per "
            f"pixel, got {photometric or 'none'!r} with {samples}",
            attribute="PhotometricInterpretation",
        )
    allocated = int(_number(ds, "BitsAllocated", 0.0) or 0)
    stored = int(_number(ds, "BitsStored", 0.0) or 0)
    representation = int(_number(ds, "PixelRepresentation", 0.0) or 0)
    if allocated not in (8, 16) or not 1 <= stored <= allocated or representation not in (0, 1):
        raise DICOMError(
            "expected BitsAllocated 8 or 16, 1 <= BitsStored <= BitsAllocated and "
            f"PixelRepresentation 0 or 1, got {allocated}, {stored} and {representation}",
            attribute="BitsStored",
        )
    if "PresentationLUTSequence" in ds:
        raise DICOMError(
            "expected Presentation LUT Shape or none, got a Presentation LUT Sequence "
            "(not supported)",
            attribute="PresentationLUTSequence",
        )
    return Photometric(photometric), bool(representation)


def _voi(ds: Header, *, signed: bool) -> tuple[Window | None, LookupTable | None]:
    """Read the first window and the first VOI LUT (either may be None)."""
    voi_lut = None
    if "VOILUTSequence" in ds and len(ds.get("VOILUTSequence")):
        voi_lut = _lut(ds.get("VOILUTSequence")[0], "VOILUTSequence", signed=signed)
    center, width = _number(ds, "WindowCenter"), _number(ds, "WindowWidth")
    if (center is None) != (width is None):
        raise DICOMError(
            "expected WindowCenter and WindowWidth together, got only one of them",
            attribute="WindowCenter",
        )
    window = None
    if center is not None and width is not None:
        name = str(_first(ds.get("VOILUTFunction", "LINEAR")) or "LINEAR").strip()
        if name not in VOIFunction.__members__:
            raise DICOMError(
                f"expected VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID, got {name!r}",
                attribute="VOILUTFunction",
            )
        try:
            window = Window(center=center, width=width, function=VOIFunction(name))
        except DataError as exc:
            raise DICOMError(str(exc), attribute="WindowWidth") from exc
    return window, voi_lut


def display_parameters(ds: Header, modalities: Sequence[str] = ACCEPTED_MODALITIES
                       ) -> DisplayParameters:
    """Validate an instance's headers and return its display parameters (no pixels read).

    The first half of :func:`read_image` (the checks in the same order, the same
    reasons), on a pydicom ``Dataset`` or the light reader's header.

    Raises
    ------
    DICOMError
        With the quarantine reason (:func:`read_image`).
    """
    photometric, signed = _check_structure(ds, modalities)
    window, voi_lut = _voi(ds, signed=signed)
    modality_lut = None
    if "ModalityLUTSequence" in ds and len(ds.get("ModalityLUTSequence")):
        modality_lut = _lut(ds.get("ModalityLUTSequence")[0], "ModalityLUTSequence",
                            signed=signed)
    shape_name = str(ds.get("PresentationLUTShape", "") or "").strip()
    if shape_name and shape_name not in PresentationShape.__members__:
        raise DICOMError(
            f"expected PresentationLUTShape IDENTITY or INVERSE, got {shape_name!r}",
            attribute="PresentationLUTShape",
        )
    try:
        return DisplayParameters(
            bits_stored=int(ds.get("BitsStored")),
            signed=signed,
            photometric=photometric,
            slope=float(_number(ds, "RescaleSlope", 1.0) or 0.0),
            intercept=float(_number(ds, "RescaleIntercept", 0.0) or 0.0),
            modality_lut=modality_lut,
            window=window,
            voi_lut=voi_lut,
            presentation_shape=PresentationShape(shape_name) if shape_name else None,
        )
    except DataError as exc:
        raise DICOMError(str(exc)) from exc


def _checked_pixels(stored: NDArray[Any], rows: int, columns: int) -> NDArray[np.integer]:
    expected = (rows, columns)
    if stored.shape != expected or not np.issubdtype(stored.dtype, np.integer):
        raise DICOMError(
            f"expected integer pixel data of shape {expected} (Rows, Columns), "
            f"got {stored.dtype} {stored.shape}",
            attribute="PixelData",
        )
    return stored


def read_image(ds: Dataset, *, modalities: Sequence[str] = ACCEPTED_MODALITIES) -> DicomImage:
    """Validate an instance and return its stored values and display parameters.

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance (with its pixel data; any transfer syntax pydicom can decode
        with the installed plugins: uncompressed, RLE Lossless, JPEG-LS).
    modalities : sequence of str, optional
        Accepted values of Modality (0008,0060).

    Returns
    -------
    DicomImage
        Stored values and parameters.

    Raises
    ------
    DICOMError
        With the quarantine reason: wrong modality, no pixel data, several frames,
        a photometric interpretation other than MONOCHROME1/2 (RGB, YBR_*, PALETTE
        COLOR), unusable bits, no VOI window nor VOI LUT, an invalid window or LUT,
        a zero slope, a Presentation LUT Sequence, MONOCHROME1 with shape IDENTITY,
        pixel data that cannot be decoded or has the wrong shape.
    """
    params = display_parameters(ds, modalities)
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        with warnings.catch_warnings():
            # pydicom's size heuristic: a compressed frame may, by chance, be exactly as
            # long as the uncompressed one; the declared transfer syntax decides.
            warnings.filterwarnings("ignore", message=_SIZE_COINCIDENCE, category=UserWarning)
            stored = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a quarantine reason
        name = getattr(syntax, "name", None) or "unknown transfer syntax"
        raise DICOMError(
            f"expected decodable pixel data, the {name} decoder failed ({type(exc).__name__})",
            attribute="PixelData",
        ) from exc
    return DicomImage(stored=_checked_pixels(stored, int(ds.Rows), int(ds.Columns)),
                      params=params)


def read_image_bytes(data: bytes, ds: Dataset, *,
                     modalities: Sequence[str] = ACCEPTED_MODALITIES) -> DicomImage:
    """:func:`read_image` of ``ds``, read from ``data`` (its Part 10 bytes) when it can be.

    The common instance (:mod:`vigil.dicom_adapter.light`) is validated by the same code
    on the same header values and its pixels decoded without pydicom; any other
    instance, and any whose pixels the light decoders leave, goes to :func:`read_image`.
    Same result, same quarantine reasons.

    Parameters
    ----------
    data : bytes
        The instance as stored.
    ds : pydicom.Dataset
        The same instance read by pydicom (``pydicom.dcmread(data)``).
    modalities : sequence of str, optional
    """
    from vigil.dicom_adapter.light import parse_light

    return read_image_light(parse_light(data), ds, modalities=modalities)


def read_image_light(light: LightInstance | None, ds: Dataset | HeaderView, *,
                     modalities: Sequence[str] = ACCEPTED_MODALITIES) -> DicomImage:
    """:func:`read_image_bytes` of an instance already parsed by the light reader (or None).

    ``ds``: the same instance, pydicom's dataset or its
    :class:`~vigil.dicom_adapter.light_dataset.HeaderView` (whose dataset is then built
    only when the light decoders leave the pixels to pydicom).
    """
    from vigil.dicom_adapter.light_dataset import as_dataset
    from vigil.dicom_adapter.light_pixels import light_pixels

    stored = light_pixels(light) if light is not None else None
    if stored is None:  # not the common case after all: pydicom reads and validates it
        return read_image(as_dataset(ds), modalities=modalities)
    assert light is not None
    params = display_parameters(light.header, modalities)
    h = light.header
    return DicomImage(stored=_checked_pixels(stored, int(h.get("Rows")), int(h.get("Columns"))),
                      params=params)
