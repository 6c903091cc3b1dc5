"""Feed health: a feed that stops, a new unit, a jump in quarantine (with the adapter's reasons)."""

import math

import numpy as np
import pytest

from vigil.core.catalog import MEASURED
from vigil.fhir_adapter.mapping import UCUM, canonical_value
from vigil.runtime.monitoring.alarms import AlarmKind, Severity
from vigil.runtime.monitoring.feed import FeedHealth, variable_in_reason

H = 3600.0
TEMP = MEASURED.index("Temp")


def reason(var: int, value: float, code: str) -> str:
    out = canonical_value(var, value, system=UCUM, code=code, unit=code)
    assert isinstance(out, str), out
    return out


@pytest.mark.parametrize(
    ("value", "code"), [(98.6, "Cel"), (98.6, "F"), (37.0, None)],
    ids=["Fahrenheit-labelled-Celsius", "unknown-unit", "no-unit"],
)
def test_the_adapters_quarantine_reasons_name_the_variable(value, code):
    assert variable_in_reason(reason(TEMP, value, code)) == "Temp"


def test_reasons_naming_no_variable():
    assert variable_in_reason("no status") == ""
    assert variable_in_reason("expected one of Cel, [degF]") == ""


def feed_with_hourly_lactate(hours: int, *, start: float = 0.0) -> FeedHealth:
    """Lactate arrives once an hour for ``hours`` hours (learning over the first 10 h)."""
    feed = FeedHealth(learn_hours=10.0, min_arrivals=5)
    feed.start(start)
    for h in range(hours):
        now = start + h * H
        feed.observe_values(["Lactate"], np.array([now]), now=now)
        feed.feed_down(now=now, census=20, rates={"Lactate": 0.05})
    return feed


def test_expected_interval_takes_the_largest_of_poisson_learned_and_floor():
    feed = feed_with_hourly_lactate(12)
    assert feed.longest_gap["Lactate"] == pytest.approx(1.0)
    poisson = -math.log(feed.alpha) / (0.05 * 20)  # lambda = 1 value per hour
    assert feed.expected_interval("Lactate", 0.05, 20) == pytest.approx(max(poisson, 3.0, 2.0))
    # half the census: the learned silence doubles (scaled by the mean census while learning)
    assert feed.expected_interval("Lactate", 0.4, 10) == pytest.approx(3.0 * 2)


def test_a_stopped_feed_is_reported_after_its_expected_interval_not_before():
    feed = feed_with_hourly_lactate(12)
    last = 11 * H
    limit = feed.expected_interval("Lactate", 0.05, 20)
    quiet, _ = feed.feed_down(now=last + (limit - 0.25) * H, census=20, rates={"Lactate": 0.05})
    assert quiet == []
    found, stats = feed.feed_down(now=last + (limit + 0.25) * H, census=20,
                                  rates={"Lactate": 0.05})
    assert [(f.kind, f.variable, f.severity) for f in found] == [
        (AlarmKind.FEED_DOWN, "Lactate", Severity.CRITICAL)]
    assert found[0].value == pytest.approx(limit + 0.25)
    assert ("feed_down", "Lactate", "expected_interval", pytest.approx(limit)) in stats


def test_nothing_is_judged_while_learning_or_for_rare_variables():
    feed = FeedHealth(learn_hours=10.0, min_arrivals=5)
    feed.start(0.0)
    feed.observe_values(["Lactate"], np.array([0.0]), now=0.0)
    found, _ = feed.feed_down(now=9 * H, census=20, rates={"Lactate": 0.05})
    assert found == []  # still learning
    found, _ = feed.feed_down(now=50 * H, census=20, rates={"Lactate": 0.05})
    assert found == []  # one value while learning: too rare to judge


def test_late_values_do_not_move_the_last_arrival_back():
    feed = FeedHealth()
    feed.start(0.0)
    feed.observe_values(["HR", "HR"], np.array([100.0, 200.0]), now=200.0)
    feed.observe_values(["HR"], np.array([150.0]), now=300.0)
    assert feed.last_value["HR"] == 200.0


def test_a_unit_not_seen_while_learning_raises_a_warning():
    feed = FeedHealth(unit_hours=1.0)
    feed.start(0.0)
    assert feed.units({"Temp": {"Cel": 40}}, now=0.5 * H)[0] == []
    found, stats = feed.units({"Temp": {"Cel": 38, "[degF]": 2}}, now=2 * H)
    assert found == []  # fewer than 3 so far
    assert ("unit_change", "Temp", "values:[degF]", 2.0) in stats
    assert ("unit_change", "Temp", "new_unit_values", 2.0) in stats
    (found,), _ = feed.units({"Temp": {"Cel": 10, "[degF]": 30}}, now=3 * H)
    assert (found.kind, found.variable, found.severity) == (
        AlarmKind.UNIT_CHANGE, "Temp", Severity.WARNING)
    assert "'[degF]' (30 of 40)" in found.message
    assert found.value == 32.0  # every value in the new unit so far


def test_a_sparse_lab_in_a_new_unit_adds_up_over_cycles_and_holds_the_warning():
    feed = FeedHealth(unit_hours=1.0)
    feed.start(0.0)
    feed.units({"Creatinine": {"mg/dL": 2}}, now=0.5 * H)
    assert feed.units({"Creatinine": {"umol/L": 1}}, now=1.25 * H)[0] == []
    assert feed.units({"Creatinine": {"umol/L": 1}}, now=1.5 * H)[0] == []
    (found,), _ = feed.units({"Creatinine": {"umol/L": 1}}, now=1.75 * H)
    assert (found.variable, found.value) == ("Creatinine", 3.0)
    # a cycle without creatinine still finds it (the alarm holds) ...
    assert [f.variable for f in feed.units({"HR": {"/min": 20}}, now=2.0 * H)[0]] == ["Creatinine"]
    # ... until the new unit has been absent for unit_hours
    assert feed.units({"HR": {"/min": 20}}, now=2.8 * H)[0] == []


def test_a_variable_first_sent_after_learning_learns_its_own_units():
    feed = FeedHealth(unit_hours=1.0)
    feed.start(0.0)
    feed.units({"HR": {"/min": 20}}, now=0.5 * H)
    assert feed.units({"Fibrinogen": {"mg/dL": 5}}, now=30 * H)[0] == []
    assert feed.units({"Fibrinogen": {"mg/dL": 5}}, now=31 * H)[0] == []
    (found,), _ = feed.units({"Fibrinogen": {"g/L": 5}}, now=32 * H)
    assert found.variable == "Fibrinogen"


def test_a_quarantine_jump_names_the_variable_and_repeats_are_counted_once():
    feed = FeedHealth()
    for c in range(20):  # a clean feed: one rejected HR now and then
        records = [("Observation", f"hr-{c}", reason(0, 900.0, "/min"))] if c % 5 == 0 else []
        found, _ = feed.quarantine(records)
        assert found == []
    bad = [("Observation", f"t-{i}", reason(TEMP, 98.6, "Cel")) for i in range(6)]
    found, stats = feed.quarantine(bad)
    assert [(f.kind, f.variable, f.value) for f in found] == [(AlarmKind.QUARANTINE, "Temp", 6.0)]
    assert ("quarantine", "Temp", "quarantined", 6.0) in stats
    # the fetch overlap reads the same resources again: not a new jump
    found, _ = feed.quarantine(bad)
    assert found == []
