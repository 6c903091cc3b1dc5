"""An imaging score as a DICOM Comprehensive SR (TID 1500), stored back into its study.

:func:`build_sr` turns one model's score of one study into a highdicom
``ComprehensiveSR`` (SOP Class 1.2.840.10008.5.1.4.1.1.88.33) whose content is a TID 1500
Measurement Report (PS3.16 A.35.1):

- observation context: the device observer vigil (TID 1004: name ``vigil``, model
  ``<model name> <version>``, a UID derived from them);
- procedure reported: SNOMED CT 399208008 "Plain X-ray of chest";
- one TID 1501 Measurements and Qualitative Evaluations group: tracking identifier
  ``vigil pneumonia assessment`` (deterministic tracking UID), finding type Pneumonia
  (SNOMED CT 233604007), the algorithm (TID 4019: model name and version), the scored
  instances as source images, a qualitative evaluation Pneumonia = Present (SNOMED
  CT 52101004) or Absent (272519000) from the site-calibrated decision, and a
  measurement DCM 122157 "Probability" (UCUM ``1``) of the study probability (the
  highest of its scored images, after site calibration).

It lands in the scored study (same StudyInstanceUID and Patient/Study modules, copied
from the scored instances) in its own series: Modality ``SR``, Manufacturer
:data:`OWN_MANUFACTURER`, SeriesDescription :data:`SERIES_DESCRIPTION`, completion
COMPLETE, verification UNVERIFIED, preliminary flag PRELIMINARY (a computer result no
one has verified). Series and SOP Instance UIDs are ``2.25.<uuid5>`` (PS3.5 B.2,
:func:`~vigil.dicom_adapter.scanners.deterministic_uid`) of site, model name, model
version, role and StudyInstanceUID, and every date and time (content, series,
instance creation, contribution) is the scoring time in UTC (TimezoneOffsetFromUTC
``+0000``): the same score gives the same bytes, a PACS keeps the first copy of a SOP
Instance UID, so writing again is a no-op, and a new model version writes a new SR.

:func:`is_own_output` recognises these SRs from header tags alone (a dataset,
keyword tags such as Orthanc's ``MainDicomTags``, or DICOM JSON), so that a source or
the imaging cycle skips them when the PACS reports the study again.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import TYPE_CHECKING

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from vigil.core.errors import DataError, ScoringError
from vigil.dicom_adapter.light_dataset import as_dataset
from vigil.dicom_adapter.own_output import OWN_MANUFACTURER, is_own_output
from vigil.dicom_adapter.scanners import deterministic_uid
from vigil.dicom_adapter.sr_template import SRTemplates, shape_key

if TYPE_CHECKING:
    from vigil.dicom_adapter.light_dataset import HeaderView
    from vigil.runtime.study_contracts import StudyScore

__all__ = [
    "OWN_MANUFACTURER",
    "SERIES_DESCRIPTION",
    "SRStudySink",
    "build_sr",
    "is_own_output",
    "sr_bytes",
    "sr_uids",
]

SERIES_DESCRIPTION = "vigil AI pneumonia assessment"
"""SeriesDescription of the active model's SR (a shadow model's adds `` (shadow)``)."""
SERIES_NUMBERS = {"active": 9901, "shadow": 9902}
"""SeriesNumber by role (high, so the SR sorts after the acquired series)."""
PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
CHEST_XRAY = Code("399208008", "SCT", "Plain X-ray of chest")
TRACKING_NAME = "vigil pneumonia assessment"
_TYPE2_COPIED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                 "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")
"""Type 2 Patient / General Study attributes highdicom reads from the first source."""


def sr_uids(*, site: str, study_uid: str, model_name: str, model_version: str,
            role: str) -> tuple[str, str]:
    """Return the deterministic ``(SeriesInstanceUID, SOPInstanceUID)`` of a score's SR."""
    parts = ("sr", site, model_name, model_version, role, study_uid)
    return str(deterministic_uid(*parts, "series")), str(deterministic_uid(*parts, "instance"))


def _tracking_uid(score: StudyScore, site: str) -> str:
    return str(deterministic_uid("sr-tracking", site, score.model_name, score.model_version,
                                 score.role, score.study.study_uid))


def _quiet_highdicom() -> None:
    """Keep highdicom's INFO/WARNING records (they quote SOP Instance UIDs and patient names)."""
    logging.getLogger("highdicom").setLevel(logging.ERROR)


def _scored_sources(score: StudyScore, sources: Sequence[Dataset | HeaderView]) -> list[Dataset]:
    by_uid = {str(ds.get("SOPInstanceUID", "")): ds for ds in sources}
    missing = [u for u in score.sop_instance_uids if u not in by_uid]
    if missing:
        raise DataError(f"expected a source instance for each of the "
                        f"{len(score.sop_instance_uids)} scored instances, {len(missing)} missing")
    scored = [as_dataset(by_uid[u]) for u in score.sop_instance_uids]
    other = sum(str(ds.get("StudyInstanceUID", "")) != score.study.study_uid for ds in scored)
    if other:
        raise DataError(f"expected every scored instance in the scored study, got {other} "
                        "from another study")
    absent = [k for k in _TYPE2_COPIED if k not in scored[0]]
    if absent:  # Type 2 may be absent from a sloppy producer: the SR gets them empty
        first = Dataset()  # a new header (Dataset.copy shares the caller's elements)
        for element in scored[0]:
            first.add(element)
        for keyword in absent:
            setattr(first, keyword, "")
        scored[0] = first
    return scored


def _checked(score: StudyScore, sources: Sequence[Dataset | HeaderView]) -> list[Dataset]:
    """Check a score for an SR and return its scored instances (see :func:`build_sr`)."""
    if not score.sop_instance_uids:
        raise DataError("expected at least one scored instance for a DICOM SR, got none "
                        "(every instance of the study was quarantined)")
    p, threshold = score.study_probability, score.threshold
    if not (math.isfinite(p) and 0.0 <= p <= 1.0 and math.isfinite(threshold)
            and 0.0 <= threshold <= 1.0):
        raise ScoringError(f"expected a study probability and threshold in [0, 1], got {p!r} "
                           f"and {threshold!r}")
    if score.scored_at.tzinfo is None:
        raise DataError("expected a tz-aware scoring time, got a naive one")
    return _scored_sources(score, sources)


def _content(score: StudyScore, scored: Sequence[Dataset], *, site: str,
             probability: float) -> Dataset:
    """Build the TID 1500 content tree (the root CONTAINER) of a score."""
    algorithm = hd.sr.AlgorithmIdentification(name=score.model_name,
                                              version=score.model_version,
                                              manufacturer=OWN_MANUFACTURER)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_tracking_uid(score, site),
            identifier=TRACKING_NAME),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        source_images=[hd.sr.SourceImageForMeasurementGroup(str(ds.SOPClassUID),
                                                            str(ds.SOPInstanceUID))
                       for ds in scored],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(
            PNEUMONIA, codes.SCT.Present if score.positive else codes.SCT.Absent)],
        measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=probability,
                                        unit=codes.UCUM.NoUnits, algorithm_id=algorithm)],
    )
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(deterministic_uid("sr-device", score.model_name, score.model_version)),
            name=OWN_MANUFACTURER, manufacturer_name=OWN_MANUFACTURER,
            model_name=f"{score.model_name} {score.model_version}"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=CHEST_XRAY, imaging_measurements=[group],
        title=codes.cid7021.ImagingMeasurementReport)
    root: Dataset = report[0]
    return root


def build_sr(score: StudyScore, sources: Sequence[Dataset | HeaderView], *, site: str,
             institution_name: str | None = None) -> hd.sr.ComprehensiveSR:
    """Build the Comprehensive SR (TID 1500) of one study's score.

    Parameters
    ----------
    score : StudyScore
        One model's score of one study, with at least one scored instance
        (probabilities of shape (n_scored,)).
    sources : sequence of pydicom.Dataset
        The study's instances; those of ``score.sop_instance_uids`` are referenced
        (in that order), and the first gives the Patient and Study modules.
    site : str
        The site's id (part of the UIDs).
    institution_name : str, optional
        InstitutionName of the SR (the site's name as its PACS shows it).

    Returns
    -------
    highdicom.sr.ComprehensiveSR

    Raises
    ------
    ScoringError
        If the study probability or threshold is not a number in [0, 1].
    DataError
        If no instance was scored, a scored instance is missing from ``sources`` or
        belongs to another study, or the instances lack what the SR copies.
    """
    scored = _checked(score, sources)
    when = score.scored_at.astimezone(UTC)
    day, clock = when.strftime("%Y%m%d"), when.strftime("%H%M%S.%f")
    series_uid, sop_uid = sr_uids(site=site, study_uid=score.study.study_uid,
                                  model_name=score.model_name,
                                  model_version=score.model_version, role=score.role)
    shadow = "" if score.role == "active" else f" ({score.role})"
    _quiet_highdicom()
    try:
        sr = hd.sr.ComprehensiveSR(
            evidence=scored, content=_content(score, scored, site=site,
                                                     probability=score.study_probability),
            series_instance_uid=series_uid,
            series_number=SERIES_NUMBERS.get(score.role, 9903), sop_instance_uid=sop_uid,
            instance_number=1, manufacturer=OWN_MANUFACTURER, is_complete=True,
            is_final=False, is_verified=False, institution_name=institution_name,
            series_description=SERIES_DESCRIPTION + shadow,
            manufacturer_model_name=f"{score.model_name} {score.model_version}"[:64],
            software_versions=score.model_version[:64], content_date=day, content_time=clock,
            series_date=day, series_time=clock)
    except (AttributeError, KeyError) as exc:
        raise DataError(f"the scored instances lack an attribute the SR copies from them "
                        f"({type(exc).__name__}: {exc})") from exc
    except (TypeError, ValueError) as exc:  # messages may quote patient values
        raise DataError(f"could not build the DICOM SR ({type(exc).__name__}); check the scored "
                        "instances' Patient and Study modules and the model name and version "
                        "(at most 64 characters)") from exc
    sr.InstanceCreationDate, sr.InstanceCreationTime = day, clock
    sr.TimezoneOffsetFromUTC = "+0000"
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = f"{day}{clock}+0000"
    return sr


def sr_bytes(sr: Dataset) -> bytes:
    """Serialize an SR as DICOM Part 10 bytes (preamble, file meta, dataset)."""
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class SRStudySink:
    """Stores each study's score as a DICOM SR through ``store`` (idempotent by UID).

    As the sepsis write-back, only the active model's scores are written unless
    ``include_shadow`` (then in their own series, SeriesDescription ending
    `` (shadow)``). A score with no scored instance writes nothing (the runtime
    records the quarantine reasons; the FHIR report says the assessment failed).

    Parameters
    ----------
    store : callable of bytes
        Sends one Part 10 instance to the PACS (e.g. ``OrthancClient.store``); a PACS
        that already holds the SOP Instance UID keeps its copy.
    site : str
        The site's id (part of the UIDs).
    institution_name : str, optional
        InstitutionName written in the SR.
    include_shadow : bool, optional
        Also write shadow models' scores (default False).
    background : bool, optional
        Store from a worker thread (:class:`~vigil.runtime.write_behind.WriteBehind`)
        while the caller goes on; :meth:`end_page` waits for the stores and names the
        studies whose store failed (default False: :meth:`write` stores before it
        returns).
    """

    name = "dicom-sr"

    def __init__(self, store: Callable[[bytes], None], *, site: str,
                 institution_name: str | None = None, include_shadow: bool = False,
                 background: bool = False) -> None:
        from vigil.runtime.write_behind import WriteBehind

        self.store = store
        self.site = site
        self.institution_name = institution_name
        self.include_shadow = include_shadow
        self._behind = WriteBehind(store, name="vigil-sr-store") if background else None
        self.templates = SRTemplates()
        """Compiled SRs by shape (:mod:`vigil.dicom_adapter.sr_template`)."""

    def __repr__(self) -> str:
        return f"SRStudySink(include_shadow={self.include_shadow})"

    def encode(self, score: StudyScore, sources: Sequence[Dataset | HeaderView]) -> bytes | None:
        """Return the Part 10 bytes :meth:`write` stores for ``score`` (None: nothing to write).

        The bytes are :func:`sr_bytes` of :func:`build_sr`; the first SR of each shape is
        built so, later ones are rendered from its compiled template (the same bytes).
        """
        if (score.role != "active" and not self.include_shadow) or not score.sop_instance_uids:
            return None
        scored = _checked(score, sources)
        series_uid, sop_uid = sr_uids(site=self.site, study_uid=score.study.study_uid,
                                      model_name=score.model_name,
                                      model_version=score.model_version, role=score.role)
        uids = {"series": series_uid, "sop": sop_uid, "tracking": _tracking_uid(score, self.site)}
        key = shape_key(score, scored)
        data = self.templates.render(key, score, scored, uids)
        if data is None:
            sr = build_sr(score, sources, site=self.site, institution_name=self.institution_name)
            data = sr_bytes(sr)
            if not self.templates.known(key):
                self.templates.learn(key, sr, data, score, scored, uids, build=self._build)
        return data

    def _build(self, score: StudyScore, sources: Sequence[Dataset | HeaderView]) -> bytes:
        """Highdicom + pydicom's bytes of a score's SR (the template's reference)."""
        return sr_bytes(build_sr(score, sources, site=self.site,
                                 institution_name=self.institution_name))

    def write(self, score: StudyScore, sources: Sequence[Dataset | HeaderView]) -> None:
        """Encode the SR of ``score`` and store it (errors of ``store`` propagate).

        In the background (``background=True``) the store is queued and its error is
        reported by :meth:`end_page`; an error encoding the SR still raises here.
        """
        data = self.encode(score, sources)
        if data is None:
            return
        if self._behind is None:
            self.store(data)
        else:
            self._behind.submit(score.study.study_uid, data)

    def begin_page(self) -> None:
        """Wait for background stores left by a page that ended in an error (not reported)."""
        if self._behind is not None:
            self._behind.drain()

    def end_page(self) -> dict[str, str]:
        """Wait for the page's background stores; the failed ones' error types by study UID.

        The imaging cycle marks those studies for retry, as for a :meth:`write` that
        raised (empty without ``background``).
        """
        if self._behind is None:
            return {}
        return {uid: type(exc).__name__ for uid, exc in self._behind.drain().items()}

    def close(self) -> None:
        """Finish and stop the background stores (their failures are not reported)."""
        if self._behind is not None:
            self._behind.close()
