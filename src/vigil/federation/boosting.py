"""Gradient-boosted trees grown across sites from summed gradient histograms.

Histogram boosting (Ke et al., LightGBM, NeurIPS 2017) chooses every split from
each node's per-feature, per-bin sums of gradients and hessians. Those sums add
across sites: with bin edges shared by all sites, the trees grown from the
summed site histograms are exactly the trees grown on the pooled rows (the
horizontal histogram mode of federated XGBoost). A site sends per-bin sums and,
once, per-feature quantiles for the bin edges; never rows.

Loss: row-weighted logistic loss on raw scores ``F``, ``p = sigmoid(F)``, with
gradient ``g = w (p - y)`` and hessian ``h = w p (1 - p)``. A split's gain and a
leaf's weight are those of Chen & Guestrin (XGBoost, KDD 2016, eqs. 5 and 7)::

    gain = G_L^2 / (H_L + lambda) + G_R^2 / (H_R + lambda) - G^2 / (H + lambda)
    leaf = -learning_rate * G / (H + lambda)

(the constant 1/2 and the complexity penalty gamma do not change which split
wins; a split needs ``gain > 0`` and a hessian sum of at least
``min_child_weight`` on each side). Trees grow level by level to ``max_depth``.

A row goes left when ``x <= threshold``, with ``threshold`` the upper edge of
the split's last left bin, which is the rule of ONNX's ``TreeEnsembleRegressor``
(``BRANCH_LEQ``), so the trees export as they are.

Status: the numerical core with an in-process driver, for measurement; not yet
a strategy of ``vigil federate`` (docs/federation.md, "Next lever").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ConfigError, DataError

__all__ = [
    "BoostingPlan",
    "BoostingSite",
    "Tree",
    "best_splits",
    "bin_edges",
    "bin_rows",
    "boost",
    "predict_raw",
    "site_quantiles",
]

_LEAF = -1


@dataclass(frozen=True)
class BoostingPlan:
    """How the trees grow.

    Parameters
    ----------
    n_trees : int
    max_depth : int, optional
    learning_rate : float, optional
    l2 : float, optional
        ``lambda`` of the gain and leaf weight.
    min_child_weight : float, optional
        Smallest hessian sum of a child.
    n_bins : int, optional
        Bins per feature (at most 256, so a bin index fits in a byte).
    """

    n_trees: int
    max_depth: int = 6
    learning_rate: float = 0.1
    l2: float = 1.0
    min_child_weight: float = 1.0
    n_bins: int = 64

    def __post_init__(self) -> None:
        if self.n_trees < 1 or self.max_depth < 1:
            raise ConfigError(f"expected n_trees and max_depth >= 1, got {self.n_trees} and "
                              f"{self.max_depth}", key="n_trees")
        if not 2 <= self.n_bins <= 256:
            raise ConfigError(f"expected 2 <= n_bins <= 256, got {self.n_bins}", key="n_bins")


@dataclass(frozen=True)
class Tree:
    """One regression tree in array form (node 0 is the root).

    Attributes
    ----------
    feature, bin : ndarray of shape (n_nodes,)
        Split feature and last left bin; ``-1`` at a leaf.
    threshold : ndarray of shape (n_nodes,)
        Rows with ``x[feature] <= threshold`` go left; NaN at a leaf.
    left, right : ndarray of shape (n_nodes,)
        Child node indices; ``-1`` at a leaf.
    value : ndarray of shape (n_nodes,)
        Leaf weights (learning rate included); 0 at an inner node.
    """

    feature: NDArray[np.int64]
    bin: NDArray[np.int64]
    threshold: NDArray[np.float32]
    left: NDArray[np.int64]
    right: NDArray[np.int64]
    value: NDArray[np.float64]


def site_quantiles(x: NDArray[np.floating], n_bins: int) -> NDArray[np.float32]:
    """Compute a site's per-feature quantiles at levels ``1/n_bins .. (n_bins-1)/n_bins``.

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_features)
    n_bins : int

    Returns
    -------
    ndarray of shape (n_features, n_bins - 1)
    """
    levels = np.arange(1, n_bins) / n_bins
    return np.quantile(np.asarray(x, dtype=np.float64), levels, axis=0).T.astype(np.float32)


def bin_edges(
    quantiles: Sequence[NDArray[np.floating]], counts: Sequence[int]
) -> list[NDArray[np.float32]]:
    """Shared bin edges: the sites' quantiles averaged, weighted by their row counts.

    Parameters
    ----------
    quantiles : sequence of ndarray of shape (n_features, n_bins - 1)
        One per site (:func:`site_quantiles`).
    counts : sequence of int
        Each site's rows.

    Returns
    -------
    list of ndarray
        Per feature, its distinct edges in increasing order (at most ``n_bins - 1``).
    """
    weights = np.asarray(counts, dtype=np.float64)
    merged = np.tensordot(weights / weights.sum(), np.stack(quantiles), axes=1)
    return [np.unique(row.astype(np.float32)) for row in merged]


def bin_rows(x: NDArray[np.floating], edges: Sequence[NDArray[np.float32]]) -> NDArray[np.uint8]:
    """Bin index of every value: the number of edges below it.

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_features)
    edges : list of ndarray
        From :func:`bin_edges`.

    Returns
    -------
    ndarray of shape (n_rows, n_features), uint8
        ``x <= edges[f][b]`` exactly when the bin is ``<= b``.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != len(edges):
        raise DataError(f"expected rows of {len(edges)} features, got shape {x.shape}")
    out = np.empty(x.shape, dtype=np.uint8)
    for f, e in enumerate(edges):
        out[:, f] = np.searchsorted(e, x[:, f], side="left")
    return out


def best_splits(
    histograms: NDArray[np.float64], *, l2: float, min_child_weight: float
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Find the best split of every node from its summed histograms.

    Parameters
    ----------
    histograms : ndarray of shape (n_nodes, n_features, n_bins, 2)
        Per node, feature and bin: sums of gradients and of hessians.
    l2 : float
    min_child_weight : float

    Returns
    -------
    gain, feature, bin : ndarray of shape (n_nodes,)
        ``gain <= 0`` (and feature/bin -1) where no split is allowed.
    """
    cum = np.cumsum(histograms, axis=2)[:, :, :-1, :]
    total = histograms.sum(axis=2)[:, :, None, :]
    g_l, h_l = cum[..., 0], cum[..., 1]
    g_r, h_r = total[..., 0] - g_l, total[..., 1] - h_l
    parent = total[..., 0] ** 2 / (total[..., 1] + l2)
    gain = g_l**2 / (h_l + l2) + g_r**2 / (h_r + l2) - parent
    gain = np.where((h_l >= min_child_weight) & (h_r >= min_child_weight), gain, -np.inf)
    n_nodes, n_features, n_cuts = gain.shape
    flat = gain.reshape(n_nodes, -1)
    best = np.argmax(flat, axis=1)
    best_gain = flat[np.arange(n_nodes), best]
    ok = best_gain > 1e-12
    feature = np.where(ok, best // n_cuts, -1)
    bin_ = np.where(ok, best % n_cuts, -1)
    return np.where(ok, best_gain, 0.0), feature.astype(np.int64), bin_.astype(np.int64)


@dataclass(eq=False)
class BoostingSite:
    """A site's binned rows and its running scores.

    Parameters
    ----------
    name : str
    binned : ndarray of shape (n_rows, n_features), uint8
        From :func:`bin_rows` with the shared edges.
    y, weight : ndarray of shape (n_rows,)
        0/1 targets and row weights.
    """

    name: str
    binned: NDArray[np.uint8]
    y: NDArray[np.floating]
    weight: NDArray[np.floating]
    score: NDArray[np.float64] = field(init=False)
    _node: NDArray[np.int64] = field(init=False, repr=False)
    _g: NDArray[np.float64] = field(init=False, repr=False)
    _h: NDArray[np.float64] = field(init=False, repr=False)
    _columns: NDArray[np.uint8] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.binned.shape[0]
        if np.shape(self.y) != (n,) or np.shape(self.weight) != (n,):
            raise DataError(f"site {self.name}: expected y and weight of shape ({n},), got "
                            f"{np.shape(self.y)} and {np.shape(self.weight)}")
        self.score = np.zeros(n)
        # feature-major copy: each feature's bins contiguous for the histogram loop
        self._columns = np.ascontiguousarray(self.binned.T)

    def label_sums(self) -> tuple[float, float]:
        """Weighted positives and weighted rows (for the initial score)."""
        return float(self.weight @ self.y), float(self.weight.sum())

    def start(self, base: float) -> None:
        """Set every row's score to the shared initial score."""
        self.score[:] = base

    def begin_tree(self) -> None:
        """Compute gradients at the current scores; every row starts at the root."""
        p = 1.0 / (1.0 + np.exp(-self.score))
        self._g = self.weight * (p - self.y)
        self._h = self.weight * p * (1.0 - p)
        self._node = np.zeros(self.binned.shape[0], dtype=np.int64)

    def histograms(self, nodes: NDArray[np.int64], n_bins: int) -> NDArray[np.float64]:
        """Per-bin gradient and hessian sums of the rows in ``nodes``.

        Returns
        -------
        ndarray of shape (len(nodes), n_features, n_bins, 2)
        """
        slot = np.full(max(int(self._node.max(initial=0)), int(nodes.max())) + 1, -1,
                       dtype=np.int64)
        slot[nodes] = np.arange(nodes.size)
        rows = np.flatnonzero(slot[self._node] >= 0)
        base = slot[self._node[rows]] * n_bins
        size = len(nodes) * n_bins
        n_features = self.binned.shape[1]
        out = np.zeros((n_features, 2, size))
        g, h = self._g[rows], self._h[rows]
        columns = self._columns[:, rows] if rows.size < self._columns.shape[1] else self._columns
        for f in range(n_features):
            idx = base + columns[f]
            out[f, 0] = np.bincount(idx, weights=g, minlength=size)
            out[f, 1] = np.bincount(idx, weights=h, minlength=size)
        return out.reshape(n_features, 2, len(nodes), n_bins).transpose(2, 0, 3, 1)

    def route(self, tree: Tree, nodes: NDArray[np.int64]) -> None:
        """Move the rows of the split ``nodes`` to their children."""
        for node in nodes:
            at = self._node == node
            left = self.binned[at, tree.feature[node]] <= tree.bin[node]
            self._node[at] = np.where(left, tree.left[node], tree.right[node])

    def end_tree(self, tree: Tree) -> None:
        """Add the finished tree's leaf values to the scores."""
        self.score += tree.value[self._node]


def _grow(sites: Sequence[BoostingSite], edges: Sequence[NDArray[np.float32]],
          plan: BoostingPlan) -> Tree:
    capacity = 2 ** (plan.max_depth + 1) - 1
    feature = np.full(capacity, _LEAF, dtype=np.int64)
    bin_ = np.full(capacity, _LEAF, dtype=np.int64)
    threshold = np.full(capacity, np.nan, dtype=np.float32)
    left = np.full(capacity, _LEAF, dtype=np.int64)
    right = np.full(capacity, _LEAF, dtype=np.int64)
    value = np.zeros(capacity)
    tree = Tree(feature, bin_, threshold, left, right, value)
    for s in sites:
        s.begin_tree()
    active, used = np.array([0]), 1
    for depth in range(plan.max_depth + 1):
        hist = np.sum([s.histograms(active, plan.n_bins) for s in sites], axis=0)
        totals = hist[:, 0].sum(axis=1)  # (n_active, 2), the same from any feature
        if depth < plan.max_depth:
            _, feat, cut = best_splits(hist, l2=plan.l2, min_child_weight=plan.min_child_weight)
        else:
            feat = cut = np.full(active.size, _LEAF)
        split = feat >= 0
        for i in np.flatnonzero(~split):
            g, h = totals[i]
            value[active[i]] = -plan.learning_rate * g / (h + plan.l2)
        splitting = active[split]
        for node, f, b in zip(splitting, feat[split], cut[split], strict=True):
            feature[node], bin_[node] = f, b
            threshold[node] = edges[f][b]
            left[node], right[node] = used, used + 1
            used += 2
        if splitting.size == 0:
            break
        for s in sites:
            s.route(tree, splitting)
        active = np.concatenate([[left[n], right[n]] for n in splitting])
    for s in sites:
        s.end_tree(tree)
    keep = slice(0, used)
    return Tree(feature[keep], bin_[keep], threshold[keep], left[keep], right[keep],
                value[keep])


def boost(
    sites: Sequence[BoostingSite], edges: Sequence[NDArray[np.float32]], plan: BoostingPlan
) -> tuple[float, list[Tree]]:
    """Grow ``plan.n_trees`` trees across the sites.

    Parameters
    ----------
    sites : sequence of BoostingSite
        Binned with the same ``edges``.
    edges : list of ndarray
    plan : BoostingPlan

    Returns
    -------
    base : float
        The initial raw score: log-odds of the pooled weighted positive rate.
    trees : list of Tree
    """
    sums = np.array([s.label_sums() for s in sites]).sum(axis=0)
    rate = float(np.clip(sums[0] / sums[1], 1e-6, 1 - 1e-6))
    base = float(np.log(rate / (1.0 - rate)))
    for s in sites:
        s.start(base)
    return base, [_grow(sites, edges, plan) for _ in range(plan.n_trees)]


def predict_raw(x: NDArray[np.floating], base: float, trees: Sequence[Tree]) -> NDArray[
    np.float64
]:
    """Raw scores of unbinned rows, by the thresholds (as ONNX would).

    Parameters
    ----------
    x : ndarray of shape (n_rows, n_features)
    base : float
    trees : sequence of Tree

    Returns
    -------
    ndarray of shape (n_rows,)
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.full(x.shape[0], base)
    rows = np.arange(x.shape[0])
    for tree in trees:
        node = np.zeros(x.shape[0], dtype=np.int64)
        while True:
            inner = tree.feature[node] != _LEAF
            if not inner.any():
                break
            r, n = rows[inner], node[inner]
            go_left = x[r, tree.feature[n]] <= tree.threshold[n]
            node[r] = np.where(go_left, tree.left[n], tree.right[n])
        out += tree.value[node]
    return out
