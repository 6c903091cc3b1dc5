"""The watched acquisition headers: read as they came, missing ones blank or NaN."""

from __future__ import annotations

import math

from pydicom.dataset import Dataset, FileMetaDataset

from vigil.dicom_adapter import HEADER_FIELDS, header_record


def test_header_record_reads_the_watched_attributes() -> None:
    ds = Dataset()
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "DX", "Acme", "X1"
    ds.BitsStored, ds.PhotometricInterpretation = 12, "MONOCHROME1"
    ds.ImagerPixelSpacing = [0.143, 0.143]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.70"
    r = header_record(ds)
    assert (r.modality, r.manufacturer, r.model_name, r.bits_stored, r.photometric) == (
        "DX", "Acme", "X1", 12, "MONOCHROME1")
    assert r.pixel_spacing_mm == 0.143 and r.transfer_syntax == "1.2.840.10008.1.2.4.70"
    assert HEADER_FIELDS[0] == "modality" and len(HEADER_FIELDS) == 7


def test_missing_headers_are_blank_not_errors() -> None:
    r = header_record(Dataset())
    assert r.manufacturer == "" and r.bits_stored == 0 and math.isnan(r.pixel_spacing_mm)
    assert r.transfer_syntax == ""
