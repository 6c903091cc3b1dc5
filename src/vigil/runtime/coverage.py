"""Feed coverage: does the feed deliver about as many values as the reference expects? (pure).

The model package's reference profile (:mod:`vigil.runtime.monitoring.reference`)
says, for each measured variable, the share of training patient-hours that had a
value: its *expected rate* (values per patient-hour; on PhysioNet 2019 HR 0.90,
the seven vitals 0.33-0.90, the labs 0.002-0.17; 6.7 measured values per
patient-hour in all). Over a window of ``patient_hours`` the feed
should therefore deliver about ``rate * patient_hours`` hourly values of each
variable. Values are counted as the grid sees them: at most one per patient,
variable and clock hour.

Two rules (thresholds in :class:`~vigil.runtime.settings.ScoringSettings`):

- ``coverage``: observed values / expected values over all measured variables is
  below ``min_coverage`` (0.5). The seven vitals are ~80% of the expected
  values and the labs ~20%, so a feed with every lab lost still covers ~0.8 and
  one that carries a single vital ~0.13: below half, at least three hourly
  vitals are gone. The ratio is judged only once ``min_expected`` values are
  expected, over at least ``min_patients`` (10) patients: patients differ much
  in how often they are charted (two sparse patients may cover ~0.3), ten
  rarely all do.
- ``absent``: a variable the reference expects often (at least ``min_rate``,
  0.1, values per patient-hour) and at least ``min_expected`` (30) times in the
  window has **no** value at all. Rarer variables are not judged: sites differ
  in what they measure, and a pooled profile hides it. In PhysioNet 2019 one
  hospital never records EtCO2 (0.077 at the other; pooled 0.039) and the
  other hardly ever BaseExcess, HCO3 or Chloride (0.002; pooled <= 0.05), while
  every variable pooled above 0.1 (the seven vitals and Glucose) is measured
  at both (>= 0.117 at each). For independent values, the chance of none is
  ``exp(-30)``; values of a lab come in bunches (one patient's draws), and 30
  still leaves a handful of independent draws. This names the labs of a site
  that codes them locally (Glucose, 0.17/patient-hour, is expected 30 times in
  180 patient-hours, e.g. 10 patients over 18 h) while coverage stays ~0.8.

No patient identifier appears in a finding: only variable names and counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vigil.core.catalog import MEASURED
from vigil.fhir_adapter.records import ObservationBatch
from vigil.runtime.monitoring.alarms import AlarmKind, Finding, Severity
from vigil.runtime.monitoring.reference import Reference

__all__ = ["Coverage", "coverage_findings", "expected_rates", "measure_coverage", "profile_rates"]

_HOUR_US = 3_600_000_000


def expected_rates(reference: Reference | None) -> dict[str, float]:
    """Return the expected values per patient-hour of each measured variable ({} without one).

    Examples
    --------
    >>> from vigil.runtime.monitoring.reference import Histogram
    >>> h = Histogram(np.arange(3.0), np.array([30.0, 60.0]), missing=10, rows=100)
    >>> expected_rates(Reference("profile", {"HR": h, "Age": h}, None))
    {'HR': 0.9}
    """
    if reference is None:
        return {}
    return {name: hist.measured_rate for name, hist in reference.variables.items()
            if name in MEASURED and hist.rows > 0}


def profile_rates(profile: Mapping[str, Any], *, where: str = "the manifest") -> dict[str, float]:
    """Return :func:`expected_rates` of a manifest's ``reference_profile`` ({} without one).

    Raises
    ------
    ModelArtifactError
        When the profile is present but malformed.
    """
    return expected_rates(Reference.from_profile(profile, where=where))


@dataclass(frozen=True)
class Coverage:
    """Observed against expected hourly values over a window.

    Attributes
    ----------
    patients : int
        Patients the window covers.
    patient_hours : float
        Patient-hours the window covers.
    observed : dict of str to int
        Hourly values seen, per measured variable the reference knows.
    expected : dict of str to float
        ``rate * patient_hours`` per variable.
    """

    patients: int
    patient_hours: float
    observed: dict[str, int]
    expected: dict[str, float]

    @property
    def ratio(self) -> float:
        """Observed / expected values over all variables (NaN when nothing is expected)."""
        total = sum(self.expected.values())
        return sum(self.observed.values()) / total if total > 0 else float("nan")

    def absent(self, min_expected: float, min_rate: float = 0.0) -> tuple[str, ...]:
        """Return the variables with no value though expected often; most expected first.

        Expected at least ``min_expected`` times, at a rate of at least ``min_rate`` per
        patient-hour.
        """
        names = [n for n, e in self.expected.items()
                 if e >= min_expected and e >= min_rate * self.patient_hours
                 and self.observed.get(n, 0) == 0]
        return tuple(sorted(names, key=lambda n: (-self.expected[n], n)))

    def summary(self) -> str:
        """Return the counts in one line (no patient data)."""
        return (f"{sum(self.observed.values()):,} hourly values where the reference profile "
                f"expects {sum(self.expected.values()):,.0f} over {self.patient_hours:,.0f} "
                f"patient-hours (coverage {self.ratio:.2f})")


def measure_coverage(
    values: ObservationBatch,
    *,
    patients: int,
    patient_hours: float,
    rates: Mapping[str, float],
    since: int | None = None,
    until: int | None = None,
) -> Coverage:
    """Count hourly values per variable with ``since < effective <= until`` (microseconds).

    Parameters
    ----------
    values : ObservationBatch
        The census's values (those of other patients must already be dropped).
    patients : int
        Patients of the census (with or without values).
    patient_hours : float
        Patient-hours of the census within the window.
    rates : mapping of str to float
        :func:`expected_rates`.
    since, until : int, optional
        Window bounds (None: unbounded).

    Returns
    -------
    Coverage
    """
    keep = np.ones(len(values), dtype=bool)
    if since is not None:
        keep &= values.effective > since
    if until is not None:
        keep &= values.effective <= until
    var = values.variable[keep].astype(np.int64)
    hour = values.effective[keep] // _HOUR_US
    per = np.zeros(len(MEASURED), dtype=np.int64)
    if var.size:
        # one int64 key per (patient, variable, hour) cell: a 1-d unique is fast on millions
        _, pat = np.unique(values.patient[keep].astype(str), return_inverse=True)
        hour -= hour.min()
        span = int(hour.max()) + 1
        cells = np.unique((pat.reshape(-1).astype(np.int64) * len(MEASURED) + var) * span + hour)
        per = np.bincount(cells // span % len(MEASURED), minlength=len(MEASURED))
    observed = {name: int(per[MEASURED.index(name)]) for name in rates}
    expected = {name: float(rate * patient_hours) for name, rate in rates.items()}
    return Coverage(patients=int(patients), patient_hours=float(patient_hours),
                    observed=observed, expected=expected)


def coverage_findings(
    coverage: Coverage, *, min_coverage: float, min_expected: float, min_patients: int = 1,
    min_rate: float = 0.0,
) -> tuple[Finding, ...]:
    """Judge a coverage (see the module docstring).

    Nothing is judged over fewer than ``min_patients`` patients.

    Returns
    -------
    tuple of Finding
        A critical ``cycle_inputs`` finding ``coverage`` when the ratio is below
        ``min_coverage``, and a critical ``feed_coverage`` finding per absent variable.
    """
    found: list[Finding] = []
    if coverage.patients < min_patients:
        return ()
    total = sum(coverage.expected.values())
    if total >= min_expected and coverage.ratio < min_coverage:
        found.append(Finding(
            AlarmKind.CYCLE_INPUTS, "coverage", Severity.CRITICAL, coverage.ratio, min_coverage,
            f"far fewer values than the reference profile expects: {coverage.summary()}"))
    for name in coverage.absent(min_expected, min_rate):
        found.append(Finding(
            AlarmKind.FEED_COVERAGE, name, Severity.CRITICAL, 0.0, coverage.expected[name],
            f"no {name} value in {coverage.patient_hours:,.0f} patient-hours where the "
            f"reference profile expects {coverage.expected[name]:,.0f}; is it coded in a "
            "local code vigil does not map?"))
    return tuple(found)
