from dataclasses import replace

import numpy as np
import pytest
from rt_support import make_package, synth_source

from vigil.core.catalog import MEASURED
from vigil.data import patient_split
from vigil.fhir_adapter.records import Deletion, ObservationBatch
from vigil.runtime.cycle import CycleRunner
from vigil.runtime.models import LiveModels, live_model
from vigil.runtime.recorded import ClockedSource
from vigil.runtime.replay import replay, replay_ticks, scores_output
from vigil.runtime.settings import AlertSettings, ScoringSettings
from vigil.runtime.store import StateStore
from vigil.runtime.window import ObservationWindow

HOUR_US = 3_600_000_000


@pytest.fixture(scope="module")
def source(sample, tmp_path_factory):
    """Synthetic stays, plus late corrections (a new version, 3 h later, with another value)
    of some heart rates, and one heart rate entered in error."""
    table = sample.select(np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:5])
    base = synth_source(table, tmp_path_factory.mktemp("nd"))
    rec = base.recorded
    hr = np.flatnonzero(rec.variable == MEASURED.index("HR"))[::7]
    top = int(rec.seq.max())
    fix = rec.take(hr)
    fix = replace(fix, value=fix.value + 25.0, effective=fix.effective + 3 * HOUR_US,
                  last_updated=fix.effective + 3 * HOUR_US,
                  seq=top + 1 + np.arange(len(fix), dtype=np.int64))
    gone = rec.take(np.flatnonzero(rec.variable == MEASURED.index("HR"))[3:4])
    deletion = Deletion(str(gone.resource_id[0]), str(gone.patient[0]), top + len(fix) + 5)
    recorded = replace(ObservationBatch.concat([rec, fix]), deletions=(deletion,))
    return ClockedSource(stays=base.stays, recorded=recorded), len(fix)


def run(tmp_path, source, *, keep_window):
    make_package(tmp_path / "pkg")
    live = LiveModels(live_model(tmp_path / "pkg"), None)
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", durable=False)
    runner = CycleRunner(store=store, source=source, sink=None, models=lambda: live,
                         scoring=ScoringSettings(), alerts=AlertSettings(), keep_window=keep_window)
    start, end = source.span
    result = replay(runner, replay_ticks(start, start + (end - start) / 2))
    assert result.failed == 0
    return runner


def test_the_window_in_memory_equals_the_store(tmp_path, source):
    src, n_fixed = source
    assert n_fixed > 20
    kept = run(tmp_path / "kept", src, keep_window=True)
    read = run(tmp_path / "read", src, keep_window=False)
    a, b = scores_output(kept.store), scores_output(read.store)
    assert len(a) > 100
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    # and the last window holds exactly what the store holds
    window = kept._window
    again = ObservationWindow.read(kept.store, sorted(window.patients), since=window.since)
    rows = lambda v: sorted(zip(v.resource_id, v.variable.tolist(), v.value.tolist(),  # noqa: E731
                                strict=True))
    assert rows(window.values) == rows(again.values) and len(window.values) > 0


def test_the_grid_built_in_blocks_of_stays_equals_one_block(tmp_path, source, monkeypatch):
    import vigil.runtime.window as window

    src, _ = source
    whole = run(tmp_path / "whole", src, keep_window=True)
    monkeypatch.setattr(window, "GRID_BLOCK", 2)
    blocks = run(tmp_path / "blocks", src, keep_window=True)
    a, b = scores_output(whole.store), scores_output(blocks.store)
    assert len(a) > 100 and a["patient_id"].nunique() >= 5  # census of up to 3 blocks
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


def test_every_component_of_a_stored_panel_reaches_the_grid(tmp_path):
    """A blood-pressure panel (one Observation, three values) read back from the store."""
    from datetime import UTC, datetime, timedelta

    from vigil.fhir_adapter.hourly import grid_from_observations
    from vigil.fhir_adapter.records import Stay, to_micros

    admitted = datetime(2026, 1, 1, tzinfo=UTC)
    at = to_micros(admitted + timedelta(minutes=30))
    cols = [MEASURED.index(c) for c in ("SBP", "DBP", "MAP")] + [MEASURED.index("HR")]
    batch = ObservationBatch(
        patient=np.array(["p1"] * 4, dtype=object), variable=np.array(cols, dtype=np.int8),
        effective=np.full(4, at, dtype=np.int64), value=np.array([120.0, 80.0, 93.0, 70.0]),
        resource_id=np.array(["bp", "bp", "bp", "hr"], dtype=object),
        last_updated=np.full(4, at, dtype=np.int64), seq=np.array([0, 0, 0, 1], dtype=np.int64),
    )
    with StateStore.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        with store.transaction() as tx:
            store.put_observations(tx, batch)
        window = ObservationWindow.read(store, ["p1"], since=0)
    stay = Stay("p1", "e1", admitted, None, None, None, None)
    grid = grid_from_observations([stay], window.values, until=admitted + timedelta(hours=1))
    np.testing.assert_array_equal(grid.values[0, cols], [120.0, 80.0, 93.0, 70.0])


@pytest.mark.parametrize("seed", range(4))
def test_window_join_equals_take_then_concat(seed):
    from vigil.runtime.window import _joined

    rng = np.random.default_rng(seed)

    def part(n, *, units, deletions=()):
        return ObservationBatch(
            patient=np.array([f"p{i % 3}" for i in range(n)], dtype=object),
            variable=rng.integers(0, 5, n).astype(np.int8),
            effective=rng.integers(0, 10**9, n).astype(np.int64),
            value=rng.normal(size=n),
            resource_id=np.array([f"r{seed}-{n}-{i}" for i in range(n)], dtype=object),
            last_updated=rng.integers(0, 10**9, n).astype(np.int64),
            seq=np.sort(rng.integers(0, 50, n)).astype(np.int64),
            deletions=tuple(deletions),
            unit=rng.integers(-1, 3, n).astype(np.int8) if units else None,
        )

    parts = [(part(30, units=True), rng.random(30) < 0.6),
             (part(0, units=False, deletions=[Deletion("gone", "p1", 3)]), np.zeros(0, bool)),
             (part(12, units=False), np.ones(12, bool)),
             (part(7, units=True), np.zeros(7, bool))]
    got = _joined(parts)
    want = ObservationBatch.concat([b.take(m) for b, m in parts])
    for name in ("patient", "variable", "effective", "value", "resource_id", "last_updated",
                 "seq", "unit"):
        assert getattr(got, name).tolist() == getattr(want, name).tolist(), name
    assert got.deletions == want.deletions and len(got) == int(parts[0][1].sum()) + 12
    whole = part(5, units=True)
    assert _joined([(whole, np.ones(5, bool)), (part(3, units=True), np.zeros(3, bool))]) is whole
