"""The imaging runtime's tables in the state store: scored studies and instance records.

Migration 4 of :mod:`vigil.runtime.schema` (:data:`IMAGING_MIGRATION`):

``imaging_studies``
    One row per study, model (``name@version``) and role: the study's probability
    (the highest of its instances), the site-calibrated decision, how many image
    instances were scored and quarantined, the digest of the image instances it saw
    (:func:`instances_digest`: a study re-announced with other image instances is
    scored again), and ``status``: ``done``, or ``retry`` when a sink failed (the
    next poll fetches, scores and writes it again; the row is replaced, never added).
``imaging_instances``
    One :class:`~vigil.runtime.study_contracts.InstanceRecord` per instance and model
    (headers, input histogram, probabilities, quarantine reason), for the drift
    monitor; pruned after ``store.retention_hours`` as observations are.

The source's cursor is a row of the store's ``watermarks`` (``imaging:<source name>``),
written in the transaction that records the studies of the page it covers.
Identifiers (study UID, patient key) are data here, never logged.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from vigil.dicom_adapter.headers import HeaderRecord
from vigil.runtime.study_contracts import InstanceRecord, StudyRef, StudyScore

__all__ = [
    "IMAGING_MIGRATION",
    "StudyRow",
    "cursor_key",
    "instance_records",
    "instances_digest",
    "prune_instances",
    "put_study",
    "retry_studies",
    "studies_rows", "study_rows",
]

IMAGING_MIGRATION = """
    ALTER TABLE models ADD COLUMN task TEXT NOT NULL DEFAULT 'sepsis';
    CREATE TABLE imaging_studies (
        study_uid TEXT NOT NULL,
        model TEXT NOT NULL,
        role TEXT NOT NULL,
        source_id TEXT NOT NULL,
        patient_key TEXT NOT NULL,
        accession TEXT,
        modalities TEXT NOT NULL,
        scored_at REAL NOT NULL,
        probability REAL,
        positive INTEGER NOT NULL,
        threshold REAL NOT NULL,
        calibrated INTEGER NOT NULL,
        n_scored INTEGER NOT NULL,
        n_quarantined INTEGER NOT NULL,
        instances TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT,
        PRIMARY KEY (study_uid, model, role)
    );
    CREATE INDEX imaging_studies_status ON imaging_studies (status);
    CREATE TABLE imaging_instances (
        study_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        model TEXT NOT NULL,
        scored_at REAL NOT NULL,
        modality TEXT NOT NULL,
        manufacturer TEXT NOT NULL,
        model_name TEXT NOT NULL,
        bits_stored INTEGER NOT NULL,
        photometric TEXT NOT NULL,
        pixel_spacing_mm REAL,
        transfer_syntax TEXT NOT NULL,
        histogram TEXT NOT NULL,
        raw_probability REAL,
        probability REAL,
        quarantine_reason TEXT,
        PRIMARY KEY (study_uid, sop_instance_uid, model)
    );
    CREATE INDEX imaging_instances_time ON imaging_instances (scored_at);
"""
"""Migration 4: the imaging runtime's tables, and the task of each installed model."""


def cursor_key(source_name: str) -> str:
    """Return the ``watermarks`` row of an imaging source's cursor."""
    return f"imaging:{source_name}"


def instances_digest(sop_instance_uids: Iterable[str]) -> str:
    """SHA-256 of the sorted image instance UIDs of a study (what "the same study" means)."""
    return hashlib.sha256("\n".join(sorted(set(sop_instance_uids))).encode()).hexdigest()


@dataclass(frozen=True)
class StudyRow:
    """A recorded study score (one model and role)."""

    study: StudyRef
    model: str
    role: str
    scored_at: float
    probability: float
    positive: bool
    n_scored: int
    n_quarantined: int
    instances: str
    status: str
    attempts: int

    def __repr__(self) -> str:  # no identifiers in logs
        return f"StudyRow(model={self.model!r}, role={self.role!r}, status={self.status!r})"


_STUDY_COLUMNS = ("study_uid, source_id, patient_key, accession, modalities, model, role, "
                  "scored_at, probability, positive, n_scored, n_quarantined, instances, status, "
                  "attempts")


def _study_row(r: Sequence[object]) -> StudyRow:
    uid, sid, key, acc, mods, model, role, at, p, pos, n, q, digest, status, attempts = r
    ref = StudyRef(str(uid), str(sid), str(key), tuple(json.loads(str(mods))),
                   None if acc is None else str(acc))
    return StudyRow(ref, str(model), str(role), float(at),  # type: ignore[arg-type]
                    float("nan") if p is None else float(p), bool(pos),  # type: ignore[arg-type]
                    int(n), int(q), str(digest), str(status), int(attempts))  # type: ignore[call-overload]


def study_rows(conn: sqlite3.Connection, study_uid: str) -> dict[tuple[str, str], StudyRow]:
    """Return the recorded scores of one study, by ``(model, role)``."""
    return studies_rows(conn, [study_uid])[study_uid]


def studies_rows(conn: sqlite3.Connection, study_uids: Sequence[str]
                 ) -> dict[str, dict[tuple[str, str], StudyRow]]:
    """:func:`study_rows` of several studies in one query per 500 (a page's, before its record)."""
    out: dict[str, dict[tuple[str, str], StudyRow]] = {u: {} for u in study_uids}
    uids = list(out)
    for lo in range(0, len(uids), 500):
        part = uids[lo:lo + 500]
        rows = conn.execute(f"SELECT {_STUDY_COLUMNS} FROM imaging_studies WHERE study_uid IN "
                            f"({', '.join('?' * len(part))})", part)
        for r in map(_study_row, rows):
            out[r.study.study_uid][(r.model, r.role)] = r
    return out


def retry_studies(conn: sqlite3.Connection, *, limit: int) -> list[StudyRef]:
    """Studies whose write-back failed, fewest attempts first (at most ``limit``)."""
    rows = conn.execute(
        "SELECT study_uid, source_id, patient_key, accession, modalities, MIN(attempts) "
        "FROM imaging_studies WHERE status = 'retry' GROUP BY study_uid "
        "ORDER BY MIN(attempts), MIN(scored_at) LIMIT ?", (limit,))
    return [StudyRef(str(u), str(s), str(k), tuple(json.loads(m)), a) for u, s, k, a, m, _ in rows]


def put_study(
    tx: sqlite3.Connection, score: StudyScore, records: Sequence[tuple[str, InstanceRecord]], *,
    instances: str, error: str | None,
) -> None:
    """Record one model's score of a study and its instance records (inside a transaction).

    Parameters
    ----------
    tx : sqlite3.Connection
        In a :meth:`~vigil.runtime.store.StateStore.transaction`.
    score : StudyScore
    records : sequence of (sop_instance_uid, InstanceRecord)
        Every image instance of the study (scored and quarantined).
    instances : str
        :func:`instances_digest` of the study's image instances.
    error : str or None
        The sink failure (no identifier); the study is then ``retry``.
    """
    ref = score.study
    prior = tx.execute(
        "SELECT attempts FROM imaging_studies WHERE study_uid = ? AND model = ? AND role = ?",
        (ref.study_uid, score.model, score.role)).fetchone()
    attempts = (int(prior[0]) if prior is not None else 0) + 1
    p = score.study_probability
    tx.execute(
        "INSERT OR REPLACE INTO imaging_studies VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (ref.study_uid, score.model, score.role, ref.source_id, ref.patient_key, ref.accession,
         json.dumps(list(ref.modalities)), score.scored_at.timestamp(), p if p == p else None,
         int(score.positive), score.threshold, int(score.calibrated),
         len(score.sop_instance_uids), len(score.quarantined), instances,
         "retry" if error else "done", attempts, error),
    )
    tx.execute("DELETE FROM imaging_instances WHERE study_uid = ? AND model = ?",
               (ref.study_uid, score.model))
    tx.executemany(
        "INSERT OR REPLACE INTO imaging_instances VALUES "
        "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ((ref.study_uid, uid, r.model, r.scored_at.timestamp(), h.modality, h.manufacturer,
          h.model_name, h.bits_stored, h.photometric,
          h.pixel_spacing_mm if h.pixel_spacing_mm == h.pixel_spacing_mm else None,
          h.transfer_syntax, json.dumps(r.histogram.tolist()),
          _or_none(r.raw_probability), _or_none(r.probability), r.quarantine_reason)
         for uid, r in records for h in (r.headers,)),
    )


def _or_none(x: float) -> float | None:
    return None if x != x else float(x)


def instance_records(
    conn: sqlite3.Connection, *, since: float = 0.0, model: str | None = None
) -> list[InstanceRecord]:
    """Return the instance records scored at or after ``since`` (epoch s), oldest first."""
    where, params = ("AND model = ?", (since, model)) if model is not None else ("", (since,))
    rows = conn.execute(
        "SELECT scored_at, model, modality, manufacturer, model_name, bits_stored, photometric, "
        "pixel_spacing_mm, transfer_syntax, histogram, raw_probability, probability, "
        f"quarantine_reason FROM imaging_instances WHERE scored_at >= ? {where} "
        "ORDER BY scored_at, study_uid, sop_instance_uid", params)
    nan = float("nan")
    return [
        InstanceRecord(
            scored_at=datetime.fromtimestamp(at, UTC), model=m,
            headers=HeaderRecord(mod, man, name, int(bits), phot,
                                 nan if sp is None else float(sp), ts),
            histogram=np.asarray(json.loads(hist), dtype=np.int64),
            raw_probability=nan if raw is None else float(raw),
            probability=nan if p is None else float(p), quarantine_reason=q)
        for at, m, mod, man, name, bits, phot, sp, ts, hist, raw, p, q in rows
    ]


def prune_instances(tx: sqlite3.Connection, *, before: float) -> int:
    """Delete instance records scored before ``before`` (epoch s); studies are kept."""
    return int(tx.execute("DELETE FROM imaging_instances WHERE scored_at < ?",
                          (before,)).rowcount)
