"""The DICOM adapter: instances → pixel-chain inputs (with quarantine), simulated scanner sites.

Adapter layer beside :mod:`vigil.fhir_adapter`: imports :mod:`vigil.core`,
:mod:`vigil.imaging`, :mod:`vigil.data` and pydicom; never torch.

- :mod:`~vigil.dicom_adapter.reading`: :func:`read_image` (a dataset → stored values +
  :class:`~vigil.imaging.DisplayParameters`, or a :class:`~vigil.core.errors.DICOMError`
  whose message is the quarantine reason), :func:`read_file`;
- :mod:`~vigil.dicom_adapter.batches`: :func:`prepare_batch` (a batch → model inputs of the
  accepted instances, reasons for the others), :func:`check_files` (``vigil imaging check``);
- :mod:`~vigil.dicom_adapter.headers`: :func:`header_record` (what the drift monitor watches);
- :mod:`~vigil.dicom_adapter.scanners`: :class:`Scanner`, :func:`build_instance` (real CR
  / DX instances), :func:`missing_required` (Type 1 / Type 2 check); with
  :mod:`~vigil.dicom_adapter.fundus` (colour cameras), on the shared
  :class:`~vigil.dicom_adapter.devices.SimulatedDevice`;
- :mod:`~vigil.dicom_adapter.sites`: the scanner-site scheme and :func:`write_sites`;
- :mod:`~vigil.dicom_adapter.parity`: the parity variants, negative controls and stand-in scorer.
- :mod:`~vigil.dicom_adapter.sr` (imported on its own: it loads highdicom): the imaging
  write-back as a DICOM Comprehensive SR (TID 1500), :class:`~vigil.dicom_adapter.sr.SRStudySink`
  and :func:`~vigil.dicom_adapter.sr.is_own_output`.
- :mod:`~vigil.dicom_adapter.orthanc`: :class:`OrthancClient` and :class:`OrthancSource`
  (the PACS: change feed, WADO-RS, store), with :mod:`~vigil.dicom_adapter.dicomweb`
  (multipart parsing), :mod:`~vigil.dicom_adapter.send` (``vigil imaging send``) and
  :mod:`~vigil.dicom_adapter.orthanc_local` (a private Orthanc for tests, bench, demo).
  Not imported here: they use httpx and the runtime's study contracts; import them by
  module.

See ``docs/imaging.md``.
"""

from vigil.dicom_adapter.batches import FileCheck, PreparedBatch, check_files, prepare_batch
from vigil.dicom_adapter.headers import HEADER_FIELDS, HeaderRecord, header_record
from vigil.dicom_adapter.reading import ACCEPTED_MODALITIES, DicomImage, read_file, read_image
from vigil.dicom_adapter.scanners import Scanner, build_instance, missing_required

__all__ = [
    "ACCEPTED_MODALITIES",
    "HEADER_FIELDS",
    "DicomImage",
    "FileCheck",
    "HeaderRecord",
    "PreparedBatch",
    "Scanner",
    "build_instance",
    "check_files",
    "header_record",
    "missing_required",
    "prepare_batch",
    "read_file",
    "read_image",
]
