"""Feed health: a variable that stops arriving, a unit that changes, a jump in quarantine.

Three checks, run every cycle on what the cycle fetched:

**Feed down.** Site-wide, a variable measured in a share ``r`` of patient-hours
arrives at about ``lambda = r * n`` values per hour with ``n`` patients in the
census. Were arrivals a Poisson process, ``g`` hours without a value would have
probability ``exp(-lambda g)``, below ``alpha`` once ``g > -ln(alpha) / lambda``.
Laboratory values arrive in batches (one blood draw, several results; rounds),
so silences are longer than Poisson's: the variable's *expected interval* is
the largest of that Poisson limit, ``gap_factor`` times the longest silence
seen during the site's first ``learn_hours`` (scaled by the mean census then
over the current one: fewer patients, longer silences), and
``min_gap_hours``; a longer silence reports the feed down. ``r`` and the
silences are the site's own, and a variable with fewer than
``min_arrivals`` values while learning is not judged, so a variable the site
rarely or never records (EtCO2 at some hospitals) raises nothing.

**Unit change.** The FHIR adapter converts every known unit to the canonical
one, so a correctly labelled change (temperature now sent in ``[degF]``) is
harmless to the model but worth knowing. The adapter records the source unit of
every value (:meth:`vigil.fhir_adapter.records.ObservationBatch.unit_counts`); a
unit not met during the first ``unit_hours`` raises a warning once at least
``min_count`` values came in it (summed over cycles: a sparse lab sends one or two
values a cycle), and the warning holds while the unit keeps arriving. A variable
the site did not send while learning learns its units from its first values.

**Quarantine jump.** A unit change the feed does *not* label (Fahrenheit
numbers still coded ``Cel``) puts values outside the plausible range, and the
adapter quarantines them with a reason naming the variable. The resources
quarantined in a cycle (each resource counted once, although the fetch
overlap reads it again) are counted per variable and compared with the mean
of earlier cycles: ``P(X >= count)`` under a Poisson law below ``alpha``
(with at least ``min_count`` resources) raises a critical alarm naming the
variable.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import special

from vigil.core.catalog import MEASURED
from vigil.runtime.monitoring.alarms import AlarmKind, Finding, Severity

__all__ = ["FeedHealth", "variable_in_reason"]

_NAMES = frozenset(MEASURED)
_NAMED = re.compile(r"\b(?:for|of|on a)\s+([A-Za-z][A-Za-z0-9_]*)")
_GENERAL = ""
"""The variable name used for quarantine not attributed to a variable."""


def variable_in_reason(reason: str) -> str:
    """Find the catalog variable a quarantine reason names (``""`` if none).

    Examples
    --------
    >>> variable_in_reason("value 98.6 Cel is outside the plausible range [25, 45] of Temp")
    'Temp'
    >>> variable_in_reason("no status")
    ''
    """
    for word in _NAMED.findall(reason):
        if word in _NAMES:
            return word
    return _GENERAL


class FeedHealth:
    """The three feed checks and what they remember between cycles.

    Call :meth:`start` at the first cycle: the site's silences are learned for
    the first ``learn_hours`` and only then judged; its units are learned for
    the first ``unit_hours``. Quarantine is judged from the first cycle.

    Parameters
    ----------
    alpha : float, optional
        Tail probability of the feed-down and quarantine tests.
    min_gap_hours : float, optional
        Shortest gap reported as a feed down (PhysioNet-derived feeds are hourly).
    gap_factor : float, optional
        Multiple of the longest learned silence that is still normal.
    learn_hours : float, optional
        Hours during which the longest silences are learned.
    unit_hours : float, optional
        Hours during which the units of each variable are learned.
    min_arrivals : int, optional
        Fewest values of a variable during learning before its feed is judged.
    min_count : int, optional
        Fewest values in a new unit, or quarantined resources, that raise an alarm.
    quarantine_floor : float, optional
        Smallest mean quarantine count per cycle assumed (a clean feed has mean 0).
    memory : int, optional
        Quarantined resource ids remembered to count each once.
    """

    def __init__(
        self,
        *,
        alpha: float = 1e-4,
        min_gap_hours: float = 2.0,
        gap_factor: float = 3.0,
        learn_hours: float = 72.0,
        unit_hours: float = 24.0,
        min_arrivals: int = 20,
        min_count: int = 3,
        quarantine_floor: float = 0.25,
        memory: int = 200_000,
    ) -> None:
        self.alpha, self.min_gap_hours, self.min_count = alpha, min_gap_hours, min_count
        self.gap_factor, self.learn_hours, self.unit_hours = gap_factor, learn_hours, unit_hours
        self.min_arrivals = min_arrivals
        self.quarantine_floor, self.memory = quarantine_floor, memory
        self.last_value: dict[str, float] = {}
        self.longest_gap: dict[str, float] = {}
        self.arrivals: dict[str, int] = {}
        self.baseline_units: dict[str, set[str]] = {}
        self._new_units: dict[tuple[str, str], tuple[int, float, float]] = {}
        self._census: list[int] = []
        self._learn_from = -math.inf
        self._gaps_until = self._units_until = math.inf
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._q_total: dict[str, float] = {}
        self._q_cycles = 0

    def start(self, now: float) -> None:
        """Begin learning at the first cycle (values from the hour before count)."""
        self._learn_from = now - 3600.0
        self._gaps_until = now + self.learn_hours * 3600.0
        self._units_until = now + self.unit_hours * 3600.0

    # -- feed down --------------------------------------------------------------------------------

    def observe_values(
        self, variables: Sequence[str] | NDArray[np.object_], effective_s: NDArray[np.floating],
        *, now: float,
    ) -> None:
        """Remember the latest effective time (UTC seconds) of every variable fetched.

        While learning, also count the values and the longest silence between them.
        """
        if len(variables) == 0:
            return
        learning = now < self._gaps_until
        names = np.asarray(variables, dtype=object)
        times = np.asarray(effective_s, dtype=np.float64)
        order = np.lexsort((times, names))
        names, times = names[order], times[order]
        cut = np.flatnonzero(names[1:] != names[:-1]) + 1
        for lo, hi in zip(np.r_[0, cut], np.r_[cut, names.size], strict=True):
            name = str(names[lo])
            last = self.last_value.get(name, -math.inf)
            new = times[lo:hi][times[lo:hi] > last]
            if new.size == 0:
                continue
            if learning:
                known = np.r_[last, new]
                known = known[known >= self._learn_from]
                self.arrivals[name] = self.arrivals.get(name, 0) + int(np.unique(new).size)
                if known.size >= 2:
                    gap = float(np.max(np.diff(known))) / 3600.0
                    self.longest_gap[name] = max(self.longest_gap.get(name, 0.0), gap)
            self.last_value[name] = float(new[-1])

    def expected_interval(self, name: str, rate: float, census: int) -> float:
        """Hours without a value after which a feed of this rate is reported down."""
        lam = rate * census
        if not lam > 0:
            return math.inf
        scale = float(np.mean(self._census)) / census if self._census else 1.0
        return max(self.min_gap_hours, -math.log(self.alpha) / lam,
                   self.gap_factor * self.longest_gap.get(name, 0.0) * scale)

    def feed_down(
        self, *, now: float, census: int, rates: Mapping[str, float]
    ) -> tuple[list[Finding], list[tuple[str, str, str, float]]]:
        """Variables whose values stopped arriving.

        Parameters
        ----------
        now : float
            The tick, UTC seconds.
        census : int
            Patients in the census.
        rates : mapping of str to float
            The site's share of patient-hours with a value, per variable (empty
            before the site's baseline is known: nothing is judged, nor while
            learning).

        Returns
        -------
        findings : list of Finding
        stats : list of (kind, variable, statistic, value)
            Hours since the last value, per variable.
        """
        learning = now < self._gaps_until
        if learning:
            self._census.append(census)
        findings: list[Finding] = []
        stats: list[tuple[str, str, str, float]] = []
        for name in MEASURED:
            last = self.last_value.get(name)
            if last is None:
                continue
            gap = max(0.0, (now - last) / 3600.0)
            stats.append((str(AlarmKind.FEED_DOWN), name, "hours_since_value", gap))
            if learning and last >= self._learn_from:  # a silence still open counts as learned
                self.longest_gap[name] = max(self.longest_gap.get(name, 0.0), gap)
            rate = rates.get(name, 0.0)
            if learning or census <= 0 or not rate > 0 \
                    or self.arrivals.get(name, 0) < self.min_arrivals:
                continue
            limit = self.expected_interval(name, rate, census)
            stats.append((str(AlarmKind.FEED_DOWN), name, "expected_interval", limit))
            if gap > limit:
                findings.append(Finding(
                    AlarmKind.FEED_DOWN, name, Severity.CRITICAL, gap, limit,
                    f"no {name} value for {gap:.1f} h; with {census} patients and {name} in "
                    f"{rate:.1%} of patient-hours one was expected within {limit:.1f} h "
                    f"(longest silence learned {self.longest_gap.get(name, 0.0):.1f} h); "
                    f"check the {name} interface",
                ))
        return findings, stats

    # -- units ------------------------------------------------------------------------------------

    def units(
        self, units: Mapping[str, Mapping[str, int]] | None, *, now: float
    ) -> tuple[list[Finding], list[tuple[str, str, str, float]]]:
        """Units never seen while learning them.

        Parameters
        ----------
        units : mapping of str to (mapping of str to int) or None
            Per variable, the values of this cycle in each source unit
            (:meth:`vigil.fhir_adapter.records.ObservationBatch.unit_counts`).
        now : float
            The tick, UTC seconds.

        Returns
        -------
        findings : list of Finding
            One per variable with values in a unit not learned, once they add up to
            ``min_count`` (sparse labs send a value or two per cycle); it is found again
            every cycle until the new unit has been absent for ``unit_hours``.
        stats : list of (kind, variable, statistic, value)
            This cycle's values per variable and unit (``values:<unit>``), and the
            values in new units so far (``new_unit_values``).
        """
        kind = str(AlarmKind.UNIT_CHANGE)
        stats = [(kind, name, f"values:{u}", float(n))
                 for name, per_unit in sorted((units or {}).items())
                 for u, n in sorted(per_unit.items()) if n > 0]
        learning = now < self._units_until
        for name, per_unit in (units or {}).items():
            known = self.baseline_units.setdefault(name, set())
            seen = {u for u, n in per_unit.items() if n > 0}
            if learning or not known:
                # a variable the site did not send while learning: its first units are its own
                known.update(seen)
                continue
            for u in seen - known:
                count, first, _last = self._new_units.get((name, u), (0, now, now))
                self._new_units[(name, u)] = (count + per_unit[u], first, now)
        findings = []
        recent = now - self.unit_hours * 3600.0
        for name in sorted({name for name, _ in self._new_units}):
            new = {u: v for (n, u), v in self._new_units.items() if n == name and v[2] >= recent}
            total_new = sum(v[0] for v in new.values())
            if not new:
                continue
            stats.append((kind, name, "new_unit_values", float(total_new)))
            if total_new < self.min_count:
                continue
            per_unit = (units or {}).get(name, {})
            total = sum(per_unit.values())
            shown = ", ".join(f"{u!r} ({per_unit.get(u, 0)} of {total})" for u in sorted(new))
            since = (now - min(v[1] for v in new.values())) / 3600.0
            findings.append(Finding(
                AlarmKind.UNIT_CHANGE, name, Severity.WARNING, float(total_new),
                float(self.min_count),
                f"{name} now arrives in {shown} this cycle, a unit not seen in the baseline "
                f"({', '.join(sorted(self.baseline_units[name])) or 'none'}); {total_new} such "
                f"values in the last {since:.1f} h; values are converted, but confirm the "
                "interface change was intended",
            ))
        return findings, stats

    # -- quarantine -------------------------------------------------------------------------------

    def quarantine(
        self, records: Iterable[tuple[str, str, str]]
    ) -> tuple[list[Finding], list[tuple[str, str, str, float]]]:
        """Per-variable jumps in newly quarantined resources.

        Parameters
        ----------
        records : iterable of (resource_type, resource_id, reason)
            What the cycle's fetch rejected (repeats of earlier cycles are skipped).

        Returns
        -------
        findings : list of Finding
        stats : list of (kind, variable, statistic, value)
        """
        counts: dict[str, int] = {}
        for rtype, rid, reason in records:
            key = (f"{rtype}/{rid}", reason)
            if rid and key in self._seen:
                continue
            if rid:
                self._seen[key] = None
                if len(self._seen) > self.memory:
                    self._seen.popitem(last=False)
            name = variable_in_reason(reason)
            counts[name] = counts.get(name, 0) + 1
        findings, stats = [], []
        cycles = max(self._q_cycles, 1)
        for name in sorted(set(counts) | set(self._q_total)):
            n = counts.get(name, 0)
            mean = max(self._q_total.get(name, 0.0) / cycles, self.quarantine_floor)
            stats.append((str(AlarmKind.QUARANTINE), name, "quarantined", float(n)))
            # P(X >= n) for X ~ Poisson(mean): scipy.stats.poisson.sf(n - 1, mean)
            p = float(special.pdtrc(n - 1, mean)) if n > 0 else 1.0
            if n >= self.min_count and p < self.alpha:
                what = f"{name} values" if name else "resources naming no variable"
                findings.append(Finding(
                    AlarmKind.QUARANTINE, name, Severity.CRITICAL, float(n), mean,
                    f"{n} {what} quarantined this cycle against {mean:.2f} per cycle before "
                    f"(p = {p:.1e}); a unit or interface change? see the quarantine reasons",
                ))
            else:
                # only quiet cycles teach the usual rate, so a broken feed does not become normal
                self._q_total[name] = self._q_total.get(name, 0.0) + n
        self._q_cycles += 1
        return findings, stats
