"""The state store at start: one writer, a sound file, a claimed tick, one-line errors."""

import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from vigil.core.errors import ConfigError
from vigil.runtime.store import StateStore


def url(path):
    return f"sqlite:///{path}"


@pytest.mark.parametrize(("kind", "other", "who"), [("cycles", "models", "serve or replay"),
                                                     ("models", "cycles", "model install")])
def test_a_second_writer_is_refused_until_the_first_closes(tmp_path, kind, other, who):
    first = StateStore.open(url(tmp_path / "s.db"), lock=kind)
    with pytest.raises(ConfigError, match=rf"in use by another vigil process \({who}"):
        StateStore.open(url(tmp_path / "s.db"), lock=kind)
    # readers, and the other lock's holder (a promotion while serving), are not locked out
    with StateStore.open(url(tmp_path / "s.db"), read_only=True) as reader:
        assert reader.cycles() == []
    StateStore.open(url(tmp_path / "s.db"), lock=other).close()
    first.close()
    StateStore.open(url(tmp_path / "s.db"), lock=kind).close()


def test_the_lock_dies_with_its_process_even_on_kill_9(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from vigil.runtime.store import StateStore
            store = StateStore.open("sqlite:///{tmp_path / 's.db'}", lock="cycles")
            print("locked", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match="in use by another vigil process"):
            StateStore.open(url(tmp_path / "s.db"), lock="cycles")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert (tmp_path / "s.db.cycles.lock").exists()  # the file stays; the lock does not
    StateStore.open(url(tmp_path / "s.db"), lock="cycles").close()


def test_check_and_claim_of_a_tick_are_one_transaction(tmp_path):
    a = StateStore.open(url(tmp_path / "s.db"))
    b = StateStore.open(url(tmp_path / "s.db"))
    cid = a.claim_cycle(900.0)
    assert cid is not None
    with a.transaction() as tx:
        a.finish_cycle(tx, cid, status="scored")
    assert b.claim_cycle(900.0) is None  # committed: nobody scores the tick again
    # a claim waits for a writer holding the database, then sees its commit
    a.conn.execute("BEGIN IMMEDIATE")
    b.conn.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        b.claim_cycle(1800.0)
    a.conn.execute("ROLLBACK")
    assert b.claim_cycle(1800.0) is not None
    a.close()
    b.close()


def test_a_damaged_store_is_refused_with_one_line(tmp_path):
    path = tmp_path / "s.db"
    with StateStore.open(url(path)) as store:
        with store.transaction() as tx:
            tx.executemany("INSERT INTO quarantine (cycle_id, resource_type, resource_id, reason) "
                           "VALUES (1, 'Observation', ?, 'x')", ((f"o{i}",) for i in range(3000)))
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    data[3 * page + 100: 5 * page] = os.urandom(2 * page - 100)  # overwrite inside two pages
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"state store .*s\.db") as err:
        StateStore.open(url(path))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"not a database at all" * 100,
                                     b"SQLite format 3\x00" + b"\xff" * 5000])
def test_a_file_that_is_not_a_database_is_refused_with_one_line(tmp_path, content):
    path = tmp_path / "s.db"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"cannot use the state store .*s\.db|damaged") as err:
        StateStore.open(url(path), lock="cycles")
    assert "\n" not in str(err.value)
    path.unlink()
    StateStore.open(url(path), lock="cycles").close()  # the lock was released on the error


def test_a_store_in_a_missing_or_unwritable_place_is_refused_with_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot use the state store"):
        StateStore.open(url(tmp_path / "file" / "s.db"))
    with pytest.raises(ConfigError, match="cannot use the state store"):
        StateStore.open(url(tmp_path / "missing.db"), read_only=True)
