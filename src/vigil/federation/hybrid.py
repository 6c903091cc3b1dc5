"""The hybrid model: the federated network plus boosted trees grown across the sites.

After the network's rounds, the coordinator grows gradient-boosted trees from
the sites' summed histograms (:mod:`vigil.federation.boosting`), fitted to
``SepsisLabel``, and fuses the two models' scores by z-score normalization
and the sum rule (Jain, Nandakumar & Ross, "Score normalization in multimodal
biometric systems", Pattern Recognition 38(12):2270-2285, 2005)::

    s = (z_net - m_net) / sd_net + (z_tree - m_tree) / sd_tree,    p = sigmoid(a + b s)

with ``z_net`` the network's logit, ``z_tree`` the trees' raw score, and each
mean ``m`` and standard deviation ``sd`` over the validation rows of all
sites, from the sites' sums (:class:`~vigil.federation.messages.LogitSums`).
``a`` and ``b`` are Platt scaling (Platt, "Probabilistic outputs for support
vector machines", 1999): the logistic regression of ``SepsisLabel`` on ``s``
over the validation rows of all sites, fitted to the summed per-bin counts of
positive and negative rows the sites already send, each bin at its center
(bins 0.05 wide in ``s``). ``p`` is then a pooled hourly probability of
``SepsisLabel`` rather than a score centred on 0.5; each site still
recalibrates it to its own patients (``vigil calibrate``).

The coordinator's steps (:func:`grow_hybrid`: :func:`grow_trees`, then :func:`fuse_trees`):

1. every site sends per-feature quantiles of its training rows; the bin edges
   are their average weighted by the rows each site declared before round 1
   (:func:`~vigil.federation.boosting.bin_edges`);
2. the trees grow from the screened, summed site histograms
   (:func:`~vigil.federation.boosting.boost`);
3. every site sends the sums of both models' scores on its validation rows,
   which give the standardization;
4. every site evaluates ``sigmoid(s)`` on its validation rows
   (:class:`~vigil.federation.messages.SiteEvaluation`), whose summed
   histograms give ``a`` and ``b``;
5. every site evaluates ``p``; the pooled metrics and the threshold come from
   their histograms, as for the network alone (``p`` is a monotone function
   of ``s``: AUROC and utility differ from step 4's only by the binning).

A site that fails step 1 is left out of the trees; one that fails a later
step is left out of that step's sums (each logged). With public edges (and
always under DP, :mod:`vigil.federation.tree_privacy`) step 1 uses
:func:`vigil.federation.public_edges.public_edges` and asks no quantiles.

Measured on the shared data (docs/federation.md): the trees add 0.017 AUROC and
0.035 utility to the federated network on test patients (100 trees, depth 6).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import AggregationError, ConfigError
from vigil.federation.boosting import (
    Boosted,
    BoostingPlan,
    BoostingSite,
    Tree,
    bin_edges,
    predict_raw,
)
from vigil.federation.evaluation import SCORE_EDGES, PooledMetrics, pool_evaluations
from vigil.federation.messages import LogitSums, SiteEvaluation
from vigil.federation.strategies import Weights
from vigil.federation.treegrowth import (
    LevelRequest,
    LevelTransport,
    answer_level,
    boost_over,
    outcome,
)

__all__ = [
    "Answers",
    "HybridResult",
    "HybridSite",
    "HybridTrees",
    "InProcessTrees",
    "Standardization",
    "SummedScores",
    "TreeTransport",
    "fuse",
    "fuse_trees",
    "grow_hybrid",
    "grow_trees",
    "hybrid_proba",
    "platt_from_histograms",
    "refuse_trees",
    "sigmoid",
]

log = logging.getLogger(__name__)


def refuse_trees(*, keeps_norm_local: bool) -> None:
    """Refuse trees where the package could not hold them honestly.

    Raises
    ------
    ConfigError
        Under FedBN (no single network to fuse with). With DP-SGD the trees
        are grown from noisy histograms (:mod:`vigil.federation.tree_privacy`).
    """
    if keeps_norm_local:
        raise ConfigError("--boost-trees needs one global network to fuse with; FedBN keeps a "
                          "network per site. Use --strategy fedavg or fedprox", key="boost_trees")


def sigmoid(s: NDArray[np.floating]) -> NDArray[np.float64]:
    """Logistic function of an array, any shape."""
    return 1.0 / (1.0 + np.exp(-np.asarray(s, dtype=np.float64)))


@dataclass(frozen=True)
class Standardization:
    """Means and standard deviations of the two models' scores (validation rows, all sites)."""

    net_mean: float
    net_std: float
    tree_mean: float
    tree_std: float

    @classmethod
    def from_sums(cls, sums: Sequence[LogitSums]) -> Standardization:
        """Pool the sites' sums: ``m = S / n``, ``sd = sqrt(Q / n - m^2)``.

        Raises
        ------
        AggregationError
            If no rows were summed or a score is constant.
        """
        n = sum(s.n_rows for s in sums)
        if n < 2:
            raise AggregationError(f"expected validation rows to standardize the scores, got {n}")
        moments = []
        for total, squares in ((sum(s.net_sum for s in sums), sum(s.net_sq for s in sums)),
                               (sum(s.tree_sum for s in sums), sum(s.tree_sq for s in sums))):
            mean = total / n
            std = float(np.sqrt(max(squares / n - mean**2, 0.0)))
            if not std > 0:
                raise AggregationError(f"a model's scores are constant over {n} validation rows; "
                                       "cannot standardize them")
            moments += [mean, std]
        return cls(*moments)

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return asdict(self)


def fuse(
    net_logit: NDArray[np.floating], tree_raw: NDArray[np.floating], st: Standardization
) -> NDArray[np.float64]:
    """Compute the fused score ``s`` of the module docstring.

    Parameters
    ----------
    net_logit, tree_raw : ndarray of shape (n_rows,)
    st : Standardization

    Returns
    -------
    ndarray of shape (n_rows,)
    """
    return ((np.asarray(net_logit, dtype=np.float64) - st.net_mean) / st.net_std
            + (np.asarray(tree_raw, dtype=np.float64) - st.tree_mean) / st.tree_std)


def platt_from_histograms(
    positive: NDArray[np.integer], negative: NDArray[np.integer], *, max_iter: int = 100
) -> tuple[float, float]:
    """Fit ``P(y = 1 | s) = sigmoid(a + b s)`` to binned counts (Platt scaling).

    Parameters
    ----------
    positive, negative : ndarray of shape (len(SCORE_EDGES) + 1,)
        Rows per score bin of :data:`vigil.federation.evaluation.SCORE_EDGES`,
        the bins of ``sigmoid(s)``: ``s`` in 0.05-wide bins from -10 to 10 and
        the two open ends, each taken at its center (the ends at -10.025 and 10.025).
    max_iter : int, optional
        Newton steps at most.

    Returns
    -------
    a, b : float

    Raises
    ------
    AggregationError
        If either class has no row.
    """
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not (pos.sum() > 0 and neg.sum() > 0):
        raise AggregationError(f"expected positive and negative validation rows to calibrate "
                               f"the fused score, got {pos.sum():.0f} and {neg.sum():.0f}")
    edges = np.log(SCORE_EDGES / (1.0 - SCORE_EDGES))
    centers = np.concatenate([[edges[0] - 0.025], (edges[:-1] + edges[1:]) / 2,
                              [edges[-1] + 0.025]])
    x = np.stack([np.ones_like(centers), centers], axis=1)  # (n_bins, 2)
    n = pos + neg
    coef = np.array([np.log(pos.sum() / neg.sum()), 0.0])
    for _ in range(max_iter):  # Newton-Raphson on the binomial log-likelihood
        p = sigmoid(x @ coef)
        gradient = x.T @ (pos - n * p)
        hessian = (x * (n * p * (1.0 - p))[:, None]).T @ x
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        coef = coef + step
        if np.abs(step).max() < 1e-10:
            break
    return float(coef[0]), float(coef[1])


@dataclass(frozen=True, eq=False)
class HybridTrees:
    """What the hybrid adds to the network: the trees and the standardization.

    Attributes
    ----------
    base : float
        The trees' initial raw score.
    trees : tuple of Tree
    standardization : Standardization
    plan : BoostingPlan
    intercept, slope : float
        Platt scaling ``a`` and ``b`` (0 and 1: ``p = sigmoid(s)``).
    """

    base: float
    trees: tuple[Tree, ...]
    standardization: Standardization
    plan: BoostingPlan
    intercept: float = 0.0
    slope: float = 1.0

    def logit(self, net_logit: NDArray[np.floating], X: NDArray[np.floating]) -> NDArray[
        np.float64
    ]:
        """Compute ``a + b s`` from the network's logits and the rows ``X``; shape (n_rows,)."""
        return self.intercept + self.slope * fuse(net_logit, self.raw(X), self.standardization)

    def raw(self, X: NDArray[np.floating]) -> NDArray[np.float64]:
        """Score rows ``X`` of shape (n_rows, n_features) with the trees; raw, shape (n_rows,)."""
        return predict_raw(X, self.base, self.trees)

    def describe(self) -> dict[str, Any]:
        """Manifest form: the plan, sizes and the standardization."""
        return {
            "type": "gradient-boosted trees from summed site histograms",
            "target": "SepsisLabel, unit row weights, logistic loss",
            "plan": asdict(self.plan),
            "n_trees": len(self.trees),
            "n_leaves": int(sum((t.feature < 0).sum() for t in self.trees)),
            "base_score": self.base,
            "fusion": "sigmoid(a + b s), s the sum of the two standardized scores",
            "standardization": self.standardization.to_dict(),
            "platt": {"a": self.intercept, "b": self.slope,
                      "fit": "pooled validation rows, from the summed score histograms"},
        }


class HybridSite(Protocol):
    """What :func:`grow_hybrid` needs of a site (:class:`vigil.federation.site.Site`)."""

    name: str

    def quantiles(self, n_bins: int) -> NDArray[np.float32]:
        """Per-feature quantiles of the training rows, shape (n_features, n_bins - 1)."""
        ...

    def boosting(self, edges: Sequence[NDArray[np.float32]]) -> BoostingSite:
        """Return the site's side of the boosting, its training rows binned with ``edges``."""
        ...

    def logit_sums(self, weights: Weights, base: float, trees: Sequence[Tree]) -> LogitSums:
        """Return the sums of both models' scores on the validation rows."""
        ...

    def evaluate_hybrid(self, weights: Weights, part: HybridTrees) -> SiteEvaluation:
        """Return the validation summary of the fused score."""
        ...


@dataclass(frozen=True, eq=False)
class HybridResult:
    """The trees added to a federated network, and the hybrid's validation.

    Attributes
    ----------
    part : HybridTrees
    boosted : Boosted
        With the exclusions of the boosting.
    evaluations : list of SiteEvaluation
    pooled : PooledMetrics
        Pooled validation metrics of the fused score, and its threshold.
    seconds : float
        Wall time of the boosting.
    """

    part: HybridTrees
    boosted: Boosted
    evaluations: list[SiteEvaluation]
    pooled: PooledMetrics
    seconds: float

    def describe(self) -> dict[str, Any]:
        """Manifest form: :meth:`HybridTrees.describe` plus the sites and exclusions."""
        return {
            **self.part.describe(),
            "sites": list(self.boosted.sites),
            "exclusions": [{**asdict(e), "reason": e.reason.value}
                           for e in self.boosted.exclusions],
            "seconds": round(self.seconds, 1),
        }


Answers = dict[str, Any]
"""Site name to its answer, or to the exception that stands for its failure."""


class TreeTransport(LevelTransport, Protocol):
    """How the coordinator reaches the sites for the trees (one call per step, all sites).

    Each call names the sites it asks; each answer maps a site's name to its
    result or to the exception that stands for its failure. :class:`InProcessTrees`
    calls the sites in this process; the Flower ServerApp sends each step as a
    message to every SuperNode (:class:`vigil.federation.flower.treewire.FlowerTrees`).
    """

    def quantiles(self, names: Sequence[str], n_bins: int) -> Answers:
        """Ask for each site's per-feature quantiles of its training rows."""
        ...

    def begin(self, names: Sequence[str], edges: Sequence[NDArray[np.float32]]) -> Answers:
        """Have each site bin its rows with ``edges``; answer its (positives, rows)."""
        ...

    def score_sums(self, names: Sequence[str], weights: Weights, base: float,
                   trees: Sequence[Tree]) -> Answers:
        """Ask for each site's :class:`LogitSums` of the network and the trees."""
        ...

    def evaluate(self, names: Sequence[str], weights: Weights, part: HybridTrees) -> Answers:
        """Ask each site for its :class:`SiteEvaluation` of the fused score."""
        ...


@runtime_checkable
class SummedScores(Protocol):
    """A transport that returns the score sums summed over the sites (secure aggregation)."""

    def score_sum(self, names: Sequence[str], weights: Weights, base: float,
                  trees: Sequence[Tree]) -> tuple[LogitSums, list[str]]:
        """Return the sites' summed score sums and the sites in the sum."""
        ...


class InProcessTrees:
    """The in-process :class:`TreeTransport`: each site's method, in turn.

    Parameters
    ----------
    sites : sequence of HybridSite
    """

    def __init__(self, sites: Sequence[HybridSite]) -> None:
        self.sites = {s.name: s for s in sites}
        self.boosting: dict[str, BoostingSite] = {}

    def quantiles(self, names: Sequence[str], n_bins: int) -> Answers:
        """Call ``site.quantiles(n_bins)``."""
        return {n: outcome(lambda s=self.sites[n]: s.quantiles(n_bins))  # type: ignore[misc]
                for n in names}

    def begin(self, names: Sequence[str], edges: Sequence[NDArray[np.float32]]) -> Answers:
        """Keep ``site.boosting(edges)``; answer its label sums."""
        out: Answers = {}
        for n in names:
            made = outcome(lambda s=self.sites[n]: s.boosting(edges))  # type: ignore[misc]
            if isinstance(made, Exception):
                out[n] = made
                continue
            self.boosting[n] = made
            out[n] = outcome(made.label_sums)
        return out

    def level(self, names: Sequence[str], request: LevelRequest) -> Answers:
        """Call :func:`~vigil.federation.treegrowth.answer_level` on each site's boosting side."""
        return {n: outcome(lambda b=self.boosting[n]: answer_level(b, request))  # type: ignore[misc]
                for n in names}

    def score_sums(self, names: Sequence[str], weights: Weights, base: float,
                   trees: Sequence[Tree]) -> Answers:
        """Call ``site.logit_sums(weights, base, trees)``."""
        return {n: outcome(lambda s=self.sites[n]: s.logit_sums(weights, base, trees))  # type: ignore[misc]
                for n in names}

    def evaluate(self, names: Sequence[str], weights: Weights, part: HybridTrees) -> Answers:
        """Call ``site.evaluate_hybrid(weights, part)``."""
        return {n: outcome(lambda s=self.sites[n]: s.evaluate_hybrid(weights, part))  # type: ignore[misc]
                for n in names}


def _answered(names: Sequence[str], answers: Answers, what: str) -> dict[str, Any]:
    out = {}
    for name in names:
        answer = answers.get(name, ConnectionError("no answer"))
        if isinstance(answer, Exception):
            log.warning("site %s failed to send %s: %s", name, what, type(answer).__name__)
        else:
            out[name] = answer
    return out


def grow_trees(
    sites: Sequence[HybridSite],
    plan: BoostingPlan,
    *,
    counts: Mapping[str, int],
    min_sites: int = 2,
    on_tree: Callable[[int], None] | None = None,
    transport: TreeTransport | None = None,
    edges: Sequence[NDArray[np.float32]] | None = None,
    exact: bool = True,
) -> tuple[Boosted, float]:
    """Grow the trees across the sites (steps 1 and 2 of the module docstring).

    Parameters
    ----------
    sites : sequence of HybridSite
        Or anything with a ``name`` that ``transport`` reaches.
    plan : BoostingPlan
    counts : mapping of str to int
        Training rows each site declared before round 1 (weights the quantiles);
        sites not in it take no part.
    min_sites : int, optional
    on_tree : callable, optional
        Progress callback, called with the number of finished trees.
    transport : TreeTransport or None, optional
        How the requests reach the sites; default :class:`InProcessTrees` of ``sites``.
    edges : list of ndarray, optional
        Bin edges to use instead of the sites' quantiles (public edges,
        :func:`vigil.federation.public_edges.public_edges`); no quantiles are asked.
    exact : bool, optional
        False when the sites send noisy sums (:func:`~vigil.federation.treegrowth.boost_over`).

    Returns
    -------
    boosted : Boosted
    seconds : float
        Wall time.

    Raises
    ------
    AggregationError
        If fewer than ``min_sites`` sites take part.
    """
    transport = transport or InProcessTrees(sites)
    names = sorted(s.name for s in sites if s.name in counts)
    t0 = time.perf_counter()
    if edges is None:
        quantiles = _answered(names, transport.quantiles(names, plan.n_bins), "quantiles")
        if len(quantiles) < min_sites:
            raise AggregationError(f"boosting needs at least {min_sites} sites, "
                                   f"{len(quantiles)} sent quantiles")
        names = sorted(quantiles)
        edges = bin_edges([quantiles[n] for n in names], [counts[n] for n in names])
    declared = transport.begin(names, edges)
    boosted = boost_over(transport, declared, edges, plan, min_sites=min_sites, on_tree=on_tree,
                         exact=exact)
    return boosted, time.perf_counter() - t0


def fuse_trees(
    sites: Sequence[HybridSite],
    weights: Weights,
    boosted: Boosted,
    plan: BoostingPlan,
    *,
    min_sites: int = 2,
    seconds: float = float("nan"),
    transport: TreeTransport | None = None,
) -> HybridResult:
    """Standardize and evaluate the network and trees fused (steps 3 and 4).

    Parameters
    ----------
    sites : sequence of HybridSite
    weights : Weights
        The federated network (with its normalization).
    boosted : Boosted
        From :func:`grow_trees`.
    plan : BoostingPlan
        The plan the trees were grown with.
    min_sites : int, optional
    seconds : float, optional
        Wall time of the boosting, for the record.
    transport : TreeTransport or None, optional
        Default :class:`InProcessTrees` of ``sites``.

    Returns
    -------
    HybridResult

    Raises
    ------
    AggregationError
        If fewer than ``min_sites`` sites send their sums.
    """
    transport = transport or InProcessTrees(sites)
    names = sorted(s.name for s in sites)
    if isinstance(transport, SummedScores):
        total, summed = transport.score_sum(names, weights, boosted.base, boosted.trees)
        sums = {n: total for n in summed}
        pooled = [total]
    else:
        sums = _answered(names, transport.score_sums(names, weights, boosted.base,
                                                     boosted.trees), "score sums")
        pooled = [sums[n] for n in sorted(sums)]
    if len(sums) < min_sites:
        raise AggregationError(f"expected score sums from {min_sites} sites, got {len(sums)}")
    fused = HybridTrees(boosted.base, boosted.trees, Standardization.from_sums(pooled), plan)
    first = _evaluations(transport, names, weights, fused, min_sites)
    a, b = platt_from_histograms(np.sum([e.positive_hist for e in first], axis=0),
                                 np.sum([e.negative_hist for e in first], axis=0))
    part = replace(fused, intercept=a, slope=b)
    evaluations = _evaluations(transport, names, weights, part, min_sites)
    return HybridResult(part, boosted, evaluations, pool_evaluations(evaluations), seconds)


def _evaluations(transport: TreeTransport, names: Sequence[str], weights: Weights,
                 part: HybridTrees, min_sites: int) -> list[SiteEvaluation]:
    evaluated = _answered(names, transport.evaluate(names, weights, part), "evaluation")
    if len(evaluated) < min_sites:
        raise AggregationError(f"expected evaluations from {min_sites} sites, got "
                               f"{len(evaluated)}")
    return [evaluated[n] for n in sorted(evaluated)]


def grow_hybrid(
    sites: Sequence[HybridSite],
    weights: Weights,
    plan: BoostingPlan,
    *,
    counts: Mapping[str, int],
    min_sites: int = 2,
    on_tree: Callable[[int], None] | None = None,
    transport: TreeTransport | None = None,
    edges: Sequence[NDArray[np.float32]] | None = None,
    exact: bool = True,
) -> HybridResult:
    """Grow the trees across the sites and fuse them with the network ``weights``.

    :func:`grow_trees` then :func:`fuse_trees`, through the same ``transport``;
    the parameters are theirs.

    Returns
    -------
    HybridResult

    Raises
    ------
    AggregationError
        If fewer than ``min_sites`` sites take part in a step.
    """
    transport = transport or InProcessTrees(sites)
    boosted, seconds = grow_trees(sites, plan, counts=counts, min_sites=min_sites,
                                  on_tree=on_tree, transport=transport, edges=edges, exact=exact)
    return fuse_trees(sites, weights, boosted, plan, min_sites=min_sites, seconds=seconds,
                      transport=transport)


def hybrid_proba(model: Any, part: HybridTrees, X: NDArray[np.floating]) -> NDArray[np.float64]:
    """Compute the hybrid's ``p`` of rows ``X`` of shape (n_rows, n_features); shape (n_rows,).

    ``model`` is the network (:class:`vigil.federation.model.SepsisNet`).
    """
    from vigil.federation.model import predict_logit

    return sigmoid(part.logit(predict_logit(model, X), X))
