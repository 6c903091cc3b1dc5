"""What marks a result vigil wrote, so the runtime never scores its own output.

Header tags only (no pixel data, no content tree, no highdicom): the imaging cycle
checks every fetched instance, and :mod:`vigil.dicom_adapter.sr` writes what this
recognizes (Modality ``SR``, Manufacturer :data:`OWN_MANUFACTURER`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

__all__ = ["OWN_MANUFACTURER", "is_own_output"]

OWN_MANUFACTURER = "vigil"
"""Manufacturer (0008,0070) of every SR vigil writes: with Modality SR, what marks its own."""

_SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
"""SR Storage SOP classes (PS3.4 B.5)."""


def _tag_value(tags: Mapping[str, Any], keyword: str) -> str:
    """Return a keyword's first value from keyword tags or DICOM JSON (PS3.18 F.2), else ``""``."""
    tag = tag_for_keyword(keyword)
    value = tags.get(keyword)
    if value is None and tag is not None:
        value = tags.get(f"{tag:08X}")
    if isinstance(value, Mapping):
        value = value.get("Value")
    if isinstance(value, list | tuple):
        value = value[0] if value else ""
    return "" if value is None else str(value).strip()


def is_own_output(ds_or_tags: Dataset | Mapping[str, Any]) -> bool:
    """Whether an instance or series is a result vigil wrote (so it must not be scored).

    True for Modality ``SR`` with Manufacturer exactly :data:`OWN_MANUFACTURER` (and,
    when SOPClassUID is given, an SR Storage class). Header tags only: no pixel data,
    no content tree.

    Parameters
    ----------
    ds_or_tags : pydicom.Dataset or mapping
        A dataset, or tags by keyword (``{"Modality": "SR", ...}``: Orthanc's
        ``MainDicomTags``) or by DICOM JSON tag (``{"00080060": {"vr": "CS",
        "Value": ["SR"]}}``: QIDO-RS, WADO-RS metadata).

    Returns
    -------
    bool
    """
    if isinstance(ds_or_tags, Dataset):
        tags: Mapping[str, Any] = {k: ds_or_tags.get(k) for k in
                                   ("Modality", "Manufacturer", "SOPClassUID")}
    else:
        tags = ds_or_tags
    sop_class = _tag_value(tags, "SOPClassUID")
    return (_tag_value(tags, "Modality") == "SR"
            and _tag_value(tags, "Manufacturer") == OWN_MANUFACTURER
            and (not sop_class or sop_class.startswith(_SR_CLASS_PREFIX)))
