"""What every simulated acquisition device shares: a name, a gamma and sensor noise.

:class:`~vigil.dicom_adapter.scanners.Scanner` (grayscale CR/DX) and
:class:`~vigil.dicom_adapter.fundus.FundusCamera` (colour photographs) both derive
from :class:`SimulatedDevice`: the name that seeds their deterministic UIDs and the
two acquisition parameters they apply alike, a power-law gamma and additive
Gaussian noise ``N(0, noise²)`` on the displayed intensity in ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from vigil.core.errors import ConfigError

__all__ = ["SimulatedDevice", "code_item"]


@dataclass(frozen=True)
class SimulatedDevice:
    """A simulated acquisition device (base of scanners and cameras).

    Parameters
    ----------
    name : str
        Short name (part of the deterministic UIDs).
    gamma : float, keyword-only
        Power applied to the displayed intensity ``p → p ** gamma`` (1: none).
    noise : float, keyword-only
        Standard deviation of the additive Gaussian noise on ``p`` (0: none).
    """

    name: str
    gamma: float = field(default=1.0, kw_only=True)
    noise: float = field(default=0.0, kw_only=True)

    def add_noise(self, p: NDArray[np.float64],
                  rng: np.random.Generator | None) -> NDArray[np.float64]:
        """Add the device's sensor noise to intensities (unchanged when ``noise`` is 0).

        Parameters
        ----------
        p : ndarray of float64, any shape
            Intensities in ``[0, 1]`` (not clipped here).
        rng : numpy.random.Generator or None
            Noise source; required when ``noise > 0``.

        Returns
        -------
        ndarray of float64, shape of ``p``
            ``p + N(0, noise²)`` drawn element-wise.
        """
        if self.noise <= 0:
            return p
        if rng is None:
            raise ConfigError(f"{self.kind} {self.name!r} adds noise: pass a seeded rng")
        return p + rng.normal(0.0, self.noise, size=p.shape)

    @property
    def kind(self) -> str:
        """What the device is called in messages (``"scanner"``, ``"camera"``)."""
        return "device"


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    """One Code Sequence item (PS3.3 Table 8.8-1: Code Value, Coding Scheme, Meaning).

    Parameters
    ----------
    value, scheme, meaning : str
        Code Value, Coding Scheme Designator (e.g. ``"SCT"``) and Code Meaning.

    Returns
    -------
    pydicom.Dataset
    """
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item
