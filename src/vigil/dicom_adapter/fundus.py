"""Simulated fundus cameras: an 8-bit RGB photograph → a real VL Photographic DICOM instance.

The colour twin of :mod:`vigil.dicom_adapter.scanners`. A :class:`FundusCamera`
changes the photograph as its optics and sensor would (a per-channel gain: the
camera's colour cast; a gamma; Gaussian noise), then stores it the way real
cameras do: RGB interleaved (PlanarConfiguration 0) or by plane (1),
uncompressed, or JPEG Baseline (ISO/IEC 10918-1 Process 1, lossy) in
YBR_FULL_422 as cameras write JPEG (PS3.5 8.2.1). The instance is a VL
Photographic Image (PS3.3 A.33.4, SOP Class 1.2.840.10008.5.1.4.1.1.77.1.4,
Modality XC) with its Type 1 and Type 2 attributes; patients are synthetic.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from vigil.core.errors import ConfigError
from vigil.dicom_adapter.devices import SimulatedDevice, code_item
from vigil.dicom_adapter.scanners import synthetic_instance

__all__ = [
    "SECONDARY_CAPTURE_STORAGE",
    "VL_PHOTOGRAPHIC_STORAGE",
    "FundusCamera",
    "build_fundus_instance",
    "shift_colour",
]

VL_PHOTOGRAPHIC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.4")
"""VL Photographic Image Storage."""
SECONDARY_CAPTURE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")
"""Secondary Capture Image Storage: the IOD of the by-plane camera (VL Photographic
allows PlanarConfiguration 0 only, PS3.3 C.8.12.1.1; SC Image allows 0 and 1)."""
JPEG_QUALITY = 90
"""Pillow JPEG quality of the JPEG Baseline camera."""


@dataclass(frozen=True)
class FundusCamera(SimulatedDevice):
    """How one simulated fundus camera acquires and stores a colour photograph.

    Parameters
    ----------
    name : str
        Short name (part of the deterministic UIDs).
    storage : {"rgb", "rgb-planar", "jpeg-baseline"}
        RGB PlanarConfiguration 0 (VL Photographic) or 1 (Secondary Capture), Explicit
        VR Little Endian; or JPEG Baseline, YBR_FULL_422 (chroma halved horizontally,
        Pillow ``subsampling=1``), VL Photographic.
    gain : tuple of float
        Per-channel (R, G, B) gain: the camera's colour cast.
    gamma, noise : float, keyword-only
        Acquisition (:class:`~vigil.dicom_adapter.devices.SimulatedDevice`):
        ``p_c → clip(gain_c · p_c ** gamma + N(0, noise²), 0, 1)``.
    """

    storage: Literal["rgb", "rgb-planar", "jpeg-baseline"] = "rgb"
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if min(self.gain) <= 0 or self.gamma <= 0 or self.noise < 0:
            raise ConfigError(f"expected positive gains and gamma and noise >= 0 in camera "
                              f"{self.name!r}, got {self.gain}, {self.gamma}, {self.noise}")

    @property
    def kind(self) -> str:
        """What the device is called in messages."""
        return "camera"

    @property
    def modality(self) -> str:
        """Modality written (External-camera Photography)."""
        return "XC"


def shift_colour(image: NDArray[np.uint8], camera: FundusCamera, *,
                 rng: np.random.Generator | None = None) -> NDArray[np.uint8]:
    """Apply the camera's acquisition to an 8-bit RGB image (module docstring map).

    Parameters
    ----------
    image : ndarray of uint8, shape (rows, columns, 3)
    camera : FundusCamera
    rng : numpy.random.Generator or None
        Required when ``camera.noise > 0``.

    Returns
    -------
    ndarray of uint8, shape (rows, columns, 3)
        ``round(255 · clip(gain · p ** gamma + noise))``.
    """
    p = np.asarray(image, dtype=np.float64) / 255.0
    p = camera.add_noise(np.asarray(camera.gain, dtype=np.float64) * p**camera.gamma, rng)
    return np.rint(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


def build_fundus_instance(image: NDArray[np.uint8], camera: FundusCamera, *, key: str,
                          rng: np.random.Generator | None = None) -> Dataset:
    """Build a VL Photographic instance (with file meta) of one RGB photograph by one camera.

    Parameters
    ----------
    image : ndarray of uint8, shape (rows, columns, 3)
        The photograph (RGB).
    camera : FundusCamera
    key : str
        A unique, non-identifying key of the image: UIDs and the synthetic patient derive from it.
    rng : numpy.random.Generator or None, optional
        Noise source for cameras that add noise.

    Returns
    -------
    pydicom.Dataset
        The instance, ready for ``save_as(..., enforce_file_format=True)``.
    """
    rgb = shift_colour(image, camera, rng=rng)
    jpeg, planar = camera.storage == "jpeg-baseline", int(camera.storage == "rgb-planar")
    sop_class = SECONDARY_CAPTURE_STORAGE if planar else VL_PHOTOGRAPHIC_STORAGE
    ds = synthetic_instance(sop_class, JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian,
                            device=camera.name, key=key, modality=camera.modality,
                            manufacturer=f"vigil simulated fundus camera {camera.name}")
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    if planar:
        ds.ConversionType = "DI"  # SC Equipment: digital interface
        ds.Laterality = ""  # General Series, Type 2C (the eye is a paired structure)
    else:
        ds.ImageLaterality = "U"
        ds.AcquisitionContextSequence = DicomSequence([])
        ds.AnatomicRegionSequence = DicomSequence([code_item("81745001", "SCT", "Eye")])
    ds.SamplesPerPixel = 3
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.BurnedInAnnotation = "NO"
    if jpeg:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(rgb, "RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY,
                                         subsampling=1)
        frame = buffer.getvalue()
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "YBR_FULL_422", 0
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = f"{rgb.size / len(frame):.4f}"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        return ds
    ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", planar
    ds.LossyImageCompression = "00"
    pixels = np.ascontiguousarray(np.moveaxis(rgb, -1, 0) if planar else rgb)
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    return ds
