"""The coordinator's side of the boosting: one request per tree level, through a transport.

:func:`boost_over` grows the trees of :mod:`vigil.federation.boosting` by
sending every site, at each level of each tree, one :class:`LevelRequest`
(the scores' updates, the rows to route, the nodes to sum) and screening the
histograms that come back (:func:`~vigil.federation.boosting.check_histograms`).
How a request reaches a site is a :class:`LevelTransport`: :class:`LocalLevels`
calls :func:`answer_level` on in-process sites; on Flower, the ClientApp runs
the same :func:`answer_level` on the SuperNode
(:mod:`vigil.federation.flower.treewire`). The protocol is the same code on
both, so the trees are too.

Only sums travel from a site (histograms, and before the first tree its
weighted positives and rows); the coordinator keeps no per-site state but
what screening needs (each site's parent totals of the level above and its
declared sums), so the per-level sums could go through secure aggregation.

Dropout rule: a site that fails a screening rule, raises, or does not answer
a level (an error reply, a timeout, a lost SuperNode) is left out for the
rest of the boosting with an :class:`~vigil.federation.boosting.Exclusion`
(tree, depth, reason, detail); that level is summed over the sites that
answered and the tree is finished without it (its rows are then in no
histogram below that level). Fewer than ``min_sites`` remaining stops the
boosting with :class:`~vigil.core.errors.AggregationError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import AggregationError, ConfigError, DataError
from vigil.federation.boosting import (
    Boosted,
    BoostingPlan,
    BoostingSite,
    Exclusion,
    ExclusionReason,
    Tree,
    best_splits,
    check_histograms,
)

__all__ = [
    "SECURE_TIE_RTOL",
    "LevelRequest",
    "LevelTransport",
    "LocalLevels",
    "SummedLevels",
    "answer_level",
    "boost",
    "boost_over",
    "outcome",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_LEAF = -1
SECURE_TIE_RTOL = 1e-6
"""Gains this close tie when the histograms are securely summed (their rounding, about
``1e-15`` of all rows per bin, moves gains by up to about 1e-7 of a small node's gain):
features that cut a node's rows alike then resolve to the first, as in plain sums."""


@dataclass(frozen=True, eq=False)
class LevelRequest:
    """One tree level's request to every site: the whole per-level protocol in one message.

    A site first applies what the coordinator decided since its last answer,
    then sums the requested nodes (:func:`answer_level`):

    1. ``base`` (before the first tree only): every row's initial score;
    2. ``finished`` (at the root of every tree but the first, and once after
       the last tree): the previous tree, whose leaf values are added to the scores;
    3. at the root, the gradients at the current scores;
    4. ``split`` (below the root): the nodes of ``grown`` split one level up,
       whose rows move to their children;
    5. the histograms of ``nodes`` (none after the last tree).

    Attributes
    ----------
    tree, depth : int
    nodes : ndarray of shape (n_nodes,)
    n_bins : int
    grown : Tree or None
        The tree being grown, as far as decided (for ``split``).
    split : ndarray
        Nodes of ``grown`` to route; empty at the root.
    finished : Tree or None
    base : float or None
    """

    tree: int
    depth: int
    nodes: NDArray[np.int64]
    n_bins: int
    grown: Tree | None = None
    split: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    finished: Tree | None = None
    base: float | None = None


def answer_level(site: BoostingSite, request: LevelRequest) -> NDArray[np.float64]:
    """Apply ``request`` to a site's boosting state and return its histograms.

    The one site-side step of the tree levels, run by every transport (in
    process, or by the ClientApp on a SuperNode).

    Returns
    -------
    ndarray of shape (len(request.nodes), n_features, n_bins, 2)
    """
    if request.base is not None:
        site.start(request.base)
    if request.finished is not None:
        site.end_tree(request.finished)
    nodes = np.asarray(request.nodes, dtype=np.int64)
    if nodes.size == 0:
        return np.zeros((0, site.binned.shape[1], request.n_bins, 2))
    if request.depth == 0:
        site.begin_tree()
    if request.split.size:
        if request.grown is None:
            raise DataError("expected the grown tree with the nodes to split")
        site.route(request.grown, request.split)
    return site.histograms(nodes, request.n_bins)


class LevelTransport(Protocol):
    """How the coordinator reaches the sites for the tree levels.

    ``level`` asks every named site at once; each answer is the site's
    histograms or the exception that stands for its failure (an error, a
    timeout, a lost SuperNode).
    """

    def level(self, names: Sequence[str], request: LevelRequest) -> dict[
        str, NDArray[np.float64] | Exception
    ]:
        """Send ``request`` to the sites ``names``; return their histograms."""
        ...


def outcome(call: Callable[[], T]) -> T | Exception:
    """Return ``call()``, or the exception it raised (a failing site must not stop the others)."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - any failure of a site is that site's
        return exc


@runtime_checkable
class SummedLevels(Protocol):
    """A transport that returns each level's histograms summed over the sites (secure aggregation).

    The coordinator then screens the sum, not each site
    (:func:`~vigil.federation.boosting.check_histograms` on the total): a
    failure cannot be traced to a site and stops the boosting.
    """

    def level_sum(self, names: Sequence[str], request: LevelRequest) -> tuple[
        NDArray[np.float64], dict[str, Exception]
    ]:
        """Return the sites' summed histograms and the sites that failed to take part."""
        ...

    def tolerance(self, depth: int, n_bins: int) -> float:
        """Absolute error the sums' totals may have at ``depth`` (for the screening)."""
        ...


class LocalLevels:
    """The in-process :class:`LevelTransport`: :func:`answer_level` on each site in turn.

    Parameters
    ----------
    sites : mapping of str to BoostingSite
    """

    def __init__(self, sites: Mapping[str, BoostingSite]) -> None:
        self.sites = dict(sites)

    def level(self, names: Sequence[str], request: LevelRequest) -> dict[
        str, NDArray[np.float64] | Exception
    ]:
        """Call :func:`answer_level` on each named site."""
        return {n: outcome(lambda s=self.sites[n]: answer_level(s, request))  # type: ignore[misc]
                for n in names}


class _Federation:
    """The coordinator's view of the boosting sites: requests, screening, exclusions."""

    def __init__(self, names: Sequence[str], transport: LevelTransport, min_sites: int) -> None:
        self.active = list(names)
        self.transport = transport
        self.min_sites = min_sites
        self.exclusions: list[Exclusion] = []
        self.tree, self.depth = -1, 0

    def exclude(self, name: str, reason: ExclusionReason, detail: str) -> None:
        log.warning("boosting tree %d: site %s left out (%s: %s)", self.tree, name,
                    reason.value, detail)
        self.exclusions.append(Exclusion(name, self.tree, self.depth, reason, detail))
        self.active = [n for n in self.active if n != name]
        if len(self.active) < self.min_sites:
            raise AggregationError(
                f"boosting needs at least {self.min_sites} sites, {len(self.active)} remain "
                f"after site {name} was left out ({reason.value}: {detail})"
            )

    def keep(self, answers: Mapping[str, T | Exception]) -> dict[str, T]:
        """Return the active sites' answers; a site that failed or did not answer is left out."""
        out: dict[str, T] = {}
        for name in list(self.active):
            answer = answers.get(name, ConnectionError("no answer"))
            if isinstance(answer, Exception):
                self.exclude(name, ExclusionReason.ERROR, type(answer).__name__)
            else:
                out[name] = answer
        return out

    def level(self, request: LevelRequest) -> dict[str, NDArray[np.float64]]:
        """Send one level's request to every active site."""
        return self.keep(self.transport.level(list(self.active), request))

    def level_sum(self, request: LevelRequest, shape: tuple[int, int, int, int],
                  parents: NDArray[np.float64] | None,
                  label_sums: tuple[float, float] | None) -> NDArray[np.float64]:
        """Send one level's request; return the histograms summed over the sites, screened."""
        assert isinstance(self.transport, SummedLevels)
        hist, failed = self.transport.level_sum(list(self.active), request)
        for name, error in sorted(failed.items()):
            self.exclude(name, ExclusionReason.ERROR, type(error).__name__)
        if failed:  # the totals declared and summed one level up included the sites gone
            parents = label_sums = None
        problem = check_histograms(hist, shape, parents=parents, label_sums=label_sums,
                                   atol=self.transport.tolerance(request.depth, request.n_bins))
        if problem is not None:
            raise AggregationError(f"boosting tree {self.tree} depth {self.depth}: the summed "
                                   f"histograms fail the {problem[0].value} rule ({problem[1]}); "
                                   "under secure aggregation no site can be singled out")
        return hist


def _grow(fed: _Federation, edges: Sequence[NDArray[np.float32]], plan: BoostingPlan,
          label_sums: Mapping[str, tuple[float, float]], *, base: float | None,
          finished: Tree | None, exact: bool = True) -> Tree:
    capacity = 2 ** (plan.max_depth + 1) - 1
    feature = np.full(capacity, _LEAF, dtype=np.int64)
    bin_ = np.full(capacity, _LEAF, dtype=np.int64)
    threshold = np.full(capacity, np.nan, dtype=np.float32)
    left = np.full(capacity, _LEAF, dtype=np.int64)
    right = np.full(capacity, _LEAF, dtype=np.int64)
    value = np.zeros(capacity)
    tree = Tree(feature, bin_, threshold, left, right, value)
    active, used = np.array([0]), 1
    splitting = np.empty(0, dtype=np.int64)
    parents: dict[str, NDArray[np.float64]] = {}
    for depth in range(plan.max_depth + 1):
        fed.depth = depth
        shape = (active.size, len(edges), plan.n_bins, 2)
        request = LevelRequest(
            tree=fed.tree, depth=depth, nodes=active, n_bins=plan.n_bins,
            grown=tree if depth else None, split=splitting,
            finished=finished if depth == 0 else None, base=base if depth == 0 else None,
        )
        if isinstance(fed.transport, SummedLevels):
            declared = np.sum([label_sums[n] for n in fed.active], axis=0)
            hist = fed.level_sum(request, shape, parents.get("", None),
                                 (float(declared[0]), float(declared[1])) if depth == 0 else None)
            sent = {"": hist}
        else:
            sent = fed.level(request)
            for name in list(fed.active):
                problem = check_histograms(sent[name], shape, parents=parents.get(name),
                                           label_sums=label_sums[name] if depth == 0 else None,
                                           exact=exact)
                if problem is not None:
                    fed.exclude(name, *problem)
            hist = np.sum([sent[n] for n in fed.active], axis=0)
        totals = hist[:, 0].sum(axis=1)  # (n_active, 2), the same from any feature
        if not exact:  # noisy sums: every feature sent is an estimate; average them
            totals = _mean_totals(hist)
        if depth < plan.max_depth:
            tie = {"tie_rtol": SECURE_TIE_RTOL} if isinstance(fed.transport, SummedLevels) else {}
            _, feat, cut = best_splits(hist, l2=plan.l2, min_child_weight=plan.min_child_weight,
                                       **tie)
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
        parents = {n: sent[n][split, 0].sum(axis=1) for n in sent if n in fed.active or not n}
        active = np.concatenate([[left[n], right[n]] for n in splitting])
    keep = slice(0, used)
    return Tree(feature[keep], bin_[keep], threshold[keep], left[keep], right[keep],
                value[keep])


def _mean_totals(hist: NDArray[np.float64]) -> NDArray[np.float64]:
    """Node totals of noisy histograms: the mean over the features sent (not all zero).

    Each sent feature's bins add up to an independent noisy estimate of the same
    totals; their mean (post-processing) has the noise variance divided by their
    number. Returns shape (n_nodes, 2), hessians clipped at 0.
    """
    per_feature = hist.sum(axis=2)  # (n_nodes, n_features, 2)
    sent = np.any(hist != 0, axis=(2, 3))  # (n_nodes, n_features)
    count = np.maximum(sent.sum(axis=1), 1)[:, None]
    totals = (per_feature * sent[..., None]).sum(axis=1) / count
    totals[:, 1] = np.maximum(totals[:, 1], 0.0)
    return totals


def boost(
    sites: Sequence[BoostingSite],
    edges: Sequence[NDArray[np.float32]],
    plan: BoostingPlan,
    *,
    min_sites: int = 1,
    on_tree: Callable[[int], None] | None = None,
    exact: bool = True,
) -> Boosted:
    """Grow ``plan.n_trees`` trees across in-process sites, screening what each sends.

    :func:`boost_over` with :class:`LocalLevels`; each site declares its
    :meth:`BoostingSite.label_sums` first. ``sites`` are binned with the same
    ``edges``; the other parameters, the result and the errors are :func:`boost_over`'s.
    """
    if len({s.name for s in sites}) != len(sites):
        raise ConfigError("expected distinct site names", key="sites")
    declared = {s.name: outcome(s.label_sums) for s in sites}
    return boost_over(LocalLevels({s.name: s for s in sites}), declared, edges, plan,
                      min_sites=min_sites, on_tree=on_tree, exact=exact)


def boost_over(
    transport: LevelTransport,
    declared: Mapping[str, tuple[float, float] | Exception],
    edges: Sequence[NDArray[np.float32]],
    plan: BoostingPlan,
    *,
    min_sites: int = 1,
    on_tree: Callable[[int], None] | None = None,
    exact: bool = True,
) -> Boosted:
    """Grow ``plan.n_trees`` trees across the sites a transport reaches (one request per level).

    A site that fails a screening rule, raises, or does not answer a level
    (``transport`` gives an exception: an error, a timeout, a lost SuperNode)
    is left out for the rest of the boosting with an :class:`Exclusion`; the
    level it failed is summed over the sites that answered, and the tree is
    finished without it. Fewer than ``min_sites`` remaining stops the boosting.

    Parameters
    ----------
    transport : LevelTransport
    declared : mapping of str to (float, float) or Exception
        Each site's weighted positives and rows (:meth:`BoostingSite.label_sums`),
        or its failure to send them; the sites, by name.
    edges : list of ndarray
    plan : BoostingPlan
    min_sites : int, optional
    on_tree : callable, optional
    exact : bool, optional
        False when the sites send noisy (differentially private) sums
        (:mod:`vigil.federation.tree_privacy`): screening keeps only the rules
        noise cannot break, and node totals are averaged over the features sent.

    Returns
    -------
    Boosted

    Raises
    ------
    AggregationError
        If fewer than ``min_sites`` sites remain.
    """
    names = sorted(declared)
    fed = _Federation(names, transport, min_sites)
    if len(fed.active) < min_sites:
        raise AggregationError(f"boosting needs at least {min_sites} sites, got {len(names)}")
    sums_of = fed.keep(declared)
    for name in list(fed.active):
        positives, rows = sums_of[name]
        if not (np.isfinite([positives, rows]).all() and 0 <= positives <= rows and rows > 0):
            fed.exclude(name, ExclusionReason.BOUNDS,
                        f"expected 0 <= positives <= rows, rows > 0; got {positives:.4g} "
                        f"and {rows:.4g}")
    sums = np.array([sums_of[n] for n in fed.active]).sum(axis=0)
    rate = float(np.clip(sums[0] / sums[1], 1e-6, 1 - 1e-6))
    base = float(np.log(rate / (1.0 - rate)))
    trees: list[Tree] = []
    for t in range(plan.n_trees):
        fed.tree = t
        trees.append(_grow(fed, edges, plan, sums_of, base=base if t == 0 else None,
                           finished=trees[-1] if trees else None, exact=exact))
        if on_tree is not None:
            on_tree(t + 1)
    # the sites add the last tree to their scores (no histograms asked)
    fed.tree, fed.depth = plan.n_trees, 0
    fed.level(LevelRequest(tree=plan.n_trees, depth=0, nodes=np.empty(0, dtype=np.int64),
                           n_bins=plan.n_bins, finished=trees[-1]))
    return Boosted(base, tuple(trees), tuple(fed.exclusions), tuple(fed.active))
