"""The acquisition headers the imaging drift monitor watches, read from one instance.

What shifts when a site changes scanners (issue 16, point 4): Manufacturer and model,
BitsStored, PhotometricInterpretation, pixel spacing, transfer syntax, modality.
:func:`header_record` reads them from a dataset without touching pixel data; a
missing attribute is ``""`` (text) or NaN (numbers), never an error: the record
describes what came, the pixel chain decides what is scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

__all__ = ["HEADER_FIELDS", "HeaderRecord", "header_record"]


@dataclass(frozen=True)
class HeaderRecord:
    """The watched headers of one instance (no identifiers).

    ``pixel_spacing_mm`` is the row spacing of PixelSpacing, else ImagerPixelSpacing
    (PS3.3 10.7.1.1), NaN when neither is present.
    """

    modality: str
    manufacturer: str
    model_name: str
    bits_stored: int
    photometric: str
    pixel_spacing_mm: float
    transfer_syntax: str


HEADER_FIELDS: tuple[str, ...] = tuple(HeaderRecord.__dataclass_fields__)
"""The field names of :class:`HeaderRecord`, in order (the store's and monitor's columns)."""


def _text(ds: Dataset | Mapping[str, Any], keyword: str) -> str:
    value: Any = ds.get(keyword, "")
    return str(value).strip() if value is not None else ""


def _spacing(ds: Dataset | Mapping[str, Any]) -> float:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value: Any = ds.get(keyword)
        try:
            first = float(value[0]) if value is not None and len(value) else math.nan
        except (TypeError, ValueError, IndexError):
            first = math.nan
        if first == first:
            return first
    return math.nan


def header_record(ds: Dataset | Mapping[str, Any]) -> HeaderRecord:
    """Read the watched headers of ``ds``.

    Parameters
    ----------
    ds : pydicom.dataset.Dataset or mapping
        One instance (its file meta, when present, gives the transfer syntax), or its
        :class:`~vigil.dicom_adapter.light_dataset.HeaderView` (read by ``get`` alike).

    Returns
    -------
    HeaderRecord
    """
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    try:
        bits = int(ds.get("BitsStored", 0) or 0)
    except (TypeError, ValueError):
        bits = 0
    return HeaderRecord(
        modality=_text(ds, "Modality"),
        manufacturer=_text(ds, "Manufacturer"),
        model_name=_text(ds, "ManufacturerModelName"),
        bits_stored=bits,
        photometric=_text(ds, "PhotometricInterpretation"),
        pixel_spacing_mm=_spacing(ds),
        transfer_syntax=syntax,
    )
