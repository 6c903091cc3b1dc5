"""The drift reference profile: fixed edges, exact sums of site histograms."""

import numpy as np
import pytest

from vigil.features import GRID_COLUMNS
from vigil.federation.profile import (
    FINE_BINS,
    PROFILE_FORMAT,
    VARIABLE_EDGES,
    coarsen,
    reference_profile,
    variable_edges,
    variable_histograms,
)


def test_edges_come_from_the_catalog_alone():
    assert VARIABLE_EDGES.shape == (len(GRID_COLUMNS), FINE_BINS + 1)
    assert np.all(np.diff(VARIABLE_EDGES, axis=1) > 0)
    np.testing.assert_allclose(variable_edges("HR")[[0, -1]], [20, 300])
    trop = variable_edges("TroponinI")  # skewed: first bin from 0, then log-spaced
    assert trop[0] == 0 and trop[1] == pytest.approx(0.0002) and trop[-1] == pytest.approx(1000)
    np.testing.assert_allclose(np.diff(np.log(trop[1:])), np.log(trop[2] / trop[1]), rtol=1e-9)


def test_site_histograms_sum_to_the_histogram_of_all_rows(sample):
    values = sample.grid.values
    half = values.shape[0] // 2
    a, ma = variable_histograms(values[:half])
    b, mb = variable_histograms(values[half:])
    whole, mw = variable_histograms(values)
    assert np.array_equal(a + b, whole) and np.array_equal(ma + mb, mw)
    assert np.array_equal(whole.sum(axis=1) + mw, np.full(len(GRID_COLUMNS), values.shape[0]))
    hr = GRID_COLUMNS.index("HR")
    ref, _ = np.histogram(values[:, hr][np.isfinite(values[:, hr])], bins=VARIABLE_EDGES[hr])
    assert np.array_equal(whole[hr], ref)


def test_profile_keeps_every_count(sample):
    counts, missing = variable_histograms(sample.grid.values)
    profile = reference_profile(counts, missing, sample.grid.n_rows,
                                score_edges=np.array([0.25, 0.5]), score_counts=np.array([1, 2, 3]))
    assert profile["format"] == PROFILE_FORMAT and profile["rows"] == sample.grid.n_rows
    for j, name in enumerate(GRID_COLUMNS):
        v = profile["variables"][name]
        assert len(v["edges"]) == len(v["counts"]) + 1 <= 21
        assert sum(v["counts"]) + v["missing"] == sample.grid.n_rows
        assert v["missing"] == missing[j]
    assert profile["score"] == {"edges": [0.0, 0.25, 0.5, 1.0], "counts": [1, 2, 3]}


def test_coarsen_gives_about_equal_mass_bins():
    counts = np.ones(100, dtype=np.int64)
    keep = coarsen(counts, bins=4)
    assert keep.tolist() == [0, 25, 50, 75, 100]
    assert coarsen(np.zeros(8), bins=4).tolist() == [0, 2, 4, 6, 8]
