"""What one greyscale image needs to be displayed: the parameters of the pixel chain.

The DICOM grayscale pipeline (PS3.4 N.2.1, "Grayscale Transformations") is
stored values → Modality LUT (PS3.3 C.11.1) → VOI LUT (PS3.3 C.11.2) →
Presentation LUT (PS3.3 C.11.6). :class:`DisplayParameters` holds, for one
image, everything these three steps read, already validated, with no DICOM
library involved: the DICOM adapter fills it from a dataset, the training path
builds the degenerate 8-bit case with :meth:`DisplayParameters.eight_bit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError

__all__ = [
    "DisplayParameters",
    "LookupTable",
    "Photometric",
    "PresentationShape",
    "VOIFunction",
    "Window",
]


class Photometric(StrEnum):
    """Photometric Interpretation (0028,0004) of a greyscale image (PS3.3 C.7.6.3.1.2).

    ``MONOCHROME1``: the minimum value is displayed white, after the VOI
    transformation; ``MONOCHROME2``: the minimum value is displayed black.
    """

    MONOCHROME1 = "MONOCHROME1"
    MONOCHROME2 = "MONOCHROME2"


class PresentationShape(StrEnum):
    """Presentation LUT Shape (2050,0020) (PS3.3 C.11.6.1.2): IDENTITY or INVERSE."""

    IDENTITY = "IDENTITY"
    INVERSE = "INVERSE"


class VOIFunction(StrEnum):
    """VOI LUT Function (0028,1056) (PS3.3 C.11.2.1.3); LINEAR when absent."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


@dataclass(frozen=True, eq=False)
class LookupTable:
    """A LUT as in PS3.3 C.11.1.1.1 (Modality) and C.11.2.1.1 (VOI).

    Parameters
    ----------
    first_mapped : int
        The input value mapped to the first entry (second value of LUT Descriptor).
        Inputs below it map to the first entry, inputs above the last one to the last.
    bits : int
        Bits per entry (third value of LUT Descriptor), 8 to 16.
    data : ndarray of shape (n_entries,)
        The entries (LUT Data), non-negative integers below ``2 ** bits``.
    """

    first_mapped: int
    bits: int
    data: NDArray[np.int64]

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim != 1 or data.size == 0:
            raise DataError(f"expected a LUT with at least one entry, got shape {data.shape}")
        if not 1 <= self.bits <= 16:
            raise DataError(f"expected LUT entries of 1 to 16 bits, got {self.bits}")
        if data.min() < 0 or data.max() >= 2**self.bits:
            raise DataError(
                f"expected LUT entries in [0, {2**self.bits - 1}] for {self.bits} bits, "
                f"got [{data.min()}, {data.max()}]"
            )
        object.__setattr__(self, "data", data.astype(np.int64))

    def __repr__(self) -> str:
        n, first = self.data.size, self.first_mapped
        return f"LookupTable(first_mapped={first}, n={n}, bits={self.bits})"

    def lookup(self, values: NDArray[np.floating]) -> NDArray[np.float64]:
        """Map values through the table, clamping at both ends; inputs are floored to integers.

        Parameters
        ----------
        values : ndarray
            Input values (any shape).

        Returns
        -------
        ndarray of float64, shape of ``values``
            The entries, not rescaled.
        """
        index = np.floor(np.asarray(values, dtype=np.float64)).astype(np.int64) - self.first_mapped
        return self.data[np.clip(index, 0, self.data.size - 1)].astype(np.float64)


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): Window Center, Window Width and the function.

    Parameters
    ----------
    center : float
        Window Center (0028,1050).
    width : float
        Window Width (0028,1051): at least 1 for LINEAR (C.11.2.1.2.1), above 0
        for LINEAR_EXACT and SIGMOID (C.11.2.1.3).
    function : VOIFunction
        VOI LUT Function (0028,1056).
    """

    center: float
    width: float
    function: VOIFunction = VOIFunction.LINEAR

    def __post_init__(self) -> None:
        object.__setattr__(self, "function", VOIFunction(self.function))
        smallest = 1.0 if self.function is VOIFunction.LINEAR else 0.0
        if not np.isfinite(self.center) or not np.isfinite(self.width):
            raise DataError(
                f"expected a finite window, got center {self.center}, width {self.width}"
            )
        if self.width < smallest or (smallest == 0.0 and self.width <= 0.0):
            bound = ">= 1" if smallest == 1.0 else "> 0"
            raise DataError(
                f"expected Window Width {bound} for VOI LUT Function {self.function.value}, "
                f"got {self.width}"
            )


@dataclass(frozen=True)
class DisplayParameters:
    """The parameters of the grayscale chain for one image.

    Parameters
    ----------
    bits_stored : int
        Bits Stored (0028,0101), 1 to 16.
    signed : bool
        Pixel Representation (0028,0103) is 1 (two's complement).
    photometric : Photometric
        MONOCHROME1 or MONOCHROME2.
    slope, intercept : float
        Rescale Slope / Intercept (0028,1053 / 0028,1052), PS3.3 C.11.1.1.2:
        output = slope * stored + intercept. Identity (1, 0) when absent.
    modality_lut : LookupTable or None
        Modality LUT Sequence (0028,3000), used instead of the rescale when given.
    window : Window or None
        The first VOI window.
    voi_lut : LookupTable or None
        The first item of VOI LUT Sequence (0028,3010); PS3.3 C.11.2.1.1 lets a
        viewer choose either, and this chain uses the LUT when both are present.
    presentation_shape : PresentationShape or None
        Presentation LUT Shape (2050,0020) when present. INVERSE inverts;
        MONOCHROME1 with IDENTITY is contradictory and rejected.

    Raises
    ------
    DataError
        If neither a window nor a VOI LUT is given, the slope is zero or not
        finite, or the photometric interpretation and the shape contradict.
    """

    bits_stored: int
    signed: bool
    photometric: Photometric
    slope: float = 1.0
    intercept: float = 0.0
    modality_lut: LookupTable | None = None
    window: Window | None = None
    voi_lut: LookupTable | None = None
    presentation_shape: PresentationShape | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "photometric", Photometric(self.photometric))
        if self.presentation_shape is not None:
            shape = PresentationShape(self.presentation_shape)
            object.__setattr__(self, "presentation_shape", shape)
        if not 1 <= self.bits_stored <= 16:
            raise DataError(f"expected Bits Stored 1 to 16, got {self.bits_stored}")
        if not np.isfinite(self.slope) or self.slope == 0.0 or not np.isfinite(self.intercept):
            raise DataError(
                "expected a finite non-zero Rescale Slope and a finite Rescale Intercept, "
                f"got slope {self.slope}, intercept {self.intercept}"
            )
        if self.window is None and self.voi_lut is None:
            raise DataError(
                "expected a VOI transform (Window Center/Width or a VOI LUT), got neither; "
                "without one the display range would depend on the image"
            )
        if (
            self.photometric is Photometric.MONOCHROME1
            and self.presentation_shape is PresentationShape.IDENTITY
        ):
            raise DataError(
                "expected Presentation LUT Shape INVERSE (or none) for MONOCHROME1, got IDENTITY"
            )

    @classmethod
    def eight_bit(cls) -> DisplayParameters:
        """Parameters of an 8-bit MONOCHROME2 image shown as stored (the training images).

        Identity rescale and the full window LINEAR_EXACT center 127.5, width 255,
        which maps stored value ``v`` to ``v / 255``.
        """
        return cls(
            bits_stored=8,
            signed=False,
            photometric=Photometric.MONOCHROME2,
            window=Window(center=127.5, width=255.0, function=VOIFunction.LINEAR_EXACT),
        )

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest value the stored bits can hold."""
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1

    @property
    def inverts(self) -> bool:
        """Whether the Presentation LUT inverts: MONOCHROME1, or shape INVERSE (C.11.6.1.2)."""
        return (
            self.photometric is Photometric.MONOCHROME1
            or self.presentation_shape is PresentationShape.INVERSE
        )
