"""Alarms: what the monitor found, their life cycle, their table, their Prometheus export.

A check produces a :class:`Finding` (kind, variable, severity, the measured
value and the threshold it crossed). The :class:`AlarmBook` turns findings
into :class:`Alarm` records: a finding with the same kind and variable as an
open alarm extends it (``last_seen``, highest severity so far), so
``first_seen`` stays the time the problem was first detected; an open alarm
with no finding for ``clear_after`` consecutive cycles is resolved.

Alarms live in the state store (table ``monitor_alarms``, created by the
store's migration :data:`MONITOR_MIGRATION`), beside ``monitor_stats``, the
statistics of every cycle the report charts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "MONITOR_MIGRATION",
    "Alarm",
    "AlarmBook",
    "AlarmCollector",
    "AlarmKind",
    "Finding",
    "Severity",
    "load_alarms",
    "load_stats",
    "put_alarms",
    "put_stats",
]

MONITOR_MIGRATION = """
    CREATE TABLE monitor_alarms (
        alarm_id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        variable TEXT NOT NULL,
        severity TEXT NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        resolved REAL,
        value REAL,
        threshold REAL,
        model TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX monitor_alarms_open ON monitor_alarms (resolved, kind, variable);
    CREATE TABLE monitor_stats (
        tick REAL NOT NULL,
        kind TEXT NOT NULL,
        variable TEXT NOT NULL,
        statistic TEXT NOT NULL,
        value REAL,
        PRIMARY KEY (tick, kind, variable, statistic)
    );
"""
"""Schema of the monitor's tables (one migration of :mod:`vigil.runtime.store`)."""


class AlarmKind(StrEnum):
    """What went wrong."""

    INPUT_DRIFT = "input_drift"
    MISSINGNESS = "missingness"
    SCORE_DRIFT = "score_drift"
    ALERT_RATE = "alert_rate"
    FEED_DOWN = "feed_down"
    UNIT_CHANGE = "unit_change"
    QUARANTINE = "quarantine"
    DISCRIMINATION = "discrimination"
    CALIBRATION = "calibration"
    CYCLE_INPUTS = "cycle_inputs"
    FEED_COVERAGE = "feed_coverage"
    HEADER_DRIFT = "header_drift"


class Severity(StrEnum):
    """How urgent: ``warning`` (look at it) or ``critical`` (act: a feed or the model is broken)."""

    WARNING = "warning"
    CRITICAL = "critical"


_RANK = {Severity.WARNING: 0, Severity.CRITICAL: 1}


@dataclass(frozen=True)
class Finding:
    """One check's verdict in one cycle.

    Attributes
    ----------
    kind : AlarmKind
    variable : str
        Grid variable, ``"score"``, or ``""`` when the finding is about no single variable.
    severity : Severity
    value : float
        The measured statistic (PSI, hours without data, AUROC, ...).
    threshold : float
        The level it crossed.
    message : str
        One line for the site team; never a patient identifier.
    """

    kind: AlarmKind
    variable: str
    severity: Severity
    value: float
    threshold: float
    message: str

    @property
    def key(self) -> tuple[str, str]:
        """``(kind, variable)``: what identifies an alarm."""
        return (str(self.kind), self.variable)


@dataclass(frozen=True)
class Alarm:
    """An alarm as stored and exported.

    Attributes
    ----------
    kind : AlarmKind
    variable : str
    severity : Severity
        Highest severity since ``first_seen``.
    first_seen, last_seen : float
        Cycle ticks (UTC seconds) of the first and latest finding.
    resolved : float or None
        Tick at which it cleared; None while open.
    value, threshold : float
        Of the latest finding.
    model : str
        ``name@version`` of the active model when it was raised.
    message : str
    alarm_id : int or None
        Row id once stored.
    """

    kind: AlarmKind
    variable: str
    severity: Severity
    first_seen: float
    last_seen: float
    resolved: float | None
    value: float
    threshold: float
    model: str
    message: str
    alarm_id: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        """``(kind, variable)``."""
        return (str(self.kind), self.variable)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the CLI's ``--json`` keys first)."""
        return {
            "kind": str(self.kind), "variable": self.variable, "severity": str(self.severity),
            "first_seen": self.first_seen, "last_seen": self.last_seen, "resolved": self.resolved,
            "value": self.value, "threshold": self.threshold, "model": self.model,
            "message": self.message,
        }


class AlarmBook:
    """Open alarms and their life cycle.

    Parameters
    ----------
    open_alarms : iterable of Alarm, optional
        Alarms still open in the store (after a restart).
    clear_after : int, optional
        Consecutive cycles without a finding that resolve an alarm.
    """

    def __init__(self, open_alarms: Iterable[Alarm] = (), *, clear_after: int = 4) -> None:
        self.clear_after = clear_after
        self._open: dict[tuple[str, str], Alarm] = {a.key: a for a in open_alarms}
        self._quiet: dict[tuple[str, str], int] = {}

    def update(
        self, findings: Sequence[Finding], *, tick: float, model: str, checked: Iterable[str] = ()
    ) -> tuple[list[Alarm], list[Alarm]]:
        """Apply one cycle's findings.

        Parameters
        ----------
        findings : sequence of Finding
        tick : float
            The cycle's tick (UTC seconds).
        model : str
        checked : iterable of str, optional
            Alarm kinds whose checks ran this cycle; open alarms of other kinds
            (a check that could not run, e.g. no labels yet) neither extend nor clear.

        Returns
        -------
        changed : list of Alarm
            New, extended and resolved alarms (to store).
        raised : list of Alarm
            The new ones only.
        """
        ran = {str(k) for k in checked} | {str(f.kind) for f in findings}
        changed, raised = [], []
        seen = set()
        for f in findings:
            seen.add(f.key)
            self._quiet.pop(f.key, None)
            old = self._open.get(f.key)
            if old is None:
                alarm = Alarm(f.kind, f.variable, f.severity, tick, tick, None, f.value,
                              f.threshold, model, f.message)
                raised.append(alarm)
            else:
                worse = f.severity if _RANK[f.severity] > _RANK[old.severity] else old.severity
                alarm = replace(old, severity=worse, last_seen=tick, value=f.value,
                                threshold=f.threshold, message=f.message)
            self._open[f.key] = alarm
            changed.append(alarm)
        for key, alarm in list(self._open.items()):
            if key in seen or key[0] not in ran:
                continue
            quiet = self._quiet.get(key, 0) + 1
            self._quiet[key] = quiet
            if quiet >= self.clear_after:
                done = replace(alarm, resolved=tick)
                del self._open[key]
                del self._quiet[key]
                changed.append(done)
        return changed, raised

    def stored(self, alarms: Sequence[Alarm]) -> None:
        """Record the row ids the store gave to open alarms."""
        for a in alarms:
            if a.resolved is None and a.key in self._open:
                self._open[a.key] = a

    def open(self) -> list[Alarm]:
        """Open alarms, oldest first (safe to call from the ops endpoint's thread)."""
        alarms = list(self._open.values())  # one C-level copy: no iteration over a changing dict
        return sorted(alarms, key=lambda a: (a.first_seen, a.key))

    def __len__(self) -> int:
        return len(self._open)


def put_alarms(tx: sqlite3.Connection, alarms: Sequence[Alarm]) -> list[Alarm]:
    """Insert new alarms and update stored ones (inside the cycle's transaction).

    Returns
    -------
    list of Alarm
        The same alarms with their ``alarm_id``.
    """
    out = []
    for a in alarms:
        row = (str(a.kind), a.variable, str(a.severity), a.first_seen, a.last_seen, a.resolved,
               _num(a.value), _num(a.threshold), a.model, a.message)
        if a.alarm_id is None:
            cur = tx.execute(
                "INSERT INTO monitor_alarms (kind, variable, severity, first_seen, last_seen, "
                "resolved, value, threshold, model, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            out.append(replace(a, alarm_id=int(cur.lastrowid or 0)))
        else:
            tx.execute(
                "UPDATE monitor_alarms SET kind = ?, variable = ?, severity = ?, first_seen = ?, "
                "last_seen = ?, resolved = ?, value = ?, threshold = ?, model = ?, message = ? "
                "WHERE alarm_id = ?",
                (*row, a.alarm_id),
            )
            out.append(a)
    return out


def load_alarms(conn: sqlite3.Connection, *, open_only: bool = False) -> list[Alarm]:
    """Read the stored alarms, oldest first (only the open ones with ``open_only``)."""
    where = " WHERE resolved IS NULL" if open_only else ""
    rows = conn.execute(
        "SELECT alarm_id, kind, variable, severity, first_seen, last_seen, resolved, value, "
        f"threshold, model, message FROM monitor_alarms{where} ORDER BY first_seen, alarm_id"
    )
    return [
        Alarm(AlarmKind(k), v, Severity(s), float(f), float(ls), r, _float(val), _float(th), m, msg,
              alarm_id=int(i))
        for i, k, v, s, f, ls, r, val, th, m, msg in rows
    ]


def put_stats(
    tx: sqlite3.Connection, tick: float, rows: Iterable[tuple[str, str, str, float]]
) -> None:
    """Store one cycle's statistics: ``(kind, variable, statistic, value)``."""
    tx.executemany(
        "INSERT OR REPLACE INTO monitor_stats VALUES (?, ?, ?, ?, ?)",
        ((tick, k, v, s, _num(x)) for k, v, s, x in rows),
    )


def load_stats(conn: sqlite3.Connection) -> list[tuple[float, str, str, str, float]]:
    """Every stored statistic, ``(tick, kind, variable, statistic, value)``, by tick."""
    rows = conn.execute(
        "SELECT tick, kind, variable, statistic, value FROM monitor_stats ORDER BY tick, kind, "
        "variable, statistic"
    )
    return [(float(t), k, v, s, _float(x)) for t, k, v, s, x in rows]


def _num(x: float) -> float | None:
    x = float(x)
    return None if x != x or x in (float("inf"), float("-inf")) else x


def _float(x: float | None) -> float:
    return float("nan") if x is None else float(x)


class AlarmCollector(Collector):
    """Prometheus collector of the open alarms (register it in the runtime's registry).

    Exports ``vigil_monitor_alarm{kind, variable, severity}`` (1 per open
    alarm), ``vigil_monitor_alarm_first_seen_timestamp_seconds{kind, variable}``
    and ``vigil_monitor_alarms_open`` (their number).

    Parameters
    ----------
    source : callable returning a sequence of Alarm
        The open alarms, read at each scrape (e.g. ``monitor.open_alarms``).
    """

    def __init__(self, source: Callable[[], Sequence[Alarm]]) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the three metric families."""
        alarms = list(self.source())
        active = GaugeMetricFamily(
            "vigil_monitor_alarm", "Open monitoring alarm (1) by kind, variable and severity.",
            labels=["kind", "variable", "severity"],
        )
        first = GaugeMetricFamily(
            "vigil_monitor_alarm_first_seen_timestamp_seconds",
            "Tick at which an open alarm was first seen.", labels=["kind", "variable"],
        )
        for a in alarms:
            active.add_metric([str(a.kind), a.variable, str(a.severity)], 1.0)
            first.add_metric([str(a.kind), a.variable], a.first_seen)
        count = GaugeMetricFamily("vigil_monitor_alarms_open", "Open monitoring alarms.",
                                  value=float(len(alarms)))
        yield active
        yield first
        yield count
