"""Deployment settings of the on-prem service: one TOML file plus ``VIGIL_`` environment.

Built once at the entry point by :func:`load_settings` and passed down; library
code never reads the environment. Environment variables override the file, with
``__`` between nested keys (``VIGIL_OPS__PORT=9200``). Unknown keys are refused,
so a misspelt setting cannot be silently ignored.

Example ``site.toml`` (see ``examples/site.toml``)::

    site_id = "hospital-a"

    [fhir]                       # vigil.fhir_adapter.FHIRSettings
    base_url = "http://ehr.example.org/fhir"

    [store]
    url = "sqlite:////var/lib/vigil/state.db"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from vigil.core.errors import ConfigError
from vigil.core.signing import RELEASE_PUBLIC_KEY
from vigil.features.builder import LOOKBACK_HOURS
from vigil.fhir_adapter.settings import FHIRSettings
from vigil.runtime.imaging_settings import ImagingSettings, check_imaging
from vigil.runtime.smart_scope import check_scope, with_derived_scope

__all__ = [
    "AlertSettings",
    "DataSettings",
    "ModelSettings",
    "OpsSettings",
    "OutcomeSettings",
    "SchedulerSettings",
    "ScoringSettings",
    "StoreSettings",
    "VigilSettings",
    "check_public_key",
    "check_serving",
    "load_settings",
]

TICK_MINUTES = 15


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class DataSettings(_Section):
    """Where the clinical data comes from and where the scores go.

    ``source = "fhir"`` reads the FHIR server of the ``[fhir]`` section (REST);
    ``"ndjson"`` reads a Bulk Data directory (the embedded mode). ``writeback``
    is ``fhir`` (``PUT RiskAssessment/{id}``), ``ndjson`` (``RiskAssessment.ndjson``
    in ``writeback_dir``) or ``none``.
    """

    source: Literal["fhir", "ndjson"] = "fhir"
    ndjson_dir: Path | None = None
    writeback: Literal["fhir", "ndjson", "none"] = "fhir"
    writeback_dir: Path | None = None


class SchedulerSettings(_Section):
    """When cycles run: a cron minute list, aligned to the wall clock."""

    minute: str = Field(default="0,15,30,45", description="APScheduler cron 'minute' field.")
    misfire_grace_s: int = Field(
        default=300, ge=1, lt=TICK_MINUTES * 60,
        description="A run this late is still made; later ones are skipped (coalesced).",
    )
    timezone: str = "UTC"
    run_at_start: bool = Field(
        default=True, description="Run one cycle as soon as the service starts."
    )
    backfill_ticks: int = Field(
        default=96, ge=0,
        description="After downtime, score up to this many missed ticks (within the "
                    "store's retention) before the current one; 0 to skip them.",
    )


class ScoringSettings(_Section):
    """How patients are scored."""

    threads: int = Field(default=1, ge=1, le=64, description="onnxruntime intra-op threads.")
    recent_hours: float = Field(
        default=6.0, gt=0,
        description="A patient with no value this long before the tick has empty inputs: "
                    "no RiskAssessment (docs/runtime.md, 'Cycle status and missed ticks').",
    )
    max_missing_share: float = Field(
        default=0.5, ge=0, le=1,
        description="A cycle where more of the patients have empty inputs is degraded.",
    )
    census_drop: float = Field(
        default=0.5, gt=0, le=1,
        description="A cycle whose census shrank by more than this share is degraded.",
    )
    census_drop_min: int = Field(
        default=10, ge=1, description="... when the previous census had at least this many.",
    )
    coverage_hours: float = Field(
        default=24.0, gt=0,
        description="Window over which the feed's values are compared with the reference "
                    "profile's expected rates (docs/runtime.md, 'Cycle status and missed ticks').",
    )
    min_coverage: float = Field(
        default=0.5, ge=0, le=1,
        description="A cycle whose feed delivers fewer than this share of the expected values "
                    "is degraded.",
    )
    coverage_min_patients: int = Field(
        default=10, ge=1,
        description="Feed coverage is judged only over at least this many settled patients.",
    )
    absent_min_rate: float = Field(
        default=0.1, ge=0, le=1,
        description="Only variables the profile expects at least this often (values per "
                    "patient-hour) are judged absent.",
    )
    min_expected: float = Field(
        default=30.0, gt=0,
        description="A variable expected at least this often in the window but absent raises a "
                    "critical feed_coverage alarm; coverage is judged from this many values.",
    )


class AlertSettings(_Section):
    """The alert policy applied to the calibrated probability."""

    suppression_hours: float = Field(
        default=6.0, ge=0, description="No re-alert within this window."
    )
    hysteresis: float | None = Field(
        default=None, ge=0, lt=1,
        description="When set, re-arm only after a probability below threshold - hysteresis.",
    )


class StoreSettings(_Section):
    """The state store."""

    url: str = Field(default="sqlite:///vigil-state.db", description="sqlite:///PATH (WAL).")
    retention_hours: int = Field(
        default=7 * 24, ge=LOOKBACK_HOURS + 1,
        description="Observations older than this are deleted; must cover the feature look-back.",
    )


class ModelSettings(_Section):
    """Where installed models live and how they are verified.

    Packages must carry a valid Ed25519 signature under ``public_key``, which
    defaults to vigil's release key bundled with the install
    (:data:`vigil.core.signing.RELEASE_PUBLIC_KEY`). ``allow_unsigned = true`` is
    the only way to accept unsigned packages (hashes are still checked); it is
    logged as a warning at every install and model load. ``calibration_key``
    names the site's own HMAC key file: installed calibration records are then
    authenticated with it as well as bound by SHA-256 to the registry.
    """

    dir: Path = Path("models")
    public_key: Path | None = Field(
        default=None,
        description="Ed25519 public key (PEM) packages must be signed with; default: vigil's "
                    "release key.",
    )
    allow_unsigned: bool = Field(
        default=False, description="Accept unsigned packages (hashes only); logged loudly."
    )
    calibration_key: Path | None = Field(
        default=None, description="The site's HMAC key file (>= 32 bytes) for calibration records."
    )

    @model_validator(mode="after")
    def _one_trust(self) -> ModelSettings:
        if self.allow_unsigned and self.public_key is not None:
            raise ValueError(
                "allow_unsigned = true contradicts public_key; set one of them, not both"
            )
        return self

    def trusted_key(self) -> Path | None:
        """Return the key packages must verify against; None only with ``allow_unsigned``."""
        if self.allow_unsigned:
            return None
        return self.public_key if self.public_key is not None else RELEASE_PUBLIC_KEY


class OpsSettings(_Section):
    """The operations endpoint (health, readiness, metrics, per-patient scores).

    ``/patients/{id}/scores`` returns patient data: it answers only requests
    bearing ``token`` (``Authorization: Bearer ...``), and is off when no token is set.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)
    token: SecretStr | None = Field(
        default=None, min_length=32,
        description="Bearer token of /patients/{id}/scores (>= 32 characters); unset: off.",
    )
    ready_max_age_s: int = Field(
        default=35 * 60, ge=60, description="Not ready when the last good cycle is older than this."
    )


class OutcomeSettings(_Section):
    """Where confirmed sepsis outcomes come from (the monitor's performance checks).

    ``source = "file"``: a CSV or parquet the hospital drops at ``path`` (columns
    ``patient_id``, ``onset``: ISO 8601 with a zone, empty for no sepsis by discharge),
    re-read when it changes. ``"fhir"``: ``Condition`` resources coded SNOMED CT
    91302008 (Sepsis) on the ``[fhir]`` server; a patient who left the ICU with none is
    a negative. ``"none"``: no performance checks.
    """

    source: Literal["none", "file", "fhir"] = "none"
    path: Path | None = Field(default=None, description="The file drop (.csv or .parquet).")
    delay_hours: float = Field(
        default=72.0, gt=0,
        description="A patient-hour's outcome is looked up this long after the hour; outcomes "
                    "not known by then are skipped.",
    )
    lead_hours: float = Field(
        default=6.0, ge=0, description="Hours before onset that count as positive (PhysioNet: 6)."
    )


class VigilSettings(BaseSettings):
    """All settings of one site's runtime."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only explicit values: :func:`load_settings` merges file and environment itself."""
        return (init_settings,)

    site_id: str = Field(default="site", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    deployment_id: str = Field(
        default="production", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$",
        description="Which of a site's deployments this is (e.g. 'production', 'test'); part "
                    "of every RiskAssessment id with site_id. Changing either writes new ids.",
    )
    data: DataSettings = DataSettings()
    fhir: FHIRSettings | None = Field(
        default=None, description="The FHIR client (vigil.fhir_adapter.FHIRSettings)."
    )
    scheduler: SchedulerSettings = SchedulerSettings()
    scoring: ScoringSettings = ScoringSettings()
    alerts: AlertSettings = AlertSettings()
    store: StoreSettings = StoreSettings()
    models: ModelSettings = ModelSettings()
    ops: OpsSettings = OpsSettings()
    outcomes: OutcomeSettings = OutcomeSettings()
    imaging: ImagingSettings = ImagingSettings()


def check_serving(settings: VigilSettings) -> None:
    """Check what ``vigil serve`` and ``vigil replay`` need beyond each section's own rules.

    Raises
    ------
    ConfigError
        Naming the missing or contradictory key.
    """
    d = settings.data
    if (d.source == "fhir" or d.writeback == "fhir") and settings.fhir is None:
        key = "data.source" if d.source == "fhir" else "data.writeback"
        raise ConfigError(
            f"{key} = 'fhir' needs a [fhir] section with base_url", key="fhir.base_url"
        )
    if d.source == "ndjson" and d.ndjson_dir is None:
        raise ConfigError("data.source = 'ndjson' needs data.ndjson_dir", key="data.ndjson_dir")
    if d.writeback == "ndjson" and d.writeback_dir is None:
        raise ConfigError("data.writeback = 'ndjson' needs data.writeback_dir",
                          key="data.writeback_dir")
    check_public_key(settings.models.public_key, key="models.public_key")
    _check_outcomes(settings)
    check_imaging(settings.imaging)
    check_scope(settings)


def check_public_key(path: Path | None, *, key: str) -> None:
    """Check that a configured public key file exists and can be read (None passes).

    Raises
    ------
    ConfigError
        Naming the setting or option ``key`` and the path.
    """
    if path is None:
        return
    try:
        path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{key}: expected the Ed25519 public key (PEM) at {path}, but it cannot be read "
            f"({exc.strerror or exc}); fix the path or copy the key there", key=key,
        ) from None


def _check_outcomes(settings: VigilSettings) -> None:
    o = settings.outcomes
    if o.source == "file":
        if o.path is None or o.path.suffix not in (".csv", ".parquet"):
            raise ConfigError(
                f"outcomes.source = 'file' needs outcomes.path, a .csv or .parquet file; got "
                f"{None if o.path is None else str(o.path)!r}", key="outcomes.path",
            )
        if not o.path.parent.is_dir():
            raise ConfigError(
                f"outcomes.path: expected an existing directory for the outcome file, "
                f"{o.path.parent} does not exist; create it or fix the path", key="outcomes.path",
            )
    if o.source == "fhir" and settings.fhir is None:
        raise ConfigError("outcomes.source = 'fhir' needs a [fhir] section with base_url",
                          key="fhir.base_url")
    # the patients' ICU admissions are read from the store, which forgets a patient
    # retention_hours after the patient left the census
    if o.source != "none" and o.delay_hours + 1 > settings.store.retention_hours:
        raise ConfigError(
            f"outcomes.delay_hours ({o.delay_hours:g}) must be at least 1 h shorter than "
            f"store.retention_hours ({settings.store.retention_hours}): the store forgets a "
            "patient's admission after that; raise store.retention_hours or lower the delay",
            key="outcomes.delay_hours",
        )


def _error_key(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "settings"


def load_settings(
    path: str | Path | None = None, *, environ: bool = True, **overrides: Any
) -> VigilSettings:
    """Read, merge and validate the settings (called once, at the entry point).

    Parameters
    ----------
    path : str, Path or None, optional
        A TOML file.
    environ : bool, optional
        Read ``VIGIL_*`` environment variables (they override the file).
    **overrides
        Values that override both (e.g. from command-line options).

    Returns
    -------
    VigilSettings
        With ``fhir.smart.scope`` derived from what the settings read and write when the
        site sets none (:mod:`vigil.runtime.smart_scope`).

    Raises
    ------
    ConfigError
        With ``key`` set to the dotted name of the first bad setting.
    """
    file_values: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            file_values = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"expected a settings file at {p}, found nothing", key="config"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p} is not valid TOML: {exc}", key="config") from exc
    values: dict[str, Any] = file_values
    try:
        env_values = EnvSettingsSource(VigilSettings)() if environ else {}
        values = _deep_merge(_deep_merge(file_values, env_values), overrides)
        return with_derived_scope(VigilSettings(**values))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = _error_key(first["loc"])
        shown = _shown_input(key, first)
        message = (f"invalid setting {key!r}: {first['msg']}{shown}; "
                   f"{exc.error_count()} error(s) in total")
        raise ConfigError(_redact(message, values), key=key) from None
    except SettingsError as exc:
        raise ConfigError(
            _redact(f"could not read VIGIL_ environment settings: {exc}", values),
            key="environment",
        ) from None


_SCALAR_ERRORS = (
    "int_", "float_", "bool_", "greater_than", "less_than", "timedelta_", "multiple_of",
    "finite_number",
)
"""Errors of a number, boolean or duration setting, whose input may be shown.

The input of a text setting is not (a secret pasted into the wrong key), nor a section's."""
_SECRET_WORDS = ("token", "secret", "password", "passwd", "key", "pem", "credential")


def _secret_name(name: str) -> bool:
    return any(w in name.lower() for w in _SECRET_WORDS)


def _shown_input(key: str, error: Any) -> str:
    """`` (got ...)`` for a short (<= 12 characters) input of a number-like setting, else nothing.

    The input of an unknown key, of a whole section, of a text setting, or of any
    setting whose name looks like a credential is never shown: it may be a
    misplaced secret.
    """
    value = error.get("input")
    if (not error["type"].startswith(_SCALAR_ERRORS) or _secret_name(key)
            or not isinstance(value, str | int | float | bool) or len(str(value)) > 12):
        return ""
    return f" (got {value!r})"


def _secrets(values: Any, *, under_secret: bool = False) -> set[str]:
    """Every string value in ``values`` that sits under a credential-like name."""
    if isinstance(values, dict):
        out: set[str] = set()
        for k, v in values.items():
            out |= _secrets(v, under_secret=under_secret or _secret_name(str(k)))
        return out
    if isinstance(values, list | tuple):
        return set().union(*(_secrets(v, under_secret=under_secret) for v in values))
    if under_secret and isinstance(values, str) and len(values) >= 8:
        return {values}
    return set()


def _redact(message: str, values: dict[str, Any]) -> str:
    """``message`` with every credential-like value of the raw settings masked."""
    for secret in sorted(_secrets(values), key=len, reverse=True):
        message = message.replace(secret, "**********")
    return message


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out
