"""The runtime's state store: SQLite in WAL mode, with a versioned schema.

The tables and their migrations are in :mod:`vigil.runtime.schema`.

Every method that changes several tables takes the connection of one
:meth:`StateStore.transaction`, so a cycle commits all or nothing. Times are
UTC seconds since the epoch (float).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from vigil.core.errors import ConfigError
from vigil.fhir_adapter.records import (
    NO_TIME,
    Deletion,
    ObservationBatch,
    Quarantine,
    Stay,
    from_micros,
    to_micros,
)
from vigil.fhir_adapter.versions import latest_in_batch, newest
from vigil.runtime.schema import (
    COMMITTED,
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    TEMP_TABLES,
    VERSION_TABLE,
    CycleRow,
    ModelRow,
    sqlite_path,
)
from vigil.runtime.store_guard import WriterLock, check_integrity, store_errors

if TYPE_CHECKING:
    from vigil.runtime.contracts import ScoreBatch

_CHUNK = 50_000
_CACHE_KIB = 32 * 1024

__all__ = ["COMMITTED", "SCHEMA_VERSION", "CycleRow", "ModelRow", "StateStore", "sqlite_path"]


class StateStore:
    """The state store on one SQLite connection (one thread).

    Parameters
    ----------
    conn : sqlite3.Connection
        Opened by :meth:`open`, in autocommit mode; transactions are explicit.
    lock : WriterLock or None, optional
        Released by :meth:`close`.
    """

    def __init__(self, conn: sqlite3.Connection, *, lock: WriterLock | None = None) -> None:
        self.conn = conn
        self._lock = lock

    @classmethod
    def open(cls, url: str, *, read_only: bool = False, durable: bool = True,
             lock: str | None = None) -> StateStore:
        """Open (and create or migrate) the store at a ``sqlite:///PATH`` URL.

        ``durable`` syncs every commit to disk (``synchronous = FULL``), so a power
        loss loses no committed cycle; without it (replay, tests) a commit survives a
        killed process but not a power cut (WAL with ``synchronous = NORMAL``).
        ``lock`` takes one of the store's :class:`~vigil.runtime.store_guard.WriterLock`:
        ``"cycles"`` (one process running cycles per store) or ``"models"`` (one
        install or promotion at a time). A writable store is checked with
        ``PRAGMA quick_check`` first (:mod:`vigil.runtime.store_guard`).

        Raises
        ------
        ConfigError
            If the store cannot be opened, is damaged, is not a vigil store, or is
            locked by another process; one line naming the file.
        """
        path = sqlite_path(url)
        held = conn = None
        with store_errors(path):
            try:
                if path != ":memory:" and not read_only:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    held = WriterLock(path, kind=lock) if lock is not None else None
                target = f"file:{path}?mode=ro" if read_only else path
                conn = sqlite3.connect(target, uri=read_only, isolation_level=None,
                                       check_same_thread=False, timeout=30.0)
                conn.execute("PRAGMA busy_timeout = 30000")
                # A cache that holds the observation indexes of a large ICU (the default 2 MB
                # makes every insert of a cycle a page miss), and scratch tables in memory.
                conn.execute(f"PRAGMA cache_size = {-_CACHE_KIB}")
                conn.execute("PRAGMA temp_store = MEMORY")
                store = cls(conn, lock=held)
                if not read_only:
                    check_integrity(conn, path)
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                    conn.execute("PRAGMA foreign_keys = ON")
                    store._migrate()
                for statement in TEMP_TABLES:  # a read-only connection may write temp tables
                    conn.execute(statement)
            except BaseException:
                if conn is not None:
                    conn.close()
                if held is not None:
                    held.release()
                raise
        return store

    def close(self) -> None:
        """Close the connection and release the writer lock."""
        self.conn.close()
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: everything inside commits together or not at all."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- schema -------------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        """Return the schema version of the database."""
        row = self.conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        with self.transaction() as tx:
            tx.execute(VERSION_TABLE)
            current = self.schema_version
            if current == 0:
                other = tx.execute(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT IN ('schema_migrations', 'sqlite_sequence')"
                ).fetchone()[0]
                if other:
                    raise ConfigError(
                        f"expected a vigil state store (or an empty database), got a database "
                        f"with {other} other table(s) and no schema version; point store.url "
                        "at a new file",
                        key="store.url",
                    )
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"the state store has schema version {current} but this vigil knows up to "
                    f"{SCHEMA_VERSION}; run a newer vigil or point store.url at another database",
                    key="store.url",
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        tx.execute(statement)
                tx.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))

    # -- watermarks ---------------------------------------------------------------------------

    def watermark(self, source: str) -> str | None:
        """Return a source's stored watermark (None before the first good cycle)."""
        row = self.conn.execute(
            "SELECT value FROM watermarks WHERE source = ?", (source,)
        ).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def set_watermark(tx: sqlite3.Connection, source: str, value: str) -> None:
        """Store a source's watermark (inside a transaction)."""
        tx.execute(
            "INSERT INTO watermarks VALUES (?, ?, ?) ON CONFLICT (source) DO UPDATE "
            "SET value = excluded.value, updated = excluded.updated",
            (source, value, time.time()),
        )

    # -- census and observations --------------------------------------------------------------

    @staticmethod
    def put_census(tx: sqlite3.Connection, stays: Sequence[Stay], *, tick: float) -> None:
        """Record the census: these patients are in, every other one is out."""
        tx.execute("UPDATE patients SET in_census = 0 WHERE in_census = 1")
        tx.executemany(
            "INSERT INTO patients VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (patient_key) "
            "DO UPDATE SET encounter = excluded.encounter, icu_admission = excluded.icu_admission, "
            "unit = excluded.unit, gender = excluded.gender, birth_date = excluded.birth_date, "
            "hospital_admission = excluded.hospital_admission, last_seen = excluded.last_seen, "
            "in_census = 1",
            (
                (s.patient, s.encounter, to_micros(s.icu_admission), s.unit, s.gender,
                 s.birth_date.isoformat() if s.birth_date is not None else None,
                 to_micros(s.hospital_admission) if s.hospital_admission is not None else None,
                 tick, tick)
                for s in stays
            ),
        )

    def census_keys(self) -> list[str]:
        """Return the patients in the census as last recorded."""
        rows = self.conn.execute("SELECT patient_key FROM patients WHERE in_census = 1 ORDER BY 1")
        return [r[0] for r in rows]

    def census(self) -> tuple[Stay, ...]:
        """Return the stays of the census as last recorded, sorted by patient."""
        rows = self.conn.execute(
            "SELECT patient_key, encounter, icu_admission, unit, gender, birth_date, "
            "hospital_admission FROM patients WHERE in_census = 1 ORDER BY patient_key"
        )
        return tuple(
            Stay(
                patient=k, encounter=e, icu_admission=from_micros(a), unit=u, gender=g,
                birth_date=date.fromisoformat(b) if b is not None else None,
                hospital_admission=from_micros(h) if h is not None else None,
            )
            for k, e, a, u, g, b, h in rows
        )

    @staticmethod
    def put_observations(
        tx: sqlite3.Connection, batch: ObservationBatch
    ) -> tuple[ObservationBatch, frozenset[str]]:
        """Store a batch with the adapter's version rule (:mod:`vigil.fhir_adapter.versions`).

        Per resource id, the newest version (of the batch and of what is stored) wins: its
        values replace everything stored before. A stored version that is newer than the
        batch's is kept and the batch's is dropped. A
        :class:`~vigil.fhir_adapter.records.Deletion` that is the newest version removes the
        resource's values and is remembered (table ``deletions``), so an older version read
        later does not bring the resource back.

        Returns
        -------
        kept : ObservationBatch
            The values stored (no deletions).
        replaced : frozenset of str
            Resource ids whose earlier stored values are gone (replaced or deleted); empty
            but for deletions when nothing was stored before.
        """
        values, deletions = latest_in_batch(batch)
        # Every value is its resource's latest version in the common case: share the arrays.
        kept = replace(batch if values.all() else batch.take(values), deletions=())
        dels = [d for d, last in zip(batch.deletions, deletions, strict=True) if last]
        if _stored_anything(tx):
            kept, dels = _newer_than_stored(tx, kept, dels)
        deleted = frozenset(d.resource_id for d in dels)
        # A new version replaces every value of its resource (a panel may lose a component):
        # its stored values go, then the values it has are inserted. An empty table (the first
        # cycle of a new store) has nothing to remove, and nothing stored earlier is gone.
        replaced = deleted
        if tx.execute("SELECT 1 FROM observations LIMIT 1").fetchone() is not None:
            replaced = frozenset(kept.resource_id.tolist()) | deleted
            tx.executemany("DELETE FROM observations WHERE resource_id = ?",
                           ((r,) for r in sorted(replaced)))
        if len(kept) and tx.execute("SELECT 1 FROM deletions LIMIT 1").fetchone() is not None:
            tx.executemany("DELETE FROM deletions WHERE resource_id = ?",
                           ((r,) for r in sorted(set(kept.resource_id.tolist()))))
        tx.executemany(
            "INSERT OR REPLACE INTO deletions VALUES (?, ?, ?, ?, ?)",
            ((d.resource_id, d.patient, d.last_updated, d.version, d.issued) for d in dels),
        )
        version, issued = kept.column("version"), kept.column("issued")
        for lo in range(0, len(kept), _CHUNK):  # slices bound the Python objects alive at once
            hi = min(lo + _CHUNK, len(kept))
            tx.executemany(
                "INSERT OR REPLACE INTO observations VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                zip(kept.resource_id[lo:hi].tolist(), kept.variable[lo:hi].tolist(),
                    kept.patient[lo:hi].tolist(), kept.effective[lo:hi].tolist(),
                    kept.value[lo:hi].tolist(), kept.last_updated[lo:hi].tolist(),
                    version[lo:hi].tolist(), issued[lo:hi].tolist(), strict=True),
            )
        return kept, replaced

    def observations(
        self, patient_keys: Sequence[str], *, since: int, until: int
    ) -> ObservationBatch:
        """Read stored values of patients with ``since <= effective <= until`` (microseconds)."""
        keys = list(patient_keys)
        self.conn.execute("DELETE FROM wanted")
        self.conn.executemany("INSERT INTO wanted VALUES (?, ?)", enumerate(keys))
        cursor = self.conn.execute(
            "SELECT w.code, o.variable, o.effective, o.value, o.resource_id, o.last_updated, "
            "o.version, o.issued FROM wanted w JOIN observations o "
            "ON o.patient_key = w.patient_key AND o.effective >= ? AND o.effective <= ?",
            (since, until),
        )
        parts = []
        while rows := cursor.fetchmany(_CHUNK):  # slices bound the Python objects alive at once
            code, variable, effective, value, rid, lu, version, issued = zip(*rows, strict=True)
            n = len(rows)
            parts.append((np.fromiter(code, np.int64, n), np.fromiter(variable, np.int8, n),
                          np.fromiter(effective, np.int64, n), np.fromiter(value, np.float64, n),
                          np.fromiter(rid, object, n), np.fromiter(lu, np.int64, n),
                          np.fromiter(version, np.int64, n), np.fromiter(issued, np.int64, n)))
        self.conn.execute("DELETE FROM wanted")
        if not parts:
            return ObservationBatch()
        code, variable, effective, value, rid, lu, version, issued = (
            np.concatenate(c) for c in zip(*parts, strict=True)
        )
        # One sequence number per resource, as the adapter numbers what it reads: the values
        # of one Observation (a panel's components) are one version, kept or dropped together.
        seq = pd.factorize(pd.Series(rid, dtype=object, copy=False), sort=False)[0]
        return ObservationBatch(
            patient=np.asarray(keys, dtype=object)[code],
            variable=variable,
            effective=effective,
            value=value,
            resource_id=rid,
            last_updated=lu,
            seq=seq.astype(np.int64),
            version=version,
            issued=issued,
        )

    def count(self, table: str) -> int:
        """Count the rows of a table."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLES)}")
        return int(self.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    @staticmethod
    def prune(tx: sqlite3.Connection, *, before: float) -> int:
        """Delete what is older than ``before`` (epoch seconds): observations, gone patients."""
        n = tx.execute(
            "DELETE FROM observations WHERE effective < ?", (int(before * 1_000_000),)
        ).rowcount
        # a deletion is remembered while a version it replaced could still arrive and count
        tx.execute("DELETE FROM deletions WHERE last_updated <> ? AND last_updated < ?",
                   (NO_TIME, int(before * 1_000_000)))
        tx.execute("DELETE FROM patients WHERE in_census = 0 AND last_seen < ?", (before,))
        tx.execute("DELETE FROM outbox WHERE sent IS NOT NULL AND tick < ?", (before,))
        return int(n)

    @staticmethod
    def put_quarantine(
        tx: sqlite3.Connection, cycle_id: int, records: Iterable[Quarantine]
    ) -> None:
        """Record rejected resources (type, id and reason; no patient identifier)."""
        tx.executemany(
            "INSERT INTO quarantine (cycle_id, resource_type, resource_id, reason) "
            "VALUES (?, ?, ?, ?)",
            ((cycle_id, q.resource_type, q.resource_id, q.reason) for q in records),
        )

    # -- scores and alerts --------------------------------------------------------------------

    @staticmethod
    def put_scores(tx: sqlite3.Connection, scores: ScoreBatch, *, cycle_id: int) -> None:
        """Store one model's scores, and the alerts when it is the active model."""
        n = len(scores)
        tick = scores.tick.timestamp()
        tx.executemany(
            "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            zip(scores.patient_keys, [tick] * n, [scores.model] * n, [scores.role] * n,
                scores.iculos.tolist(), scores.raw_probability.tolist(),
                scores.probability.tolist(), [int(scores.calibrated)] * n,
                scores.alert.astype(int).tolist(), [cycle_id] * n, strict=True),
        )
        if scores.role == "active":
            tx.executemany(
                "INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?, ?)",
                (
                    (scores.patient_keys[i], tick, scores.model, float(scores.probability[i]),
                     cycle_id)
                    for i in np.flatnonzero(scores.alert)
                ),
            )

    def alert_state(self, model: str) -> dict[str, tuple[float | None, bool]]:
        """Return what the alert policy remembers per patient: ``(last alert, armed)``."""
        rows = self.conn.execute(
            "SELECT patient_key, last_alert, armed FROM alert_state WHERE model = ?", (model,)
        )
        return {k: (t, bool(a)) for k, t, a in rows}

    @staticmethod
    def put_alert_state(
        tx: sqlite3.Connection, model: str, states: Iterable[tuple[str, float | None, bool]]
    ) -> None:
        """Store the policy state: ``(patient_key, last alert time, armed)``."""
        tx.executemany(
            "INSERT OR REPLACE INTO alert_state VALUES (?, ?, ?, ?)",
            ((k, model, t, int(a)) for k, t, a in states),
        )

    def patient_scores(self, patient_key: str, *, limit: int = 96) -> list[dict[str, Any]]:
        """Return the most recent scores of one patient, newest first."""
        rows = self.conn.execute(
            "SELECT tick, model, role, iculos, raw_probability, probability, calibrated, alert "
            "FROM scores WHERE patient_key = ? ORDER BY tick DESC, model LIMIT ?",
            (patient_key, limit),
        )
        names = ("tick", "model", "role", "iculos", "raw_probability", "probability",
                 "calibrated", "alert")
        out = [dict(zip(names, r, strict=True)) for r in rows]
        for d in out:
            d["calibrated"], d["alert"] = bool(d["calibrated"]), bool(d["alert"])
        return out

    def scores_frame(self, *, role: str | None = "active") -> pd.DataFrame:
        """Return all stored scores (of one role), ordered by tick and patient."""
        where, params = ("WHERE role = ?", (role,)) if role is not None else ("", ())
        return pd.read_sql_query(
            f"SELECT * FROM scores {where} ORDER BY tick, patient_key, model", self.conn,
            params=params,
        )

    # -- cycles -------------------------------------------------------------------------------

    def claim_cycle(self, tick: float) -> int | None:
        """Record a cycle of ``tick`` as running, unless one has committed it; returns its id.

        The check and the claim are one transaction (committed at once, so a crash
        leaves a trace): no two claims of a tick both see it uncommitted.
        Returns None when the tick was already committed.
        """
        with self.transaction() as tx:
            if self._committed(tx, tick):
                return None
            cur = tx.execute(
                "INSERT INTO cycles (tick, started, status) VALUES (?, ?, 'running')",
                (tick, time.time()),
            )
        return int(cur.lastrowid or 0)

    @staticmethod
    def finish_cycle(
        tx: sqlite3.Connection,
        cycle_id: int,
        *,
        status: str,
        reason: str | None = None,
        counts: dict[str, int] | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        """Set a cycle's status, counts and timings (inside a transaction)."""
        tx.execute(
            "UPDATE cycles SET status = ?, reason = ?, finished = ?, counts = ?, timings = ? "
            "WHERE cycle_id = ?",
            (status, reason, time.time(), json.dumps(counts or {}, sort_keys=True),
             json.dumps({k: round(v, 6) for k, v in (timings or {}).items()}, sort_keys=True),
             cycle_id),
        )

    def mark_interrupted(self) -> int:
        """Record the cycles a stopped process left unfinished; returns how many.

        ``running`` (nothing was committed) becomes ``interrupted``; ``scored``
        (committed, write-back not finished) becomes ``writeback_interrupted``, its
        RiskAssessments staying queued for the next cycle.
        """
        now = time.time()
        with self.transaction() as tx:
            n = tx.execute(
                "UPDATE cycles SET status = 'interrupted', reason = 'the process stopped during "
                "the cycle; nothing of it was committed', finished = ? WHERE status = 'running'",
                (now,),
            ).rowcount
            n += tx.execute(
                "UPDATE cycles SET status = 'writeback_interrupted', reason = 'the process stopped "
                "during write-back; the queued RiskAssessments go with the next cycle', "
                "finished = ? WHERE status = 'scored'",
                (now,),
            ).rowcount
        return int(n)

    @staticmethod
    def _committed(conn: sqlite3.Connection, tick: float) -> bool:
        """Whether a cycle of this tick has committed its scores (read on ``conn``)."""
        row = conn.execute(
            f"SELECT 1 FROM cycles WHERE tick = ? AND status IN ({', '.join('?' * len(COMMITTED))})"
            " LIMIT 1",
            (tick, *COMMITTED),
        ).fetchone()
        return row is not None

    def last_committed_tick(self) -> float | None:
        """Return the latest tick whose scores are committed (None: none yet)."""
        row = self.conn.execute(
            f"SELECT max(tick) FROM cycles WHERE status IN ({', '.join('?' * len(COMMITTED))})",
            COMMITTED,
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def cycles(self, *, limit: int | None = None) -> list[CycleRow]:
        """Return the recorded cycles, oldest first (the last ``limit`` ones)."""
        sql = "SELECT * FROM cycles ORDER BY cycle_id DESC"
        rows = self.conn.execute(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        out = [
            CycleRow(int(c), float(t), float(s), f, st, r, json.loads(n), json.loads(tm))
            for c, t, s, f, st, r, n, tm in rows
        ]
        return out[::-1]

    def last_good_cycle(self) -> CycleRow | None:
        """Return the most recent cycle that scored and wrote back."""
        row = self.conn.execute(
            "SELECT * FROM cycles WHERE status = 'ok' ORDER BY cycle_id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        c, t, s, f, st, r, n, tm = row
        return CycleRow(int(c), float(t), float(s), f, st, r, json.loads(n), json.loads(tm))

    # -- outbox -------------------------------------------------------------------------------

    @staticmethod
    def enqueue(
        tx: sqlite3.Connection, cycle_id: int, items: Iterable[tuple[str, float, str]]
    ) -> None:
        """Queue resources to write back: ``(resource id, tick, JSON body)``.

        Re-queuing an id replaces its body and marks it pending again.
        """
        tx.executemany(
            "INSERT INTO outbox VALUES (?, ?, ?, ?, NULL) ON CONFLICT (resource_id) DO UPDATE "
            "SET cycle_id = excluded.cycle_id, body = excluded.body, sent = NULL",
            ((rid, cycle_id, tick, body) for rid, tick, body in items),
        )

    def pending(self) -> list[tuple[str, str]]:
        """Return resources not written back yet, oldest tick first: ``(id, JSON)``."""
        rows = self.conn.execute(
            "SELECT resource_id, body FROM outbox WHERE sent IS NULL ORDER BY tick, resource_id"
        )
        return [(str(i), str(b)) for i, b in rows]

    def mark_sent(self, resource_ids: Sequence[str]) -> None:
        """Record that resources were written back."""
        now = time.time()
        with self.transaction() as tx:
            tx.executemany(
                "UPDATE outbox SET sent = ? WHERE resource_id = ?", ((now, i) for i in resource_ids)
            )

    # -- models -------------------------------------------------------------------------------

    def models(self) -> list[ModelRow]:
        """Return the installed models, newest first."""
        rows = self.conn.execute(
            "SELECT name, version, path, model_sha256, calibration, role, installed, task "
            "FROM models ORDER BY installed DESC, name, version")
        return [ModelRow(n, v, p, s, c, r, float(i), t) for n, v, p, s, c, r, i, t in rows]

    def put_model(self, row: ModelRow) -> None:
        """Add or replace an installed model."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO models (name, version, path, model_sha256, calibration, "
                "role, installed, task) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (row.name, row.version, row.path, row.model_sha256, row.calibration, row.role,
                 row.installed, row.task),
            )

    def set_role(self, name: str, version: str, role: str) -> None:
        """Give a model a role; the model of its task that held it (``active``, ``shadow``) retires.

        Roles are per task: promoting an imaging model leaves the sepsis model's role alone.
        """
        with self.transaction() as tx:
            if role in ("active", "shadow"):
                tx.execute(
                    "UPDATE models SET role = 'retired' WHERE role = ? AND task = (SELECT task "
                    "FROM models WHERE name = ? AND version = ?)", (role, name, version))
            tx.execute(
                "UPDATE models SET role = ? WHERE name = ? AND version = ?", (role, name, version)
            )


def _stored_anything(tx: sqlite3.Connection) -> bool:
    """Whether any value or deletion is stored (a new store has none to compare with)."""
    return any(tx.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() is not None
               for t in ("observations", "deletions"))


def _stored_versions(tx: sqlite3.Connection, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """``(resource_id, version, last_updated, issued)`` of the stored version of each id."""
    out: list[tuple[Any, ...]] = []
    for lo in range(0, len(ids), 500):  # bound the SQL parameters per statement
        part = ids[lo:lo + 500]
        marks = ", ".join("?" * len(part))
        for table in ("observations", "deletions"):
            out.extend(tx.execute(
                f"SELECT DISTINCT resource_id, version, last_updated, issued FROM {table} "
                f"WHERE resource_id IN ({marks})", part))
    return out


def _newer_than_stored(
    tx: sqlite3.Connection, kept: ObservationBatch, dels: list[Deletion]
) -> tuple[ObservationBatch, list[Deletion]]:
    """Keep the values and deletions that are newer than the stored version of their resource.

    The stored version counts as read before the batch (it came in an earlier cycle).
    """
    ids = sorted(set(kept.resource_id.tolist()) | {d.resource_id for d in dels})
    stored = _stored_versions(tx, ids)
    if not stored:
        return kept, dels
    s_rid, s_version, s_lu, s_issued = (list(c) for c in zip(*stored, strict=True))
    first = int(min([*kept.seq.tolist(), *(d.seq for d in dels)])) - 1
    n_s, n_k = len(stored), len(kept)
    mask = newest(
        np.array(s_rid + kept.resource_id.tolist() + [d.resource_id for d in dels], dtype=object),
        np.concatenate([np.full(n_s, first, dtype=np.int64), kept.seq,
                        np.array([d.seq for d in dels], dtype=np.int64)]),
        version=np.array(s_version + kept.column("version").tolist()
                         + [d.version for d in dels], dtype=np.int64),
        last_updated=np.array(s_lu + kept.last_updated.tolist() + [d.last_updated for d in dels],
                              dtype=np.int64),
        issued=np.array(s_issued + kept.column("issued").tolist() + [d.issued for d in dels],
                        dtype=np.int64),
    )
    keep = mask[n_s:n_s + n_k]
    return (kept if keep.all() else kept.take(keep),
            [d for d, won in zip(dels, mask[n_s + n_k:], strict=True) if won])
