"""Colour DICOM (fundus cameras): read back through the colour chain, or quarantined."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian

from vigil.core.errors import DICOMError
from vigil.data.medmnist import load_medmnist
from vigil.dicom_adapter import Scanner, build_instance, prepare_batch, read_file
from vigil.dicom_adapter.colour import read_colour_image
from vigil.dicom_adapter.fundus import FundusCamera, build_fundus_instance, shift_colour
from vigil.dicom_adapter.sites import FUNDUS_SITES, assign_sites, site_inputs, write_sites
from vigil.imaging import ColourSpace, Photometric, colour_model_input

SECRETS = ("PAT-0042-SECRET", "Doe^Jane", "ACC-777-SECRET")
IMAGES = load_medmnist("retina-sample", "test").images[:8]
CAMERAS = {s.scanner.name: s.scanner for s in FUNDUS_SITES}


def roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def instance(camera: FundusCamera, i: int = 0) -> Dataset:
    ds = build_fundus_instance(IMAGES[i], camera, key=f"colour/{i}", rng=np.random.default_rng(i))
    ds.PatientID, ds.PatientName, ds.AccessionNumber = SECRETS
    return roundtrip(ds)


@pytest.mark.parametrize("name", list(CAMERAS))
def test_cameras_read_back_through_the_colour_chain(name):
    camera = CAMERAS[name]
    for i in range(len(IMAGES)):
        ds = instance(camera, i)
        image = read_colour_image(ds)
        acquired = shift_colour(IMAGES[i], camera, rng=np.random.default_rng(i))
        batch = prepare_batch([ds], channels=3)
        assert batch.accepted == (0,) and batch.inputs.shape == (1, 3, 28, 28)
        diff = np.abs(batch.inputs[0] - colour_model_input(acquired)) * 0.5 * 255  # in 8-bit levels
        if camera.storage == "jpeg-baseline":  # lossy: YBR_FULL_422, quality 90
            assert image.space is ColourSpace.YBR_FULL_422 and ds.LossyImageCompression == "01"
            assert diff.mean() < 3.0 and diff.max() < 24.0
        else:  # RGB, interleaved or by plane: exact
            assert image.space is ColourSpace.RGB and diff.max() < 1e-4
            assert int(ds.PlanarConfiguration) == (camera.storage == "rgb-planar")


def test_uncompressed_ybr_full_is_converted():
    ds = instance(CAMERAS["camera-a"])
    rgb = ds.pixel_array
    ds.PixelData = convert_color_space(rgb, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    image = read_colour_image(roundtrip(ds))
    assert image.space is ColourSpace.YBR_FULL
    got = prepare_batch([ds], channels=3).inputs[0]
    assert np.abs(got - colour_model_input(rgb)).max() <= 2 * 1.5 / 255


def test_grey_model_quarantines_colour_and_colour_model_quarantines_grey():
    colour = instance(CAMERAS["camera-a"])
    grey = roundtrip(build_instance(
        IMAGES[0][..., 1], Scanner("g", "CR", 8, Photometric.MONOCHROME2, 1.0, 0.0, 0.0, 255.0),
        key="grey/0"))
    batch = prepare_batch([colour, grey], channels=1, modalities=("CR", "XC"))
    assert batch.accepted == (1,)
    assert batch.quarantined == ((0, "expected PhotometricInterpretation MONOCHROME1 or "
                                  "MONOCHROME2 with 1 sample per pixel, got 'RGB' with 3"),)
    batch = prepare_batch([colour, grey], channels=3, modalities=("CR", "XC"))
    assert batch.accepted == (0,) and batch.inputs.shape == (1, 3, 28, 28)
    assert batch.quarantined == ((1, "expected PhotometricInterpretation RGB, YBR_FULL or "
                                  "YBR_FULL_422 with 3 samples per pixel, got 'MONOCHROME2' "
                                  "with 1"),)
    # by default each kind of model takes its own modalities only
    assert prepare_batch([colour], channels=1).quarantined[0][1] == \
        "expected Modality CR or DX, got 'XC'"
    assert prepare_batch([grey], channels=3).quarantined[0][1] == \
        "expected Modality OP or XC, got 'CR'"


def _set(**values):
    def change(ds):
        for key, value in values.items():
            setattr(ds, key, value)
    return change


CASES = {
    "palette": (_set(PhotometricInterpretation="PALETTE COLOR", SamplesPerPixel=1),
                "expected PhotometricInterpretation RGB, YBR_FULL or YBR_FULL_422 with 3 samples "
                "per pixel, got 'PALETTE COLOR' with 1"),
    "ybr_ict": (_set(PhotometricInterpretation="YBR_ICT"), "got 'YBR_ICT' with 3"),
    "16 bits": (_set(BitsAllocated=16, BitsStored=16, HighBit=15),
                "expected BitsAllocated 8, BitsStored 8 and PixelRepresentation 0 for a colour "
                "image, got 16, 16 and 0"),
    "planar 2": (_set(PlanarConfiguration=2), "expected PlanarConfiguration 0 or 1, got 2"),
    "frames": (_set(NumberOfFrames=2), "expected a single frame, got NumberOfFrames 2"),
    "modality": (_set(Modality="CT"), "expected Modality OP or XC, got 'CT'"),
    "no pixels": (lambda ds: delattr(ds, "PixelData"), "expected Pixel Data (7FE0,0010), got none"),
    "short pixels": (lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]),
                     "expected decodable pixel data, the Explicit VR Little Endian decoder failed"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rejected_colour_images_have_a_reason_and_no_identifier(case):
    change, reason = CASES[case]
    ds = instance(CAMERAS["camera-a"])
    change(ds)
    with pytest.raises(DICOMError) as info:
        read_colour_image(ds)
    assert reason in str(info.value)
    assert not any(secret in str(info.value) for secret in SECRETS)
    batch = prepare_batch([ds], channels=3)
    assert batch.accepted == () and reason in batch.quarantined[0][1]


def test_fundus_sites_skew_the_five_grades_and_write_labelled_folders(tmp_path):
    test = load_medmnist("retina-sample", "test")
    site = assign_sites(np.repeat(np.arange(5), 200), seed=0, sites=FUNDUS_SITES)
    for k in range(5):  # each grade dealt in the scheme's shares
        got = np.bincount(site[k * 200:(k + 1) * 200], minlength=3) / 200
        np.testing.assert_allclose(got, [s.shares[k] for s in FUNDUS_SITES], atol=0.005)
    written = write_sites(test.images[:30], test.labels[:30], tmp_path, split="test", seed=1)
    in_memory = site_inputs(test.images[:30], test.labels[:30], split="test", seed=1)
    assert [w.site for w in written] == list(CAMERAS) and sum(w.n for w in written) == 30
    for files, inputs in zip(written, in_memory, strict=True):
        with (files.folder / "labels.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        batch = prepare_batch((read_file(files.folder / f"{r['sop_instance_uid']}.dcm")
                               for r in rows), channels=3)
        assert inputs.quarantined == 0 and batch.quarantined == ()
        np.testing.assert_array_equal(inputs.inputs, batch.inputs)
        np.testing.assert_array_equal(inputs.labels, [int(r["label"]) for r in rows])
        assert files.positives == sum(int(r["label"]) > 0 for r in rows)
    again = write_sites(test.images[:30], test.labels[:30], tmp_path / "b", split="test", seed=1)
    first = sorted(written[1].folder.glob("*.dcm"))[0]
    assert first.read_bytes() == (again[1].folder / first.name).read_bytes()


def test_instances_pass_pydicom_validation(strict_reading=None):
    for camera in CAMERAS.values():
        ds = instance(camera)
        pydicom.dataset.validate_file_meta(ds.file_meta, enforce_standard=True)
        assert ds.file_meta.TransferSyntaxUID == (ExplicitVRLittleEndian if camera.storage !=
                                                  "jpeg-baseline" else "1.2.840.10008.1.2.4.50")


# Laterality (General Series, Type 2C) is empty in the Secondary Capture instance: the eye of
# a RetinaMNIST photograph is not known, which dciodvfy flags as a warning.
SC_WARNING = ("Warning - is only permitted to be empty when actually unknown; should be absent "
              "(not empty) if an unpaired body part, and have a value if a paired body part - "
              "attribute <Laterality>")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="needs dicom3tools' dciodvfy")
@pytest.mark.parametrize("name", list(CAMERAS))
def test_dciodvfy_finds_no_error(name, tmp_path):
    path = tmp_path / "x.dcm"
    camera = CAMERAS[name]
    build_fundus_instance(IMAGES[0], camera, key="v", rng=np.random.default_rng(0)).save_as(
        path, enforce_file_format=True)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    lines = (out.stdout + out.stderr).splitlines()
    problems = [line for line in lines if line.startswith(("Error", "Warning"))]
    assert problems == ([SC_WARNING] if camera.storage == "rgb-planar" else [])


def test_check_files_against_the_colour_chain(tmp_path):
    from vigil.dicom_adapter import check_files

    test = load_medmnist("retina-sample", "test")
    written = write_sites(test.images[:9], test.labels[:9], tmp_path, split="test", seed=0)
    colour = check_files([tmp_path], channels=3)
    grey = check_files([tmp_path])
    assert len(colour) == len(grey) == sum(w.n for w in written) == 9
    assert all(c.accepted for c in colour)
    assert {c.reason for c in grey} == {"expected Modality CR or DX, got 'XC'"}
