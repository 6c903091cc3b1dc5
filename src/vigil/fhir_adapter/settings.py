"""Settings of the FHIR client: a pydantic model the runtime's settings nest.

Build it once at the entry point (``FHIRSettings(**config["fhir"])``) and pass
it down; the adapter never reads the environment. Secrets (the bearer token,
the SMART private key) are ``SecretStr``: they show as ``**********`` in
``repr``, ``str`` and ``model_dump``, and validation errors never echo the input
(``hide_input_in_errors``).

Example (``site.toml``)::

    [fhir]
    base_url = "https://ehr.example.org/fhir"
    auth = "smart"
    icu_locations = ["icu-3-north", "icu-4-south"]
    unit_by_location = { "icu-3-north" = "MICU", "icu-4-south" = "SICU" }

    [fhir.smart]
    client_id = "vigil-site-a"
    key_id = "2026-01"
    algorithm = "ES384"
    private_key_path = "/etc/vigil/smart-es384.pem"
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = ["AuthMode", "FHIRSettings", "SMARTSettings"]

_CONFIG = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class AuthMode(StrEnum):
    """How the client authenticates to the FHIR server."""

    NONE = "none"
    BEARER = "bearer"
    SMART = "smart"


class SMARTSettings(BaseModel):
    """SMART Backend Services (client_credentials grant with a private_key_jwt assertion).

    Attributes
    ----------
    client_id : str
        The registered client id (``iss`` and ``sub`` of the assertion).
    key_id : str
        ``kid`` of the registered public key.
    algorithm : {"RS384", "ES384"}
        Signature algorithm of the assertion.
    private_key_pem : SecretStr or None
        The private key (PEM). Exactly one of this and ``private_key_path``.
    private_key_path : Path or None
        A PEM file holding the private key.
    scope : str
        Scopes requested (SMART v2 system scopes).
    token_url : str or None
        The token endpoint; None to discover it from
        ``{base_url}/.well-known/smart-configuration``.
    refresh_margin_s : float
        Refresh the access token this many seconds before it expires.
    """

    model_config = _CONFIG

    client_id: str = Field(min_length=1)
    key_id: str = Field(min_length=1)
    algorithm: Literal["RS384", "ES384"] = "RS384"
    private_key_pem: SecretStr | None = None
    private_key_path: Path | None = None
    scope: str = ("system/Patient.rs system/Encounter.rs system/Location.rs "
                  "system/Observation.rs system/RiskAssessment.cu")
    token_url: str | None = None
    refresh_margin_s: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _one_key(self) -> SMARTSettings:
        if (self.private_key_pem is None) == (self.private_key_path is None):
            raise ValueError("expected exactly one of private_key_pem and private_key_path")
        return self

    def private_key(self) -> bytes:
        """Return the PEM bytes of the private key (read from the file if a path is given)."""
        if self.private_key_pem is not None:
            return self.private_key_pem.get_secret_value().encode()
        assert self.private_key_path is not None
        return self.private_key_path.read_bytes()


class FHIRSettings(BaseModel):
    """How vigil talks to a site's FHIR server.

    Attributes
    ----------
    base_url : str
        FHIR base URL (``.../fhir``), without a trailing slash.
    auth : AuthMode
        ``none``, ``bearer`` (``bearer_token``) or ``smart`` (``smart``).
    bearer_token : SecretStr or None
        Static bearer token.
    smart : SMARTSettings or None
        SMART Backend Services client.
    timeout_s : float
        Connect/read/write timeout of each request.
    retries : int
        Retries after a 429, a 5xx or a transport error (timeouts included).
    backoff_s, max_backoff_s : float
        Exponential backoff ``backoff_s * 2**attempt`` capped at ``max_backoff_s``;
        a ``Retry-After`` header is honoured up to ``max_backoff_s``.
    page_size : int
        ``_count`` of searches.
    max_pages : int
        Paging stops with an error after this many pages of one search.
    concurrency : int
        Parallel requests (one per patient chunk).
    patients_per_request : int
        Patients per ``Observation?patient=a,b,c`` OR-list (1 for servers without OR-lists).
    overlap : timedelta
        Incremental fetches ask for ``_lastUpdated > since - overlap`` so values
        committed late or out of order are not missed.
    since_prefix : {"gt", "sa"}
        Search prefix of that lower bound: ``gt`` (every server), or ``sa`` ("starts
        after": the same values for instants) for a server that answers it from its date
        index and ``gt`` with a scan; the FHIR test server does (docs/runtime.md, "Benchmark").
    categories : tuple of str
        ``Observation?category=`` filter; empty (the default) for none. Many feeds
        do not set ``Observation.category`` on every value; a filter would drop
        those without a trace, so set one only for a server known to fill it.
    icu_locations : tuple of str
        Location ids of the ICUs; empty to find ``Location?type=ICU,MICU,SICU``.
    unit_by_location : dict of str to {"MICU", "SICU"}
        Location id -> ICU unit, overriding ``Location.type``.
    accept_preliminary : bool
        Use ``preliminary`` Observations.
    understood_modifiers : frozenset of str
        Modifier extension URLs to ignore (default none: an Observation carrying a modifier
        extension is quarantined; docs/fhir.md).
    strict_search : bool
        Send ``Prefer: handling=strict``, so an unsupported search parameter is an
        error instead of a silently wider result.
    """

    model_config = _CONFIG

    base_url: str = Field(min_length=1)
    auth: AuthMode = AuthMode.NONE
    bearer_token: SecretStr | None = None
    smart: SMARTSettings | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=4, ge=0)
    backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=30.0, ge=0)
    page_size: int = Field(default=500, ge=1)
    max_pages: int = Field(default=1000, ge=1)
    concurrency: int = Field(default=4, ge=1)
    patients_per_request: int = Field(default=50, ge=1)
    overlap: timedelta = timedelta(minutes=15)
    since_prefix: Literal["gt", "sa"] = "gt"
    categories: tuple[str, ...] = ()
    icu_locations: tuple[str, ...] = ()
    unit_by_location: dict[str, Literal["MICU", "SICU"]] = Field(default_factory=dict)
    accept_preliminary: bool = False
    understood_modifiers: frozenset[str] = frozenset()
    strict_search: bool = True

    @field_validator("base_url")
    @classmethod
    def _has_host(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL with a host, such as "
                             "https://ehr.example.org/fhir")
        return value

    @model_validator(mode="after")
    def _auth_complete(self) -> FHIRSettings:
        if "@" in self.base_url.split("://", 1)[1].split("/", 1)[0]:
            # a URL is logged and put in error messages: credentials never go in one
            raise ValueError("expected a base_url without user:password@; use auth = 'bearer' "
                             "(bearer_token) or 'smart'")
        if self.auth is AuthMode.BEARER and self.bearer_token is None:
            raise ValueError("auth = 'bearer' needs bearer_token")
        if self.auth is AuthMode.SMART and self.smart is None:
            raise ValueError("auth = 'smart' needs a [smart] section")
        if self.base_url.endswith("/"):
            object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        return self
