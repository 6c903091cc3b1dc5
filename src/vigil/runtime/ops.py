"""The operations endpoint: health, readiness, Prometheus metrics, per-patient scores.

A standard-library HTTP server in a daemon thread, bound to loopback by default:

``/healthz``
    200 while the process serves requests.
``/readyz``
    200 when an active model is loaded and the last good cycle is recent
    enough, else 503; the JSON body says why.
``/metrics``
    Prometheus text exposition: cycle duration, cycles by status, patients
    scored, alerts, quarantined resources, FHIR errors; with ``[imaging]`` on, the
    imaging loop's (:class:`vigil.runtime.imaging_service.ImagingMetrics`).
``/patients/{id}/scores``
    The patient's recent scores (JSON), for the site team: patient data, so it
    answers only a request with ``Authorization: Bearer TOKEN`` (``ops.token``,
    compared in constant time), 401 otherwise, and is off (404) when no token
    is configured.

``/healthz``, ``/readyz`` and ``/metrics`` carry no patient identifier (the
metrics have no per-patient label). Request lines are not logged: a URL may
hold a patient identifier.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

__all__ = ["OpsServer", "Readiness", "RuntimeMetrics", "readiness"]

log = logging.getLogger(__name__)


class RuntimeMetrics:
    """Prometheus metrics of one runtime, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.cycle_duration = Histogram(
            "vigil_cycle_duration_seconds", "Wall time of a scoring cycle.", registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.cycles = Counter("vigil_cycles", "Cycles by final status.", ["status"], registry=r)
        self.patients_scored = Gauge(
            "vigil_patients_scored", "Patients scored by the last cycle.", registry=r
        )
        self.scores = Counter("vigil_scores", "Patient scores computed (active model).", registry=r)
        self.alerts = Counter("vigil_alerts", "Alerts raised by the active model.", registry=r)
        self.quarantined = Counter(
            "vigil_quarantined_resources", "FHIR resources rejected by the mapping.", registry=r
        )
        self.fhir_errors = Counter(
            "vigil_fhir_errors", "FHIR requests or cycles that failed on FHIR.", registry=r
        )
        self.writeback = Counter(
            "vigil_writeback_resources", "RiskAssessments written back.", registry=r
        )
        self.last_good = Gauge(
            "vigil_last_good_cycle_timestamp_seconds", "End of the last good cycle.", registry=r
        )
        self.model_loaded = Gauge(
            "vigil_model_loaded", "1 when an active model is loaded.", registry=r
        )

    def exposition(self) -> bytes:
        """Return the metrics in Prometheus text format."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class Readiness:
    """Whether the service is ready, and why not."""

    ready: bool
    model: str | None
    last_good_cycle_age_s: float | None
    reason: str
    imaging: dict[str, Any] | None = field(default=None)
    """The imaging loop's health (``status``: ok, starting, degraded); None when off.
    Readiness follows the sepsis cycle; a degraded imaging loop is reported, not fatal."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = {
            "ready": self.ready,
            "model": self.model,
            "last_good_cycle_age_s": self.last_good_cycle_age_s,
            "reason": self.reason,
        }
        if self.imaging is not None:
            out["imaging"] = self.imaging
        return out


def readiness(
    *, model: str | None, last_good_end: float | None, max_age_s: float, now: float | None = None
) -> Readiness:
    """Ready when a model is loaded and the last good cycle ended at most ``max_age_s`` ago."""
    now = time.time() if now is None else now
    age = None if last_good_end is None else max(0.0, now - last_good_end)
    if model is None:
        return Readiness(False, None, age, "no active model loaded; run `vigil model install`")
    if age is None:
        return Readiness(False, model, None, "no good cycle yet")
    if age > max_age_s:
        return Readiness(
            False, model, age, f"the last good cycle is {age:.0f} s old (> {max_age_s:.0f} s)"
        )
    return Readiness(True, model, age, "ok")


class OpsServer:
    """The endpoint in a background thread.

    Parameters
    ----------
    host, port : str, int
        Where to listen (port 0 picks a free one; see :attr:`port`).
    ready : callable returning Readiness
    metrics : RuntimeMetrics
    patient_scores : callable (patient id) -> list of dict
        Recent scores of one patient (empty when unknown).
    token : str or None, optional
        The bearer token ``/patients/{id}/scores`` requires; None turns it off.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ready: Callable[[], Readiness],
        metrics: RuntimeMetrics,
        patient_scores: Callable[[str], list[dict[str, Any]]],
        token: str | None = None,
    ) -> None:
        handler = _handler(ready, metrics, patient_scores, token)
        self._patients_exposed = token is not None and not _loopback(host)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="vigil-ops", daemon=True
        )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the endpoint."""
        host = self._server.server_address[0]
        return f"http://{host}:{self.port}"

    def start(self) -> OpsServer:
        """Start serving in the background."""
        self._thread.start()
        log.info("ops endpoint on %s", self.url)
        if self._patients_exposed:
            log.warning("per-patient scores are served over plain HTTP beyond loopback; put a "
                        "TLS proxy in front of %s or keep ops.host on 127.0.0.1", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries the bearer token (constant-time compare)."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def _handler(
    ready: Callable[[], Readiness],
    metrics: RuntimeMetrics,
    patient_scores: Callable[[str], list[dict[str, Any]]],
    token: str | None,
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vigil-ops"

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            path = self.path.split("?", 1)[0]
            try:
                if path == "/healthz":
                    self._send(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    r = ready()
                    self._json(200 if r.ready else 503, r.to_dict())
                elif path == "/metrics":
                    self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
                elif path.startswith("/patients/") and token is None:
                    self._json(404, {"error": "per-patient scores are off (no ops.token set)"})
                elif path.startswith("/patients/") and not _authorized(
                        self.headers.get("Authorization"), token or ""):
                    self._json(401, {"error": "expected Authorization: Bearer <ops.token>"},
                               {"WWW-Authenticate": 'Bearer realm="vigil-ops"'})
                elif path.startswith("/patients/") and path.endswith("/scores"):
                    key = unquote(path[len("/patients/"):-len("/scores")])
                    if not key or "/" in key:
                        self._json(404, {"error": "expected /patients/{id}/scores"})
                        return
                    rows = patient_scores(key)
                    if rows:
                        self._json(200, {"scores": rows})
                    else:
                        self._json(404, {"error": "no scores for this patient"})
                else:
                    self._json(404, {"error": "unknown path"})
            except Exception:  # never let a handler error kill the thread or leak details
                route = path.split("/", 2)[1] if "/" in path else ""
                log.exception("ops endpoint error on /%s", route)
                self._json(500, {"error": "internal error"})

        def _json(
            self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            self._send(status, json.dumps(body).encode() + b"\n", "application/json", headers)

        def _send(
            self, status: int, body: bytes, content_type: str,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Log nothing about the request line (it may hold a patient id)."""

    return Handler
