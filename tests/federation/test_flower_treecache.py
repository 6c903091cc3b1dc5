"""The site's tree cache between Flower messages: same answers, no site read, never stale.

Each test drives the ClientApp's site side of the trees (``answer_trees``) as a
SuperNode would, one message at a time with the run's ``context.state``, and
compares it with the same requests answered by an in-memory
:class:`~vigil.federation.boosting.BoostingSite` (the in-process path).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from test_flower_transport import site_dirs, task  # noqa: F401

from vigil.federation.boosting import Tree, bin_edges, bin_rows
from vigil.federation.flower.sitedata import load_site, store_site
from vigil.federation.flower.treecache import CACHE_DIR, Stamp, TreeCache, data_key
from vigil.federation.flower.treewire import answer_trees, level_to_content
from vigil.federation.flower.wire import ARRAYS, CONFIG, payload_from_content
from vigil.federation.site import Site
from vigil.federation.treegrowth import LevelRequest, answer_level

N_BINS = 16


@pytest.fixture()
def site_dir(site_dirs: dict[str, Path], tmp_path: Path) -> Path:  # noqa: F811
    """A private copy of one prepared site (tests prepare it again)."""
    src = next(iter(site_dirs.values()))
    return Path(shutil.copytree(src, tmp_path / src.name))


def _edges(site: Site) -> list[np.ndarray]:
    return bin_edges([site.quantiles(N_BINS)], [site.train.n_rows])


def _begin(edges: list[np.ndarray]) -> RecordDict:
    return RecordDict({
        CONFIG: ConfigRecord({"ask": "begin"}),
        ARRAYS: ArrayRecord({f"edges/{f}": Array(np.ascontiguousarray(e))
                             for f, e in enumerate(edges)}),
    })


def _requests(site: Site, edges: list[np.ndarray]) -> list[LevelRequest]:
    """Two trees' levels: a root, a split of the root, the next tree's root, the end."""
    binned = bin_rows(site.train.X, edges)
    feature = int(np.argmax(binned.std(axis=0)))
    cut = int(np.median(binned[:, feature]))
    tree = Tree(np.array([feature, -1, -1]), np.array([cut, -1, -1]),
                np.array([edges[feature][min(cut, len(edges[feature]) - 1)], np.nan, np.nan],
                         dtype=np.float32),
                np.array([1, -1, -1]), np.array([2, -1, -1]), np.array([0.0, -0.3, 0.2]))
    return [
        LevelRequest(tree=0, depth=0, nodes=np.array([0]), n_bins=N_BINS, base=-2.5),
        LevelRequest(tree=0, depth=1, nodes=np.array([1, 2]), n_bins=N_BINS, grown=tree,
                     split=np.array([0])),
        LevelRequest(tree=1, depth=0, nodes=np.array([0]), n_bins=N_BINS, finished=tree),
        LevelRequest(tree=1, depth=1, nodes=np.array([1, 2]), n_bins=N_BINS, grown=tree,
                     split=np.array([0])),
        LevelRequest(tree=2, depth=0, nodes=np.empty(0, dtype=np.int64), n_bins=N_BINS,
                     finished=tree),
    ]


class _Sites:
    """The site factory of the ClientApp, counting how often the site is read."""

    def __init__(self, site_dir: Path) -> None:
        self.site_dir, self.reads = site_dir, 0

    def __call__(self, network: bool) -> Site:
        self.reads += 1
        return load_site(self.site_dir)


def _histograms(content: RecordDict) -> np.ndarray:
    return np.asarray(payload_from_content(content)[1]["histograms"])


def _state_bytes(state: RecordDict) -> int:
    return sum(record[k].numpy().nbytes for record in state.array_records.values()
               for k in record.keys())


def test_cached_levels_answer_the_in_memory_site_bit_for_bit_without_reading_the_site(
        site_dir: Path, task) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    site = load_site(site_dir)
    edges = _edges(site)
    local = site.boosting(edges)
    sites, state = _Sites(site_dir), RecordDict()
    cache = TreeCache(site_dir, "7")
    answer_trees(_begin(edges), state, sites, cache)
    assert sites.reads == 1
    uncached_state, uncached = RecordDict(), _Sites(site_dir)
    answer_trees(_begin(edges), uncached_state, uncached)
    for request in _requests(site, edges):
        expected = answer_level(local, request)
        got = _histograms(answer_trees(level_to_content(request), state, sites, cache))
        plain = _histograms(answer_trees(level_to_content(request), uncached_state, uncached))
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(plain, expected)
    assert sites.reads == 1  # the levels read the cache only
    assert uncached.reads == 1 + 5
    # the rows' state stays on the site's disk: the run's state holds the edges only
    assert _state_bytes(state) == sum(e.nbytes for e in edges)
    assert _state_bytes(uncached_state) > 10 * _state_bytes(state)
    assert sorted(p.name for p in (site_dir / CACHE_DIR).glob("state-7-*")) == [
        "state-7-4.npz", "state-7-5.npz"]  # the two newest
    cache.clear()  # at the score sums: the run's state files go, the binning stays
    assert [p.name for p in (site_dir / CACHE_DIR).glob("state-*")] == []
    assert cache.binning(data_key(site_dir, edges)) is not None


def test_a_binning_of_other_edges_or_other_data_is_never_read(site_dir: Path, task) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    site = load_site(site_dir)
    edges = _edges(site)
    key = data_key(site_dir, edges)
    cache = TreeCache(site_dir, "1")
    answer_trees(_begin(edges), RecordDict(), _Sites(site_dir), cache)
    binned, y = cache.binning(key)  # type: ignore[misc]
    np.testing.assert_array_equal(binned, bin_rows(site.train.X, edges))
    np.testing.assert_array_equal(y, (site.train.y > 0).astype(np.float64))

    other = [e[::2].copy() for e in edges]
    assert data_key(site_dir, other) != key
    assert cache.binning(data_key(site_dir, other)) is None

    # the site prepared again, with other rows: another key, binned afresh at `begin`
    with np.load(site_dir / "site.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_X"] = arrays["train_X"][::-1].copy()
    arrays["train_y"] = arrays["train_y"][::-1].copy()
    store_site(site_dir, arrays, {"name": site.name, "prepared": 0.0})
    new_key = data_key(site_dir, edges)
    assert new_key != key and cache.binning(new_key) is None
    sites = _Sites(site_dir)
    answer_trees(_begin(edges), RecordDict(), sites, cache)
    assert sites.reads == 1
    binned, _ = cache.binning(new_key)  # type: ignore[misc]
    np.testing.assert_array_equal(binned, bin_rows(arrays["train_X"], edges))
    assert cache.binning(key) is None  # the stale binning is gone


def _one_level_in(site_dir: Path) -> tuple[Site, list[np.ndarray], list[LevelRequest], _Sites,
                                          RecordDict, TreeCache]:
    """A run of the site (cache of run "1") after ``begin`` and the first level."""
    site = load_site(site_dir)
    edges = _edges(site)
    first, second = _requests(site, edges)[:2]
    sites, state = _Sites(site_dir), RecordDict()
    cache = TreeCache(site_dir, "1")
    answer_trees(_begin(edges), state, sites, cache)
    answer_trees(level_to_content(first), state, sites, cache)
    return site, edges, [first, second], sites, state, cache


def test_a_state_of_another_begin_another_run_or_other_data_is_refused(
        site_dir: Path, task) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    site, edges, (first, second), sites, state, cache = _one_level_in(site_dir)
    stale = state.config_records["vigil-trees-cache"].copy()

    # another begin in the same run: a new nonce, the old stamp names no file
    answer_trees(_begin(edges), RecordDict(), sites, cache)
    with pytest.raises(ValueError, match="tree state after 1 levels"):
        cache.load_state(Stamp.from_mapping(stale))
    with pytest.raises(ValueError, match="tree state after 1 levels"):
        answer_trees(level_to_content(second), state, sites, cache)

    # a file of this step, but written by another begin: the stamp inside differs
    state = RecordDict()
    answer_trees(_begin(edges), state, sites, cache)
    mine = Stamp.from_mapping(state.config_records["vigil-trees-cache"])
    cache.save_state(Stamp(mine.key, "0" * 16, 0), {"score": np.zeros(3)})
    with pytest.raises(ValueError, match="another run's or other data's"):
        answer_trees(level_to_content(first), state, sites, cache)

    # another run's cache has no state of this one
    state = RecordDict()
    answer_trees(_begin(edges), state, sites, cache)
    with pytest.raises(ValueError, match="found none"):
        answer_trees(level_to_content(first), state, sites, TreeCache(site_dir, "2"))

    # the site prepared again mid-run: refused, not answered from the old rows
    with np.load(site_dir / "site.npz") as z:
        arrays = {k: z[k] for k in z.files}
    store_site(site_dir, arrays, {"name": site.name, "prepared": 1.0})
    with pytest.raises(ValueError, match="prepared again"):
        answer_trees(level_to_content(first), state, sites, cache)
    reads = sites.reads
    with pytest.raises(ValueError, match="tree cache"):
        answer_trees(level_to_content(first), state, sites, None)
    assert sites.reads == reads


def test_a_level_retried_after_a_lost_context_reads_the_state_it_started_from(
        site_dir: Path, task) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    site, edges, (first, second), sites, state, cache = _one_level_in(site_dir)
    before = state.config_records["vigil-trees-cache"].copy()
    once = _histograms(answer_trees(level_to_content(second), state, sites, cache))
    # the ClientApp died after writing its state, before Flower kept the context
    state["vigil-trees-cache"] = before
    again = _histograms(answer_trees(level_to_content(second), state, sites, cache))
    np.testing.assert_array_equal(again, once)
    # the binning removed between two levels: binned again from the same rows
    for p in (site_dir / CACHE_DIR).glob("*.npy"):
        p.unlink()
    state["vigil-trees-cache"] = before
    reads = sites.reads
    third = _histograms(answer_trees(level_to_content(second), state, sites, cache))
    np.testing.assert_array_equal(third, once)
    assert sites.reads == reads + 1
