"""Honest cycle status: degraded cycles, no RiskAssessment from empty inputs, missed ticks."""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from rt_support import MemorySink, make_package, synth_source, write_trusted_key

from vigil.data import patient_split
from vigil.fhir_adapter.records import IngestCounts, IngestResult, ObservationBatch
from vigil.runtime.cycle import CycleRunner
from vigil.runtime.inputs import check_inputs, has_recent_values, split_future
from vigil.runtime.models import install_model, load_live_models
from vigil.runtime.monitoring.alarms import AlarmKind, Severity
from vigil.runtime.recorded import ClockedSource
from vigil.runtime.replay import replay, replay_ticks
from vigil.runtime.service import Service, _trigger, missed_ticks
from vigil.runtime.settings import AlertSettings, ScoringSettings, load_settings
from vigil.runtime.store import StateStore

SETTINGS = ScoringSettings()


def judge(**kw):
    args = {"census": 20, "previous_census": 20, "read": 100, "mapped": 90, "ignored": {},
            "recent": np.ones(20, dtype=bool), "settings": SETTINGS}
    return check_inputs(**{**args, **kw})


# -- the verdict ---------------------------------------------------------------------------------


def test_normal_inputs_are_ok_and_withhold_only_empty_patients():
    recent = np.ones(20, dtype=bool)
    recent[3] = False
    health = judge(recent=recent)
    assert not health.degraded and health.reason is None
    assert health.withheld().tolist() == (~recent).tolist()


@pytest.mark.parametrize(("before", "now", "degraded"), [
    (20, 0, True), (1, 0, True), (20, 9, True), (20, 10, False), (9, 1, False), (None, 0, False),
    (0, 0, False)])
def test_census_rules(before, now, degraded):
    health = judge(census=now, previous_census=before, recent=np.ones(now, dtype=bool))
    assert health.degraded is degraded
    if degraded:
        (f,) = health.findings
        assert (f.kind, f.variable, f.severity) == (AlarmKind.CYCLE_INPUTS, "census",
                                                    Severity.CRITICAL)
        assert f.value == now and f"had {before} patients" in f.message or (
            f"from {before} to {now} patients" in f.message)
        assert health.withheld().all()


def test_a_feed_that_maps_nothing_is_degraded_and_names_its_codes():
    health = judge(mapped=0, read=40, ignored={"urn:site|HR": 30, "urn:site|TEMP": 10})
    (f,) = health.findings
    assert f.variable == "mapping"
    assert "40 Observations but none mapped" in f.message
    assert "urn:site|HR (30), urn:site|TEMP (10)" in f.message
    assert not judge(mapped=0, read=0).degraded  # nothing delivered is judged by recent values


def test_mostly_missing_inputs_of_settled_patients_are_degraded():
    recent = np.array([False] * 6 + [True] * 4)
    assert judge(recent=recent).findings[0].variable == "recent_values"
    assert "6 of 10 patients have no value in the last 6 h" in judge(recent=recent).reason
    # patients just admitted (not yet recent_hours in the ICU) are withheld, not a feed fault
    settled = np.array([False] * 3 + [True] * 7)
    health = judge(recent=recent, settled=settled)
    assert not health.degraded and health.withheld().sum() == 6
    assert not judge(recent=np.array([False, True])).degraded  # half is not "mostly"


def test_has_recent_values_bounds():
    batch = ObservationBatch(
        patient=np.array(["a", "b", "c"], dtype=object), variable=np.zeros(3, np.int8),
        effective=np.array([100, 50, 201], dtype=np.int64), value=np.ones(3),
        resource_id=np.array(["1", "2", "3"], dtype=object),
        last_updated=np.zeros(3, np.int64), seq=np.arange(3))
    assert has_recent_values(["a", "b", "c", "d"], batch, since=50, until=200).tolist() == [
        True, False, False, False]


def test_values_dated_after_their_reading_are_quarantined():
    read_at = datetime(2026, 5, 1, 10, tzinfo=UTC)
    us = [int((read_at + timedelta(minutes=m)).timestamp() * 1e6) for m in (-30, 59, 61, 10**6)]
    batch = ObservationBatch(
        patient=np.array(["a", "b", "c", "d"], dtype=object), variable=np.zeros(4, np.int8),
        effective=np.array(us, dtype=np.int64), value=np.ones(4),
        resource_id=np.array(["r1", "r2", "r3", "r4"], dtype=object),
        last_updated=np.array([1, 2, 3, 4], dtype=np.int64), seq=np.arange(4))
    kept, bad = split_future(batch, read_at)
    assert kept.resource_id.tolist() == ["r1", "r2"]
    assert [(q.resource_id, q.last_updated) for q in bad] == [("r3", 3), ("r4", 4)]
    assert all(q.reason.startswith("effective time more than 1 h after it was read") for q in bad)
    assert split_future(kept, read_at)[0] is kept


# -- in the cycle --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(sample):
    return sample.select(np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:6])


@pytest.fixture(scope="module")
def source(table, tmp_path_factory):
    return synth_source(table, tmp_path_factory.mktemp("ndjson"))


@dataclass
class Faults:
    """What a faulty feed does from a tick on."""

    empty_census_at: set = field(default_factory=set)
    silent_from: datetime | None = None
    unmapped_from: datetime | None = None


class FaultySource(ClockedSource):
    faults: Faults = Faults()

    def census(self, tick):
        census = super().census(tick)
        return type(census)(stays=()) if tick in self.faults.empty_census_at else census

    def observations(self, since, until, *, patients=None):
        out = super().observations(since, until, patients=patients)
        f = self.faults
        if f.silent_from is not None and until >= f.silent_from:
            return IngestResult(ObservationBatch.concat([]), (), IngestCounts(), until)
        if f.unmapped_from is not None and until >= f.unmapped_from:
            n = len(out.observations)
            return IngestResult(ObservationBatch.concat([]), (), IngestCounts(
                resources=n, ignored_unknown_code=n, ignored_codes=(("urn:site|VS", n),)), until)
        return out


def runner_over(tmp_path, source, faults, sink):
    faulty = FaultySource(source.stays, source.recorded, name="faulty")
    object.__setattr__(faulty, "faults", faults)
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", durable=False)
    make_package(tmp_path / "pkg")
    install_model(store, tmp_path / "pkg", models_dir=tmp_path / "models")
    live = load_live_models(store)
    return CycleRunner(store=store, source=faulty, sink=sink, models=lambda: live,
                       scoring=ScoringSettings(), alerts=AlertSettings())


def ticks_of(source, hours):
    last_admission = max(stay.icu_admission for stay, _ in source.stays)
    start = last_admission + timedelta(hours=8)
    return replay_ticks(start, start + timedelta(hours=hours))


def test_a_silent_feed_degrades_the_cycle_within_hours_and_writes_nothing(tmp_path, source):
    ticks = ticks_of(source, 10)
    sink = MemorySink()
    runner = runner_over(tmp_path, source, Faults(silent_from=ticks[8]), sink)
    results = replay(runner, ticks).results
    status = [r.status for r in results]
    assert status[:8] == ["ok"] * 8
    # the feed stops at tick 8: ok while the last values are recent, then degraded for good
    first = status.index("degraded")
    assert 8 < first <= 8 + 4 * SETTINGS.recent_hours + 1
    assert set(status[first:]) == {"degraded"}
    assert "have no value in the last 6 h" in results[first].reason
    written = {rid.rsplit("-", 1)[1] for rid in sink.resources}
    assert not written & {str(int(r.tick.timestamp())) for r in results[first:]}
    assert all(r.counts["withheld"] == r.counts["scored"] > 0 for r in results[first:])
    assert all(r.counts["alerts"] == 0 for r in results[first:])
    rows = {c.tick: c.status for c in runner.store.cycles()}
    assert rows[results[-1].tick.timestamp()] == "degraded"


def test_an_empty_census_is_degraded_and_the_next_good_cycle_is_ok(tmp_path, source):
    ticks = ticks_of(source, 2)
    sink = MemorySink()
    runner = runner_over(tmp_path, source, Faults(empty_census_at={ticks[3], ticks[4]}), sink)
    results = replay(runner, ticks).results
    # empty twice: degraded twice (an empty census stays degraded until patients come back)
    assert [r.status for r in results][2:6] == ["ok", "degraded", "degraded", "ok"]
    assert results[4].reason == "the census is empty (it had 6 patients)"
    assert results[5].counts["census"] == 6


def test_a_feed_that_maps_nothing_is_degraded_at_once(tmp_path, source):
    ticks = ticks_of(source, 1)
    runner = runner_over(tmp_path, source, Faults(unmapped_from=ticks[2]), MemorySink())
    results = replay(runner, ticks).results
    degraded = [r for r in results if r.status == "degraded"]
    assert degraded and degraded[0].tick == ticks[2]
    assert "none mapped to a catalog variable (codes ignored most often: urn:site|VS" in (
        degraded[0].reason)
    assert degraded[0].ignored_codes == {"urn:site|VS": degraded[0].counts["read"]}


def test_unknown_codes_never_change_the_scores(tmp_path, table):
    """Property: the same data plus Observations in codes vigil does not know scores the same."""
    import orjson

    from vigil.fhir_adapter.synth import write_synth
    from vigil.runtime.recorded import load_ndjson

    rng = np.random.default_rng(7)
    scores = []
    for name, noise in (("plain", 0), ("noisy", 400)):
        root = tmp_path / name
        write_synth(table.frame, root)
        lines = (root / "Observation.ndjson").read_bytes().splitlines()
        picks = rng.choice(len(lines), size=noise)
        extra = []
        for i, k in enumerate(picks):
            d = orjson.loads(lines[k])
            d["id"] = f"noise-{i}"
            d["code"] = {"coding": [{"system": "urn:site:local", "code": f"X{rng.integers(50)}"}]}
            extra.append(orjson.dumps(d))
        (root / "Observation.ndjson").write_bytes(b"\n".join(lines + extra) + b"\n")
        src, _ = load_ndjson(root, stack_admissions=True)
        runner = runner_over(root, src, Faults(), None)
        replay(runner, ticks_of(src, 3))
        scores.append(runner.store.scores_frame(role="active"))
    plain, noisy = scores
    assert len(plain) > 0
    np.testing.assert_array_equal(plain["patient_key"], noisy["patient_key"])
    np.testing.assert_allclose(plain["probability"], noisy["probability"], rtol=0, atol=0)


# -- missed ticks --------------------------------------------------------------------------------


def test_missed_ticks_between_two_cycles():
    trigger = _trigger(load_settings(None, environ=False))
    t = datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    q = timedelta(minutes=15)
    assert missed_ticks(trigger, t, t + 4 * q, limit=10) == [t + q, t + 2 * q, t + 3 * q]
    assert missed_ticks(trigger, t, t + 4 * q, limit=2) == [t + 2 * q, t + 3 * q]
    assert missed_ticks(trigger, t, t + q, limit=10) == []
    assert missed_ticks(trigger, t, t + 4 * q, limit=0) == []
    assert missed_ticks(trigger, t, t + 4 * q, limit=10, not_before=t + 2 * q) == [
        t + 2 * q, t + 3 * q]


@pytest.mark.parametrize("limit", [96, 3])
def test_the_service_back_fills_missed_ticks_after_downtime(tmp_path, source, limit):
    settings = load_settings(
        None, environ=False, store={"url": f"sqlite:///{tmp_path / 'state.db'}"},
        models={"dir": str(tmp_path / "models"), "public_key": str(write_trusted_key(tmp_path))},
        ops={"enabled": False}, scheduler={"backfill_ticks": limit})
    sink = MemorySink()
    service = Service(settings, source=source, sink=sink)
    try:
        make_package(tmp_path / "pkg")
        install_model(service.store, tmp_path / "pkg", models_dir=tmp_path / "models",
                      public_key=settings.models.trusted_key())
        start = ticks_of(source, 0)[0]
        assert service.run_cycle(start).ok
        after = service.run_cycle(start + timedelta(hours=2, minutes=3))  # down for 2 hours
        assert after.ok and after.tick == start + timedelta(hours=2)
        ticks = [c.tick for c in service.store.cycles()]
        statuses = {c.status for c in service.store.cycles()}
    finally:
        service.close()
    q = 15 * 60
    expected = [start.timestamp() + k * q for k in range(9)]
    assert statuses == {"ok"}
    assert ticks == (expected if limit >= 7 else [expected[0], *expected[-1 - limit:]])
    # every scored tick wrote its RiskAssessments, in time order
    assert {int(t) for t in ticks} == {int(r.rsplit("-", 1)[1]) for r in sink.resources}
