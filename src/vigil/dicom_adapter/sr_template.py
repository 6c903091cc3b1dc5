"""The TID 1500 SR of a score, encoded from a compiled template: the same bytes, ~100x faster.

:func:`vigil.dicom_adapter.sr.build_sr` builds each SR with highdicom (content-item
validation, evidence collection, module copying; ~35 ms) and pydicom writes it (~10 ms).
Within one *shape* (model name and version, role, the number, SOP classes and series
grouping of the scored instances, which attributes the first scored instance carries,
its character set and which acquisition-equipment attributes it has) the encoded SR
differs between studies only in a known set of element values:

- the Patient and Study module attributes highdicom copies from the first scored
  instance (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2 and the clinical-trial modules, as
  highdicom's module tables list them for that instance's IOD);
- the study's, the SR's (series, instance, tracking) and the scored instances' UIDs;
- the content, series and instance-creation date and time and every
  ContributionDateTime (the scoring time in UTC);
- the measurement's NumericValue (DS) and FloatingPointValue (FD), PS3.3 C.18.1;
- the qualitative evaluation's concept code, SNOMED CT Present (52101004) or Absent
  (272519000): its CodeValue and CodeMeaning (PS3.3 8.8, Table 8.8-1a);
- the source's acquisition equipment highdicom copies into the
  ContributingEquipmentSequence (PS3.3 C.12.1: Manufacturer, ManufacturerModelName,
  SoftwareVersions, DeviceSerialNumber, InstitutionName, InstitutionalDepartmentName,
  InstitutionAddress, StationName).

:class:`SRTemplates` builds the first SR of each shape with highdicom, *compiles* it into
a tree of constant bytes and value slots (sequences and items keep pydicom's length
encoding, PS3.5 7.5: lengths are recomputed from their content), and checks that the
compiled tree renders that very SR byte for byte, and a second SR of the same shape that
highdicom builds with every value slot changed (the opposite decision, another
probability, other equipment values of other lengths); a shape whose check fails is
never templated (highdicom builds every SR of it). Later SRs of a shape are rendered by
encoding only the slot elements (pydicom's own element writer) and joining bytes; the
file meta group (PS3.10 7.1) likewise, its group length recomputed. Values that would
make the slot encoding diverge (a constant holding a per-study UID, two per-study UIDs
that coincide) also disable the shape.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, time
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info
from pydicom.sr.codedict import codes
from pydicom.valuerep import DS

if TYPE_CHECKING:
    from vigil.runtime.study_contracts import StudyScore

__all__ = ["SRTemplates", "shape_key"]

_ROOT_DATES = frozenset({0x00080023, 0x00080021, 0x00080012})
"""ContentDate, SeriesDate, InstanceCreationDate."""
_ROOT_TIMES = frozenset({0x00080033, 0x00080031, 0x00080013})
"""ContentTime, SeriesTime, InstanceCreationTime."""
_CONTRIBUTION_DT = 0x0018A002
_NUMERIC_VALUE = 0x0040A30A
_FLOAT_VALUE = 0x0040A161
_EQUIPMENT = ("Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber",
              "InstitutionName", "InstitutionalDepartmentName", "InstitutionAddress",
              "StationName")
"""What highdicom's ContributingEquipment.for_image_acquisition copies from the source."""
_EQUIPMENT_TAGS = {int(tag_for_keyword(k) or 0): k for k in _EQUIPMENT}
_CODE_VALUE, _CODE_MEANING = 0x00080100, 0x00080104
_MEDIA_SOP = 0x00020003
"""MediaStorageSOPInstanceUID."""
_NONE = object()
_DECISIONS = {True: codes.SCT.Present, False: codes.SCT.Absent}
_ITEM, _ITEM_END, _SEQ_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0"
_UNDEFINED = 0xFFFFFFFF


@cache
def _copied_tags(sop_class_uid: str) -> frozenset[int]:
    """Root tags highdicom copies from an instance of this SOP class (Patient and Study IEs)."""
    from highdicom._standard_utils import (
        get_iod_module_map,
        get_module_attribute_map,
        get_sop_class_iod_map,
    )

    attributes = get_module_attribute_map()
    tags: set[int] = set()
    for module in get_iod_module_map()[get_sop_class_iod_map()[sop_class_uid]]:
        if module["ie"] in ("Patient", "Study"):
            for item in attributes[module["key"]]:
                tag = tag_for_keyword(str(item["keyword"])) if not item["path"] else None
                if tag is not None:
                    tags.add(int(tag))
    return frozenset(tags)


def _acquisition_time_known(ds: Dataset) -> bool:
    """Whether highdicom gives the source's equipment a ContributionDateTime."""
    return ds.get("AcquisitionDateTime") is not None or (
        isinstance(ds.get("AcquisitionDate"), date)
        and isinstance(ds.get("AcquisitionTime"), time))


def shape_key(score: StudyScore, scored: Sequence[Dataset]) -> Hashable:
    """Return what fixes the SR's structure apart from the slot values (module notes).

    ``scored``: the scored instances in score order, as
    :func:`vigil.dicom_adapter.sr._scored_sources` returns them.
    """
    first = scored[0]
    series: dict[str, int] = {}
    pattern = tuple(series.setdefault(str(ds.get("SeriesInstanceUID", "")), len(series))
                    for ds in scored)
    return (score.model_name, score.model_version, score.role,
            tuple(str(ds.SOPClassUID) for ds in scored), pattern,
            tuple(int(t) for t in first.keys()), str(first.get("SpecificCharacterSet", "")),
            tuple(_filled(first, t) for t in _EQUIPMENT_TAGS), _acquisition_time_known(first))


@dataclass(frozen=True)
class _Slot:
    name: Hashable
    tag: int
    vr: str
    encodings: Any


@dataclass(frozen=True)
class _Seq:
    head: bytes
    """Tag, ``SQ`` and the reserved bytes."""
    items: tuple[tuple[list[Any], bool], ...]
    """Each item's parts and whether it has undefined length."""
    undefined: bool


Part = bytes | _Slot | _Seq


def _encode(elem: DataElement, encodings: Any) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


_ASCII_VRS = {"UI": b"\0", "CS": b" ", "DA": b" ", "TM": b" ", "DT": b" ", "LO": b" ",
              "SH": b" ", "AE": b" ", "AS": b" "}
"""Short-length string VRs and their padding byte (PS3.5 6.2): encoded here when ASCII."""


def _encode_slot(slot: _Slot, value: Any) -> bytes:
    """Encode one slot element as pydicom's writer does (a plain ASCII string directly).

    ``value``: the slot's value, or a source's element (copied as it is, its VR kept).
    """
    elem = value if isinstance(value, DataElement) else None
    vr, v = (str(elem.VR), elem.value) if elem is not None else (slot.vr, value)
    pad = _ASCII_VRS.get(vr)
    if pad is not None and type(v) is str and v.isascii():
        data = v.encode("ascii")
        if len(data) % 2:
            data += pad
        tag = slot.tag
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode("ascii"), len(data)) + data
    return _encode(elem if elem is not None else DataElement(slot.tag, vr, v), slot.encodings)


def _merge(parts: list[Part]) -> list[Part]:
    out: list[Part] = []
    for p in parts:
        if isinstance(p, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += p
        else:
            out.append(p)
    return out


class _Compiler:
    """Turns an SR dataset into parts; ``bind`` names the slot of an element (or None)."""

    def __init__(self, bind: Callable[[int, DataElement], Hashable | None],
                 forbidden: frozenset[str]) -> None:
        self.bind = bind
        self.forbidden = forbidden
        self.refused = False

    def dataset(self, ds: Dataset, parent: Any, depth: int) -> list[Part]:
        encodings = ds.get("SpecificCharacterSet", parent)
        parts: list[Part] = []
        for tag in sorted(ds.keys()):
            if tag.element == 0 and tag.group > 6:
                continue
            elem = ds[tag]
            name = self.bind(depth, elem)
            if name is not None:
                parts.append(_Slot(name, int(tag), str(elem.VR), encodings))
            elif elem.VR == "SQ":
                parts.append(self.sequence(elem, encodings, depth))
            else:
                value = elem.value
                text = value if isinstance(value, str) else str(value)
                if any(u in text for u in self.forbidden):
                    self.refused = True  # a per-study value inside a constant
                parts.append(_encode(elem, encodings))
        return _merge(parts)

    def sequence(self, elem: DataElement, encodings: Any, depth: int) -> Part:
        items = tuple((self.dataset(item, encodings, depth + 1),
                       bool(getattr(item, "is_undefined_length_sequence_item", False)))
                      for item in elem.value)
        seq = _Seq(struct.pack("<HH", elem.tag.group, elem.tag.element) + b"SQ\x00\x00",
                   items, bool(elem.is_undefined_length))
        if all(isinstance(p, bytes) for parts, _ in items for p in parts):
            return _render([seq], {})
        return seq


def _render(parts: Sequence[Part], values: dict[Hashable, Any]) -> bytes:
    out: list[bytes] = []
    for p in parts:
        if isinstance(p, bytes):
            out.append(p)
        elif isinstance(p, _Slot):
            out.append(_encode_slot(p, values[p.name]))
        else:
            body = []
            for item_parts, undefined in p.items:
                content = _render(item_parts, values)
                if undefined:
                    body.append(_ITEM + b"\xff\xff\xff\xff" + content + _ITEM_END + b"\0\0\0\0")
                else:
                    body.append(_ITEM + struct.pack("<I", len(content)) + content)
            value = b"".join(body)
            if p.undefined:
                out.append(p.head + b"\xff\xff\xff\xff" + value + _SEQ_END + b"\0\0\0\0")
            else:
                out.append(p.head + struct.pack("<I", len(value)) + value)
    return b"".join(out)


@dataclass(frozen=True)
class _Template:
    preamble: bytes
    """The 128-byte preamble, ``DICM`` and the meta group length's tag, VR and length."""
    meta: list[Part]
    """The file meta elements after the group length."""
    parts: list[Part]


def _values(score: StudyScore, scored: Sequence[Dataset], uids: dict[str, str]
            ) -> dict[Hashable, Any]:
    """Return the slot values of a score (``uids``: the SR's series, instance, tracking UIDs)."""
    when = score.scored_at.astimezone(UTC)
    day, clock = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    p = score.study_probability
    decision = _DECISIONS[score.positive]
    values: dict[Hashable, Any] = {
        "day": day, "clock": clock, "datetime": f"{day}{clock}+0000",
        "ds": DS(p, auto_format=True), "fd": p, ("uid", "study"): score.study.study_uid,
        ("decision", _CODE_VALUE): decision.value, ("decision", _CODE_MEANING): decision.meaning,
        **{("uid", k): v for k, v in uids.items()}}
    series: dict[str, int] = {}
    for i, ds in enumerate(scored):
        values[("uid", "sop", i)] = str(ds.SOPInstanceUID)
        s = str(ds.get("SeriesInstanceUID", ""))
        values.setdefault(("uid", "series", series.setdefault(s, len(series))), s)
    first = scored[0]
    for tag in _copied_tags(str(first.SOPClassUID)):
        if tag in first:
            values[("src", tag)] = first[tag]
    for tag in _EQUIPMENT_TAGS:
        if _filled(first, tag):
            values[("equip", tag)] = first[tag].value
    return values


def _filled(ds: Dataset, tag: int) -> bool:
    """Whether ``ds`` has a non-empty ``tag`` (an empty one is part of the shape, not a slot)."""
    if tag not in ds:
        return False
    value = ds[tag].value
    return value is not None and len(value) > 0


def _variant(score: StudyScore, scored: Sequence[Dataset]) -> tuple[StudyScore, list[Dataset]]:
    """Return the same shape with every value slot changed (decision, probability, equipment).

    Used to check a compiled template against a second highdicom build.
    """
    flipped = replace(score, probability=np.full_like(score.probability,
                                                      0.25 if score.positive else 0.75),
                      threshold=0.5)
    first = Dataset()  # a new header over the same elements, but the equipment's
    for element in scored[0]:
        first.add(element)
    for i, tag in enumerate(_EQUIPMENT_TAGS):
        if _filled(first, tag):  # a new element: the source's stays as it is
            old = first[tag]
            first.add_new(tag, old.VR, f"check {i}{'x' * (3 - len(str(old.value)) % 3)}")
    return flipped, [first, *scored[1:]]


def _compile_meta(sr: Dataset, sop_uid: str) -> tuple[bytes, list[Part]]:
    """Compile the file meta group as pydicom writes it: its group length's head, the parts.

    The group length's value (4 bytes) is left out: :meth:`SRTemplates.render` puts the
    length of the rendered elements there (PS3.10 7.1).
    """
    meta = FileMetaDataset(sr.file_meta)
    meta.MediaStorageSOPInstanceUID = sop_uid
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta, enforce_standard=True)  # type: ignore[arg-type]
    written = fp.getvalue()  # ``meta`` now holds what the writer added
    if "FileMetaInformationGroupLength" in meta:
        del meta.FileMetaInformationGroupLength
    parts = _Compiler(lambda depth, elem: "meta_sop" if int(elem.tag) == _MEDIA_SOP else None,
                      frozenset()).dataset(meta, "iso8859", 0)
    return written[:8], parts


class SRTemplates:
    """Compiled SR templates by shape (at most ``capacity``, least recently used dropped).

    Parameters
    ----------
    capacity : int, optional
        Shapes kept (a site has a handful: models x roles x decisions x scanners).
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._templates: OrderedDict[Hashable, _Template | None] = OrderedDict()
        self.hits = 0
        self.compiled = 0
        self.refused = 0

    def render(self, key: Hashable, score: StudyScore, scored: Sequence[Dataset],
               uids: dict[str, str]) -> bytes | None:
        """Return the SR's Part 10 bytes from the shape's template, or None (build it instead)."""
        template = self._templates.get(key)
        if template is None:
            return None
        self._templates.move_to_end(key)
        self.hits += 1
        values = _values(score, scored, uids)
        meta = _render(template.meta, {"meta_sop": uids["sop"]})
        return (template.preamble + struct.pack("<I", len(meta)) + meta
                + _render(template.parts, values))

    def known(self, key: Hashable) -> bool:
        """Whether ``key`` was compiled (or refused) already."""
        return key in self._templates

    def learn(self, key: Hashable, sr: Dataset, data: bytes, score: StudyScore,
              scored: Sequence[Dataset], uids: dict[str, str],
              build: Callable[[StudyScore, Sequence[Dataset]], bytes]) -> bool:
        """Compile ``sr`` (encoded as ``data`` by highdicom + pydicom) as the shape's template.

        ``build``: highdicom + pydicom's bytes of a score's SR (for the second check).
        Returns whether the template renders ``data`` and ``build``'s SR of
        :func:`_variant` byte for byte (else the shape is marked as not templated:
        highdicom builds each of its SRs).
        """
        values = _values(score, scored, uids)
        by_uid: dict[str, Hashable] = {}
        for name, v in values.items():
            if isinstance(name, tuple) and name[0] == "uid":
                if str(v) in by_uid:
                    return self._keep(key, None)
                by_uid[str(v)] = name
        src = {name[1] for name in values if isinstance(name, tuple) and name[0] == "src"}

        decision = values[("decision", _CODE_VALUE)], values[("decision", _CODE_MEANING)]

        def bind(depth: int, elem: DataElement) -> Hashable | None:
            tag = int(elem.tag)
            if depth == 0 and tag in src:
                return ("src", tag)
            if depth > 0 and values.get(("equip", tag), _NONE) == elem.value:
                return ("equip", tag)  # the source's equipment item, not vigil's own
            if (tag, elem.value) in ((_CODE_VALUE, decision[0]), (_CODE_MEANING, decision[1])):
                return ("decision", tag)
            if depth == 0 and tag in _ROOT_DATES:
                return "day"
            if depth == 0 and tag in _ROOT_TIMES:
                return "clock"
            if tag == _CONTRIBUTION_DT:
                return "datetime"
            if tag == _NUMERIC_VALUE:
                return "ds"
            if tag == _FLOAT_VALUE:
                return "fd"
            if elem.VR == "UI" and isinstance(elem.value, str):
                return by_uid.get(elem.value)
            return None

        compiler = _Compiler(bind, frozenset(by_uid))
        parts = compiler.dataset(sr, "iso8859", 0)
        if compiler.refused:
            return self._keep(key, None)
        head, meta = _compile_meta(sr, uids["sop"])
        self._templates[key] = _Template(bytes(data[:132]) + head, meta, parts)
        ok = self.render(key, score, scored, uids) == data
        if ok:
            other, other_scored = _variant(score, scored)
            ok = self.render(key, other, other_scored, uids) == build(other, other_scored)
            self.hits -= 1
        self.hits -= 1
        return self._keep(key, self._templates[key] if ok else None)

    def _keep(self, key: Hashable, template: _Template | None) -> bool:
        self._templates[key] = template
        self._templates.move_to_end(key)
        if template is None:
            self.refused += 1
        else:
            self.compiled += 1
        while len(self._templates) > self.capacity:
            self._templates.popitem(last=False)
        return template is not None
