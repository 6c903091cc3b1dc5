"""The ``[imaging]`` section of ``site.toml``: the imaging source, its model and its write-back.

Part of :class:`vigil.runtime.settings.VigilSettings` (built once with the rest,
``VIGIL_IMAGING__...`` overrides). Example::

    [imaging]
    enabled = true
    source = "folder"                  # or "orthanc"
    folder = "/srv/vigil/incoming"     # source = "folder"
    # url = "http://127.0.0.1:8042"    # source = "orthanc"
    # username = "vigil"
    # password_file = "/etc/vigil/orthanc.password"
    modalities = ["CR", "DX"]
    poll_seconds = 30
    page_limit = 50
    prefetch = true                    # fetch the next page while this one is scored
    model = "imaging-federated"

    [imaging.writeback]
    fhir = false
    sr = false
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vigil.core.errors import ConfigError

__all__ = ["ImagingSettings", "ImagingWriteback", "check_imaging"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class ImagingWriteback(_Section):
    """Where each study's score goes (``[imaging.writeback]``)."""

    fhir: bool = Field(
        default=False,
        description="A DiagnosticReport + Observation per study on the [fhir] server.",
    )
    sr: bool = Field(
        default=False, description="A DICOM Structured Report (TID 1500) stored back to the PACS."
    )
    sr_background: bool = Field(
        default=True,
        description="Store the SRs from a worker thread while the next studies are rendered; "
                    "a page waits for its stores before it is recorded.",
    )


class ImagingSettings(_Section):
    """The imaging runtime: which studies it scores, with which model, and where it writes.

    ``source = "folder"`` scores the DICOM files dropped below ``folder`` (grouped by
    StudyInstanceUID, a study being stable once its newest file is ``stable_seconds``
    old); ``"orthanc"`` follows the change feed of the Orthanc at ``url``.
    """

    enabled: bool = Field(default=False, description="Run the imaging loop in `vigil serve`.")
    source: Literal["orthanc", "folder"] = "folder"
    url: str | None = Field(default=None, description="Orthanc's base URL (source = 'orthanc').")
    username: str | None = Field(default=None, description="Orthanc user (HTTP basic auth).")
    password_file: Path | None = Field(
        default=None, description="File holding the Orthanc user's password (never inline)."
    )
    folder: Path | None = Field(default=None, description="The drop folder (source = 'folder').")
    start: Literal["now", "beginning"] = Field(
        default="now",
        description="Where a PACS source starts when the store holds no cursor yet: 'now' scores "
                    "only studies that arrive from then on (a PACS holds years of studies); "
                    "'beginning' reads its whole change feed.",
    )
    stable_seconds: float = Field(
        default=60.0, ge=0,
        description="A folder study is scored once its newest file is at least this old.",
    )
    modalities: tuple[str, ...] = Field(
        default=("CR", "DX"), min_length=1,
        description="Image modalities scored; instances of other modalities are skipped.",
    )
    timeout_s: float = Field(default=30.0, gt=0, le=600,
                             description="Seconds before a PACS request gives up.")
    poll_seconds: float = Field(default=30.0, ge=1, le=3600, description="Seconds between polls.")
    page_limit: int = Field(
        default=50, ge=1, le=10_000, description="Studies per page (one store transaction)."
    )
    prefetch: bool = Field(
        default=True,
        description="Poll and fetch the next page of studies from the PACS while the current "
                    "one is decoded, scored and written back (one worker thread, one page "
                    "ahead; nothing fetched ahead is committed before its page).",
    )
    prefetch_mb: int = Field(
        default=256, ge=1, le=65_536,
        description="MiB of fetched instances held ahead at most (always at least one study).",
    )
    model: str | None = Field(
        default=None,
        description="Name of the installed imaging package to score with; default: whichever "
                    "imaging model is active (and shadow).",
    )
    site_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]+$",
        description="This site's key in the package's site_thresholds (federated training); "
                    "default: the top-level site_id. Used when no calibration record is installed.",
    )
    ready_max_age_s: float = Field(
        default=600.0, ge=1,
        description="/readyz reports imaging degraded when the last good poll is older than this.",
    )
    writeback: ImagingWriteback = ImagingWriteback()


def check_imaging(settings: ImagingSettings) -> None:
    """Check the keys the chosen source needs (beyond each key's own rules).

    Raises
    ------
    ConfigError
        One line naming the missing key.
    """
    if not settings.enabled:
        return
    if settings.source == "folder" and settings.folder is None:
        raise ConfigError("imaging.source = 'folder' needs imaging.folder (the drop folder)",
                          key="imaging.folder")
    if settings.source == "orthanc" and not settings.url:
        raise ConfigError("imaging.source = 'orthanc' needs imaging.url (Orthanc's base URL)",
                          key="imaging.url")
    if settings.writeback.sr and settings.source != "orthanc":
        raise ConfigError("imaging.writeback.sr = true needs imaging.source = 'orthanc' (the SR "
                          "is stored back into the PACS the study came from)",
                          key="imaging.writeback.sr")
    if settings.password_file is not None and not settings.password_file.is_file():
        raise ConfigError(
            f"imaging.password_file: expected a file holding the password at "
            f"{settings.password_file}, found none", key="imaging.password_file",
        )
