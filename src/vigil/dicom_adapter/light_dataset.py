"""A pydicom ``Dataset`` of a common-case instance, built from the light reader's parse.

``pydicom.dcmread`` walks an instance's bytes element by element in Python (about
150 µs for a 4 kB radiograph); :func:`light_dataset` makes the same ``FileDataset``
from the element boundaries :func:`vigil.dicom_adapter.light.parse_light` already found:
each element a ``RawDataElement`` with the same tag, VR, length, value bytes and file
offset that ``dcmread``'s reader (``pydicom.filereader.data_element_generator``) gives
it, converted lazily by pydicom on access as usual; a sequence of undefined length is
read by pydicom's own ``read_sequence``, as ``dcmread`` does; the character set, the
File Meta and the original encoding are set as ``dcmread`` sets them. The sinks (FHIR
write-back, the highdicom SR), the header record and the own-output check read it as
they read ``dcmread``'s; ``tests/dicom_adapter/test_light.py`` checks it equals
``dcmread``'s dataset, element for element, on every scanner variant.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag
from pydicom.values import convert_string

from vigil.dicom_adapter.light import LightInstance, _Element

_NOT_FOUND = object()

__all__ = ["HeaderView", "light_dataset"]

_UNDEFINED = 0xFFFFFFFF
_CHARSET = 0x00080005


_TAGS: dict[int, BaseTag] = {}
_VRS = {vr: vr.decode("ascii") for vr in (
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"OB",
    b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM",
    b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV")}


def _tag(tag: int) -> BaseTag:
    found = _TAGS.get(tag)
    if found is None:
        found = _TAGS.setdefault(tag, BaseTag(tag))
    return found


def _raw(tag: BaseTag, el: _Element, data: bytes) -> RawDataElement:
    """Build the ``RawDataElement`` pydicom's reader yields for ``el`` (as a tuple)."""
    vr = _VRS[el.vr]
    value = data[el.start:el.stop] if el.stop > el.start else (
        empty_value_for_VR(vr, raw=True) if el.length != _UNDEFINED else b"")
    return tuple.__new__(RawDataElement, (tag, vr, el.length, value, el.start, False, True,
                                          True, False))


def light_dataset(inst: LightInstance) -> FileDataset:
    """Return the ``FileDataset`` ``pydicom.dcmread`` makes of the instance's bytes.

    Parameters
    ----------
    inst : LightInstance
        From :func:`~vigil.dicom_adapter.light.parse_light`.

    Returns
    -------
    pydicom.dataset.FileDataset
    """
    data = inst.data
    meta = FileMetaDataset({(bt := _TAGS.get(t) or _tag(t)): _raw(bt, el, data)
                            for t, el in inst.meta.items()})
    meta.set_original_encoding(False, True, default_encoding)
    encoding: str | list[str] = default_encoding
    charset = inst.elements.get(_CHARSET)
    if charset is not None:
        encoding = convert_encodings(convert_string(data[charset.start:charset.stop], True))
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    for tag, el in inst.elements.items():
        bt = _TAGS.get(tag) or _tag(tag)
        if el.vr == b"SQ" and el.length == _UNDEFINED:
            fp = io.BytesIO(data)
            fp.seek(el.start)
            seq = read_sequence(fp, False, True, _UNDEFINED, encoding)
            elements[bt] = DataElement(bt, "SQ", seq, el.start, is_undefined_length=True)
        else:
            elements[bt] = _raw(bt, el, data)
    ds = FileDataset(io.BytesIO(data), elements, data[:128], meta, False, True)
    ds.set_original_encoding(False, True, encoding)
    return ds


class HeaderView(Mapping[str, Any]):
    """An instance's header values: the light reader's where it has them, else pydicom's.

    What the header record (:func:`vigil.dicom_adapter.headers.header_record`) and the
    own-output check (:func:`vigil.dicom_adapter.own_output.is_own_output`) read, without
    pydicom converting each element on access: a keyword the light header converted is
    answered from it, one it knows the instance lacks is absent, any other is asked of
    the pydicom dataset (the same instance, :func:`light_dataset`), so the answers are
    pydicom's. ``file_meta`` is the dataset's.

    Parameters
    ----------
    light : LightInstance
    ds : pydicom.dataset.Dataset
        The same instance (:func:`light_dataset` of ``light``).
    """

    def __init__(self, light: LightInstance, ds: Dataset) -> None:
        self._header, self._ds = light.header, ds
        self.file_meta = getattr(ds, "file_meta", None)

    def get(self, keyword: str, default: Any = None) -> Any:  # type: ignore[override]
        """Return the value of ``keyword``, ``default`` when the instance lacks it."""
        if keyword in self._header:
            return self._header.get(keyword)
        if keyword in self._header.absent:
            return default
        return self._ds.get(keyword, default)

    def __getitem__(self, keyword: str) -> Any:
        value = self.get(keyword, _NOT_FOUND)
        if value is _NOT_FOUND:
            raise KeyError(keyword)
        return value

    def __iter__(self) -> Iterator[str]:
        return (str(e.keyword) for e in self._ds if e.keyword)

    def __len__(self) -> int:
        return len(self._ds)

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and self.get(keyword, _NOT_FOUND) is not _NOT_FOUND

    def __repr__(self) -> str:
        return "HeaderView(...)"
