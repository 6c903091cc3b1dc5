import numpy as np

from vigil.features.builder import build_latest_features
from vigil.features.grid import HourlyGrid
from vigil.runtime.feature_cache import LatestFeatures
from vigil.runtime.window import RECENT_HOURS


def recent(sample, patients, hours):
    """Each patient's grid up to ``hours[i]`` (at most the last RECENT_HOURS rows)."""
    grid = sample.grid.select(patients)
    rows, lengths = [], []
    for i, h in enumerate(hours):
        lo = int(grid.starts[i])
        stop = lo + min(h, int(grid.starts[i + 1]) - lo)
        start = max(lo, stop - RECENT_HOURS)
        rows.append(np.arange(start, stop))
        lengths.append(stop - start)
    idx = np.concatenate(rows)
    return HourlyGrid(patient_ids=grid.patient_ids,
                      starts=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                      hours=grid.hours[idx], values=grid.values[idx].copy())


def test_reused_rows_are_bit_identical_and_only_changed_patients_are_computed(sample):
    long = np.flatnonzero(np.diff(sample.grid.starts) > 100)[:30]
    cache = LatestFeatures()
    hours = np.full(len(long), 80)
    first = recent(sample, long, hours)
    np.testing.assert_array_equal(cache(first), build_latest_features(first))
    assert cache.computed == 30

    # 15 minutes later: same hours, same values -> nothing computed, same rows
    again = cache(recent(sample, long, hours))
    assert cache.computed == 0
    np.testing.assert_array_equal(again, build_latest_features(first))

    # an hour passes for ten patients, a late value changes one more, two leave, one arrives
    hours[:10] += 1
    grid = recent(sample, long, hours)
    grid.values[grid.starts[12] + 5, 0] += 1.0  # HR of patient 12, five hours back
    order = np.r_[0:27, 29]  # patients 27 and 28 left the census
    grid = grid.select(order)
    arrived = recent(sample, np.flatnonzero(np.diff(sample.grid.starts) > 100)[40:41], [90])
    grid = HourlyGrid(
        patient_ids=grid.patient_ids + arrived.patient_ids,
        starts=np.concatenate([grid.starts, grid.starts[-1] + arrived.starts[1:]]),
        hours=np.concatenate([grid.hours, arrived.hours]),
        values=np.concatenate([grid.values, arrived.values]),
    )
    got = cache(grid)
    assert cache.computed == 10 + 1 + 1
    np.testing.assert_array_equal(got, build_latest_features(grid))


def test_an_empty_census(sample):
    cache = LatestFeatures()
    empty = sample.grid.select(np.zeros(0, dtype=np.int64))
    assert cache(empty).shape == build_latest_features(empty).shape
    assert cache.computed == 0
