"""A pydicom ``Dataset`` of a common-case instance, built from the light reader's parse.

``pydicom.dcmread`` walks an instance's bytes element by element in Python (about
150 µs for a 4 kB radiograph); :func:`light_dataset` makes the same ``FileDataset``
from the element boundaries :func:`vigil.dicom_adapter.light.parse_light` already found:
each element a ``RawDataElement`` with the same tag, VR, length, value bytes and file
offset that ``dcmread``'s reader (``pydicom.filereader.data_element_generator``) gives
it, converted lazily by pydicom on access as usual; a sequence of undefined length is
read by pydicom's own ``read_sequence``, as ``dcmread`` does; the character set, the
File Meta and the original encoding are set as ``dcmread`` sets them;
``tests/dicom_adapter/test_light.py`` checks it equals ``dcmread``'s dataset, element for
element, on every scanner variant.

The runtime builds it only when asked: :class:`HeaderView` answers the header record, the
own-output check and the FHIR write-back from the light parse, and builds the dataset for
what needs pydicom (the highdicom SR, :func:`as_dataset`; a pixel decode the light
decoders leave; a keyword outside the light sets). :func:`release_pixels` frees an
instance's pixel bytes once the chain has read them, whichever reader read it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.values import convert_string

from vigil.dicom_adapter.light import LightHeader, LightInstance, _Element, header_only

_NOT_FOUND = object()
_NO_HEADER = LightHeader({})

__all__ = ["HeaderView", "as_dataset", "light_dataset", "release_pixels"]

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


class _LightMeta(Mapping[str, Any]):
    """The File Meta as the header record reads it: the transfer syntax without pydicom."""

    def __init__(self, view: HeaderView, syntax: str) -> None:
        self._view, self._syntax = view, UID(syntax)

    def get(self, keyword: str, default: Any = None) -> Any:  # type: ignore[override]
        """Return the value of ``keyword`` (the Transfer Syntax UID is the light reader's)."""
        if keyword == "TransferSyntaxUID":
            return self._syntax
        return self._view.dataset.file_meta.get(keyword, default)

    def __getitem__(self, keyword: str) -> Any:
        return self._view.dataset.file_meta[keyword]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view.dataset.file_meta)

    def __len__(self) -> int:
        return len(self._view.dataset.file_meta)


class HeaderView(Mapping[str, Any]):
    """An instance's header values: the light reader's where it has them, else pydicom's.

    What the header record (:func:`vigil.dicom_adapter.headers.header_record`), the
    own-output check (:func:`vigil.dicom_adapter.own_output.is_own_output`) and the FHIR
    write-back read, without pydicom converting each element on access: a keyword the
    light header converted is answered from it, one it knows the instance lacks is
    absent, any other is asked of the pydicom dataset of the same instance
    (:attr:`dataset`, :func:`light_dataset`, built at that first question), so the
    answers are pydicom's. A name that is no DICOM keyword is absent, as
    ``Dataset.get`` finds it. Keywords read as attributes too (``view.Modality``), as a
    sink written for pydicom reads them. ``file_meta`` answers the transfer syntax from
    the light parse, anything else from the dataset's.

    Parameters
    ----------
    light : LightInstance
    """

    def __init__(self, light: LightInstance) -> None:
        self._light = light
        self._ds: Dataset | None = None

    @property
    def light(self) -> LightInstance:
        """The light reader's parse (what the pixel chain decodes)."""
        return self._light

    @property
    def dataset(self) -> Dataset:
        """The instance as pydicom reads it (built on first use; a sink that needs pydicom).

        Built from the light parse; should pydicom's sequence reader refuse an element
        the light reader walked, the instance's bytes are read by pydicom itself
        (:func:`~vigil.dicom_adapter.reading.read_file`: its reason, a DICOMError).
        """
        if self._ds is None:
            try:
                self._ds = light_dataset(self._light)
            except Exception:  # noqa: BLE001 - an element pydicom would not read: pydicom decides
                from vigil.dicom_adapter.reading import read_file

                self._ds = read_file(io.BytesIO(self._light.data))
        return self._ds

    @property
    def file_meta(self) -> Mapping[str, Any]:
        """The File Meta (the dataset's once built; until then its transfer syntax alone)."""
        if self._ds is not None:
            return self._ds.file_meta
        return _LightMeta(self, self._light.syntax)

    def release_pixels(self) -> None:
        """Free the instance's pixel bytes (the chain is done); every header answer stays.

        Keeps the header bytes only (:func:`~vigil.dicom_adapter.light.header_only`), or,
        for an instance with elements after its pixels, its dataset without Pixel Data.
        """
        if self._ds is None:
            kept = header_only(self._light)
            if kept is not None:
                self._light = kept
                return
        release_pixels(self.dataset)
        # the parse holds views into the pixels: drop it, pydicom's dataset answers all
        self._light = LightInstance(self._light.syntax, _NO_HEADER)

    def get(self, keyword: str, default: Any = None) -> Any:  # type: ignore[override]
        """Return the value of ``keyword``, ``default`` when the instance lacks it."""
        header = self._light.header
        if keyword in header:
            return header.get(keyword)
        if keyword in header.absent or (
                self._ds is None and tag_for_keyword(keyword) is None
                and not hasattr(Dataset, keyword)):
            return default
        return self.dataset.get(keyword, default)

    def __getitem__(self, keyword: str) -> Any:
        value = self.get(keyword, _NOT_FOUND)
        if value is _NOT_FOUND:
            raise KeyError(keyword)
        return value

    def __getattr__(self, keyword: str) -> Any:
        """``view.Modality`` as ``ds.Modality``: AttributeError when the instance lacks it."""
        value = _NOT_FOUND if keyword.startswith("_") else self.get(keyword, _NOT_FOUND)
        if value is _NOT_FOUND:
            raise AttributeError(keyword)
        return value

    def __iter__(self) -> Iterator[str]:
        return (str(e.keyword) for e in self.dataset if e.keyword)

    def __len__(self) -> int:
        return len(self.dataset)

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, str) and self.get(keyword, _NOT_FOUND) is not _NOT_FOUND

    def __repr__(self) -> str:
        return "HeaderView(...)"


def as_dataset(instance: Dataset | HeaderView) -> Dataset:
    """Return the pydicom dataset of an instance the runtime read (a view's: built if need be)."""
    return instance.dataset if isinstance(instance, HeaderView) else instance


def release_pixels(instance: Dataset | HeaderView) -> None:
    """Free an instance's pixels once the chain has read them; its header answers stay.

    A pydicom dataset loses Pixel Data, pydicom's decoded copy and the buffer it was
    read from (``dcmread`` of bytes keeps them all); a :class:`HeaderView` keeps its
    header bytes only. So a page of films holds its model inputs and headers, not
    its pixels.
    """
    if isinstance(instance, HeaderView):
        instance.release_pixels()
        return
    if "PixelData" in instance:
        del instance.PixelData
    instance._pixel_array = None
    if isinstance(instance, FileDataset):
        instance.buffer = None
