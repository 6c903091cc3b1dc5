import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.core.catalog import MEASURED
from vigil.core.errors import ConfigError
from vigil.fhir_adapter.records import (
    NO_TIME,
    NO_VERSION,
    Deletion,
    ObservationBatch,
    Quarantine,
    Stay,
    to_micros,
)
from vigil.runtime.contracts import ScoreBatch
from vigil.runtime.schema import MIGRATIONS, TABLES, VERSION_TABLE
from vigil.runtime.store import SCHEMA_VERSION, StateStore, sqlite_path

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HR = MEASURED.index("HR")
SBP = MEASURED.index("SBP")


def batch(rows, deletions=()):
    """rows: (resource_id, variable index, patient, effective hours after T0, value, seq)."""
    rid, var, pat, eff, val, seq = zip(*rows, strict=True) if rows else ([],) * 6
    us = [to_micros(T0) + int(h * 3600e6) for h in eff]
    return ObservationBatch(
        patient=np.asarray(pat, dtype=object), variable=np.asarray(var, dtype=np.int8),
        effective=np.asarray(us, dtype=np.int64), value=np.asarray(val, dtype=float),
        resource_id=np.asarray(rid, dtype=object), last_updated=np.asarray(us, dtype=np.int64),
        seq=np.asarray(seq, dtype=np.int64), deletions=tuple(deletions),
    )


def stored(store):
    return sorted(store.conn.execute(
        "SELECT resource_id, variable, patient_key, value FROM observations").fetchall())


@pytest.fixture()
def store(tmp_path):
    s = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}")
    yield s
    s.close()


def test_schema_is_versioned_and_reopen_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'a' / 'state.db'}"
    with StateStore.open(url) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with StateStore.open(url) as s:
        applied = s.conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0]
        assert applied == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with StateStore.open(url) as s:
        s.conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(ConfigError, match=f"schema version {SCHEMA_VERSION + 1}") as info:
        StateStore.open(url)
    assert info.value.key == "store.url"


def test_an_older_schema_is_migrated_on_open_and_keeps_its_rows(tmp_path):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)  # a database written by a vigil with migration 1 only
    conn.executescript(VERSION_TABLE + ";" + MIGRATIONS[0] + ";"
                       "INSERT INTO schema_migrations VALUES (1, 0);"
                       "INSERT INTO watermarks VALUES ('src', '2026-01-01T00:00:00+00:00', 0);")
    conn.close()
    with StateStore.open(f"sqlite:///{path}") as s:
        assert s.schema_version == SCHEMA_VERSION > 1
        versions = [v for (v,) in s.conn.execute("SELECT version FROM schema_migrations")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        names = {n for (n,) in s.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert TABLES <= names and {"monitor_alarms", "monitor_stats"} <= TABLES
        assert s.watermark("src") == "2026-01-01T00:00:00+00:00"


def test_a_database_that_is_not_a_store_is_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE patients (x);")
    conn.close()
    with pytest.raises(ConfigError, match="expected a vigil state store .* 1 other table") as info:
        StateStore.open(f"sqlite:///{path}")
    assert info.value.key == "store.url"
    conn = sqlite3.connect(path)  # nothing was added to it
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 1
    conn.close()


def test_urls():
    assert sqlite_path("sqlite:///var/x.db") == "var/x.db"
    assert sqlite_path("sqlite:////var/x.db") == "/var/x.db"
    assert sqlite_path("sqlite://") == ":memory:"
    with pytest.raises(ConfigError, match="sqlite:///PATH") as info:
        sqlite_path("postgresql://user:secret@db/vigil")
    assert "secret" not in str(info.value)


def test_versions_replace_and_deletions_remove(store):
    with store.transaction() as tx:
        # a blood-pressure panel gives two values with one id; p2's HR is read twice (v1, v2)
        store.put_observations(tx, batch([
            ("bp1", SBP, "p1", 1, 120, 0), ("bp1", HR, "p1", 1, 80, 0),
            ("hr2", HR, "p2", 1, 90, 1), ("hr2", HR, "p2", 1, 95, 2),
            ("hr3", HR, "p3", 1, 70, 3),
        ]))
    assert stored(store) == [("bp1", HR, "p1", 80.0), ("bp1", SBP, "p1", 120.0),
                             ("hr2", HR, "p2", 95.0), ("hr3", HR, "p3", 70.0)]
    with store.transaction() as tx:
        # a new version of the panel without its HR component; hr3 entered in error;
        # hr2 deleted, then re-created later in the same read
        store.put_observations(tx, batch(
            [("bp1", SBP, "p1", 1, 125, 0), ("hr2", HR, "p2", 1, 99, 5)],
            deletions=[Deletion("hr3", "p3", 1), Deletion("hr2", "p2", 4)],
        ))
    assert stored(store) == [("bp1", SBP, "p1", 125.0), ("hr2", HR, "p2", 99.0)]


def test_put_observations_reports_what_it_replaced(store):
    first = batch([("a", HR, "p1", 1, 60, 0), ("b", HR, "p1", 2, 61, 1)],
                  deletions=[Deletion("z", "p1", 2)])
    with store.transaction() as tx:
        kept, replaced = store.put_observations(tx, first)
    # every value is the latest of its id: the arrays are shared, not copied; on an empty
    # table nothing stored earlier is gone but what a deletion names
    assert kept.value is first.value and kept.deletions == ()
    assert replaced == frozenset({"z"})
    with store.transaction() as tx:
        kept, replaced = store.put_observations(tx, batch(
            [("b", HR, "p1", 2, 62, 0), ("b", HR, "p1", 2, 63, 1), ("c", HR, "p2", 1, 70, 2)]))
    assert kept.value.tolist() == [63.0, 70.0]
    assert replaced == frozenset({"b", "c"})
    assert stored(store) == [("a", HR, "p1", 60.0), ("b", HR, "p1", 63.0), ("c", HR, "p2", 70.0)]


def test_window_read_and_prune(store):
    with store.transaction() as tx:
        store.put_observations(tx, batch([
            ("a", HR, "p1", 0, 60, 0), ("b", HR, "p1", 10, 61, 1), ("c", HR, "p2", 10, 62, 2),
        ]))
    start = to_micros(T0)
    got = store.observations(["p1"], since=start + 1, until=start + int(20 * 3600e6))
    assert list(got.resource_id) == ["b"] and list(got.value) == [61.0]
    with store.transaction() as tx:
        assert store.prune(tx, before=T0.timestamp() + 5 * 3600) == 1
    assert store.count("observations") == 2


def test_transaction_rolls_back_everything(store):
    with pytest.raises(RuntimeError), store.transaction() as tx:
        store.put_observations(tx, batch([("a", HR, "p1", 0, 60, 0)]))
        store.set_watermark(tx, "src", "2026-01-01T00:00:00+00:00")
        raise RuntimeError("killed")
    assert store.count("observations") == 0 and store.watermark("src") is None


def test_census_round_trip(store):
    stays = (
        Stay("p1", "e1", T0, "MICU", "female", date(1950, 5, 1), T0.replace(hour=0)),
        Stay("p2", "e2", T0, None, None, None, None),
    )
    with store.transaction() as tx:
        store.put_census(tx, stays, tick=T0.timestamp())
    assert store.census() == stays
    with store.transaction() as tx:
        store.put_census(tx, stays[1:], tick=T0.timestamp() + 900)
    assert store.census() == stays[1:]


def test_outbox_cycles_and_quarantine(store):
    cid = store.claim_cycle(1000.0)
    with store.transaction() as tx:
        store.enqueue(tx, cid, [("ra-1", 1000.0, "{}"), ("ra-2", 1000.0, "{}")])
        store.put_quarantine(tx, cid, [Quarantine("Observation", "o1", "unknown unit")])
    assert [i for i, _ in store.pending()] == ["ra-1", "ra-2"]
    store.mark_sent(["ra-1"])
    with store.transaction() as tx:  # queuing a sent id again makes it pending again
        store.enqueue(tx, cid, [("ra-1", 1000.0, '{"v": 2}')])
    assert store.pending() == [("ra-1", '{"v": 2}'), ("ra-2", "{}")]
    assert store.count("quarantine") == 1
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        store.count("nope")
    store.claim_cycle(1900.0)
    assert store.mark_interrupted() == 2
    assert [c.status for c in store.cycles()] == ["interrupted", "interrupted"]
    assert store.last_good_cycle() is None


def test_read_only_connection_sees_commits_only(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    writer = StateStore.open(url)
    reader = StateStore.open(url, read_only=True)
    batch = ScoreBatch(
        model_name="m", model_version="1", threshold=0.3, role="active", tick=T0,
        patient_keys=("p1", "p2"), encounters=("e1", "e2"),
        iculos=np.array([3, 4]), raw_probability=np.array([0.4, 0.1]),
        probability=np.array([0.5, 0.2]), calibrated=True, alert=np.array([True, False]),
    )
    with writer.transaction() as tx:
        writer.put_scores(tx, batch, cycle_id=1)
        assert reader.patient_scores("p1") == []
    assert reader.patient_scores("p1") == [{
        "tick": T0.timestamp(), "model": "m@1", "role": "active", "iculos": 3,
        "raw_probability": 0.4, "probability": 0.5, "calibrated": True, "alert": True}]
    assert writer.count("alerts") == 1 and writer.count("scores") == 2
    with pytest.raises(sqlite3.OperationalError):
        reader.conn.execute("DELETE FROM scores")
    writer.close()
    reader.close()


def versioned(rid, value, *, version=NO_VERSION, last_updated=NO_TIME, seq=0, variable=HR):
    """One value of one version of a resource, effective 1 h after T0 (patient p1)."""
    return ObservationBatch(
        patient=np.array(["p1"], dtype=object), variable=np.array([variable], dtype=np.int8),
        effective=np.array([to_micros(T0) + 3_600_000_000], dtype=np.int64),
        value=np.array([value], dtype=float), resource_id=np.array([rid], dtype=object),
        last_updated=np.array([last_updated], dtype=np.int64), seq=np.array([seq], np.int64),
        version=np.array([version], dtype=np.int64),
    )


def put(store, batch):
    with store.transaction() as tx:
        return store.put_observations(tx, batch)


def test_a_late_older_version_does_not_replace_the_stored_newer_one(store):
    put(store, versioned("x", 83.0, version=3))
    kept, replaced = put(store, versioned("x", 81.0, version=1))  # the original, read later
    assert len(kept) == 0 and replaced == frozenset()
    assert stored(store) == [("x", HR, "p1", 83.0)]
    kept, replaced = put(store, versioned("x", 84.0, version=4))
    assert kept.value.tolist() == [84.0] and replaced == frozenset({"x"})
    assert stored(store) == [("x", HR, "p1", 84.0)]
    # the version keys are stored and read back with the values
    back = store.observations(["p1"], since=0, until=2**62)
    assert back.version.tolist() == [4] and back.issued.tolist() == [NO_TIME]


def test_by_last_updated_when_a_version_has_no_version_id(store):
    put(store, versioned("x", 83.0, version=3, last_updated=to_micros(T0) + 30))
    put(store, versioned("x", 82.0, last_updated=to_micros(T0) + 20))
    assert stored(store) == [("x", HR, "p1", 83.0)]
    put(store, versioned("x", 85.0, version=2, last_updated=to_micros(T0) + 40))
    assert stored(store) == [("x", HR, "p1", 83.0)]  # both have a versionId: 3 > 2
    put(store, versioned("x", 86.0, last_updated=to_micros(T0) + 40))
    assert stored(store) == [("x", HR, "p1", 86.0)]  # one has none: lastUpdated decides


def test_a_stored_deletion_keeps_an_older_version_out_and_a_newer_one_back_in(store):
    put(store, versioned("x", 80.0, version=1))
    kept, replaced = put(store, replace(ObservationBatch(), deletions=(
        Deletion("x", "p1", 0, version=2),)))
    assert replaced == frozenset({"x"}) and stored(store) == []
    assert store.count("deletions") == 1
    kept, replaced = put(store, versioned("x", 80.0, version=1))  # a late page: still deleted
    assert len(kept) == 0 and stored(store) == []
    # an older deletion does not remove a newer stored version
    put(store, versioned("x", 86.0, version=3))
    assert stored(store) == [("x", HR, "p1", 86.0)] and store.count("deletions") == 0
    put(store, replace(ObservationBatch(), deletions=(Deletion("x", "p1", 0, version=2),)))
    assert stored(store) == [("x", HR, "p1", 86.0)]


def test_deletions_are_pruned_with_the_values(store):
    gone = Deletion("x", "p1", 0, last_updated=to_micros(T0))
    put(store, replace(ObservationBatch(), deletions=(gone, Deletion("y", "p1", 1))))
    with store.transaction() as tx:
        store.prune(tx, before=T0.timestamp() + 1)
    # the one with a time goes; one without a time is kept (it cannot be placed in time)
    assert [r for (r,) in store.conn.execute("SELECT resource_id FROM deletions")] == ["y"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 6), st.booleans()),
                min_size=1, max_size=12, unique_by=lambda t: t[:2]),
       st.integers(1, 4))
def test_property_cycles_in_any_order_store_the_newest_version(tmp_path_factory, versions, k):
    """(resource, versionId, entered in error) read in ``k`` cycles in the order given."""
    with StateStore.open(f"sqlite:///{tmp_path_factory.mktemp('p') / 's.db'}") as s:
        for part in np.array_split(np.arange(len(versions)), k):
            rows = [versions[i] for i in part]
            kept = [versioned(r, float(v), version=v, seq=j) for j, (r, v, gone) in
                    enumerate(rows) if not gone]
            dels = tuple(Deletion(r, "p1", j, version=v) for j, (r, v, gone) in enumerate(rows)
                         if gone)
            # one reading order for values and deletions, as the adapter numbers them
            seq = np.array([j for j, (_, _, gone) in enumerate(rows) if not gone], np.int64)
            batch = replace(ObservationBatch.concat(kept), seq=seq) if kept else ObservationBatch()
            put(s, replace(batch, deletions=dels))
        want = []
        for rid in sorted({r for r, _, _ in versions}):
            v, gone = max((v, gone) for r, v, gone in versions if r == rid)
            if not gone:
                want.append((rid, HR, "p1", float(v)))
        assert stored(s) == want
