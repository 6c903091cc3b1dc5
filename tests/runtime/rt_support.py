"""Runtime test support: a tiny ONNX model package over the real feature schema (no torch).

Imported by the runtime tests (``from rt_support import ...``); not a test module.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from vigil.core.errors import FHIRTransportError
from vigil.core.package import ModelPackage, write_package
from vigil.core.signing import public_key_of
from vigil.features import FEATURE_SCHEMA

TEST_PRIVATE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32))).private_bytes(
    Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
)
"""The tests' package-signing key (fixed, so a failure is reproducible)."""
TEST_PUBLIC_KEY = public_key_of(TEST_PRIVATE_KEY)
UNSIGNED = b""
"""Pass as ``make_package(private_key=UNSIGNED)`` for a package without ``manifest.sig``."""


def write_trusted_key(directory: Path) -> Path:
    """Write the tests' public key as ``directory/test-release.pub``; return its path."""
    path = Path(directory) / "test-release.pub"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(TEST_PUBLIC_KEY)
    return path


def models_section(directory: Path, models_dir: Path) -> str:
    """A ``[models]`` TOML section trusting the tests' key (written into ``directory``)."""
    return (f'[models]\ndir = "{models_dir}"\n'
            f'public_key = "{write_trusted_key(directory)}"\n')


def tiny_onnx(*, seed: int = 0, hidden: int = 8) -> bytes:
    """An MLP ``features (n, n_features) -> probability (n,)`` built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    d = len(FEATURE_SCHEMA)
    # Features are on very different scales (counts, hours, lab values): keep the logits moderate.
    w1 = (rng.normal(size=(d, hidden)) * 0.01).astype(np.float32)
    b1 = rng.normal(size=hidden).astype(np.float32) * 0.1
    w2 = (rng.normal(size=(hidden, 1)) * 0.5).astype(np.float32)
    b2 = np.array([-1.0], dtype=np.float32)
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["z0"]),
        helper.make_node("Add", ["z0", "b2"], ["z1"]),
        helper.make_node("Sigmoid", ["z1"], ["p2"]),
        helper.make_node("Reshape", ["p2", "shape"], ["probability"]),
    ]
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", d])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["n"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_package(
    path: Path,
    *,
    version: str = "1.0.0",
    seed: int = 0,
    threshold: float = 0.3,
    private_key: bytes = TEST_PRIVATE_KEY,
    schema: dict | None = None,
    reference_profile: dict | None = None,
) -> ModelPackage:
    """Write a tiny but real model package, signed with ``private_key`` (``UNSIGNED``: not)."""
    return write_package(
        path,
        onnx_model=tiny_onnx(seed=seed),
        manifest={
            "name": "sepsis-tiny",
            "version": version,
            "feature_schema": schema if schema is not None else FEATURE_SCHEMA.to_dict(),
            "threshold": threshold,
            **({"reference_profile": reference_profile} if reference_profile else {}),
        },
        model_card="# tiny test model\n",
        private_key_pem=private_key or None,
    )


# -- recorded data and fakes for cycle tests ---------------------------------------------------


def synth_source(table, directory: Path, *, stack_admissions: bool = True):
    """The table written by ``vigil fhir synth`` and read back as a replay source."""
    from vigil.fhir_adapter.synth import write_synth
    from vigil.runtime.recorded import load_ndjson

    write_synth(table.frame, directory)
    source, _ = load_ndjson(directory, stack_admissions=stack_admissions)
    return source


_TIME_KEYS = frozenset({"effectiveDateTime", "lastUpdated", "issued", "start", "end"})


def _shifted(doc, delta):
    """``doc`` with every time under :data:`_TIME_KEYS` moved by ``delta``."""
    from datetime import datetime

    if isinstance(doc, list):
        return [_shifted(x, delta) for x in doc]
    if not isinstance(doc, dict):
        return doc
    out = {}
    for k, v in doc.items():
        if k in _TIME_KEYS and isinstance(v, str):
            t = datetime.fromisoformat(v.replace("Z", "+00:00")) + delta
            v = t.isoformat(timespec="seconds").replace("+00:00", "Z")
        out[k] = _shifted(v, delta)
    return out


def move_to_now(directory: Path, now) -> None:
    """Move each patient's Encounter and Observations of a synth directory in time, so that its
    last Observation was charted 30 minutes before ``now`` (a feed that is current)."""
    from datetime import datetime, timedelta

    import orjson

    def patient(d):
        return (d.get("subject") or {}).get("reference")

    obs = [orjson.loads(x) for x in (directory / "Observation.ndjson").read_bytes().splitlines()]
    last: dict = {}
    for d in obs:
        t = datetime.fromisoformat(d["effectiveDateTime"].replace("Z", "+00:00"))
        last[patient(d)] = max(last.get(patient(d), t), t)
    delta = {p: now - timedelta(minutes=30) - t for p, t in last.items()}
    for name in ("Observation", "Encounter"):
        path = directory / f"{name}.ndjson"
        docs = [orjson.loads(x) for x in path.read_bytes().splitlines()]
        path.write_bytes(b"".join(orjson.dumps(_shifted(d, delta[patient(d)])) + b"\n"
                                  for d in docs))


def current_feed(sample, directory: Path, *, n: int = 3):
    """``n`` test-split patients of ``sample`` as a synth NDJSON export in ``directory``, moved
    to now (a cycle scoring patients with no recent value is degraded: docs/runtime.md,
    "Cycle status and missed ticks"); returns their table."""
    from datetime import UTC, datetime

    from vigil.data import patient_split
    from vigil.fhir_adapter.synth import write_synth

    table = sample.select(np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:n])
    write_synth(table.frame, directory)
    move_to_now(directory, datetime.now(UTC))
    return table


def ndjson_site_toml(root: Path, *, site_id: str, port: int | None) -> str:
    """The ``site.toml`` sections of a site reading ``root/export`` and writing ``root/out``
    (NDJSON), with its store in ``root/state.db``, models in ``root/models`` and ops on
    ``port`` (None: ops off); a caller adds its ``[models]`` trust keys and further sections."""
    ops = "enabled = false" if port is None else f"port = {port}"
    return f"""
site_id = "{site_id}"
[data]
source = "ndjson"
ndjson_dir = "{root / 'export'}"
writeback = "ndjson"
writeback_dir = "{root / 'out'}"
[store]
url = "sqlite:///{root / 'state.db'}"
[ops]
{ops}
[models]
dir = "{root / 'models'}"
"""


@contextmanager
def running(args: list, env: dict):
    """A ``vigil`` process (stdout and stderr piped), killed and reaped if still running."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def terminate(proc: subprocess.Popen, *, timeout: float = 30) -> tuple[str, str]:
    """Send SIGTERM and wait for the process; return its (stdout, stderr)."""
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=timeout)


class MemorySink:
    """A write-back target that keeps resources by id, like ``PUT RiskAssessment/{id}``."""

    def __init__(self, *, fail: bool = False) -> None:
        self.resources: dict[str, dict] = {}
        self.puts = 0
        self.fail = fail

    def assessments(self, scores):
        out = []
        for key, p in zip(scores.patient_keys, scores.probability.tolist(), strict=True):
            rid = f"ra-{key}-{int(scores.tick.timestamp())}"
            out.append((rid, json.dumps({"resourceType": "RiskAssessment", "id": rid,
                                         "subject": key, "probability": p,
                                         "model": scores.model})))
        return out

    def put(self, bodies):
        if self.fail:
            raise FHIRTransportError("connection refused", url="http://127.0.0.1:1/fhir")
        for b in bodies:
            d = json.loads(b)
            self.resources[d["id"]] = d
            self.puts += 1


# -- a real FHIR server (sekmet-fhir in .venv-fhir, see the Makefile) ---------------------------

SEKMET = Path(__file__).resolve().parents[2] / ".venv-fhir" / "bin" / "sekmet"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, token: str | None = None) -> tuple[int, str]:
    """GET a URL (with a bearer token if given); return (status, body), HTTP errors included."""
    import urllib.error

    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_ready(base: str, proc: subprocess.Popen, *, timeout: float = 60) -> tuple[int, str] | None:
    """Poll ``base/readyz`` of a ``vigil serve`` process until 200; return the last answer."""
    deadline = time.monotonic() + timeout
    ready = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            ready = http_get(base + "/readyz")
        except OSError:
            ready = None
        if ready and ready[0] == 200:
            break
        time.sleep(0.3)
    return ready


class FHIRServer:
    """sekmet-fhir on a free loopback port, with its data in ``directory``; ``start``/``stop``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.proc: subprocess.Popen | None = None
        self.config = self.directory / "settings.yaml"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"base_url: {self.base_url}\nhost: 127.0.0.1\nport: {self.port}\n"
            f"data_dir: {self.directory / 'data'}\nsimulator:\n  enabled: false\n"
            "log_inbound: false\nvalidation:\n  inbound: strict\n"
        )

    def start(self, timeout: float = 90.0) -> FHIRServer:
        if not SEKMET.is_file():
            pytest.skip(f"needs the FHIR test server at {SEKMET} (make setup)")
        with (self.directory / "server.log").open("ab") as log:
            self.proc = subprocess.Popen([str(SEKMET), "serve", "--config", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the FHIR server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.base_url + "/metadata", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.25)
        self.stop()
        raise RuntimeError("the FHIR server did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def load(self, bundle_dir: Path) -> None:
        """POST the transaction Bundles ``vigil fhir synth --bundles`` wrote."""
        for path in sorted(Path(bundle_dir).glob("*.json")):
            req = urllib.request.Request(self.base_url, data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/fhir+json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                assert r.status == 200, path.name

    def search(self, resource_type: str, **params) -> list[dict]:
        """Every resource of a search, following the next links."""
        query = urllib.parse.urlencode({"_count": 500, **params})
        url = f"{self.base_url}/{resource_type}?{query}"
        out = []
        while url:
            with urllib.request.urlopen(url, timeout=60) as r:
                bundle = json.loads(r.read())
            out.extend(e["resource"] for e in bundle.get("entry", ()))
            url = next((x["url"] for x in bundle.get("link", ()) if x["relation"] == "next"), None)
        return out


def make_record(package: ModelPackage, path: Path, *, threshold: float = 0.2,
                intercept: float = 0.5, slope: float = 1.0) -> Path:
    """Write a logistic calibration record for ``package`` (a fixed, known map)."""
    from vigil.calibration import CalibrationRecord, ModelRef
    from vigil.calibration.record import write_record

    calibrator = {"method": "logistic", "params": {"min_events": None},
                  "state": {"intercept_": intercept, "slope_": slope}}
    record = CalibrationRecord(site="test-site", model=ModelRef.of(package), method="logistic",
                               calibrator=calibrator, policy={"key": "fixed"},
                               threshold=threshold)
    return write_record(record, path)
