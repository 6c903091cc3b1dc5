import json
import logging
import urllib.error
import urllib.request

import pytest

from vigil.runtime.ops import OpsServer, RuntimeMetrics, readiness

TOKEN = "t" * 16 + "0123456789abcdef"


def get(url, token=TOKEN, scheme="Bearer"):
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


@pytest.fixture()
def server():
    metrics = RuntimeMetrics()
    state = {"ready": readiness(model=None, last_good_end=None, max_age_s=60)}
    scores = {"p-1": [{"tick": 1.0, "probability": 0.42}]}
    srv = OpsServer(host="127.0.0.1", port=0, ready=lambda: state["ready"], metrics=metrics,
                    patient_scores=lambda key: scores.get(key, []), token=TOKEN).start()
    yield srv, metrics, state
    srv.stop()


@pytest.mark.parametrize(
    ("token", "scheme"),
    [(None, "Bearer"), ("", "Bearer"), ("wrong", "Bearer"), (TOKEN[:-1], "Bearer"),
     (TOKEN + "x", "Bearer"), (TOKEN, "Basic"), (TOKEN.upper(), "Bearer")],
)
def test_patient_scores_need_the_token(server, token, scheme):
    srv, _, _ = server
    for path in ("/patients/p-1/scores", "/patients/unknown/scores", "/patients/"):
        status, _, body = get(srv.url + path, token=token, scheme=scheme)
        assert status == 401, (path, status)
        assert "p-1" not in body and "0.42" not in body
    assert get(srv.url + "/patients/p-1/scores", scheme="bearer")[0] == 200


def test_patient_scores_are_off_without_a_token():
    srv = OpsServer(host="127.0.0.1", port=0, metrics=RuntimeMetrics(),
                    ready=lambda: readiness(model=None, last_good_end=None, max_age_s=60),
                    patient_scores=lambda key: [{"tick": 1.0, "probability": 0.42}]).start()
    try:
        for token in (None, "", TOKEN):
            status, _, body = get(srv.url + "/patients/p-1/scores", token=token)
            assert status == 404 and "off" in json.loads(body)["error"]
        assert get(srv.url + "/healthz", token=None)[0] == 200
        assert get(srv.url + "/metrics", token=None)[0] == 200
    finally:
        srv.stop()


def test_health_ready_and_scores(server, caplog):
    srv, _, state = server
    assert srv.url.startswith("http://127.0.0.1:")
    assert get(srv.url + "/healthz")[0] == 200
    status, ctype, body = get(srv.url + "/readyz")
    assert status == 503 and ctype == "application/json"
    assert json.loads(body)["reason"].startswith("no active model")
    state["ready"] = readiness(model="m@1", last_good_end=1000.0, max_age_s=60, now=1030.0)
    status, _, body = get(srv.url + "/readyz")
    assert status == 200 and json.loads(body) == {
        "ready": True, "model": "m@1", "last_good_cycle_age_s": 30.0, "reason": "ok"}
    with caplog.at_level(logging.DEBUG):
        status, _, body = get(srv.url + "/patients/p-1/scores")
        assert get(srv.url + "/patients/unknown/scores")[0] == 404
    assert status == 200 and json.loads(body)["scores"][0]["probability"] == 0.42
    assert "p-1" not in caplog.text and "unknown" not in caplog.text
    assert get(srv.url + "/nothing")[0] == 404


def test_metrics_exposition(server):
    srv, metrics, _ = server
    metrics.cycles.labels(status="ok").inc()
    metrics.cycle_duration.observe(1.5)
    metrics.alerts.inc(3)
    metrics.quarantined.inc(2)
    metrics.fhir_errors.inc()
    metrics.patients_scored.set(17)
    status, ctype, body = get(srv.url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    lines = set(body.splitlines())
    assert 'vigil_cycles_total{status="ok"} 1.0' in lines
    assert "vigil_cycle_duration_seconds_count 1.0" in lines
    assert "vigil_alerts_total 3.0" in lines
    assert "vigil_quarantined_resources_total 2.0" in lines
    assert "vigil_fhir_errors_total 1.0" in lines
    assert "vigil_patients_scored 17.0" in lines


def test_readiness_rules():
    assert not readiness(model="m", last_good_end=None, max_age_s=60).ready
    stale = readiness(model="m", last_good_end=0.0, max_age_s=60, now=61.0)
    assert not stale.ready and "61 s old" in stale.reason
    assert readiness(model="m", last_good_end=0.0, max_age_s=60, now=60.0).ready


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("10.1.2.3", False), ("::", False), ("ops.hospital.org", False)],
)
def test_what_counts_as_loopback(host, loopback):
    from vigil.runtime.ops import _loopback

    assert _loopback(host) is loopback


def test_a_token_beyond_loopback_is_warned_about(caplog, monkeypatch):
    import vigil.runtime.ops as ops

    kwargs = {"host": "127.0.0.1", "port": 0, "metrics": RuntimeMetrics(),
              "patient_scores": lambda key: [],
              "ready": lambda: readiness(model=None, last_good_end=None, max_age_s=60)}
    for exposed, token, warned in ((True, TOKEN, True), (False, TOKEN, False),
                                   (True, None, False)):
        # the tests bind loopback only: pretend the configured host is not
        monkeypatch.setattr(ops, "_loopback", lambda host, exposed=exposed: not exposed)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="vigil.runtime.ops"):
            srv = OpsServer(token=token, **kwargs).start()
            srv.stop()
        assert ("plain HTTP beyond loopback" in caplog.text) is warned, (exposed, token)
        assert TOKEN not in caplog.text
