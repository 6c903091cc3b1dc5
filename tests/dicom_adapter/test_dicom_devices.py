"""The shared base of simulated scanners and fundus cameras."""

import numpy as np
import pytest

from vigil.core.errors import ConfigError
from vigil.dicom_adapter.devices import SimulatedDevice, code_item
from vigil.dicom_adapter.fundus import FundusCamera, shift_colour
from vigil.dicom_adapter.scanners import Scanner, encode_stored
from vigil.imaging import Photometric


def test_scanner_and_camera_share_one_device_definition():
    scanner = Scanner("s", "CR", 8, Photometric.MONOCHROME2, 1.0, 0.0, 0.0, 255.0, noise=0.1)
    camera = FundusCamera("c", "rgb", noise=0.1)
    assert isinstance(scanner, SimulatedDevice) and isinstance(camera, SimulatedDevice)
    assert (scanner.kind, camera.kind) == ("scanner", "camera")
    with pytest.raises(TypeError):
        Scanner("s", "CR", 8, Photometric.MONOCHROME2, 1.0, 0.0, 0.0, 255.0,
                "linear_exact", None, "explicit", False, 1.0, 1.0)  # gamma is keyword-only


def test_add_noise_draws_the_same_gaussian_for_both_devices():
    p = np.full((4, 5), 0.5)
    expected = p + np.random.default_rng(3).normal(0.0, 0.05, size=p.shape)
    for device in (SimulatedDevice("d", noise=0.05), FundusCamera("c", noise=0.05)):
        np.testing.assert_array_equal(device.add_noise(p, np.random.default_rng(3)), expected)
    assert SimulatedDevice("d").add_noise(p, None) is p


def test_noise_without_rng_names_the_device_kind():
    with pytest.raises(ConfigError, match="camera 'c' adds noise: pass a seeded rng"):
        shift_colour(np.zeros((2, 2, 3), np.uint8), FundusCamera("c", noise=0.1))
    scanner = Scanner("s", "CR", 8, Photometric.MONOCHROME2, 1.0, 0.0, 0.0, 255.0, noise=0.1)
    with pytest.raises(ConfigError, match="scanner 's' adds noise: pass a seeded rng"):
        encode_stored(np.zeros((2, 2)), scanner)


def test_code_item_carries_the_three_code_attributes():
    item = code_item("81745001", "SCT", "Eye")
    assert (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning) == (
        "81745001", "SCT", "Eye")
