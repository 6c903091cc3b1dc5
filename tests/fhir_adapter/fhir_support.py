"""Helpers of the FHIR adapter tests: a real FHIR server (sekmet-fhir) and small synthetic data.

The server runs from its own pinned virtual environment (``.venv-fhir``, made by
``make setup`` from ``requirements-fhir-server.txt``), unpatched, on 127.0.0.1 and a
free port, with its data in a temporary directory; it is always stopped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
SEKMET = ROOT / ".venv-fhir" / "bin" / "sekmet"
SHARED = ROOT.parent / "shared" / "data"
R4_EXAMPLES = SHARED / "fhir-examples" / "r4"
SYNTHEA = SHARED / "synthea-r4"
DATA = Path(__file__).resolve().parent / "data"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(workdir: Path, *, extra_yaml: str = "") -> Iterator[str]:
    """Start sekmet on a free loopback port; yield its FHIR base URL; always stop it."""
    if not SEKMET.exists():
        pytest.fail(f"the FHIR test server is not installed at {SEKMET}; run `make setup`")
    port = _free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "settings.yaml"
    config.write_text(
        f"base_url: {base}\nhost: 127.0.0.1\nport: {port}\ndata_dir: {workdir / 'data'}\n"
        f"own_private_key_path: {workdir / 'keys' / 'own.pem'}\n"
        "simulator:\n  enabled: false\nlog_inbound: false\nvalidation:\n  inbound: strict\n"
        + extra_yaml)
    log = (workdir / "server.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    proc = subprocess.Popen([str(SEKMET), "serve", "--config", str(config)], cwd=workdir,
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail("the FHIR server exited at start: "
                            + (workdir / "server.log").read_text()[-2000:])
            try:
                if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the FHIR server did not answer /metadata within 60 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


Handler = Callable[[httpx.Request, Callable[[httpx.Request], httpx.Response]], httpx.Response]


class FaultyClient(httpx.Client):
    """An httpx client whose requests pass through ``handler`` before reaching the real server."""

    def __init__(self, handler: Handler) -> None:
        self._real = httpx.HTTPTransport()
        super().__init__(transport=httpx.MockTransport(lambda r: handler(r, self._forward)))

    def _forward(self, request: httpx.Request) -> httpx.Response:
        resp = self._real.handle_request(request)
        resp.read()
        resp.close()
        headers = [(k, v) for k, v in resp.headers.items() if k.lower() != "content-length"]
        return httpx.Response(resp.status_code, headers=headers, content=resp.content)

    def close(self) -> None:
        super().close()
        self._real.close()


def pick_patients(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """Rows of ``n`` patients covering MICU, SICU and unknown units (deterministic)."""
    first = frame.groupby("patient_id", sort=True).first()
    micu = first.index[first["Unit1"] == 1][: (n + 2) // 3]
    sicu = first.index[first["Unit2"] == 1][: (n + 1) // 3]
    unknown = first.index[first["Unit1"].isna()][: n // 3]
    ids = np.sort(np.concatenate([micu, sicu, unknown]))[:n]
    return frame[frame["patient_id"].isin(ids)].reset_index(drop=True)


LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


def observation(code: str = "8867-4", value: object = 80.0, unit: str | None = "/min", *,
                rid: str = "o1", patient: str = "pat-1", when: str = "2024-03-01T10:20:00Z",
                status: str = "final", **extra: object) -> dict[str, object]:
    """A valid FHIR R4 Observation with one LOINC code and a valueQuantity."""
    quantity: dict[str, object] = {"value": value}
    if unit is not None:
        quantity.update(unit=unit, system=UCUM, code=unit)
    res: dict[str, object] = {
        "resourceType": "Observation", "id": rid, "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": when, "valueQuantity": quantity,
    }
    res.update(extra)
    return {k: v for k, v in res.items() if v is not None}


COLUMNS = ("patient", "variable", "effective", "value", "resource_id", "last_updated", "seq",
           "version", "issued")


def assert_same(a, b) -> None:  # type: ignore[no-untyped-def]
    """Two IngestResults hold the same values, deletions, quarantine and counters."""
    for name in COLUMNS:
        x, y = getattr(a.observations, name), getattr(b.observations, name)
        if name in ("version", "issued"):
            x, y = a.observations.column(name), b.observations.column(name)
        assert x.dtype == y.dtype and x.tolist() == y.tolist(), name
    assert a.observations.deletions == b.observations.deletions
    assert a.quarantine == b.quarantine
    assert a.counts == b.counts


def parse_all(resources: list[dict[str, object]], **kw: object):  # type: ignore[no-untyped-def]
    """Map with the three readers (NDJSON fast, dict fast, strict) and check they agree."""
    import orjson

    from vigil.fhir_adapter import parse_fast, parse_ndjson, parse_strict

    ndjson = parse_ndjson(b"\n".join(orjson.dumps(r) for r in resources), **kw)
    fast = parse_fast(resources, **kw)
    strict = parse_strict(resources, **kw)
    assert_same(ndjson, fast)
    assert_same(fast, strict)
    return fast
