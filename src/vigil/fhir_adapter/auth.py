"""Authentication to the FHIR server: none, a static bearer token, or SMART Backend Services.

SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html):
the client signs a JWT assertion (``iss = sub = client_id``, ``aud`` = token
endpoint, ``exp`` at most 5 minutes ahead, a unique ``jti``; RS384 or ES384 with the
registered key) and trades it for an access token with the ``client_credentials``
grant. The token is cached and fetched again ``refresh_margin_s`` before it
expires, or at once when the server answers 401. The token endpoint is taken from
the settings or discovered at ``{base_url}/.well-known/smart-configuration``.

JWTs are built with ``cryptography`` only (RFC 7515/7518): RS384 is RSASSA-PKCS1-v1_5
with SHA-384, ES384 is ECDSA P-384 with SHA-384 and the signature as ``r || s``
(48 bytes each). No secret (token, key, assertion) is logged, shown in a repr, or
put in an exception message.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import httpx
import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from vigil.core.errors import ConfigError, FHIRTransportError
from vigil.fhir_adapter.settings import AuthMode, FHIRSettings, SMARTSettings

__all__ = ["BearerAuth", "Credentials", "NoAuth", "SMARTBackendAuth", "credentials_for", "sign_jwt"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ASSERTION_LIFETIME_S = 240


class Credentials(Protocol):
    """What the HTTP layer asks for each request."""

    def authorization(self, client: httpx.Client) -> str | None:
        """Return the ``Authorization`` header value, or None."""
        ...

    def invalidate(self) -> None:
        """Forget a cached token (the server answered 401)."""
        ...


class NoAuth:
    """No authentication."""

    def authorization(self, client: httpx.Client) -> str | None:
        """No header."""
        return None

    def invalidate(self) -> None:
        """Nothing cached."""


class BearerAuth:
    """A static bearer token.

    Parameters
    ----------
    token : str
        The token (kept out of ``repr``).
    """

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerAuth(token='**********')"

    def authorization(self, client: httpx.Client) -> str | None:
        """``Bearer <token>``."""
        return f"Bearer {self._token}"

    def invalidate(self) -> None:
        """Do nothing: a static token cannot be refreshed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_jwt(claims: dict[str, object], *, private_key_pem: bytes, algorithm: str, key_id: str
             ) -> str:
    """Sign ``claims`` as a compact JWS (RFC 7515) with RS384 or ES384.

    Raises
    ------
    ConfigError
        If the key cannot be read or does not fit the algorithm.
    """
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("could not read the SMART private key: expected an unencrypted PEM "
                          "private key", key="fhir.smart.private_key") from exc
    header = {"alg": algorithm, "kid": key_id, "typ": "JWT"}
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}".encode()
    if algorithm == "RS384" and isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA384())
    elif algorithm == "ES384" and isinstance(key, ec.EllipticCurvePrivateKey) \
            and key.curve.name == "secp384r1":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(48, "big") + s.to_bytes(48, "big")
    else:
        raise ConfigError(f"the SMART private key does not fit algorithm {algorithm}: expected an "
                          "RSA key for RS384 or a P-384 EC key for ES384",
                          key="fhir.smart.algorithm")
    return f"{signing_input.decode()}.{_b64(signature)}"


class SMARTBackendAuth:
    """SMART Backend Services client: cached access token, refreshed before expiry.

    Parameters
    ----------
    settings : SMARTSettings
    base_url : str
        FHIR base URL (for discovery).
    timeout_s : float, optional
        Timeout of the discovery and token requests.
    clock : callable, optional
        Seconds since the epoch (tests pass a fake clock).
    """

    def __init__(self, settings: SMARTSettings, base_url: str, *, timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout_s
        self._clock = clock
        self._token_url = settings.token_url
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.fetches = 0
        """How many access tokens were obtained (for tests and metrics)."""

    def __repr__(self) -> str:
        return f"SMARTBackendAuth(client_id={self._settings.client_id!r}, token='**********')"

    def invalidate(self) -> None:
        """Drop the cached token; the next request fetches a new one."""
        with self._lock:
            self._token, self._expires_at = None, 0.0

    def authorization(self, client: httpx.Client) -> str | None:
        """``Bearer <access token>``, fetching a token when none is valid."""
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at - self._settings.refresh_margin_s:
                self._token, self._expires_at = self._fetch(client, now)
            return f"Bearer {self._token}"

    def _post_error(self, url: str, message: str, status: int | None = None) -> FHIRTransportError:
        return FHIRTransportError(message, url=url.split("?", 1)[0], status=status)

    def _discover(self, client: httpx.Client) -> str:
        url = f"{self._base_url}/.well-known/smart-configuration"
        try:
            resp = client.get(url, headers={"Accept": "application/json"}, timeout=self._timeout)
            doc = orjson.loads(resp.content) if resp.status_code == 200 else None
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            raise self._post_error(url, f"SMART discovery failed ({type(exc).__name__}); set "
                                   "fhir.smart.token_url or check the server") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("token_endpoint"), str):
            raise self._post_error(url, "expected a SMART configuration with token_endpoint; set "
                                   "fhir.smart.token_url", resp.status_code)
        algs = doc.get("token_endpoint_auth_signing_alg_values_supported")
        if isinstance(algs, list) and self._settings.algorithm not in algs:
            raise ConfigError(f"the server does not accept {self._settings.algorithm} assertions "
                              f"(it lists {', '.join(map(str, algs))}); "
                              "change fhir.smart.algorithm",
                              key="fhir.smart.algorithm")
        return str(doc["token_endpoint"])

    def _fetch(self, client: httpx.Client, now: float) -> tuple[str, float]:
        if self._token_url is None:
            self._token_url = self._discover(client)
        url = self._token_url
        s = self._settings
        assertion = sign_jwt(
            {"iss": s.client_id, "sub": s.client_id, "aud": url, "jti": uuid.uuid4().hex,
             "iat": int(now), "exp": int(now) + _ASSERTION_LIFETIME_S},
            private_key_pem=s.private_key(), algorithm=s.algorithm, key_id=s.key_id,
        )
        form = {"grant_type": "client_credentials", "scope": s.scope,
                "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
        try:
            resp = client.post(url, data=form, headers={"Accept": "application/json"},
                               timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise self._post_error(
                url, f"SMART token request failed ({type(exc).__name__})") from exc
        try:
            doc = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            doc = None
        if resp.status_code != 200 or not isinstance(doc, dict) or "access_token" not in doc:
            code = doc.get("error") if isinstance(doc, dict) else None
            raise self._post_error(url, f"SMART token request refused (HTTP {resp.status_code}, "
                                   f"error {code!r}); check client_id, key_id and the registered "
                                   "public key", resp.status_code)
        self.fetches += 1
        lifetime = float(doc.get("expires_in") or 300)
        return str(doc["access_token"]), now + lifetime


def credentials_for(settings: FHIRSettings, *, clock: Callable[[], float] = time.time
                    ) -> Credentials:
    """Make the credentials the settings describe."""
    if settings.auth is AuthMode.BEARER:
        assert settings.bearer_token is not None
        return BearerAuth(settings.bearer_token.get_secret_value())
    if settings.auth is AuthMode.SMART:
        assert settings.smart is not None
        return SMARTBackendAuth(settings.smart, settings.base_url, timeout_s=settings.timeout_s,
                                clock=clock)
    return NoAuth()
