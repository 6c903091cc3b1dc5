"""Simulated scanners: an 8-bit displayed image → a real DICOM CR or DX instance.

A :class:`Scanner` encodes a displayed image ``p`` in ``[0, 1]`` (a MedMNIST
array / 255) the way a modality with those settings would store it, so that the
standard grayscale chain (:mod:`vigil.imaging`) renders ``p`` back:

1. optional acquisition differences (gamma, contrast, noise: the *site* shift,
   applied to ``p`` first and therefore not undone by the chain);
2. the VOI output that must come out: ``y = 1 - p`` if the image inverts
   (MONOCHROME1 or Presentation LUT Shape INVERSE), else ``p``;
3. the modality value ``m`` in ``[low, high]`` that the VOI maps to ``y``: linear
   for LINEAR_EXACT and for a VOI LUT, ``c + w/4 · logit(y)`` for SIGMOID
   (PS3.3 C.11.2.1.3.1; ``y`` clipped to the range the window can reach);
4. stored ``s = round((m - intercept) / slope)``, the inverse of C.11.1.1.2.

The datasets are CR Image Storage (PS3.3 A.2) or Digital X-Ray Image Storage -
For Presentation (A.26) with the attributes their modules make Type 1 or 2
(:data:`REQUIRED_TYPE1`, :data:`REQUIRED_TYPE2`, checked by
:func:`missing_required`), encoded Explicit VR Little Endian, RLE Lossless or
JPEG-LS Lossless (pydicom's own RLE encoder, ``pyjpegls``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from vigil.core.errors import ConfigError
from vigil.dicom_adapter.devices import SimulatedDevice, code_item
from vigil.imaging import Photometric, PresentationShape

__all__ = [
    "CR_STORAGE",
    "DX_STORAGE",
    "REQUIRED_TYPE1",
    "REQUIRED_TYPE2",
    "Scanner",
    "build_instance",
    "deterministic_uid",
    "encode_stored",
    "missing_required",
    "synthetic_instance",
]

CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
"""Computed Radiography Image Storage."""
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
"""Digital X-Ray Image Storage - For Presentation."""

_COMMON_TYPE1 = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PixelData",
)  # fmt: skip
_COMMON_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "SeriesNumber", "Manufacturer",
    "InstanceNumber", "PatientOrientation",
)  # fmt: skip
REQUIRED_TYPE1: dict[str, tuple[str, ...]] = {
    CR_STORAGE: _COMMON_TYPE1,
    DX_STORAGE: _COMMON_TYPE1 + (
        "ImageType", "PresentationIntentType", "PixelIntensityRelationship",
        "PixelIntensityRelationshipSign", "RescaleIntercept", "RescaleSlope", "RescaleType",
        "PresentationLUTShape", "LossyImageCompression", "BurnedInAnnotation", "ImageLaterality",
        "ImagerPixelSpacing", "PatientOrientation",
    ),
}  # fmt: skip
"""Type 1 attributes (present, non-empty) of the two IODs, by SOP Class UID (PS3.3 A.2, A.26)."""
REQUIRED_TYPE2: dict[str, tuple[str, ...]] = {
    CR_STORAGE: _COMMON_TYPE2 + ("BodyPartExamined", "ViewPosition"),
    DX_STORAGE: _COMMON_TYPE2 + (
        "DetectorType", "AcquisitionContextSequence", "AnatomicRegionSequence", "PositionerType",
    ),
}
"""Type 2 attributes (present, possibly empty) of the two IODs, by SOP Class UID."""

VOIKind = Literal["linear_exact", "sigmoid", "voi_lut"]
Syntax = Literal["explicit", "rle", "jpeg-ls"]
_SYNTAX_UID: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg-ls": JPEGLSLossless,
}  # fmt: skip
_ROOT = "vigil-medmnist-v1"
SIGMOID_SPAN_WIDTHS = 5.0
"""A SIGMOID scanner's window is ``(high - low) / 5`` wide: its range reaches 1/(1+e^10)."""


@dataclass(frozen=True)
class Scanner(SimulatedDevice):
    """How one simulated scanner stores a displayed image.

    Parameters
    ----------
    name : str
        Short name (part of the deterministic UIDs).
    modality : str
        ``"CR"`` (CR Image Storage) or ``"DX"`` (DX For Presentation, which makes
        Presentation LUT Shape Type 1: IDENTITY for MONOCHROME2, INVERSE for 1).
    bits_stored : int
        8, 12 or 16 (8 allocated for 8, else 16).
    photometric : Photometric
        MONOCHROME1 or MONOCHROME2.
    slope, intercept : float
        Rescale Slope and Intercept written (identity is still written for DX).
    low, high : float
        Modality values displayed black and white (before any inversion).
    voi : {"linear_exact", "sigmoid", "voi_lut"}
        Window LINEAR_EXACT (center (low+high)/2, width high-low), window SIGMOID
        (same center, width (high-low)/5, so ``[low, high]`` reaches logit ±10), or a
        16-bit VOI LUT Sequence over ``[low, high]`` (then ``low`` and ``high`` must be
        integers of the modality range).
    presentation_shape : PresentationShape or None
        Presentation LUT Shape written (None: absent; CR only).
    syntax : {"explicit", "rle", "jpeg-ls"}
        Transfer syntax: Explicit VR Little Endian, RLE Lossless, JPEG-LS Lossless.
    signed : bool
        Pixel Representation 1 (two's complement); CR only, not with JPEG-LS.
    contrast : float
        With ``gamma`` and ``noise`` (keyword-only, from
        :class:`~vigil.dicom_adapter.devices.SimulatedDevice`), the acquisition shift:
        ``p → clip(contrast · (p ** gamma - 0.5) + 0.5 + N(0, noise²))``.
    """

    modality: Literal["CR", "DX"]
    bits_stored: int
    photometric: Photometric
    slope: float
    intercept: float
    low: float
    high: float
    voi: VOIKind = "linear_exact"
    presentation_shape: PresentationShape | None = None
    syntax: Syntax = "explicit"
    signed: bool = False
    contrast: float = 1.0

    def __post_init__(self) -> None:
        if self.bits_stored not in (8, 12, 16) or not self.high > self.low or self.slope == 0:
            raise ConfigError(
                f"expected bits_stored 8, 12 or 16, high > low and a non-zero slope in scanner "
                f"{self.name!r}, got {self.bits_stored}, [{self.low}, {self.high}], {self.slope}"
            )
        if self.modality == "DX" and self.presentation_shape is None:
            raise ConfigError(f"expected a Presentation LUT Shape for DX scanner {self.name!r}")
        if self.signed and (self.modality == "DX" or self.syntax == "jpeg-ls"):
            raise ConfigError(
                f"expected unsigned pixels for DX or JPEG-LS scanner {self.name!r}, got signed"
            )

    @property
    def kind(self) -> str:
        """What the device is called in messages."""
        return "scanner"

    @property
    def inverts(self) -> bool:
        """Whether the stored image is displayed inverted."""
        return (
            self.photometric is Photometric.MONOCHROME1
            or self.presentation_shape is PresentationShape.INVERSE
        )

    @property
    def acquisition_shift(self) -> bool:
        """Whether the scanner changes the displayed image (gamma, contrast or noise)."""
        return (self.gamma, self.contrast, self.noise) != (1.0, 1.0, 0.0)


def deterministic_uid(*parts: str) -> UID:
    """Derive a ``2.25.`` UID (PS3.5 B.2) from the name-based UUID (RFC 9562 v5) of ``parts``."""
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join((_ROOT, *parts))).int}")


def encode_stored(
    display: NDArray[np.floating], scanner: Scanner, *, rng: np.random.Generator | None = None
) -> NDArray[np.int64]:
    """Compute stored values that the scanner's display parameters render as ``display``.

    Parameters
    ----------
    display : ndarray of shape (rows, columns)
        The displayed image in ``[0, 1]``, 0 black.
    scanner : Scanner
        The scanner.
    rng : numpy.random.Generator or None, optional
        Source of the noise; required when ``scanner.noise > 0``.

    Returns
    -------
    ndarray of int64, shape of ``display``
        Stored values within the range of ``bits_stored`` (signed or not).
    """
    p = np.clip(np.asarray(display, dtype=np.float64), 0.0, 1.0)
    if scanner.acquisition_shift:
        p = scanner.add_noise(scanner.contrast * (p**scanner.gamma - 0.5) + 0.5, rng)
        p = np.clip(p, 0.0, 1.0)
    y = 1.0 - p if scanner.inverts else p
    span = scanner.high - scanner.low
    if scanner.voi == "sigmoid":
        width = span / SIGMOID_SPAN_WIDTHS
        reach = 1.0 / (1.0 + np.exp(-4.0 * (span / 2.0) / width))
        q = np.clip(y, 1.0 - reach, reach)
        m = (scanner.low + scanner.high) / 2.0 + width / 4.0 * (np.log(q) - np.log1p(-q))
    else:
        m = scanner.low + y * span
    stored = np.rint((m - scanner.intercept) / scanner.slope)
    bottom = -(2 ** (scanner.bits_stored - 1)) if scanner.signed else 0
    top = bottom + 2**scanner.bits_stored - 1
    if stored.min() < bottom or stored.max() > top:
        raise ConfigError(
            f"scanner {scanner.name!r} maps the image outside its {scanner.bits_stored} stored "
            f"bits: [{stored.min()}, {stored.max()}]; change low/high, slope or intercept"
        )
    return stored.astype(np.int64)


def _voi_attributes(ds: Dataset, scanner: Scanner) -> None:
    """Write the VOI LUT module: a window, or a VOI LUT Sequence."""
    center, span = (scanner.low + scanner.high) / 2.0, scanner.high - scanner.low
    if scanner.voi == "voi_lut":
        low, n = int(scanner.low), int(scanner.high) - int(scanner.low) + 1
        entries = np.rint((np.arange(n) / (n - 1)) * 65535).astype(np.uint16)
        item = Dataset()
        item.LUTDescriptor = [n if n < 65536 else 0, low, 16]
        item.LUTExplanation = "linear to display"
        item.LUTData = entries.tolist()
        item["LUTData"].VR = "US"
        ds.VOILUTSequence = DicomSequence([item])
        return
    ds.WindowCenter = f"{center:.6g}"
    width = span if scanner.voi == "linear_exact" else span / SIGMOID_SPAN_WIDTHS
    ds.WindowWidth = f"{width:.6g}"
    ds.VOILUTFunction = "LINEAR_EXACT" if scanner.voi == "linear_exact" else "SIGMOID"


def synthetic_instance(sop_class: UID, syntax: UID, *, device: str, key: str, modality: str,
                       manufacturer: str) -> Dataset:
    """Start an instance: file meta, SOP Common, a synthetic Patient, General Study and Series.

    Also General Equipment's Manufacturer and General Image's Instance Number, Patient
    Orientation (empty) and Image Type ORIGINAL, PRIMARY. The patient is synthetic
    (``SYNTHETIC^…``, derived from ``key``, not a real person); the UIDs derive from
    ``device`` and ``key`` (:func:`deterministic_uid`).

    Parameters
    ----------
    sop_class, syntax : UID
        SOP Class and Transfer Syntax.
    device : str
        The scanner's or camera's name.
    key : str
        The image's non-identifying key.
    modality, manufacturer : str

    Returns
    -------
    pydicom.Dataset
    """
    sop_uid = deterministic_uid(device, key, "instance")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    anon = deterministic_uid(key, "patient").split(".")[-1][:10]
    ds.PatientName, ds.PatientID = f"SYNTHETIC^{anon}", f"SYN{anon}"
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyInstanceUID = deterministic_uid(device, key, "study")
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20260101", "120000", ""
    ds.StudyID, ds.AccessionNumber = "1", ""
    ds.SeriesInstanceUID = deterministic_uid(device, key, "series")
    ds.Modality, ds.SeriesNumber = modality, 1
    ds.Manufacturer = manufacturer
    ds.InstanceNumber, ds.PatientOrientation = 1, ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    return ds


def build_instance(
    image: NDArray[np.uint8],
    scanner: Scanner,
    *,
    key: str,
    rng: np.random.Generator | None = None,
) -> Dataset:
    """Build a DICOM instance (with file meta) of one 8-bit image by one scanner.

    Parameters
    ----------
    image : ndarray of uint8, shape (rows, columns)
        The displayed image (0 black).
    scanner : Scanner
        The scanner.
    key : str
        A unique, non-identifying key of the image (e.g. ``"site-b/test/17"``): the
        UIDs and the synthetic patient derive from it.
    rng : numpy.random.Generator or None, optional
        Noise source for scanners that add noise.

    Returns
    -------
    pydicom.Dataset
        The instance, encoded in the scanner's transfer syntax, ready for ``save_as``.
    """
    stored = encode_stored(np.asarray(image, dtype=np.float64) / 255.0, scanner, rng=rng)
    sop_class = DX_STORAGE if scanner.modality == "DX" else CR_STORAGE
    ds = synthetic_instance(sop_class, ExplicitVRLittleEndian, device=scanner.name, key=key,
                            modality=scanner.modality,
                            manufacturer=f"vigil simulated scanner {scanner.name}")
    # CR/DX Series, General Image.
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "AP"
    # Image Pixel.
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, scanner.photometric.value
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 8 if scanner.bits_stored == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        scanner.bits_stored, scanner.bits_stored - 1, int(scanner.signed),
    )  # fmt: skip
    # Modality LUT and VOI LUT modules.
    ds.RescaleIntercept, ds.RescaleSlope = f"{scanner.intercept:.6g}", f"{scanner.slope:.6g}"
    ds.RescaleType = "US"
    _voi_attributes(ds, scanner)
    if scanner.presentation_shape is not None:
        ds.PresentationLUTShape = scanner.presentation_shape.value
    if scanner.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.ImageLaterality, ds.ImagerPixelSpacing, ds.DetectorType = "U", [0.1, 0.1], "DIRECT"
        ds.PatientOrientation = ["L", "F"]  # Type 1C in DX Image: AP chest, rows to the left
        ds.AcquisitionContextSequence, ds.PositionerType = DicomSequence([]), ""
        # PS3.16 CID 4031: Chest
        ds.AnatomicRegionSequence = DicomSequence([code_item("51185008", "SCT", "Chest")])
        del ds.ViewPosition  # Type 3 in DX Positioning; it would call for a View Code Sequence
    ds.LossyImageCompression, ds.BurnedInAnnotation = "00", "NO"
    kind = "int" if scanner.signed else "uint"
    pixels = stored.astype(np.dtype(f"{kind}{ds.BitsAllocated}"))
    if scanner.syntax == "explicit":
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    else:
        ds.compress(_SYNTAX_UID[scanner.syntax], pixels, generate_instance_uid=False)
    return ds


def missing_required(ds: Dataset) -> list[str]:
    """Type 1 attributes absent or empty and Type 2 attributes absent, for a CR or DX instance.

    Parameters
    ----------
    ds : pydicom.Dataset
        The instance.

    Returns
    -------
    list of str
        The keywords at fault (empty when the instance has them all); an unknown
        SOP Class gives ``["SOPClassUID"]``.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in REQUIRED_TYPE1:
        return ["SOPClassUID"]
    missing = [k for k in REQUIRED_TYPE1[sop_class] if k not in ds or ds[k].is_empty]
    return missing + [k for k in REQUIRED_TYPE2[sop_class] if k not in ds]
