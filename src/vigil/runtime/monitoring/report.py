"""The monitoring report: alarms and a chart per drifting variable, from a state store.

``vigil monitor report --db F --out DIR`` reads the monitor's tables
(:mod:`.alarms`) and writes ``DIR/index.html`` (or ``DIR/report.md``) with the
alarm table and one PNG per alarmed (kind, variable): the statistic that
raised it over time, its threshold, and a line at ``first_seen``. Needs
matplotlib (the ``runtime`` extra); nothing here is imported by the cycle.
"""

from __future__ import annotations

import html
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from vigil.core.errors import DataError
from vigil.runtime.monitoring.alarms import Alarm, AlarmKind, load_alarms, load_stats

__all__ = ["CHARTED", "MonitorReport", "load_report", "write_report"]

CHARTED: dict[AlarmKind, tuple[str, ...]] = {
    AlarmKind.INPUT_DRIFT: ("psi",),
    AlarmKind.SCORE_DRIFT: ("psi",),
    AlarmKind.MISSINGNESS: ("measured_rate", "measured_rate_ref"),
    AlarmKind.ALERT_RATE: ("flag_rate", "flag_rate_ref"),
    AlarmKind.FEED_DOWN: ("hours_since_value", "expected_interval"),
    AlarmKind.QUARANTINE: ("quarantined",),
    AlarmKind.UNIT_CHANGE: ("new_unit_values",),
    AlarmKind.DISCRIMINATION: ("auroc",),
    AlarmKind.CALIBRATION: ("observed_expected", "slope"),
}
"""Per alarm kind, the statistics its chart draws (the first is the one judged)."""


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="minutes")


@dataclass(frozen=True, eq=False)
class MonitorReport:
    """What the monitor stored.

    Attributes
    ----------
    alarms : list of Alarm
        Oldest first.
    stats : DataFrame
        Columns ``tick, kind, variable, statistic, value``.
    cycles : int
        Cycles with statistics.
    """

    alarms: list[Alarm]
    stats: pd.DataFrame
    cycles: int

    def __repr__(self) -> str:
        return f"MonitorReport(alarms={len(self.alarms)}, cycles={self.cycles})"

    def to_dict(self) -> dict[str, Any]:
        """``{"alarms": [{"kind", "variable", "severity", "first_seen", ...}], ...}``."""
        return {
            "alarms": [
                {**a.to_dict(), "first_seen": _iso(a.first_seen), "last_seen": _iso(a.last_seen),
                 "resolved": _iso(a.resolved)}
                for a in self.alarms
            ],
            "open": sum(a.resolved is None for a in self.alarms),
            "cycles": self.cycles,
        }


def load_report(path: str | Path) -> MonitorReport:
    """Read alarms and statistics from a state store file (read-only).

    Raises
    ------
    DataError
        If the file is missing or holds no monitor tables.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"expected a state store at {p}, found nothing; pass the --db of a "
                        "`vigil replay` or the store of `vigil serve`", source=str(p))
    conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
    try:
        alarms = load_alarms(conn)
        rows = load_stats(conn)
    except sqlite3.DatabaseError as exc:  # no such table, or not a (sound) database
        raise DataError(
            f"{p} holds no readable monitoring tables ({exc}); it was written by a vigil "
            "without the monitor, is not a vigil state store, or is damaged", source=str(p),
        ) from exc
    finally:
        conn.close()
    stats = pd.DataFrame(rows, columns=["tick", "kind", "variable", "statistic", "value"])
    return MonitorReport(alarms=alarms, stats=stats, cycles=int(stats["tick"].nunique()))


def _chart(report: MonitorReport, alarms: Sequence[Alarm], path: Path) -> bool:
    """One PNG for the alarms of one (kind, variable); False when nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = alarms[0]
    names = CHARTED.get(first.kind, ())  # cycle_inputs, feed_coverage: no statistic charted
    s = report.stats
    sel = s[(s["kind"] == str(first.kind)) & (s["variable"] == first.variable)
            & s["statistic"].isin(names)]
    if sel.empty or not names:
        return False
    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    for name in names:
        part = sel[sel["statistic"] == name].sort_values("tick")
        if part.empty:
            continue
        when = pd.to_datetime(part["tick"], unit="s", utc=True)
        ax.plot(when, part["value"], label=name.replace("_", " "), lw=1.2,
                ls="-" if name == names[0] else "--")
    for a in alarms:
        ax.axvline(pd.Timestamp(a.first_seen, unit="s", tz=UTC), color="tab:red", lw=1, alpha=0.7)
    if first.kind in (AlarmKind.INPUT_DRIFT, AlarmKind.SCORE_DRIFT, AlarmKind.DISCRIMINATION):
        ax.axhline(alarms[-1].threshold, color="grey", lw=0.8, ls=":", label="threshold")
    label = first.variable or "all"
    ax.set_title(f"{first.kind}: {label} (red: alarm first seen)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.tick_params(labelsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(report: MonitorReport, out: str | Path, *, fmt: str = "html") -> Path:
    """Write the page and the charts.

    Parameters
    ----------
    report : MonitorReport
    out : str or Path
        Directory (created).
    fmt : {"html", "md"}, optional

    Returns
    -------
    Path
        ``index.html`` or ``report.md``.
    """
    if fmt not in ("html", "md"):
        raise ValueError(f"expected fmt 'html' or 'md', got {fmt!r}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], list[Alarm]] = {}
    for a in report.alarms:
        groups.setdefault(a.key, []).append(a)
    charts: list[tuple[str, str]] = []
    for (kind, variable), alarms in groups.items():
        name = f"{kind}-{variable or 'all'}.png".replace("/", "_")
        if _chart(report, alarms, root / name):
            charts.append((f"{kind}: {variable or 'all'}", name))
    rows = [
        (str(a.kind), a.variable or "—", str(a.severity), _iso(a.first_seen) or "",
         _iso(a.resolved) or "open", a.message)
        for a in report.alarms
    ]
    head = ("kind", "variable", "severity", "first seen (UTC)", "resolved", "message")
    title = "vigil monitoring report"
    intro = (f"{report.cycles} monitored cycles, {len(report.alarms)} alarms "
             f"({sum(a.resolved is None for a in report.alarms)} open).")
    if fmt == "md":
        lines = [f"# {title}", "", intro, "", "| " + " | ".join(head) + " |",
                 "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
        for caption, file in charts:
            lines += ["", f"## {caption}", "", f"![{caption}]({file})"]
        page = root / "report.md"
        page.write_text("\n".join(lines) + "\n")
        return page
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    figures = "".join(
        f"<h2>{html.escape(c)}</h2><img src='{html.escape(f)}' alt='{html.escape(c)}'>"
        for c, f in charts
    )
    page = root / "index.html"
    page.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em;"
        "font-size:90%;vertical-align:top}</style></head><body>"
        f"<h1>{title}</h1><p>{html.escape(intro)}</p><table><tr>"
        + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{cells}</table>{figures}</body></html>\n"
    )
    return page
