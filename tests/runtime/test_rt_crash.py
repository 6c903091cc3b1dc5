"""Crash safety with real processes: kill -9 at points of a cycle, restart, compare.

Each scenario replays the same ticks as a reference run into its own state store,
writing RiskAssessments to a real FHIR server (sekmet-fhir) with ``PUT``; the
driver process SIGKILLs itself at a named point of one tick, and is started again.
Every scenario uses its own model version (same weights), so its RiskAssessments
can be told apart on the server.
"""

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rt_support import FHIRServer, make_package, write_trusted_key

from vigil.data import patient_split
from vigil.fhir_adapter.synth import write_synth
from vigil.runtime.store import StateStore

pytestmark = pytest.mark.slow

DRIVER = textwrap.dedent('''
    import os, signal, sys
    from datetime import timedelta
    from vigil.fhir_adapter.settings import FHIRSettings
    from vigil.fhir_adapter.writers import RESTWriter
    from vigil.runtime.cycle import CycleRunner
    from vigil.runtime.models import LiveModels, live_model
    from vigil.runtime.recorded import load_ndjson
    from vigil.runtime.replay import replay, replay_ticks
    from vigil.runtime.settings import AlertSettings, ScoringSettings
    from vigil.runtime.sources import FHIRSink
    from vigil.runtime.store import StateStore

    ndjson, db, pkg, base_url, point, at_tick = sys.argv[1:7]
    source, _ = load_ndjson(ndjson, stack_admissions=True)
    last_admission = max(stay.icu_admission for stay, _ in source.stays)
    ticks = replay_ticks(last_admission + timedelta(hours=1), last_admission + timedelta(hours=3))
    done = [0]

    def checkpoint(name):
        if name == point and done[0] == int(at_tick):
            os.kill(os.getpid(), signal.SIGKILL)

    live = LiveModels(live_model(pkg), None)
    runner = CycleRunner(
        store=StateStore.open(f"sqlite:///{db}"), source=source,
        sink=FHIRSink(RESTWriter(FHIRSettings(base_url=base_url)), site="crash", deployment="test"),
        models=lambda: live,
        scoring=ScoringSettings(), alerts=AlertSettings(suppression_hours=1.0),
        checkpoint=checkpoint, writeback_batch=2,
    )
    replay(runner, ticks, progress=lambda i, r: done.__setitem__(0, i + 1))
''')

POINTS = ("census", "fetched", "stored", "committed", "put")
KILL_TICK = 3


@pytest.fixture(scope="module")
def world(tmp_path_factory, sample):
    root = tmp_path_factory.mktemp("crash")
    table = sample.select(np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:6])
    write_synth(table.frame, root / "ndjson", bundles=True)
    (root / "driver.py").write_text(DRIVER)
    server = FHIRServer(root / "server").start()
    yield root, server
    server.stop()


def run(root, server, version, *, point="", tick=-1):
    pkg = root / f"pkg-{version}"
    if not pkg.exists():
        make_package(pkg, version=version)
    return subprocess.run(
        [sys.executable, root / "driver.py", root / "ndjson", root / f"{version}.db", pkg,
         server.base_url, point, str(tick)],
        capture_output=True, text=True, timeout=600,
    )


def stored(root, version):
    with StateStore.open(f"sqlite:///{root / f'{version}.db'}") as store:
        scores = store.scores_frame().loc[:, ["patient_key", "tick", "iculos", "probability",
                                              "alert"]]
        obs = store.conn.execute(
            "SELECT resource_id, variable, value FROM observations ORDER BY 1, 2").fetchall()
        statuses = Counter(c.status for c in store.cycles())
        pending = store.pending()
    return scores, obs, statuses, pending


def assessments(server, version):
    """(patient, occurrence) of every RiskAssessment the server holds for a model version."""
    return [
        (r["subject"]["reference"], r["occurrenceDateTime"])
        for r in server.search("RiskAssessment")
        if r["method"]["coding"][0]["version"] == version
    ]


@pytest.fixture(scope="module")
def reference(world):
    root, server = world
    done = run(root, server, "ref")
    assert done.returncode == 0, done.stderr
    scores, obs, statuses, _ = stored(root, "ref")
    assert set(statuses) == {"ok"} and len(scores) > 20 and scores["alert"].any()
    return scores, obs, sorted(assessments(server, "ref"))


@pytest.mark.parametrize("point", POINTS)
def test_kill_9_then_restart_loses_and_duplicates_nothing(world, reference, point):
    root, server = world
    version = f"crash-{point}"
    killed = run(root, server, version, point=point, tick=KILL_TICK)
    assert killed.returncode == -9, killed.stderr
    again = run(root, server, version)
    assert again.returncode == 0, again.stderr

    ref_scores, ref_obs, ref_ras = reference
    scores, obs, statuses, pending = stored(root, version)
    # the killed cycle is on record: before its commit it is re-run, after it is not
    after_commit = point in ("committed", "put")
    assert statuses == Counter({
        "writeback_interrupted" if after_commit else "interrupted": 1,
        "ok": len(set(ref_scores["tick"])) - after_commit,
    })
    assert pending == []
    np.testing.assert_array_equal(scores.to_numpy(), ref_scores.to_numpy())
    assert obs == ref_obs  # no observation lost
    ras = sorted(assessments(server, version))
    # no duplicate RiskAssessment, none lost (a patient without a value in the last 6 h has
    # a score but no RiskAssessment, in both runs alike: docs/runtime.md, "Cycle status")
    assert len(ras) == len(set(ras)) == len(ref_ras) > 20
    assert ras == ref_ras


def test_server_down_for_two_cycles_then_the_next_catches_up(world):
    root, server = world
    server.load(root / "ndjson" / "bundles")
    site = root / "site.toml"
    site.write_text(f"""
[data]
source = "fhir"
writeback = "fhir"
[fhir]
base_url = "{server.base_url}"
retries = 0
[store]
url = "sqlite:///{root / 'serve.db'}"
[models]
dir = "{root / 'models'}"
public_key = "{write_trusted_key(root)}"
""")
    vigil = Path(sys.executable).with_name("vigil")
    make_package(root / "pkg-serve", version="serve")
    subprocess.run([vigil, "model", "install", root / "pkg-serve", "--config", site], check=True,
                   capture_output=True)

    def once():
        done = subprocess.run([vigil, "serve", "--config", site, "--once"], capture_output=True,
                              text=True, timeout=300)
        return done.returncode, json.loads(done.stdout)

    server.stop()
    try:
        down = [once(), once()]
    finally:
        server.start()
    up = once()
    # the synthetic values are from 2020: the patients have no value in the last hours, so
    # the cycle that catches up scores but is degraded and writes no RiskAssessment
    assert [code for code, _ in down] == [1, 1] and up[0] == 1, up
    for _, record in down:
        assert record["status"] == "failed"
        assert "FHIRTransportError" in record["reason"] and "metadata" not in record["reason"]
    n_values = len((root / "ndjson" / "Observation.ndjson").read_bytes().splitlines())
    assert up[1]["counts"]["census"] == up[1]["counts"]["scored"] == 6
    assert up[1]["counts"]["observations"] == n_values  # everything, from the first good cycle
    with StateStore.open(f"sqlite:///{root / 'serve.db'}") as store:
        assert [c.status for c in store.cycles()] == ["failed", "failed", "degraded"]
        assert "6 of 6 patients have no value in the last 6 h" in store.cycles()[-1].reason
        assert all(c.reason for c in store.cycles()[:2])
        # the synthetic values are from 2020: older than the retention window, so pruned
        assert up[1]["counts"]["pruned"] == n_values and store.count("observations") == 0
        assert store.watermark(f"fhir:{server.base_url}") is not None
    assert assessments(server, "serve") == []


def test_replay_from_the_fhir_server_equals_replay_from_ndjson(world):
    root, server = world
    server.load(root / "ndjson" / "bundles")  # PUTs: loading twice changes nothing
    vigil = Path(sys.executable).with_name("vigil")
    make_package(root / "pkg-replay", version="replay")
    outs = {}
    for name, source in (("rest", ["--fhir-url", server.base_url]),
                         ("ndjson", ["--ndjson", root / "ndjson"])):
        done = subprocess.run(
            [vigil, "replay", "--model", root / "pkg-replay", *source, "--hours", "30",
             "--out", root / f"replay-{name}.parquet", "--json"],
            capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        outs[name] = json.loads(done.stdout)
    assert outs["rest"]["patients"] == outs["ndjson"]["patients"] == 6
    assert outs["rest"]["cycles"] == outs["ndjson"]["cycles"] > 100
    import pandas as pd

    rest = pd.read_parquet(root / "replay-rest.parquet")
    ndjson = pd.read_parquet(root / "replay-ndjson.parquet")
    assert len(rest) > 50
    pd.testing.assert_frame_equal(rest, ndjson)
