"""The one exception tree of vigil.

::

    VigilError
    ├── ConfigError            bad settings, options or arguments
    ├── DataError              input data does not have the expected shape or content
    ├── DICOMError             a DICOM instance cannot be turned into a model input (quarantined)
    ├── FHIRError
    │   ├── FHIRTransportError the server could not be reached or answered an error
    │   └── FHIRResourceError  a resource is malformed or cannot be mapped
    ├── PACSError              a PACS (Orthanc, DICOMweb) could not be reached or answered an error
    ├── ModelArtifactError     a model package or calibration record is missing, changed or unfit
    ├── ScoringError           inference failed
    ├── AggregationError       a federated round could not be aggregated
    ├── PrivacyBudgetError     a site refuses a run past its lifetime privacy budget
    └── NotFittedError         an estimator was used before ``fit`` (also a ``ValueError``)

Messages say what was expected, what came, and what to do. They never contain a
patient identifier: context that could identify a patient is never attached.
"""

from __future__ import annotations

__all__ = [
    "AggregationError",
    "ConfigError",
    "DICOMError",
    "DataError",
    "FHIRError",
    "FHIRResourceError",
    "FHIRTransportError",
    "ModelArtifactError",
    "NotFittedError",
    "PACSError",
    "PrivacyBudgetError",
    "ScoringError",
    "VigilError",
]


class VigilError(Exception):
    """Base class of every error vigil raises on purpose."""


class ConfigError(VigilError):
    """A setting, option or argument is invalid.

    Parameters
    ----------
    message : str
        What was expected, what came, and what to do.
    key : str or None, optional
        The name of the offending setting or option.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class DataError(VigilError):
    """Input data does not have the expected shape, columns or content.

    Parameters
    ----------
    message : str
        What was expected, what came, and what to do.
    source : str or None, optional
        The file or table the data came from.
    """

    def __init__(self, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class DICOMError(VigilError):
    """A DICOM instance cannot be turned into a model input; the message is the quarantine reason.

    Parameters
    ----------
    message : str
        What was expected and what came; never a patient identifier nor any
        value of the instance's Patient or Study identification attributes.
    attribute : str or None, optional
        The DICOM keyword at fault (``"PhotometricInterpretation"``, ...).
    """

    def __init__(self, message: str, *, attribute: str | None = None) -> None:
        super().__init__(message)
        self.attribute = attribute


class FHIRError(VigilError):
    """Base class of FHIR problems."""


class _RemoteError(VigilError):
    """A server could not be reached or answered with an error (keeps ``url``, ``status``)."""

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class FHIRTransportError(FHIRError, _RemoteError):
    """A FHIR server could not be reached or answered with an error.

    Parameters
    ----------
    message : str
        What happened; never contains a credential.
    url : str or None, optional
        The request URL without its query string.
    status : int or None, optional
        The HTTP status, when there was a response.
    """


class FHIRResourceError(FHIRError):
    """A FHIR resource is malformed or cannot be mapped to a clinical value.

    Parameters
    ----------
    message : str
        Why the resource was rejected (the quarantine reason).
    resource_type : str or None, optional
        The ``resourceType`` of the rejected resource.
    """

    def __init__(self, message: str, *, resource_type: str | None = None) -> None:
        super().__init__(message)
        self.resource_type = resource_type


class PACSError(_RemoteError):
    """A PACS (Orthanc's REST API, DICOMweb) could not be reached or answered with an error.

    Parameters
    ----------
    message : str
        What was expected and what came; never a credential, a UID or a patient identifier.
    url : str or None, optional
        The PACS base URL (never a resource path: paths carry UIDs).
    status : int or None, optional
        The HTTP status, when there was a response.
    """


class ModelArtifactError(VigilError):
    """A model package or calibration record is missing, changed, or does not fit.

    Parameters
    ----------
    message : str
        What was expected and what was found.
    path : str or None, optional
        The file that failed the check.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ScoringError(VigilError):
    """Inference failed or produced values that are not probabilities."""


class AggregationError(VigilError):
    """A federated round could not be aggregated.

    Parameters
    ----------
    message : str
        What was expected and what came.
    round_ : int or None, optional
        The round number.
    """

    def __init__(self, message: str, *, round_: int | None = None) -> None:
        super().__init__(message)
        self.round_ = round_


class PrivacyBudgetError(VigilError):
    """A site refuses a training run that would take it past its lifetime privacy budget.

    Parameters
    ----------
    message : str
        The budget, what is spent and what the run would spend.
    site : str or None, optional
        The refusing site's name (a hospital, never a patient).
    """

    def __init__(self, message: str, *, site: str | None = None) -> None:
        super().__init__(message)
        self.site = site


class NotFittedError(VigilError, ValueError):
    """An estimator was used before ``fit`` was called."""
