"""The state store's schema: its migrations, cycle statuses and row types.

Tables (migration 1): ``patients`` (the census as last seen), ``observations``
(mapped values within the retention window, one row per FHIR Observation id and
variable), ``scores`` and ``alerts`` (per patient, tick and model),
``alert_state`` (what the alert policy remembers), ``cycles`` (one record per
cycle), ``watermarks`` (how far each source has been read), ``quarantine``
(rejected resources, without patient identifiers), ``outbox`` (RiskAssessments
waiting to be written back) and ``models`` (installed model packages and their
roles). Migration 2 adds the monitor's tables
(:mod:`vigil.runtime.monitoring.alarms`). Migration 3 (:data:`VERSIONS_MIGRATION`)
keeps what orders the versions of a resource (:mod:`vigil.fhir_adapter.versions`):
``version`` and ``issued`` beside ``last_updated`` on ``observations``, and
``deletions``, the newest version of each resource that was entered in error, so
that an older version arriving later does not bring it back. Migration 4
(:data:`~vigil.runtime.imaging_store.IMAGING_MIGRATION`) adds the imaging runtime's
``imaging_studies`` and ``imaging_instances`` and a ``task`` column on ``models`` (an
imaging package never replaces the sepsis model's role). A migration is never edited once
released; a change is a new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vigil.core.errors import ConfigError
from vigil.runtime.imaging_store import IMAGING_MIGRATION
from vigil.runtime.monitoring.alarms import MONITOR_MIGRATION

__all__ = [
    "COMMITTED",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLES",
    "TEMP_TABLES",
    "VERSIONS_MIGRATION",
    "VERSION_TABLE",
    "CycleRow",
    "ModelRow",
    "sqlite_path",
]

VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, applied REAL NOT NULL)"
)
"""The table recording which migrations were applied (one row per version)."""

VERSIONS_MIGRATION = """
    ALTER TABLE observations ADD COLUMN version INTEGER NOT NULL DEFAULT -9223372036854775808;
    ALTER TABLE observations ADD COLUMN issued INTEGER NOT NULL DEFAULT -9223372036854775808;
    CREATE TABLE deletions (
        resource_id TEXT PRIMARY KEY,
        patient_key TEXT,
        last_updated INTEGER NOT NULL,
        version INTEGER NOT NULL,
        issued INTEGER NOT NULL
    );
"""
"""Migration 3: the version keys of stored values, and the deleted resources (the default
is the adapter's "unknown": ``NO_VERSION`` and ``NO_TIME``)."""

MIGRATIONS: tuple[str, ...] = (
    # 1: the first schema.
    """
    CREATE TABLE patients (
        patient_key TEXT PRIMARY KEY,
        encounter TEXT NOT NULL,
        icu_admission INTEGER NOT NULL,
        unit TEXT,
        gender TEXT,
        birth_date TEXT,
        hospital_admission INTEGER,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        in_census INTEGER NOT NULL
    );
    CREATE TABLE observations (
        resource_id TEXT NOT NULL,
        variable INTEGER NOT NULL,
        patient_key TEXT NOT NULL,
        effective INTEGER NOT NULL,
        value REAL NOT NULL,
        last_updated INTEGER NOT NULL,
        PRIMARY KEY (resource_id, variable)
    );
    CREATE INDEX observations_patient_time ON observations (patient_key, effective);
    CREATE INDEX observations_time ON observations (effective);
    CREATE TABLE cycles (
        cycle_id INTEGER PRIMARY KEY AUTOINCREMENT,
        tick REAL NOT NULL,
        started REAL NOT NULL,
        finished REAL,
        status TEXT NOT NULL,
        reason TEXT,
        counts TEXT NOT NULL DEFAULT '{}',
        timings TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX cycles_tick ON cycles (tick);
    CREATE TABLE scores (
        patient_key TEXT NOT NULL,
        tick REAL NOT NULL,
        model TEXT NOT NULL,
        role TEXT NOT NULL,
        iculos INTEGER NOT NULL,
        raw_probability REAL NOT NULL,
        probability REAL NOT NULL,
        calibrated INTEGER NOT NULL,
        alert INTEGER NOT NULL,
        cycle_id INTEGER NOT NULL,
        PRIMARY KEY (patient_key, tick, model)
    );
    CREATE INDEX scores_tick ON scores (tick);
    CREATE TABLE alerts (
        patient_key TEXT NOT NULL,
        tick REAL NOT NULL,
        model TEXT NOT NULL,
        probability REAL NOT NULL,
        cycle_id INTEGER NOT NULL,
        PRIMARY KEY (patient_key, tick, model)
    );
    CREATE TABLE alert_state (
        patient_key TEXT NOT NULL,
        model TEXT NOT NULL,
        last_alert REAL,
        armed INTEGER NOT NULL,
        PRIMARY KEY (patient_key, model)
    );
    CREATE TABLE watermarks (
        source TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE quarantine (
        quarantine_id INTEGER PRIMARY KEY AUTOINCREMENT,
        cycle_id INTEGER NOT NULL,
        resource_type TEXT,
        resource_id TEXT,
        reason TEXT NOT NULL
    );
    CREATE TABLE outbox (
        resource_id TEXT PRIMARY KEY,
        cycle_id INTEGER NOT NULL,
        tick REAL NOT NULL,
        body TEXT NOT NULL,
        sent REAL
    );
    CREATE INDEX outbox_pending ON outbox (sent, tick);
    CREATE TABLE models (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        path TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        calibration TEXT,
        role TEXT NOT NULL,
        installed REAL NOT NULL,
        PRIMARY KEY (name, version)
    );
    """,
    # 2: the drift and performance monitor's alarms and statistics.
    MONITOR_MIGRATION,
    # 3: what orders the versions of a resource, and the deleted resources.
    VERSIONS_MIGRATION,
    # 4: the imaging runtime (scored studies, instance records) and models keyed by task.
    IMAGING_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)
"""Schema version this vigil writes; older databases are migrated on open."""
TABLES = frozenset(re.findall(r"CREATE TABLE (\w+)", "\n".join(MIGRATIONS)))
"""Every table of the current schema."""
TEMP_TABLES = (
    # the patients of one window read
    "CREATE TEMP TABLE IF NOT EXISTS wanted (code INTEGER PRIMARY KEY, patient_key TEXT)",
)
"""Scratch tables of one connection (in memory; not part of the versioned schema)."""
COMMITTED = ("scored", "ok", "writeback_failed", "writeback_interrupted", "degraded")
"""Cycle statuses whose scores are in the store (the tick is never scored again)."""


@dataclass(frozen=True)
class CycleRow:
    """One cycle as recorded."""

    cycle_id: int
    tick: float
    started: float
    finished: float | None
    status: str
    reason: str | None
    counts: dict[str, int]
    timings: dict[str, float]


@dataclass(frozen=True)
class ModelRow:
    """An installed model package (``task``: the manifest's, ``sepsis`` or ``imaging``)."""

    name: str
    version: str
    path: str
    model_sha256: str
    calibration: str | None
    role: str
    installed: float
    task: str = "sepsis"

    @property
    def key(self) -> str:
        """``name@version``, the model's name in scores and alerts."""
        return f"{self.name}@{self.version}"


def sqlite_path(url: str) -> str:
    """Return the file of a ``sqlite:///PATH`` URL (``sqlite://`` or ``:memory:``: memory).

    Raises
    ------
    ConfigError
        For any other scheme (PostgreSQL URLs are not supported by this build).
    """
    if url in ("sqlite://", "sqlite:///:memory:", ":memory:"):
        return ":memory:"
    if url.startswith("sqlite:///"):
        return url[len("sqlite:///"):]
    raise ConfigError(
        f"expected store.url of the form sqlite:///PATH, got {url.split('://')[0]}://…; "
        "this build of vigil stores state in SQLite only",
        key="store.url",
    )
