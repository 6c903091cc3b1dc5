"""Many DICOM instances at once: model inputs of the accepted ones, reasons for the others.

:func:`prepare_batch` reads every instance of a batch with
:func:`~vigil.dicom_adapter.reading.read_image` (greyscale) or
:func:`~vigil.dicom_adapter.colour.read_colour_image` (colour), turns the accepted
ones into model inputs (:mod:`vigil.imaging`) and quarantines the others with the
reason the reader gave, keeping going past them. :func:`check_files` gives the
same verdict on files and folders (``vigil imaging check``), with the Type 1 /
Type 2 attributes an accepted CR or DX instance lacks. Reasons name DICOM
keywords and values only (:mod:`vigil.dicom_adapter.reading`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from vigil.core.errors import DataError, DICOMError
from vigil.dicom_adapter.colour import COLOUR_MODALITIES, read_colour_image
from vigil.dicom_adapter.light_dataset import HeaderView, as_dataset
from vigil.dicom_adapter.reading import (
    ACCEPTED_MODALITIES,
    read_file,
    read_image,
    read_image_light,
    unreadable_element,
)
from vigil.dicom_adapter.scanners import missing_required
from vigil.imaging import MODEL_SIZE, stored_colour_input, to_model_input

__all__ = [
    "FileCheck",
    "PreparedBatch",
    "check_files",
    "prepare_batch",
]


@dataclass(frozen=True, eq=False)
class PreparedBatch:
    """Model inputs of the accepted instances of a batch, and the reasons for the others.

    Attributes
    ----------
    inputs : ndarray of float32, shape (n_accepted, size, size) or (n_accepted, 3, size, size)
        Model inputs, in the order of ``accepted``.
    accepted : tuple of int
        Positions (in the batch) of the accepted instances.
    quarantined : tuple of (int, str)
        Position and reason of each rejected instance.
    """

    inputs: NDArray[np.float32]
    accepted: tuple[int, ...]
    quarantined: tuple[tuple[int, str], ...]

    def __repr__(self) -> str:
        return f"PreparedBatch(accepted={len(self.accepted)}, quarantined={len(self.quarantined)})"


def prepare_batch(
    datasets: Iterable[Dataset | HeaderView],
    *,
    size: int = MODEL_SIZE,
    modalities: Sequence[str] | None = None,
    channels: int = 1,
) -> PreparedBatch:
    """Model inputs of every acceptable instance; the others are quarantined with their reason.

    Parameters
    ----------
    datasets : iterable of pydicom.Dataset or HeaderView
        The instances, in order: pydicom's, or the light reader's
        (:class:`~vigil.dicom_adapter.light_dataset.HeaderView`: its pixels decoded
        without pydicom where they can be, :func:`~vigil.dicom_adapter.reading.read_image_light`).
    size : int, optional
        Side of the model input.
    modalities : sequence of str or None, optional
        Accepted modalities; default :data:`ACCEPTED_MODALITIES` (greyscale) or
        :data:`~vigil.dicom_adapter.colour.COLOUR_MODALITIES` (colour).
    channels : {1, 3}, optional
        The model's input channels: 1 takes greyscale images only (a colour one is
        quarantined), 3 colour images only (:func:`~vigil.dicom_adapter.colour.read_colour_image`).

    Returns
    -------
    PreparedBatch
        Inputs of the accepted instances, (n, size, size) for 1 channel and
        (n, 3, size, size) for 3, and ``(position, reason)`` of the others;
        a rejected instance never reaches the model.
    """
    if channels not in (1, 3):
        raise DataError(f"expected a model of 1 or 3 input channels, got {channels}")
    inputs: list[NDArray[np.float32]] = []
    accepted: list[int] = []
    quarantined: list[tuple[int, str]] = []
    for position, ds in enumerate(datasets):
        try:
            if channels == 3:
                colour = read_colour_image(as_dataset(ds),
                                           modalities=modalities or COLOUR_MODALITIES)
                inputs.append(stored_colour_input(colour.stored, colour.space, size=size))
            else:
                accept = modalities or ACCEPTED_MODALITIES
                image = (read_image_light(ds.light, ds, modalities=accept)
                         if isinstance(ds, HeaderView) else read_image(ds, modalities=accept))
                inputs.append(to_model_input(image.stored, image.params, size=size))
        except (DICOMError, DataError) as exc:
            quarantined.append((position, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - a damaged element pydicom cannot convert
            quarantined.append((position, unreadable_element(exc)))
            continue
        accepted.append(position)
    shape = (0, size, size) if channels == 1 else (0, 3, size, size)
    stacked = np.stack(inputs) if inputs else np.zeros(shape, dtype=np.float32)
    return PreparedBatch(inputs=stacked, accepted=tuple(accepted), quarantined=tuple(quarantined))


@dataclass(frozen=True)
class FileCheck:
    """The verdict on one file.

    Attributes
    ----------
    path : str
        The file, as found.
    accepted : bool
        Whether the pixel chain accepts it.
    reason : str or None
        The quarantine reason, when rejected.
    missing : tuple of str
        Type 1 / Type 2 attributes of the CR or DX IOD that are missing (a warning:
        the chain may still accept the image); empty for other SOP classes.
    """

    path: str
    accepted: bool
    reason: str | None
    missing: tuple[str, ...]


def check_files(
    paths: Iterable[str | Path], *, modalities: Sequence[str] | None = None, channels: int = 1
) -> list[FileCheck]:
    """Check DICOM files (folders: every ``*.dcm`` below, sorted) against the pixel chain.

    ``channels`` 3 checks them against the colour chain (as :func:`prepare_batch`).

    Raises
    ------
    DataError
        If a path does not exist.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(path.rglob("*.dcm")))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"expected a DICOM file or a folder, found nothing at {path}")
    checks = []
    for file in files:
        try:
            ds = read_file(file)
            if channels == 3:
                read_colour_image(ds, modalities=modalities or COLOUR_MODALITIES)
            else:
                read_image(ds, modalities=modalities or ACCEPTED_MODALITIES)
        except (DICOMError, DataError) as exc:
            checks.append(FileCheck(str(file), False, str(exc), ()))
            continue
        missing = tuple(m for m in missing_required(ds) if m != "SOPClassUID")
        checks.append(FileCheck(str(file), True, None, missing))
    return checks
