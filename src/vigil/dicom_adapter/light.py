"""The common instance read without pydicom: the chain's headers and pixels from Part 10 bytes.

The imaging runtime reads one small radiograph per study in about 1 ms of Python when
pydicom converts each header element and decodes the pixels through its plugin
machinery; for the common instance the values are a dozen fixed-size numbers and
strings and one frame. :func:`parse_light` walks the bytes of such an instance once
(DICOM PS3.10 §7: preamble, ``DICM``, File Meta group in Explicit VR Little Endian;
PS3.5 §7.1.2: data elements in Explicit VR Little Endian, sequences of defined or
undefined length, §A.4: encapsulated Pixel Data) and returns a :class:`LightInstance`
whose :attr:`~LightInstance.header` answers ``get``/``in`` like a pydicom ``Dataset``
for the keywords the pixel chain reads, with the values pydicom gives them. Its
pixels come from :func:`vigil.dicom_adapter.light_pixels.light_pixels`: native
(Explicit VR Little Endian), RLE Lossless (PS3.5 Annex G) and JPEG-LS Lossless
(PS3.5 §A.4.3, CharLS through ``jpeg_ls``, the decoder pydicom itself calls).

Anything outside that common case returns None, and the caller reads the instance with
pydicom (:func:`vigil.dicom_adapter.reading.read_image`): another transfer syntax
(implicit VR, big endian, JPEG, JPEG 2000, deflate), no preamble, an element that does
not parse or whose VR or value is not the plain one (multi-valued or non-ASCII text, a
number that is not a plain decimal, a LUT whose data is not US or OW), signed
compressed pixels, unused high bits of signed native pixels, an RLE frame with padding
or another segment count, a JPEG-LS stream whose size or precision differs from the
header's. So the light path never decides what the general path would decide
differently: the validation (and every quarantine reason) is the same code,
:func:`vigil.dicom_adapter.reading.display_parameters`, run on the same values, and
the pixels are the same array (``tests/dicom_adapter/test_light.py`` checks both on
every scanner variant the project writes).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = ["LightHeader", "LightInstance", "header_only", "light_uids", "parse_light"]

EXPLICIT_LE = "1.2.840.10008.1.2.1"
"""Explicit VR Little Endian (and the two compressed syntaxes below: the light reader's)."""
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
_SYNTAXES = frozenset({EXPLICIT_LE, RLE_LOSSLESS, JPEG_LS_LOSSLESS})

_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"})
_HEAD = struct.Struct("<HH2sH")
_U32 = struct.Struct("<I")
_ITEM_HEAD = struct.Struct("<HHI")

# keyword -> (tag, accepted VRs); "SQ" elements become lists of item headers
_KEYWORDS: dict[str, tuple[int, frozenset[bytes]]] = {
    "Modality": (0x00080060, frozenset({b"CS"})),
    "SOPInstanceUID": (0x00080018, frozenset({b"UI"})),
    "SeriesInstanceUID": (0x0020000E, frozenset({b"UI"})),
    "SamplesPerPixel": (0x00280002, frozenset({b"US"})),
    "PhotometricInterpretation": (0x00280004, frozenset({b"CS"})),
    "NumberOfFrames": (0x00280008, frozenset({b"IS"})),
    "Rows": (0x00280010, frozenset({b"US"})),
    "Columns": (0x00280011, frozenset({b"US"})),
    "BitsAllocated": (0x00280100, frozenset({b"US"})),
    "BitsStored": (0x00280101, frozenset({b"US"})),
    "PixelRepresentation": (0x00280103, frozenset({b"US"})),
    "WindowCenter": (0x00281050, frozenset({b"DS"})),
    "WindowWidth": (0x00281051, frozenset({b"DS"})),
    "RescaleIntercept": (0x00281052, frozenset({b"DS"})),
    "RescaleSlope": (0x00281053, frozenset({b"DS"})),
    "VOILUTFunction": (0x00281056, frozenset({b"CS"})),
    "ModalityLUTSequence": (0x00283000, frozenset({b"SQ"})),
    "VOILUTSequence": (0x00283010, frozenset({b"SQ"})),
    "PresentationLUTSequence": (0x20500010, frozenset({b"SQ"})),
    "PresentationLUTShape": (0x20500020, frozenset({b"CS"})),
    "FloatPixelData": (0x7FE00008, frozenset({b"OF"})),
    "DoubleFloatPixelData": (0x7FE00009, frozenset({b"OD"})),
    "PixelData": (_PIXEL_DATA, frozenset({b"OB", b"OW"})),
}
_EXTRA_KEYWORDS: dict[str, tuple[int, frozenset[bytes]]] = {
    "SOPClassUID": (0x00080016, frozenset({b"UI"})),
    "Manufacturer": (0x00080070, frozenset({b"LO"})),
    "ManufacturerModelName": (0x00081090, frozenset({b"LO"})),
    "PixelSpacing": (0x00280030, frozenset({b"DS"})),
    "ImagerPixelSpacing": (0x00181164, frozenset({b"DS"})),
    "StudyInstanceUID": (0x0020000D, frozenset({b"UI"})),
    "StudyDate": (0x00080020, frozenset({b"DA"})),
    "StudyTime": (0x00080030, frozenset({b"TM"})),
    "TimezoneOffsetFromUTC": (0x00080201, frozenset({b"SH"})),
}
"""What the header record, the own-output check and the FHIR write-back read besides:
converted when plain, else left to pydicom one keyword at a time (the instance stays light)."""
_ITEM_KEYWORDS: dict[str, tuple[int, frozenset[bytes]]] = {
    "LUTDescriptor": (0x00283002, frozenset({b"US", b"SS"})),
    "LUTData": (0x00283006, frozenset({b"US", b"OW"})),
}
_LUT_SEQUENCES = frozenset({0x00283000, 0x00283010})
_TEXT_VRS = frozenset({b"CS", b"UI", b"LO", b"SH", b"DA", b"TM"})
_NUMBER = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_TEXT = re.compile(rb"[\x21-\x5b\x5d-\x7e]+(?: [\x21-\x5b\x5d-\x7e]+)*")


class _Outside(Exception):
    """The instance is not the common case: the caller reads it with pydicom."""


class _Element(NamedTuple):
    """One parsed element (a tuple: made about 50 times an instance).

    ``value``: a sequence's items, the top-level Pixel Data's value (native) or
    fragments (encapsulated); None for any other element, whose value is the bytes
    ``start:stop`` of the instance (no view is kept: see :func:`header_only`).
    """

    vr: bytes
    value: list[dict[int, _Element]] | memoryview | list[memoryview] | None
    start: int = 0
    """Offset of the value in the file."""
    stop: int = 0
    """End of the value (an undefined length's: before its delimiter)."""
    length: int = 0
    """The length as written (0xFFFFFFFF: undefined)."""


class LightHeader:
    """The values of a fixed set of keywords, as pydicom gives them; ``get`` and ``in``.

    The set: what the pixel chain reads (every one converted, or the instance is left to
    pydicom) and what the header record and own-output check read besides (converted when
    plain, else missing here and not in :attr:`absent`: ask pydicom). Text is ``str``
    (trailing padding removed; ``""`` when empty), US and SS are ``int`` or a list of them,
    DS is ``float`` or a list, IS ``int``; an empty number is None; a LUT sequence is a
    list of item headers; LUTData of VR US is an ndarray of its entries (OW: ``bytes``, as
    pydicom). Keywords outside the set are absent.
    """

    __slots__ = ("_values", "absent")

    def __init__(self, values: dict[str, Any], absent: frozenset[str] = frozenset()) -> None:
        self._values = values
        self.absent = absent
        """Keywords of the reader's sets that the instance does not have."""

    def __contains__(self, keyword: object) -> bool:
        return keyword in self._values

    def get(self, keyword: str, default: Any = None) -> Any:
        """Return the value of ``keyword``, ``default`` when absent."""
        return self._values.get(keyword, default)

    def __repr__(self) -> str:
        return f"LightHeader({sorted(self._values)})"


@dataclass(frozen=True, eq=False)
class LightInstance:
    """One instance of the common case (:func:`parse_light`).

    Attributes
    ----------
    syntax : str
        Transfer Syntax UID.
    header : LightHeader
        The pixel chain's keywords (and the instance's SOP Instance, Series UIDs).
    data : bytes
        The instance's bytes.
    """

    syntax: str
    header: LightHeader
    data: bytes = b""
    meta: dict[int, _Element] = field(default_factory=dict)
    """The File Meta elements (:mod:`vigil.dicom_adapter.light_dataset`)."""
    elements: dict[int, _Element] = field(default_factory=dict)
    """The data set's top-level elements, by tag."""

    @property
    def pixels(self) -> memoryview | list[memoryview] | None:
        """Native Pixel Data or its encapsulated fragments (Pixel Data's element; or None)."""
        pixel = self.elements.get(_PIXEL_DATA)
        return pixel.value if pixel is not None else None  # type: ignore[return-value]


def _text(raw: memoryview, *, uid: bool = False) -> str:
    data = bytes(raw).rstrip(b"\x00" if uid else b" ")
    if data and not _TEXT.fullmatch(data):
        raise _Outside  # multi-valued (backslash), non-ASCII or leading blanks
    return data.decode("ascii")


def _numbers(raw: memoryview, kind: type) -> Any:
    data = bytes(raw)
    if b"\x00" in data:
        raise _Outside  # DS / IS pad with spaces; a NUL anywhere is pydicom's to judge
    parts = data.strip(b" ")
    if not parts:
        return None
    values = []
    for part in parts.split(b"\\"):
        part = part.strip(b" ")
        if not _NUMBER.fullmatch(part) or (kind is int and not part.lstrip(b"+-").isdigit()):
            raise _Outside
        values.append(kind(part.decode("ascii")))
    return values[0] if len(values) == 1 else values


def _binary(raw: memoryview, fmt: str) -> Any:
    if not len(raw):
        return None
    if len(raw) % 2:
        raise _Outside
    values = np.frombuffer(raw, dtype=fmt).tolist()
    return values[0] if len(values) == 1 else values


def _convert(el: _Element, keyword: str, buf: memoryview) -> Any:
    vr, value = el.vr, el.value
    if vr == b"SQ":
        assert isinstance(value, list)
        return ([_item(item, buf) for item in value] if keyword != "PresentationLUTSequence"
                else value)
    if value is not None:
        return value  # Pixel Data: its value or fragments (its presence is what is asked)
    value = buf[el.start:el.stop]
    if vr in _TEXT_VRS:
        return _text(value, uid=vr == b"UI")
    if vr == b"DS":
        return _numbers(value, float)
    if vr == b"IS":
        return _numbers(value, int)
    if vr in (b"US", b"SS"):
        return _binary(value, "<u2" if vr == b"US" else "<i2")
    return value


def _item(item: dict[int, _Element], buf: memoryview) -> LightHeader:
    values: dict[str, Any] = {}
    for keyword, (tag, vrs) in _ITEM_KEYWORDS.items():
        el = item.get(tag)
        if el is None:
            continue
        if el.vr not in vrs or el.value is not None:
            raise _Outside
        raw = buf[el.start:el.stop]
        if keyword == "LUTData":
            if el.vr == b"US" and (len(raw) % 2 or len(raw) < 4):
                raise _Outside  # a single US entry is an int to pydicom
            values[keyword] = (bytes(raw) if el.vr == b"OW" else
                               np.frombuffer(raw, dtype="<u2").astype(np.int64))
        else:
            if len(raw) != 6:
                raise _Outside
            # the entry count is US even in an SS descriptor (PS3.3 C.11.1.1.1); pydicom
            # fixes that value only (``pydicom.hooks.raw_element_value``), and so does this
            values[keyword] = _binary(raw, "<u2" if el.vr == b"US" else "<i2")
            values[keyword][0] &= 0xFFFF
    return LightHeader(values)


def _elements(buf: memoryview, pos: int, end: int, *, in_item: bool, until: int = 0xFFFFFFFF
              ) -> tuple[dict[int, _Element], int]:
    """Parse Explicit VR Little Endian elements from ``pos``; (elements by tag, end position).

    ``until``: stop before the first top-level element whose tag is above it.
    """
    out: dict[int, _Element] = {}
    while pos < end:
        if pos + 8 > end:
            raise _Outside
        group, number, vr, short = _HEAD.unpack_from(buf, pos)
        tag = group << 16 | number
        if tag > until:
            return out, pos
        if tag == _ITEM_END and in_item:
            return out, pos + 8
        if group == 0xFFFE:
            raise _Outside
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise _Outside
            (length,) = _U32.unpack_from(buf, pos + 8)
            pos += 12
        elif vr in _SHORT_VRS:
            length, pos = short, pos + 8
        else:
            raise _Outside
        start = pos
        if length == _UNDEFINED:
            if vr == b"SQ":
                items, pos = _sequence(buf, pos, end, undefined=True)
                out[tag] = _Element(vr, items, start, pos - 8, length)
            elif tag == _PIXEL_DATA and not in_item:
                fragments, pos = _fragments(buf, pos, end)
                out[tag] = _Element(vr, fragments, start, pos - 8, length)
            else:
                raise _Outside
            continue
        if pos + length > end:
            raise _Outside
        if vr == b"SQ":
            items, _ = _sequence(buf, pos, pos + length, undefined=False)
            out[tag] = _Element(vr, items, start, pos + length, length)
        else:
            value = buf[pos:pos + length] if tag == _PIXEL_DATA and not in_item else None
            out[tag] = _Element(vr, value, start, pos + length, length)
        pos += length
    if in_item:
        raise _Outside
    return out, pos


def _sequence(buf: memoryview, pos: int, end: int, *, undefined: bool
              ) -> tuple[list[dict[int, _Element]], int]:
    items = []
    while pos < end:
        if pos + 8 > end:
            raise _Outside
        group, number, length = _ITEM_HEAD.unpack_from(buf, pos)
        tag = group << 16 | number
        pos += 8
        if tag == _SEQ_END and undefined:
            return items, pos
        if tag != _ITEM:
            raise _Outside
        if length == _UNDEFINED:
            item, pos = _elements(buf, pos, end, in_item=True)
        else:
            if pos + length > end:
                raise _Outside
            item, _ = _elements(buf, pos, pos + length, in_item=False)
            pos += length
        items.append(item)
    if undefined:
        raise _Outside
    return items, pos


def _fragments(buf: memoryview, pos: int, end: int) -> tuple[list[memoryview], int]:
    """Split encapsulated Pixel Data (PS3.5 §A.4): its fragments after the offset table."""
    out: list[memoryview] = []
    first = True
    while pos + 8 <= end:
        group, number, length = _ITEM_HEAD.unpack_from(buf, pos)
        tag = group << 16 | number
        pos += 8
        if tag == _SEQ_END:
            return out, pos
        if tag != _ITEM or length == _UNDEFINED or pos + length > end:
            raise _Outside
        if not first:
            out.append(buf[pos:pos + length])
        first = False
        pos += length
    raise _Outside


def _file_meta(buf: memoryview) -> tuple[str, int, dict[int, _Element]]:
    """Transfer Syntax UID, where the data set starts and the File Meta (PS3.10 §7.1)."""
    if len(buf) < 132 or bytes(buf[128:132]) != b"DICM":
        raise _Outside
    pos, syntax = 132, None
    meta: dict[int, _Element] = {}
    while pos + 8 <= len(buf) and _HEAD.unpack_from(buf, pos)[0] == 0x0002:
        _, number, vr, short = _HEAD.unpack_from(buf, pos)
        if vr in _LONG_VRS:
            (length,) = _U32.unpack_from(buf, pos + 8)
            pos += 12
        elif vr in _SHORT_VRS:
            length, pos = short, pos + 8
        else:
            raise _Outside
        if length == _UNDEFINED or pos + length > len(buf):
            raise _Outside
        if number == 0x0010:
            syntax = _text(buf[pos:pos + length], uid=True)
        meta[0x00020000 | number] = _Element(vr, None, pos, pos + length, length)
        pos += length
    if syntax not in _SYNTAXES:
        raise _Outside
    return syntax, pos, meta


def parse_light(data: bytes) -> LightInstance | None:
    """Parse a Part 10 instance of the common case; None for anything else (module notes).

    Parameters
    ----------
    data : bytes
        The instance as stored (PS3.10).

    Returns
    -------
    LightInstance or None
    """
    buf = memoryview(data)
    try:
        syntax, pos, meta = _file_meta(buf)
        elements, _ = _elements(buf, pos, len(buf), in_item=False)
        values: dict[str, Any] = {}
        absent = set()
        for keyword, (tag, vrs) in _KEYWORDS.items():
            el = elements.get(tag)
            if el is None:
                absent.add(keyword)
                continue
            if el.vr not in vrs or (el.vr == b"SQ" and tag not in _LUT_SEQUENCES
                                    and keyword != "PresentationLUTSequence"):
                raise _Outside
            values[keyword] = _convert(el, keyword, buf)
    except (_Outside, struct.error, UnicodeDecodeError, ValueError):
        return None
    for keyword, (tag, vrs) in _EXTRA_KEYWORDS.items():
        el = elements.get(tag)
        if el is None:
            absent.add(keyword)
            continue
        try:
            if el.vr in vrs:
                values[keyword] = _convert(el, keyword, buf)
        except (_Outside, UnicodeDecodeError, ValueError):
            pass  # not plain: pydicom reads this one
    return LightInstance(syntax, LightHeader(values, frozenset(absent)), data, meta, elements)


_HEADER_LEN_LONG = 12
"""An Explicit VR element header with a 32-bit length: tag, VR, 2 reserved bytes, length."""
_FLOAT_PIXELS = ("FloatPixelData", "DoubleFloatPixelData")
"""Header values besides Pixel Data that stay views into the instance's bytes."""


def header_only(inst: LightInstance) -> LightInstance | None:
    """Return the instance without its pixels, holding nothing of its original bytes.

    The bytes up to Pixel Data's element (copied), the same element boundaries (which
    hold no view but Pixel Data's, left out), and the header without Pixel Data (as an
    instance whose Pixel Data was deleted): what the sinks read once the pixel chain is
    done, while the instance's pixel bytes are freed with the original buffer. None when
    an element follows Pixel Data (trailing padding, private tags) or the header holds
    another view (float pixels): the caller then keeps the whole instance.

    Parameters
    ----------
    inst : LightInstance

    Returns
    -------
    LightInstance or None
    """
    pixel = inst.elements.get(_PIXEL_DATA)
    cut = len(inst.data) if pixel is None else pixel.start - _HEADER_LEN_LONG
    if (any(el.start > cut for t, el in inst.elements.items() if t != _PIXEL_DATA)
            or any(k in inst.header for k in _FLOAT_PIXELS)):
        return None

    values = {k: v for k, v in inst.header._values.items() if k != "PixelData"}
    absent = inst.header.absent | {"PixelData"}
    elements = {t: el for t, el in inst.elements.items() if t != _PIXEL_DATA}
    return LightInstance(inst.syntax, LightHeader(values, absent), inst.data[:cut], inst.meta,
                         elements)


_UID_TAGS = (0x00080018, 0x0020000E)


def light_uids(data: bytes) -> tuple[str, str] | None:
    """``(SOPInstanceUID, SeriesInstanceUID)`` of a common-case instance; None otherwise.

    Reads the elements up to Series Instance UID only (they come early: group 0008, 0020).
    """
    buf = memoryview(data)
    try:
        _, pos, _ = _file_meta(buf)
        elements, _ = _elements(buf, pos, len(buf), in_item=False, until=_UID_TAGS[1])
        uids = []
        for tag in _UID_TAGS:
            el = elements.get(tag)
            if el is not None and el.vr != b"UI":
                return None
            uids.append(_text(buf[el.start:el.stop], uid=True) if el is not None else "")
    except (_Outside, struct.error, UnicodeDecodeError, ValueError):
        return None
    return uids[0], uids[1]
