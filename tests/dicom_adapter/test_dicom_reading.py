"""Reading DICOM into the chain: what is accepted, what is quarantined and why."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from vigil.core.errors import DICOMError
from vigil.dicom_adapter import Scanner, build_instance, prepare_batch, read_file, read_image
from vigil.imaging import Photometric, to_model_input, training_inputs

SECRETS = ("PAT-0042-SECRET", "Doe^Jane", "ACC-777-SECRET")
IMAGE = (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)
SCANNER = Scanner("t-12m1", "CR", 12, Photometric.MONOCHROME1, 0.5, -1024.0, -1000.0, 1000.0)


def good() -> Dataset:
    ds = build_instance(IMAGE, SCANNER, key="reading/0")
    ds.PatientID, ds.PatientName, ds.AccessionNumber = SECRETS
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def broken(change) -> Dataset:
    ds = good()
    change(ds)
    return ds


def multi_frame(ds):
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2


def rgb(ds):
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "RGB", 3


def voi_lut_short(ds):
    item = Dataset()
    item.LUTDescriptor, item.LUTData = [10, 0, 16], [1, 2, 3]
    ds.VOILUTSequence = Sequence([item])


def presentation_lut_sequence(ds):
    ds.PresentationLUTSequence = Sequence([Dataset()])


CASES = {
    "wrong modality": (
        lambda ds: setattr(ds, "Modality", "CT"),
        "expected Modality CR or DX, got 'CT'",
    ),
    "no pixel data": (
        lambda ds: delattr(ds, "PixelData"),
        r"expected Pixel Data \(7FE0,0010\), got none",
    ),
    "multi-frame": (
        multi_frame,
        "expected a single frame, got NumberOfFrames 2",
    ),
    "RGB": (
        rgb,
        "MONOCHROME1 or MONOCHROME2 with 1 sample per pixel, got 'RGB' with 3",
    ),
    "YBR": (
        lambda ds: setattr(ds, "PhotometricInterpretation", "YBR_FULL"),
        "got 'YBR_FULL'",
    ),
    "palette": (
        lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"),
        "got 'PALETTE COLOR'",
    ),
    "no window": (
        lambda ds: (delattr(ds, "WindowCenter"), delattr(ds, "WindowWidth")),
        "expected a VOI transform",
    ),
    "half a window": (
        lambda ds: delattr(ds, "WindowWidth"),
        "WindowCenter and WindowWidth together",
    ),
    "zero width": (
        lambda ds: setattr(ds, "WindowWidth", "0"),
        "Window Width > 0 for VOI LUT Function LINEAR_EXACT, got 0.0",
    ),
    "bad function": (
        lambda ds: setattr(ds, "VOILUTFunction", "LOG"),
        "LINEAR, LINEAR_EXACT or SIGMOID, got 'LOG'",
    ),
    "short VOI LUT": (
        voi_lut_short,
        r"expected 10 LUT entries in VOILUTSequence \(LUTDescriptor\), got 3",
    ),
    "zero slope": (
        lambda ds: setattr(ds, "RescaleSlope", "0"),
        "finite non-zero Rescale Slope",
    ),
    "contradictory shape": (
        lambda ds: setattr(ds, "PresentationLUTShape", "IDENTITY"),
        "INVERSE .or none. for MONOCHROME1, got IDENTITY",
    ),
    "presentation LUT sequence": (
        presentation_lut_sequence,
        "Presentation LUT Sequence .not supported.",
    ),
    "bits": (
        lambda ds: setattr(ds, "BitsStored", 17),
        "BitsAllocated 8 or 16",
    ),
    "truncated pixels": (
        lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]),
        "expected decodable pixel data, the Explicit VR Little Endian decoder failed",
    ),
    "wrong shape": (
        lambda ds: setattr(ds, "Rows", 27),
        "expected decodable pixel data|shape",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rejected_with_a_reason_and_no_identifier(case):
    change, reason = CASES[case]
    with pytest.raises(DICOMError, match=reason) as caught:
        read_image(broken(change))
    message = str(caught.value)
    assert not any(secret.lower() in message.lower() for secret in SECRETS)
    assert "\n" not in message


def test_accepted_instance_gives_the_training_input():
    image = read_image(good())
    assert image.params.photometric is Photometric.MONOCHROME1 and image.params.slope == 0.5
    got = to_model_input(image.stored, image.params)
    np.testing.assert_allclose(got, training_inputs(IMAGE[None])[0], atol=2 * 0.5 / 2000 * 2)


def test_prepare_batch_quarantines_and_keeps_going():
    no_pixels = broken(lambda ds: delattr(ds, "PixelData"))
    datasets = [good(), broken(rgb), good(), broken(multi_frame), no_pixels]
    batch = prepare_batch(datasets)
    assert batch.accepted == (0, 2)
    assert [position for position, _ in batch.quarantined] == [1, 3, 4]
    assert batch.inputs.shape == (2, 28, 28)
    assert "RGB" in batch.quarantined[0][1] and "NumberOfFrames 2" in batch.quarantined[1][1]
    assert repr(batch) == "PreparedBatch(accepted=2, quarantined=3)"


def test_real_files_of_other_kinds_are_quarantined():
    # pydicom's bundled test files: a CT, a palette US, a 15-frame RT dose.
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    palette = pydicom.dcmread(get_testdata_file("examples_palette.dcm"))
    dose = pydicom.dcmread(get_testdata_file("rtdose.dcm"))
    batch = prepare_batch([ct, palette, dose])
    assert batch.accepted == ()
    reasons = [r for _, r in batch.quarantined]
    assert "got 'CT'" in reasons[0] and "got 'US'" in reasons[1] and "got 'RTDOSE'" in reasons[2]
    with pytest.raises(DICOMError, match="got 'PALETTE COLOR'"):
        read_image(palette, modalities=("US",))
    with pytest.raises(DICOMError, match="NumberOfFrames 15"):
        read_image(dose, modalities=("RTDOSE",))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_reference_files_decode_bit_exact(name):
    reference = read_image(pydicom.dcmread(get_testdata_file("MR_small.dcm")), modalities=("MR",))
    other = read_image(pydicom.dcmread(get_testdata_file(name)), modalities=("MR",))
    np.testing.assert_array_equal(other.stored, reference.stored)
    assert other.params == reference.params


def test_read_file_errors_in_one_line(tmp_path):
    bad = tmp_path / "Doe^Jane.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(DICOMError, match="expected a DICOM Part 10 file") as caught:
        read_file(bad)
    assert "Doe" not in str(caught.value)
    path = tmp_path / "ok.dcm"
    good().save_as(path, enforce_file_format=True)
    assert read_image(read_file(path)).stored.shape == (28, 28)


def test_multiple_windows_use_the_first():
    ds = good()
    ds.WindowCenter, ds.WindowWidth = ["0", "500"], ["2000", "10"]
    assert read_image(ds).params.window.center == 0.0
    assert read_image(ds).params.window.width == 2000.0


def test_modality_lut_and_ow_voi_lut_are_read():
    ds = good()
    del ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType, ds.WindowCenter, ds.WindowWidth
    modality = Dataset()
    modality.LUTDescriptor, modality.ModalityLUTType = [4096, 0, 16], "US"
    modality.LUTData = (np.arange(4096) * 2).tolist()  # modality value = 2 * stored
    ds.ModalityLUTSequence = Sequence([modality])
    voi = Dataset()
    voi.LUTDescriptor = [8191, 0, 16]
    voi.add_new("LUTData", "OW", np.rint(np.arange(8191) / 8190 * 65535).astype("<u2").tobytes())
    ds.VOILUTSequence = Sequence([voi])
    image = read_image(ds)
    assert image.params.modality_lut is not None and image.params.voi_lut.data.size == 8191
    shown = (to_model_input(image.stored, image.params) + 1.0) / 2.0
    np.testing.assert_allclose(shown, 1.0 - (2.0 * image.stored) / 8190, atol=1e-4)  # MONOCHROME1
