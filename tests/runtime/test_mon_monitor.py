"""The monitor the cycle calls: patient-hours counted once, drift against a package profile,
alarms stored in the cycle's transaction, a failing monitor that costs the cycle nothing."""

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from vigil.core.errors import ConfigError, ModelArtifactError
from vigil.data import patient_split
from vigil.features.grid import GRID_COLUMNS, HourlyGrid
from vigil.federation.profile import reference_profile, variable_histograms
from vigil.runtime.monitoring import AlarmKind, FrameLabels, Monitor, Reference, load_alarms
from vigil.runtime.monitoring.reference import Histogram
from vigil.runtime.monitoring.stats import effective_size
from vigil.runtime.store import StateStore

T0 = 1_700_000_000.0
HR = GRID_COLUMNS.index("HR")


@dataclass
class Scores:
    patient_keys: tuple
    iculos: np.ndarray
    raw_probability: np.ndarray
    probability: np.ndarray


def model(profile: dict) -> SimpleNamespace:
    manifest = SimpleNamespace(reference_profile=profile, validation={"auroc": 0.75})
    return SimpleNamespace(key="m@1", threshold=0.5,
                           scorer=SimpleNamespace(package=SimpleNamespace(manifest=manifest)))


@pytest.fixture(scope="module")
def site(sample):
    """Profile from the sample's training patients; 120 test patients admitted over 3 days."""
    train = sample.select(np.flatnonzero(patient_split(sample.grid.patient_ids, "train")))
    profile = reference_profile(*variable_histograms(train.grid.values), train.grid.n_rows)
    test = np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:120]
    admit = T0 + np.random.default_rng(0).uniform(-2 * 86400, 86400, test.size)
    return sample, profile, test, admit


def cycle_inputs(table, positions, admit, t, *, shift_hr=0.0):
    """The census at tick ``t``: each patient's complete hours, as the cycle builds them."""
    g = table.grid
    done = np.floor((t - admit) / 3600).astype(int)
    inside = (done >= 1) & (done <= np.diff(g.starts)[positions])
    rows, starts = [], [0]
    for p, h in zip(positions[inside], done[inside], strict=True):
        lo = g.starts[p] + max(0, h - 72)
        rows.append(np.arange(lo, g.starts[p] + h))
        starts.append(starts[-1] + rows[-1].size)
    idx = np.concatenate(rows)
    values = g.values[idx].copy()
    values[:, HR] += shift_hr
    keys = tuple(g.patient_ids[p] for p in positions[inside])
    grid = HourlyGrid(keys, np.asarray(starts, np.int64), g.hours[idx], values)
    last = grid.hours[grid.starts[1:] - 1].astype(np.int64)
    p = np.full(len(keys), 0.1)
    return grid, Scores(keys, last, p, p)


def run(store, monitor, site, *, hours, shift_from=None, step=1800):
    """Cycles every ``step`` seconds (the monitor does not care; half-hourly is faster)."""
    table, profile, positions, admit = site
    raised = []
    for c in range(int(hours * 3600 / step)):
        t = T0 + c * step
        shift = 40.0 if shift_from is not None and t >= T0 + shift_from * 3600 else 0.0
        grid, scores = cycle_inputs(table, positions, admit, t, shift_hr=shift)
        with store.transaction() as tx:
            tx.executemany(  # what the cycle stores before it calls the monitor
                "INSERT INTO scores VALUES (?, ?, 'm@1', 'active', ?, ?, ?, 0, 0, ?)",
                [(k, t, int(h), 0.1, 0.1, c) for k, h in zip(
                    scores.patient_keys, scores.iculos, strict=True)],
            )
            raised += monitor.observe_cycle(tx, tick=t, model=model(profile), grid=grid,
                                            scores=scores, census=len(scores.patient_keys))
    return raised


def test_each_patient_hour_is_counted_once(site):
    table, profile, positions, admit = site
    monitor = Monitor(window_hours=1000)
    with StateStore.open("sqlite://") as store:
        run(store, monitor, site, hours=6, step=900)
    rows, scored = set(), set()
    for c in range(6 * 4):  # every (patient, hour) any cycle's grid held, and every one scored
        grid, s = cycle_inputs(table, positions, admit, T0 + c * 900)
        owner = np.repeat(np.asarray(grid.patient_ids), np.diff(grid.starts))
        rows |= set(zip(owner.tolist(), grid.hours.tolist(), strict=True))
        scored |= set(zip(s.patient_keys, s.iculos.tolist(), strict=True))
    assert sum(h.values.shape[0] for h in monitor._window) == len(rows)
    assert sum(h.raw.size for h in monitor._window) == len(scored)


def test_stable_data_raises_nothing_and_a_shift_names_the_variable(site):
    with StateStore.open("sqlite://") as store:
        assert run(store, Monitor(window_hours=12), site, hours=24) == []
    with StateStore.open("sqlite://") as store:
        raised = run(store, Monitor(window_hours=12), site, hours=24, shift_from=16)
        drift = [a for a in raised if a.kind is AlarmKind.INPUT_DRIFT]
        assert [a.variable for a in drift] == ["HR"]
        assert T0 + 16 * 3600 < drift[0].first_seen <= T0 + 22 * 3600
        stored = load_alarms(store.conn)
        assert [(a.kind, a.variable) for a in stored] == [(a.kind, a.variable) for a in raised]
        psi = store.conn.execute(
            "SELECT COUNT(*) FROM monitor_stats WHERE kind = 'input_drift' AND variable = 'HR' "
            "AND statistic = 'psi'").fetchone()[0]
        assert psi > 0


def test_labels_reach_the_performance_checks_after_their_delay(site):
    table, _, positions, _ = site
    g = table.grid
    frame = pd.DataFrame({
        "patient_key": np.repeat(np.asarray(g.patient_ids, dtype=object), np.diff(g.starts)),
        "iculos": g.hours, "label": table.labels,
    })
    monitor = Monitor(labels=FrameLabels(frame, delay_hours=6))
    with StateStore.open("sqlite://") as store:
        run(store, monitor, site, hours=12, step=900)
        first = store.conn.execute(
            "SELECT COUNT(*) FROM (SELECT MIN(tick) AS t0 FROM scores GROUP BY patient_key, "
            "iculos) WHERE t0 <= ?", (T0 + 11 * 3600 - 7 * 3600,)).fetchone()[0]
        m = monitor.performance.metrics()
        assert m is not None and m.n == first  # each labelled patient-hour once, 7 h late
        stats = {r[0] for r in store.conn.execute(
            "SELECT statistic FROM monitor_stats WHERE kind IN ('discrimination', 'calibration')")}
        assert {"labelled_hours", "observed_expected"} <= stats


def test_a_restarted_monitor_keeps_open_alarms(site):
    with StateStore.open("sqlite://") as store:
        raised = run(store, Monitor(window_hours=12), site, hours=22, shift_from=14)
        assert raised
        again = Monitor()
        with store.transaction() as tx:
            grid, scores = cycle_inputs(site[0], site[2], site[3], T0 + 22 * 3600)
            again.observe_cycle(tx, tick=T0 + 22 * 3600, model=model(site[1]), grid=grid,
                                scores=scores, census=len(scores.patient_keys))
        assert [a.first_seen for a in again.open_alarms()] == [a.first_seen for a in raised]


def test_a_failing_monitor_leaves_no_trace_and_the_cycle_goes_on(site):
    table, profile, positions, admit = site
    grid, scores = cycle_inputs(table, positions, admit, T0 + 3600 * 5)
    broken = HourlyGrid(grid.patient_ids, grid.starts, grid.hours, grid.values[:, :3])
    monitor = Monitor()
    with StateStore.open("sqlite://") as store:
        with store.transaction() as tx:
            tx.execute("INSERT INTO watermarks VALUES ('x', 'y', 0)")  # the cycle's own write
            assert monitor.observe_cycle(tx, tick=T0, model=model(profile), grid=broken,
                                         scores=scores, census=3) == []
        assert monitor.errors == 1
        assert store.count("watermarks") == 1
        assert store.conn.execute("SELECT COUNT(*) FROM monitor_stats").fetchone()[0] == 0


def test_reference_from_profile(site):
    _, profile, _, _ = site
    ref = Reference.from_profile(profile)
    assert ref is not None and ref.source == "profile" and set(ref.variables) == set(GRID_COLUMNS)
    hr = ref.variables["HR"]
    assert hr.counts.sum() == profile["rows"] - profile["variables"]["HR"]["missing"]
    assert 0.8 < hr.measured_rate < 1.0
    assert Reference.from_profile({}) is None
    with pytest.raises(ModelArtifactError, match="expected a reference profile of format"):
        Reference.from_profile({"format": "other/9"})
    with pytest.raises(ModelArtifactError, match="malformed"):
        Reference.from_profile({**profile, "variables": {"HR": {"edges": [0, 1], "counts": []}}})


def test_merged_histogram_keeps_mass_and_edges():
    h = Histogram(np.arange(21.0), np.arange(20.0) + 1, missing=3, rows=213)
    m = h.merged(5)
    assert m.n_bins <= 5 and m.counts.sum() == h.counts.sum()
    assert set(m.edges.tolist()) <= set(h.edges.tolist())
    assert (m.edges[0], m.edges[-1]) == (0.0, 20.0)


def test_effective_size_is_kish():
    assert effective_size(np.array([0, 1, 2, 3])) == 4.0
    assert effective_size(np.array([0, 0, 0, 0])) == 1.0
    assert effective_size(np.array([0, 0, 0, 1])) == pytest.approx(16 / 10)
    assert effective_size(np.zeros(0, dtype=np.int64)) == 0.0


def test_reference_mode_is_checked():
    with pytest.raises(ConfigError, match="'reference' parameter of Monitor"):
        Monitor(reference="training")
