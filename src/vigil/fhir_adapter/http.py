"""Standard FHIR REST over an injected ``httpx.Client``: retries, timeouts, auth, paging.

- **Retries** on 429 and 5xx answers and on transport errors (timeouts, refused
  connections), at most ``settings.retries`` times, after
  ``min(max_backoff_s, backoff_s * 2**attempt)`` seconds or the ``Retry-After``
  the server sent (seconds or an HTTP date, capped at ``max_backoff_s``).
- **401** drops the cached access token and tries once more with a new one.
- **Paging** follows ``Bundle.link[relation=next]`` and stops with an error after
  ``max_pages`` pages, on a next link that repeats, or on one that leaves the base
  URL (the token is never sent elsewhere).
- **Logs** never carry a query string: httpx's own request log is filtered too.
- **Errors** are :class:`~vigil.core.errors.FHIRTransportError` carrying the
  status and the URL without its query string (queries name patients); messages
  carry OperationOutcome issue codes, never diagnostics text, headers or tokens.

Tests inject faults with ``httpx.MockTransport`` in front of a real server and
pass ``sleep`` to skip the waits.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import orjson

from vigil.core.errors import FHIRTransportError
from vigil.fhir_adapter.auth import Credentials, credentials_for
from vigil.fhir_adapter.settings import FHIRSettings

__all__ = ["FHIR_JSON", "FHIRHttp", "Params", "redact_httpx_logs"]

FHIR_JSON = "application/fhir+json"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
Params = Sequence[tuple[str, str]]
"""Query parameters as (name, value) pairs; a name may repeat (``_include``, ``_lastUpdated``)."""
log = logging.getLogger("vigil.fhir")


def _path(url: str | httpx.URL) -> str:
    return str(url).split("?", 1)[0]


class _RedactQuery(logging.Filter):
    """Drop the query string of URLs in httpx's own log records (queries name patients)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_path(a) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


_REDACT = _RedactQuery()


def redact_httpx_logs() -> None:
    """Make httpx log request URLs without their query string (idempotent)."""
    logger = logging.getLogger("httpx")
    if _REDACT not in logger.filters:
        logger.addFilter(_REDACT)


def _issue_codes(resp: httpx.Response) -> str:
    try:
        doc = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(doc, dict) or doc.get("resourceType") != "OperationOutcome":
        return ""
    codes = sorted({str(i.get("code")) for i in doc.get("issue") or () if isinstance(i, dict)})
    return f"; OperationOutcome issue codes: {', '.join(codes)}" if codes else ""


class FHIRHttp:
    """A FHIR REST client (JSON only), thread-safe for concurrent requests.

    Parameters
    ----------
    settings : FHIRSettings
    client : httpx.Client, optional
        The client to use (tests inject one with a transport). When None, one is
        made and closed by :meth:`close`.
    credentials : Credentials, optional
        Defaults to what the settings describe.
    sleep : callable, optional
        Waits between retries (tests pass a recorder).
    """

    def __init__(self, settings: FHIRSettings, *, client: httpx.Client | None = None,
                 credentials: Credentials | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.base_url = settings.base_url
        self._owns_client = client is None
        self.client = client if client is not None else httpx.Client()
        self.credentials = credentials if credentials is not None else credentials_for(settings)
        self._sleep = sleep
        self._timeout = httpx.Timeout(settings.timeout_s)
        redact_httpx_logs()

    def __repr__(self) -> str:
        return f"FHIRHttp(base_url={self.base_url!r}, auth={self.settings.auth.value!r})"

    def __enter__(self) -> FHIRHttp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client if this object made it."""
        if self._owns_client:
            self.client.close()

    def url(self, path: str) -> str:
        """Absolute URL of a path relative to the base (an absolute URL is kept)."""
        return path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path}"

    def _delay(self, attempt: int, resp: httpx.Response | None) -> float:
        cap = self.settings.max_backoff_s
        after = resp.headers.get("Retry-After") if resp is not None else None
        if after:
            try:
                return min(cap, max(0.0, float(after)))
            except ValueError:
                pass
            try:
                when = email.utils.parsedate_to_datetime(after)
                return min(cap, max(0.0, when.timestamp() - time.time()))
            except (TypeError, ValueError):
                pass
        return min(cap, self.settings.backoff_s * 2.0 ** attempt)

    def request(self, method: str, path: str, *, params: Params | None = None,
                body: bytes | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        """Send one request with auth, timeout and retries; return the final response.

        Raises
        ------
        FHIRTransportError
            When every attempt failed at the transport level.
        """
        url = self.url(path)
        head = {"Accept": FHIR_JSON, **(headers or {})}
        if body is not None:
            head.setdefault("Content-Type", FHIR_JSON)
        refreshed = False
        attempt = 0
        while True:
            auth = self.credentials.authorization(self.client)
            if auth:
                head["Authorization"] = auth
            try:
                resp = self.client.request(method, url, params=params, content=body,
                                           headers=head, timeout=self._timeout)
            except httpx.TransportError as exc:
                if attempt >= self.settings.retries:
                    raise FHIRTransportError(
                        f"{method} failed after {attempt + 1} attempts ({type(exc).__name__}); "
                        "check that the FHIR server is up and reachable, or raise fhir.timeout_s",
                        url=_path(url)) from exc
                delay = self._delay(attempt, None)
                log.warning("retrying %s %s after %s (attempt %d of %d) in %.1f s", method,
                            _path(url), type(exc).__name__, attempt + 2, self.settings.retries + 1,
                            delay)
            else:
                if resp.status_code == 401 and not refreshed:
                    refreshed = True
                    self.credentials.invalidate()
                    continue
                if resp.status_code not in _RETRY_STATUS or attempt >= self.settings.retries:
                    log.debug("%s %s -> %d", method, _path(url), resp.status_code)
                    return resp
                delay = self._delay(attempt, resp)
                log.warning("retrying %s %s after HTTP %d (attempt %d of %d) in %.1f s", method,
                            _path(url), resp.status_code, attempt + 2, self.settings.retries + 1,
                            delay)
            self._sleep(delay)
            attempt += 1

    def json(self, method: str, path: str, *, params: Params | None = None,
             body: bytes | None = None, headers: dict[str, str] | None = None,
             ok: Sequence[int] = (200, 201)) -> dict[str, Any]:
        """Send a request and decode a JSON object from a successful answer.

        Raises
        ------
        FHIRTransportError
            On a status outside ``ok`` or a body that is not a JSON object.
        """
        resp = self.request(method, path, params=params, body=body, headers=headers)
        if resp.status_code not in ok:
            raise FHIRTransportError(
                f"{method} answered HTTP {resp.status_code}, expected {'/'.join(map(str, ok))}"
                f"{_issue_codes(resp)}", url=_path(resp.request.url), status=resp.status_code)
        try:
            doc = orjson.loads(resp.content)
        except orjson.JSONDecodeError as exc:
            raise FHIRTransportError(
                f"{method} answered HTTP {resp.status_code} with a body that is not JSON "
                f"({len(resp.content)} bytes); the server or a proxy truncated or replaced it",
                url=_path(resp.request.url), status=resp.status_code) from exc
        if not isinstance(doc, dict):
            raise FHIRTransportError(f"expected a JSON object, got {type(doc).__name__}",
                                     url=_path(resp.request.url), status=resp.status_code)
        return doc

    def search(self, path: str, params: Params) -> Iterator[dict[str, Any]]:
        """Run a search and yield its Bundles page by page.

        Parameters
        ----------
        path : str
            ``Type`` (e.g. ``"Observation"``) or a path relative to the base.
        params : sequence of (str, str)
            Search parameters; ``_count`` is added from the settings unless given.

        Yields
        ------
        dict
            One searchset Bundle per page.

        Raises
        ------
        FHIRTransportError
            On a non-Bundle answer, more than ``max_pages`` pages, a repeating next
            link, or a next link outside the base URL.
        """
        query: Params | None = list(params)
        if not any(k == "_count" for k, _ in query):
            query = [*query, ("_count", str(self.settings.page_size))]
        headers = {"Prefer": "handling=strict"} if self.settings.strict_search else None
        url: str | None = self.url(path)
        seen: set[str] = set()
        pages = 0
        while url is not None:
            pages += 1
            if pages > self.settings.max_pages:
                raise FHIRTransportError(
                    f"paging did not end after {self.settings.max_pages} pages; the server keeps "
                    "sending next links. Narrow the search or raise fhir.max_pages",
                    url=_path(self.url(path)))
            bundle = self.json("GET", url, params=query, headers=headers)
            if bundle.get("resourceType") != "Bundle":
                raise FHIRTransportError(
                    f"expected a searchset Bundle, got {bundle.get('resourceType')!r}",
                    url=_path(url))
            outcomes = [e for e in bundle.get("entry") or ()
                        if isinstance(e, dict) and (e.get("search") or {}).get("mode") == "outcome"]
            if outcomes:
                log.warning("search %s returned %d OperationOutcome entries (a parameter may have "
                            "been ignored)", _path(url), len(outcomes))
            yield bundle
            nxt = next((str(link.get("url")) for link in bundle.get("link") or ()
                        if isinstance(link, dict) and link.get("relation") == "next"
                        and link.get("url")), None)
            if nxt is not None:
                if not nxt.startswith(self.base_url + "/"):
                    raise FHIRTransportError(
                        "a next link points outside the FHIR base URL; refusing to follow it "
                        "(check the server's base_url setting)", url=_path(url))
                if nxt in seen:
                    raise FHIRTransportError("a next link repeats an earlier page; the server's "
                                             "paging is broken", url=_path(url))
                seen.add(nxt)
            url, query = nxt, None

    def put(self, resource: dict[str, Any]) -> dict[str, Any] | None:
        """Send ``PUT {type}/{id}`` (update or create with the client's id).

        Returns the stored resource when the server sends it back.
        """
        path = f"{resource['resourceType']}/{resource['id']}"
        resp = self.request("PUT", path, body=orjson.dumps(resource),
                            headers={"Prefer": "return=representation"})
        if resp.status_code not in (200, 201):
            raise FHIRTransportError(
                f"PUT answered HTTP {resp.status_code}, expected 200 or 201{_issue_codes(resp)}",
                url=_path(self.url(path)), status=resp.status_code)
        try:
            doc = orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            doc = None
        return doc if isinstance(doc, dict) else None
