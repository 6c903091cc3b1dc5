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

Screening. A site's histograms are checked before they are summed (rules in
this order; the first that fails names the exclusion):

1. ``schema``: shape ``(n_nodes, n_features, n_bins, 2)`` of floating point;
2. ``non-finite``: no NaN or infinity;
3. ``hessian``: no negative hessian sum (``h >= 0`` for every row);
4. ``inconsistent``: every feature's bins of a node add up to the same
   gradient and hessian totals (each row is in one bin of every feature), and
   the totals of a split node's two children add up to the node's totals the
   site sent one level up;
5. ``bounds``: at the root, with ``W`` and ``P`` the weighted rows and
   positives the site declared, ``-P <= G <= W - P`` and ``H <= W / 4``
   (``|g| <= w``, ``p (1 - p) <= 1/4``); a scaled histogram breaks them.

A site that fails a rule, or raises, is left out of the rest of the boosting,
with a record (:class:`Exclusion`); boosting stops with an
:class:`~vigil.core.errors.AggregationError` when fewer than ``min_sites``
remain (the coordinator's loop: :mod:`vigil.federation.treegrowth`). The
rules catch corrupted and scaled histograms, not a site that lies
consistently; that needs secure aggregation or robust split finding, which
this module does not do.

Used by ``vigil federate --boost-trees`` and ``vigil federation run --boost-trees``
(:mod:`vigil.federation.hybrid`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ConfigError, DataError

__all__ = [
    "Boosted",
    "BoostingPlan",
    "BoostingSite",
    "Exclusion",
    "ExclusionReason",
    "Tree",
    "best_splits",
    "bin_edges",
    "bin_rows",
    "check_histograms",
    "predict_raw",
    "site_quantiles",
    "trees_from_arrays",
    "trees_to_arrays",
]

log = logging.getLogger(__name__)
_LEAF = -1
_RTOL, _ATOL = 1e-7, 1e-6
_TIE_RTOL = 1e-9


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
    histograms: NDArray[np.float64], *, l2: float, min_child_weight: float,
    tie_rtol: float = _TIE_RTOL,
) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64]]:
    """Find the best split of every node from its summed histograms.

    Parameters
    ----------
    histograms : ndarray of shape (n_nodes, n_features, n_bins, 2)
        Per node, feature and bin: sums of gradients and of hessians.
    l2 : float
    min_child_weight : float
    tie_rtol : float, optional
        Gains within this relative distance of the best tie (1e-9; larger for
        quantized sums, whose rounding is larger, :mod:`vigil.federation.secure_sum`).

    Returns
    -------
    gain, feature, bin : ndarray of shape (n_nodes,)
        ``gain <= 0`` (and feature/bin -1) where no split is allowed. Of cuts
        whose gains agree to a relative ``tie_rtol``, the first (lowest feature,
        then lowest bin) wins.
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
    # the first cut within a relative 1e-9 of the best: cuts through empty bins, and
    # features splitting the rows alike, tie exactly in exact arithmetic; rounding
    # (summation order, the subtraction trick) must not decide between them
    top = flat.max(axis=1)
    best = np.argmax(flat >= (top - (tie_rtol * np.abs(top) + 1e-12))[:, None], axis=1)
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
    _kept: dict[int, NDArray[np.float64]] = field(init=False, repr=False)
    _family: dict[int, tuple[int, int]] = field(init=False, repr=False)

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
        self._kept, self._family = {}, {}

    def _direct(self, nodes: NDArray[np.int64], n_bins: int) -> NDArray[np.float64]:
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
        for f in self._summed_features():
            idx = base + columns[f]
            out[f, 0] = np.bincount(idx, weights=g, minlength=size)
            out[f, 1] = np.bincount(idx, weights=h, minlength=size)
        return out.reshape(n_features, 2, len(nodes), n_bins).transpose(2, 0, 3, 1)

    def _summed_features(self) -> Sequence[int] | NDArray[np.int64]:
        """Features whose histograms are summed (all; a subclass may send fewer)."""
        return range(self.binned.shape[1])

    def histograms(self, nodes: NDArray[np.int64], n_bins: int) -> NDArray[np.float64]:
        """Per-bin gradient and hessian sums of the rows in ``nodes``.

        Of two children of a node split one level up, only the one with fewer
        rows is summed; the other is the parent's histograms minus it (the
        subtraction trick of LightGBM, Ke et al. 2017), with hessian sums
        clipped at 0 against rounding.

        Returns
        -------
        ndarray of shape (len(nodes), n_features, n_bins, 2)
        """
        nodes = np.asarray(nodes, dtype=np.int64)
        requested = set(nodes.tolist())
        counts = np.bincount(self._node, minlength=int(nodes.max()) + 1)
        direct: list[int] = []
        derived: list[tuple[int, int, int]] = []
        for node in nodes.tolist():
            sibling, parent = self._family.get(node, (-1, -1))
            if sibling in requested and parent in self._kept and (
                    (counts[node], node) > (counts[sibling], sibling)):
                derived.append((node, sibling, parent))
            else:
                direct.append(node)
        hist: dict[int, NDArray[np.float64]] = {}
        if direct:
            hist.update(zip(direct, self._direct(np.array(direct), n_bins), strict=True))
        for node, sibling, parent in derived:
            h = self._kept[parent] - hist[sibling]
            np.maximum(h[..., 1], 0.0, out=h[..., 1])
            hist[node] = h
        self._kept = hist
        return np.stack([hist[n] for n in nodes.tolist()])

    def route(self, tree: Tree, nodes: NDArray[np.int64]) -> None:
        """Move the rows of the split ``nodes`` to their children."""
        for node in nodes:
            at = self._node == node
            left = self.binned[at, tree.feature[node]] <= tree.bin[node]
            self._node[at] = np.where(left, tree.left[node], tree.right[node])
            left_id, right_id = int(tree.left[node]), int(tree.right[node])
            self._family[left_id] = (right_id, int(node))
            self._family[right_id] = (left_id, int(node))

    def end_tree(self, tree: Tree) -> None:
        """Add the finished tree's leaf values to the scores."""
        self.score += tree.value[self._node]

    def state(self) -> dict[str, NDArray[Any]]:
        """Return the running state between two requests as arrays (a site rebuilt per message).

        The scores and, within a tree, each row's node, its gradients and
        hessians, and the histograms and families the subtraction trick reuses.
        :meth:`restore` on a site built from the same rows gives the same answers.
        """
        out: dict[str, NDArray[Any]] = {"score": self.score}
        if hasattr(self, "_node"):
            kept = sorted(self._kept)
            family = sorted(self._family.items())
            out |= {
                "node": self._node, "g": self._g, "h": self._h,
                "kept_nodes": np.array(kept, dtype=np.int64),
                "kept": np.stack([self._kept[n] for n in kept]) if kept
                else np.zeros((0, self.binned.shape[1], 0, 2)),
                "family": np.array([[n, s, p] for n, (s, p) in family],
                                   dtype=np.int64).reshape(-1, 3),
            }
        return out

    def restore(self, state: Mapping[str, NDArray[Any]]) -> None:
        """Take up the running state :meth:`state` returned."""
        self.score = np.array(state["score"], dtype=np.float64)
        if "node" in state:
            self._node = np.array(state["node"], dtype=np.int64)
            self._g, self._h = np.array(state["g"]), np.array(state["h"])
            self._kept = dict(zip(state["kept_nodes"].tolist(), state["kept"], strict=True))
            self._family = {int(n): (int(s), int(p)) for n, s, p in state["family"]}


class ExclusionReason(StrEnum):
    """Why a site was left out of the boosting (the screening rules, and failures)."""

    ERROR = "error"
    SCHEMA = "schema"
    NON_FINITE = "non-finite"
    HESSIAN = "hessian"
    INCONSISTENT = "inconsistent"
    BOUNDS = "bounds"


@dataclass(frozen=True)
class Exclusion:
    """A site left out of the boosting from tree ``tree`` (0-based) on.

    Attributes
    ----------
    site : str
    tree, depth : int
        Where it happened (``tree = -1`` before the first tree).
    reason : ExclusionReason
    detail : str
        The numbers or the error type; nothing about patients.
    """

    site: str
    tree: int
    depth: int
    reason: ExclusionReason
    detail: str


@dataclass(frozen=True, eq=False)
class Boosted:
    """Grown trees and what happened on the way.

    Attributes
    ----------
    base : float
        Initial raw score: log-odds of the pooled weighted positive rate.
    trees : tuple of Tree
    exclusions : tuple of Exclusion
    sites : tuple of str
        The sites that took part to the end.
    """

    base: float
    trees: tuple[Tree, ...]
    exclusions: tuple[Exclusion, ...]
    sites: tuple[str, ...]


def check_histograms(
    hist: object,
    shape: tuple[int, int, int, int],
    *,
    parents: NDArray[np.float64] | None = None,
    label_sums: tuple[float, float] | None = None,
    atol: float = _ATOL,
    exact: bool = True,
) -> tuple[ExclusionReason, str] | None:
    """Screen one site's histograms of one tree level (rules in the module docstring).

    Parameters
    ----------
    hist : object
        What the site sent, expected an ndarray of ``shape``.
    shape : tuple of int
        ``(n_nodes, n_features, n_bins, 2)``.
    parents : ndarray of shape (n_nodes // 2, 2), optional
        The site's gradient and hessian totals of the nodes split one level up
        (their children are ``hist``'s nodes, in pairs); None at the root.
    label_sums : tuple of float, optional
        The site's weighted positives ``P`` and rows ``W``; checked at the root.
    atol : float, optional
        Absolute tolerance of the totals' agreement (larger for quantized sums,
        :mod:`vigil.federation.secure_sum`).
    exact : bool, optional
        False for noisy (differentially private) sums: only rules 1-3 apply,
        since noise breaks the equalities of rules 4 and 5.

    Returns
    -------
    (ExclusionReason, str) or None
        The first failed rule and its numbers, or None if the histograms pass.
    """
    if not isinstance(hist, np.ndarray) or hist.shape != shape or hist.dtype.kind != "f":
        got = (f"{type(hist).__name__} {getattr(hist, 'shape', '')} "
               f"{getattr(hist, 'dtype', '')}").strip()
        return ExclusionReason.SCHEMA, f"expected float histograms of shape {shape}, got {got}"
    if not np.isfinite(hist).all():
        return ExclusionReason.NON_FINITE, f"{int((~np.isfinite(hist)).sum())} non-finite sums"
    if (hist[..., 1] < 0).any():
        return ExclusionReason.HESSIAN, f"hessian sum {float(hist[..., 1].min()):.3g} < 0"
    if not exact:
        return None
    per_feature = hist.sum(axis=2)  # (n_nodes, n_features, 2)
    totals = per_feature[:, 0]
    if not np.allclose(per_feature, totals[:, None], rtol=_RTOL, atol=atol):
        gap = float(np.abs(per_feature - totals[:, None]).max())
        return ExclusionReason.INCONSISTENT, f"features disagree on a node's totals by {gap:.3g}"
    if parents is not None:
        pairs = totals.reshape(-1, 2, 2).sum(axis=1)
        if not np.allclose(pairs, parents, rtol=_RTOL, atol=atol):
            gap = float(np.abs(pairs - parents).max())
            return ExclusionReason.INCONSISTENT, f"children differ from their parent by {gap:.3g}"
    if label_sums is not None:
        positives, rows = label_sums
        g, h = totals[0]
        tol = atol + _RTOL * rows
        if not (-positives - tol <= g <= rows - positives + tol and h <= rows / 4 + tol):
            return ExclusionReason.BOUNDS, (f"root sums G={g:.4g}, H={h:.4g} outside "
                                            f"[-{positives:.4g}, {rows - positives:.4g}] and "
                                            f"[0, {rows / 4:.4g}]")
    return None


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


_TREE_FIELDS = ("feature", "bin", "threshold", "left", "right", "value")


def trees_to_arrays(trees: Sequence[Tree], prefix: str = "trees/") -> dict[str, NDArray[Any]]:
    """Flatten trees into named arrays (``prefix + "0/feature"``, ...), dtypes kept.

    For messages and files; :func:`trees_from_arrays` reads them back bit for bit.
    """
    return {f"{prefix}{i}/{name}": getattr(tree, name)
            for i, tree in enumerate(trees) for name in _TREE_FIELDS}


def trees_from_arrays(arrays: Mapping[str, NDArray[Any]], prefix: str = "trees/") -> tuple[
    Tree, ...
]:
    """Read back the trees :func:`trees_to_arrays` flattened (other keys are ignored).

    Raises
    ------
    DataError
        If a tree lacks one of its arrays.
    """
    count = len({k[len(prefix):].split("/", 1)[0] for k in arrays if k.startswith(prefix)})
    try:
        return tuple(Tree(*(np.asarray(arrays[f"{prefix}{i}/{name}"]) for name in _TREE_FIELDS))
                     for i in range(count))
    except KeyError as exc:
        raise DataError(f"expected the arrays {list(_TREE_FIELDS)} of every tree, {exc} is "
                        "missing") from None
