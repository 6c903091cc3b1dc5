"""The light reader equals pydicom's path: the same model inputs, the same quarantine reasons.

Every scanner variant the project writes (8/12/16 bits, MONOCHROME1/2, signed, negative
slope, VOI LUT Sequence, SIGMOID, Presentation LUT Shape, DX, explicit/RLE/JPEG-LS) is
read both ways from the same bytes; every broken instance of ``test_dicom_reading`` gets
the same reason; what the light reader does not handle falls back to pydicom.
"""

from __future__ import annotations

import io
import itertools
import re
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from test_dicom_reading import CASES, good

from vigil.core.errors import DICOMError
from vigil.dicom_adapter import Scanner, build_instance, prepare_batch, read_image
from vigil.dicom_adapter.dicomweb import MultipartPart, instances_from_parts
from vigil.dicom_adapter.light import light_uids, parse_light
from vigil.dicom_adapter.light_dataset import HeaderView, light_dataset
from vigil.dicom_adapter.light_pixels import light_pixels
from vigil.dicom_adapter.reading import display_parameters, read_image_bytes
from vigil.imaging import Photometric, PresentationShape, to_model_input
from vigil.imaging.histogram import INPUT_EDGES, N_BINS, input_histogram

RNG = np.random.default_rng(7)
IMAGE = RNG.integers(0, 256, size=(28, 28), dtype=np.uint8)


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _outcome(data: bytes, *, light: bool) -> tuple[str, object]:
    """('ok', model input) or ('quarantined', reason), by the light path or pydicom's."""
    ds = pydicom.dcmread(io.BytesIO(data))
    try:
        image = read_image_bytes(data, ds) if light else read_image(ds)
    except DICOMError as exc:
        return "quarantined", str(exc)
    return "ok", to_model_input(image.stored, image.params)


def _same(data: bytes) -> tuple[str, object]:
    light, general = _outcome(data, light=True), _outcome(data, light=False)
    assert light[0] == general[0], (light, general)
    if light[0] == "ok":
        np.testing.assert_array_equal(light[1], general[1])  # bit for bit
    else:
        assert light[1] == general[1]
    return light


def _rescale(bits: int, signed: bool) -> tuple[float, float, float, float]:
    """Slope, intercept and the displayed range [low, high] of a variant."""
    if bits == 16 and not signed:
        return -2.0, 70000.0, 1000.0, 5000.0  # negative slope, as site-c
    if signed:
        half = 1000.0 if bits == 16 else 2.0 ** (bits - 1)  # a VOI LUT under 64 kB
        return 1.0, 0.0, -half, half - 1
    return 1.0, 0.0, 0.0, 2.0 ** bits - 1


SCANNERS = [
    Scanner(f"v-{bits}-{photo.value[-1]}-{syntax}-{voi}-{'s' if signed else 'u'}", "CR", bits,
            photo, *_rescale(bits, signed), voi=voi, syntax=syntax, signed=signed)
    for bits, photo, syntax, voi, signed in itertools.product(
        (8, 12, 16), Photometric, ("explicit", "rle", "jpeg-ls"),
        ("linear_exact", "sigmoid", "voi_lut"), (False, True))
    if not (signed and syntax == "jpeg-ls")
] + [
    Scanner("dx-inverse", "DX", 12, Photometric.MONOCHROME2, 1.0, 0.0, 0.0, 4095.0,
            presentation_shape=PresentationShape.INVERSE, syntax="rle"),
    Scanner("dx-identity", "DX", 16, Photometric.MONOCHROME2, 1.0, 0.0, 0.0, 65535.0,
            presentation_shape=PresentationShape.IDENTITY, syntax="jpeg-ls"),
    Scanner("cr-inverse", "CR", 8, Photometric.MONOCHROME2, 1.0, 0.0, 0.0, 255.0,
            presentation_shape=PresentationShape.INVERSE),
]


@pytest.mark.parametrize("scanner", SCANNERS, ids=lambda s: s.name)
def test_every_scanner_variant_gives_the_same_model_input(scanner):
    data = _bytes(build_instance(IMAGE, scanner, key=f"light/{scanner.name}"))
    light = parse_light(data)
    signed_native_short = scanner.signed and scanner.bits_stored not in (8, 16)
    expect_light = not (scanner.signed and scanner.syntax != "explicit") \
        and not signed_native_short
    assert (light is not None and light_pixels(light) is not None) == expect_light
    assert _same(data)[0] == "ok"
    if light is not None:
        reference = read_image(pydicom.dcmread(io.BytesIO(data)))
        params = display_parameters(light.header)
        for name in ("bits_stored", "signed", "photometric", "slope", "intercept", "window",
                     "presentation_shape"):
            assert getattr(params, name) == getattr(reference.params, name)
        assert (params.voi_lut is None) == (reference.params.voi_lut is None)
        if params.voi_lut is not None:
            assert params.voi_lut.first_mapped == reference.params.voi_lut.first_mapped
            np.testing.assert_array_equal(params.voi_lut.data, reference.params.voi_lut.data)
        if expect_light:
            stored = light_pixels(light)
            assert stored.dtype == reference.stored.dtype
            np.testing.assert_array_equal(stored, reference.stored)


def _short_voi_lut(ds: Dataset) -> None:
    """CASES' short VOI LUT, with the VRs a file needs (US descriptor and data)."""
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [10, 0, 16])
    item.add_new("LUTData", "US", [1, 2, 3])
    ds.add_new("VOILUTSequence", "SQ", [item])


@pytest.mark.parametrize("scanner", SCANNERS[::5] + SCANNERS[-3:], ids=lambda s: s.name)
def test_light_dataset_equals_dcmread(scanner):
    ds = build_instance(IMAGE, scanner, key=f"light/ds/{scanner.name}")
    ds.PatientName = "Doe^Jane"
    ds.SpecificCharacterSet = "ISO_IR 100"
    data = _bytes(ds)
    light = parse_light(data)
    assert light is not None
    got, expected = light_dataset(light), pydicom.dcmread(io.BytesIO(data))
    assert got == expected  # every element, converted
    assert got.file_meta == expected.file_meta and got.preamble == expected.preamble
    assert got.original_encoding == expected.original_encoding
    assert got.original_character_set == expected.original_character_set
    np.testing.assert_array_equal(got.pixel_array, expected.pixel_array)


@pytest.mark.parametrize("case", list(CASES))
def test_broken_instances_get_the_same_reason(case):
    change, _ = CASES[case]
    ds = good()
    (_short_voi_lut if case == "short VOI LUT" else change)(ds)
    status, reason = _same(_bytes(ds))
    assert status == "quarantined", reason


def test_other_syntaxes_and_odd_values_fall_back_to_pydicom():
    base = good()
    implicit = good()
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    multi_text = good()
    multi_text.ImageType = ["ORIGINAL", "PRIMARY"]
    multi_text.Modality = "CR"
    odd_number = good()
    odd_number.RescaleSlope = " 0.5e0"
    for ds, light in [(base, True), (implicit, False), (odd_number, True)]:
        data = _bytes(ds)
        assert (parse_light(data) is not None) == light
        assert _same(data)[0] == "ok"
    # the light reader leaves what it cannot read as pydicom would: a modality of two values
    two = good()
    two.Modality = ["CR", "DX"]
    assert parse_light(_bytes(two)) is None
    _same(_bytes(two))
    # compressed files of other syntaxes, from pydicom's own test data
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small.dcm"):
        data = Path(get_testdata_file(name)).read_bytes()
        light = parse_light(data)
        ds = pydicom.dcmread(io.BytesIO(data))
        try:
            expected = read_image(ds, modalities=("MR", "CT"))
        except DICOMError as exc:
            with pytest.raises(DICOMError, match="^" + re.escape(str(exc))):
                read_image_bytes(data, ds, modalities=("MR", "CT"))
            continue
        got = read_image_bytes(data, ds, modalities=("MR", "CT"))
        np.testing.assert_array_equal(got.stored, expected.stored)
        assert got.stored.dtype == expected.stored.dtype
        if light is not None and light_pixels(light) is not None:
            assert name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm")


def test_truncated_and_garbage_bytes_are_left_to_pydicom():
    data = _bytes(good())
    assert parse_light(data[:200]) is None
    assert parse_light(b"\0" * 128 + b"DICM" + b"\xff" * 40) is None
    assert parse_light(b"not dicom") is None
    assert light_uids(b"not dicom") is None


def test_uids_of_wado_parts_match_pydicom():
    for scanner in SCANNERS:
        ds = build_instance(IMAGE, scanner, key=f"light/uids/{scanner.name}")
        data = _bytes(ds)
        assert light_uids(data) == (ds.SOPInstanceUID, ds.SeriesInstanceUID)
    no_series = build_instance(IMAGE, SCANNERS[0], key="light/uids/none")
    del no_series.SeriesInstanceUID
    assert light_uids(_bytes(no_series)) == (no_series.SOPInstanceUID, "")
    implicit = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
    part = MultipartPart({"content-type": "application/dicom"},
                         Path(get_testdata_file("MR_small_implicit.dcm")).read_bytes())
    (got,) = instances_from_parts([part])
    assert got.sop_instance_uid == implicit.SOPInstanceUID
    assert got.series_uid == implicit.SeriesInstanceUID


def test_prepare_batch_with_bytes_equals_without():
    datasets, raw = [], []
    for scanner in SCANNERS[:12]:
        data = _bytes(build_instance(IMAGE, scanner, key=f"batch/{scanner.name}"))
        raw.append(data)
        datasets.append(pydicom.dcmread(io.BytesIO(data)))
    broken = good()
    broken.Modality = "CT"
    raw.append(_bytes(broken))
    datasets.append(pydicom.dcmread(io.BytesIO(raw[-1])))
    views = [HeaderView(light) for light in map(parse_light, raw) if light is not None]
    assert len(views) == len(raw)
    fast = prepare_batch(views)
    slow = prepare_batch(datasets)
    assert fast.accepted == slow.accepted and fast.quarantined == slow.quarantined
    np.testing.assert_array_equal(fast.inputs, slow.inputs)
    decoded = [v for v in views if light_pixels(v.light) is not None]
    assert len(decoded) >= len(views) // 2
    assert all(v._ds is None for v in decoded)  # no pydicom dataset was needed


@pytest.mark.parametrize("scanner", SCANNERS[::5] + SCANNERS[-3:], ids=lambda s: s.name)
def test_released_pixels_leave_the_header_and_free_the_bytes(scanner):
    """After the chain: the view's dataset is ``dcmread``'s without Pixel Data, built from
    the header bytes alone (nothing of the instance's pixels held); pydicom's dataset
    drops the buffer ``dcmread`` read it from."""
    from vigil.dicom_adapter.light_dataset import release_pixels

    ds = build_instance(IMAGE, scanner, key=f"light/release/{scanner.name}")
    ds.TimezoneOffsetFromUTC = "+0100"
    data = _bytes(ds)
    light = parse_light(data)
    assert light is not None
    view = HeaderView(light)
    release_pixels(view)
    kept = view.light
    assert kept.pixels is None and len(kept.data) < len(data) - IMAGE.size // 2
    assert not any(isinstance(el.value, memoryview)
                   for el in (*kept.elements.values(), *kept.meta.values()))
    expected = pydicom.dcmread(io.BytesIO(data))
    del expected.PixelData
    assert view.get("PixelData") is None and "PixelData" not in view
    for keyword in ("StudyInstanceUID", "StudyDate", "StudyTime", "TimezoneOffsetFromUTC",
                    "Modality", "Manufacturer", "BitsStored", "PixelSpacing"):
        assert view.get(keyword) == expected.get(keyword), keyword
    assert view.Modality == expected.Modality and not hasattr(view, "PixelData")
    assert view._ds is None  # answered from the light header
    got = view.dataset
    assert got == expected and got.file_meta == expected.file_meta
    assert len(got.buffer.getvalue()) == len(kept.data)
    general = pydicom.dcmread(io.BytesIO(data))
    release_pixels(general)
    assert "PixelData" not in general and general.buffer is None


def test_an_element_after_the_pixels_keeps_the_dataset_whole_without_them():
    from vigil.dicom_adapter.light import header_only
    from vigil.dicom_adapter.light_dataset import release_pixels

    ds = good()
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 4)  # Data Set Trailing Padding, after Pixel Data
    data = _bytes(ds)
    light = parse_light(data)
    assert light is not None and header_only(light) is None
    view = HeaderView(light)
    release_pixels(view)
    assert "PixelData" not in view.dataset and view.dataset.buffer is None
    assert not view.light.data and view.light.pixels is None  # nothing of the bytes held
    assert view.get("Modality") == "CR" and view.get("PixelData") is None


def test_input_histogram_counts_as_searchsorted():
    edges = np.resize(INPUT_EDGES, 28 * 28).reshape(1, 28, 28)  # values on every edge
    x = np.concatenate([RNG.uniform(-1.2, 1.2, size=(5, 28, 28)), edges])
    got = input_histogram(x)
    flat = x.reshape(len(x), -1)
    idx = np.clip(np.searchsorted(INPUT_EDGES, flat, side="right") - 1, 0, N_BINS - 1)
    expected = np.stack([np.bincount(row, minlength=N_BINS) for row in idx])
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int64 and got.sum(axis=1).tolist() == [784] * 6


def _same_headers(data: bytes) -> bool:
    """The header record, the skip check and the key read through the view equal pydicom's."""
    from vigil.dicom_adapter.headers import header_record
    from vigil.runtime.imaging_cycle import skip_instance

    light = parse_light(data)
    assert light is not None
    view = HeaderView(light)
    ds = pydicom.dcmread(io.BytesIO(data))
    got, expected = header_record(view), header_record(ds)
    for keyword in ("StudyInstanceUID", "StudyDate", "StudyTime", "TimezoneOffsetFromUTC"):
        assert view.get(keyword) == ds.get(keyword), keyword
    assert repr(got) == repr(expected)  # NaN spacing compares equal this way
    assert skip_instance(view) == skip_instance(ds)
    assert skip_instance(view, modalities=("DX",)) == skip_instance(ds, modalities=("DX",))
    assert str(view.get("SOPInstanceUID", "")) == str(ds.SOPInstanceUID)
    assert view.get("NotAKeyword", "x") == "x" and "PatientID" in view
    return skip_instance(view)


@pytest.mark.parametrize("scanner", SCANNERS[::7] + SCANNERS[-3:], ids=lambda s: s.name)
def test_header_view_reads_as_pydicom(scanner):
    _same_headers(_bytes(build_instance(IMAGE, scanner, key=f"light/view/{scanner.name}")))


def test_header_view_leaves_odd_values_to_pydicom():
    latin = good()
    latin.SpecificCharacterSet = "ISO_IR 100"
    latin.Manufacturer = "Müller  Röntgen "  # non-ASCII, a double space
    latin.ManufacturerModelName = " leading"
    latin.PixelSpacing = ["0.139", "0.139"]
    light = parse_light(_bytes(latin))
    assert light is not None and "Manufacturer" not in light.header  # left to pydicom
    assert "PixelSpacing" in light.header
    _same_headers(_bytes(latin))
    own = good()
    own.Modality, own.Manufacturer = "SR", "vigil"
    own.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    assert _same_headers(_bytes(own))  # the runtime's own result: skipped both ways
    other = good()
    other.Modality, other.Manufacturer = "SR", "another vendor"
    assert _same_headers(_bytes(other))  # not an image: skipped both ways
    single = good()
    single.ImagerPixelSpacing = "0.2"  # one value: not a pair
    del single.Manufacturer
    assert not _same_headers(_bytes(single))


def _mutations(data: bytes, rng: np.random.Generator, n: int) -> list[bytes]:
    """Truncations, flipped bytes and overwritten 16/32-bit words (lengths, VRs, values)."""
    out = []
    for _ in range(n):
        kind, at = rng.integers(3), int(rng.integers(132, len(data)))
        if kind == 0:
            out.append(data[:at])
        elif kind == 1:
            out.append(data[:at] + bytes([data[at] ^ int(rng.integers(1, 256))]) + data[at + 1:])
        else:
            word = rng.choice([0, 1, 2, 0xFFFF, 0xFFFFFFFF, int(rng.integers(0, 2**32))])
            out.append(data[:at] + int(word).to_bytes(4, "little") + data[at + 4:])
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's on the damaged values
@pytest.mark.parametrize("scanner", SCANNERS[::7] + SCANNERS[-3:], ids=lambda s: s.name)
def test_damaged_instances_are_read_as_pydicom_reads_them_or_quarantined(scanner, tmp_path):
    """Fault injection into the runtime's reader (``read_instances``): never an exception.

    Each damaged instance is read from bytes (the light reader where it applies) and, for
    reference, from a file (pydicom only): the same verdict, the same model input or the
    same quarantine reason, and the same header record for the drift monitor.
    """
    from vigil.runtime.images import read_instances

    data = _bytes(build_instance(IMAGE, scanner, key=f"light/fuzz/{scanner.name}"))
    rng = np.random.default_rng(zlib.crc32(scanner.name.encode()))
    verdicts = set()
    for n, damaged in enumerate(_mutations(data, rng, 40)):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(damaged)
        light = read_instances([("k", damaged)], size=28)
        general = read_instances([("k", path)], size=28)
        assert light.keys == general.keys and light.quarantined == general.quarantined, n
        np.testing.assert_array_equal(light.inputs, general.inputs)
        assert light.headers == general.headers, n
        verdicts.add("ok" if light.keys else "quarantined")
    assert verdicts == {"ok", "quarantined"}  # damage both harmless and fatal was injected
