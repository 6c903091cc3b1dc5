"""``vigil federate``: partition a table into sites, train across them in-process, export.

The whole pipeline of the command, kept out of the CLI: build one
:class:`~vigil.federation.site.Site` per partition (each keeps its train and
valid patients; test patients are never given to a site), run
:func:`~vigil.federation.driver.run_federation`, then write the model package
with the manifest sections a federated model owes: strategy, rounds, sites
with sample counts, DP epsilon/delta per site, pooled validation metrics and
the drift reference profile, plus ``history.json`` (:mod:`vigil.federation.run_export`,
whose functions are re-exported here).

With ``trees`` (``--boost-trees``), trees are grown across the same sites after
the rounds and fused with the kept network (:mod:`vigil.federation.hybrid`); with
``dp`` too, from noisy histograms and public edges, and each site's epsilon is
the composition of both (:mod:`vigil.federation.tree_privacy`);
the package then holds both, and its threshold, validation metrics and score
profile are the fused model's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vigil.core.errors import ConfigError
from vigil.data import PhysioNetTable, partition
from vigil.federation.boosting import BoostingPlan
from vigil.federation.budget import admitted, budgeted
from vigil.federation.driver import FederationResult, Plan, run_federation
from vigil.federation.evaluation import PooledMetrics
from vigil.federation.history import RoundRecord
from vigil.federation.hybrid import HybridResult, grow_hybrid, refuse_trees
from vigil.federation.messages import SiteEvaluation
from vigil.federation.privacy import DPSettings
from vigil.federation.public_edges import public_edges
from vigil.federation.run_export import (
    export_run,
    history_events,
    package_targets,
    run_summary,
    training_section,
    validation_section,
)
from vigil.federation.site import ModelSpec, Site
from vigil.federation.strategies import Strategy, Weights
from vigil.federation.tree_privacy import (
    TreeDPSettings,
    TreeNoise,
    network_dp,
    private_plan,
    site_noise,
)

__all__ = [
    "FederatedRun",
    "build_sites",
    "export_run",
    "federate",
    "history_events",
    "package_targets",
    "run_summary",
    "training_section",
    "validation_section",
]

def build_sites(
    table: PhysioNetTable,
    scheme: str,
    *,
    seed: int = 0,
    model: ModelSpec | None = None,
    keep_norm_local: bool = False,
    dp: DPSettings | None = None,
    target: str = "utility",
) -> list[Site]:
    """Partition ``table`` by ``scheme`` (:func:`vigil.data.partition`), one site per part."""
    spec = model or ModelSpec()
    return [
        Site.from_table(name, table.select(idx), model=spec, keep_norm_local=keep_norm_local,
                        dp=dp, target=target)
        for name, idx in partition(table, scheme, seed=seed).items()
    ]


@dataclass(frozen=True, eq=False)
class FederatedRun:
    """A finished in-process federated training and what it was made with.

    Attributes
    ----------
    result : FederationResult
    strategy : Strategy
    plan : Plan
    model : ModelSpec
    dp : DPSettings or None
    scheme : str
    data : str
        Name of the data file (for the manifest).
    sites : list of Site
        Kept so a FedBN package can carry one site's own normalization.
    method : str, optional
        How the sites were reached, for the manifest (the Flower path sets its own).
    hybrid : HybridResult or None, optional
        The trees grown after the rounds, if any.
    """

    result: FederationResult
    strategy: Strategy
    plan: Plan
    model: ModelSpec
    dp: DPSettings | None
    scheme: str
    data: str
    sites: list[Site]
    method: str = "federated (in-process simulation)"
    hybrid: HybridResult | None = None
    tree_dp: TreeDPSettings | None = None
    tree_noise: dict[str, TreeNoise] = field(default_factory=dict)
    tree_edges: str = "quantiles"

    @property
    def evaluations(self) -> list[SiteEvaluation]:
        """The sites' validation summaries of what is shipped (the fused score with trees)."""
        return self.result.evaluations if self.hybrid is None else self.hybrid.evaluations

    @property
    def pooled(self) -> PooledMetrics:
        """Pooled validation metrics and threshold of what is shipped."""
        return self.result.pooled if self.hybrid is None else self.hybrid.pooled

    def site_weights(self, name: str | None) -> Weights:
        """Return the complete weights a site runs (the global ones unless FedBN)."""
        if name is None:
            return self.result.weights
        site = next((s for s in self.sites if s.name == name), None)
        if site is None:
            raise ConfigError(
                f"expected --export-site among {[s.name for s in self.sites]}, got {name!r}",
                key="export_site",
            )
        return site.local_weights(self.result.weights)


def federate(
    table: PhysioNetTable,
    *,
    scheme: str,
    strategy: Strategy,
    plan: Plan,
    model: ModelSpec | None = None,
    dp: DPSettings | None = None,
    data: str = "",
    on_round: Callable[[RoundRecord], None] | None = None,
    threads: int = 1,
    trees: BoostingPlan | None = None,
    on_tree: Callable[[int], None] | None = None,
    ledgers: str | Path | None = None,
    run_id: str | None = None,
    tree_dp: TreeDPSettings | None = None,
    tree_edges: str = "quantiles",
) -> FederatedRun:
    """Partition, train across the sites, and return the run.

    Parameters
    ----------
    table : PhysioNetTable
        All patients.
    scheme : str
        ``--sites`` value.
    strategy : Strategy
    plan : Plan
    model : ModelSpec, optional
    dp : DPSettings or None, optional
        Every site trains with DP-SGD within this budget.
    data : str, optional
        Name of the data file, recorded in the manifest.
    on_round : callable, optional
        Progress callback.
    threads : int, optional
        torch intra-op threads (1 keeps runs bitwise reproducible and shares the machine).
    trees : BoostingPlan or None, optional
        Grow these trees across the sites after the rounds and fuse them with
        the network. Not with FedBN (no single network to fuse with). With
        ``dp`` the trees are differentially private too
        (:mod:`vigil.federation.tree_privacy`): the network's DP-SGD gets
        ``(1 - tree_share) * epsilon``, the trees' histogram noise the rest of
        each site's epsilon (composed in RDP), and the edges are public.
    on_tree : callable, optional
        Progress callback of the trees.
    ledgers : str or Path or None, optional
        The simulated sites' own privacy ledgers and budgets, one directory per
        site (``LEDGERS/NAME``, :mod:`vigil.federation.budget`): each site charges
        the run before it trains and refuses it past its budget.
    run_id : str or None, optional
        The run's id in the ledgers (default: a fresh random one).
    tree_dp : TreeDPSettings or None, optional
        The split and feature draw of the DP trees; default ``TreeDPSettings()``.
    tree_edges : str, optional
        ``"quantiles"`` (the sites' averaged quantiles) or ``"public"``
        (:func:`~vigil.federation.public_edges.public_edges`); always public under DP.

    Returns
    -------
    FederatedRun

    Raises
    ------
    ConfigError
        If ``trees`` is combined with FedBN or DP-SGD, or the scheme gives too few sites.
    """
    import torch

    if tree_edges not in ("quantiles", "public"):
        raise ConfigError(f"expected --boost-edges quantiles or public, got {tree_edges!r}",
                          key="boost_edges")
    if trees is not None:
        refuse_trees(keeps_norm_local=strategy.keeps_norm_local)
    private_trees = trees is not None and dp is not None
    tree_dp = (tree_dp or TreeDPSettings(seed=plan.seed)) if private_trees else None
    net_dp = dp if tree_dp is None or dp is None else network_dp(dp, tree_dp)
    torch.set_num_threads(threads)
    spec = model or ModelSpec()
    sites = build_sites(table, scheme, seed=plan.seed, model=spec,
                        keep_norm_local=strategy.keeps_norm_local, dp=net_dp)
    if len(sites) < plan.min_sites:
        raise ConfigError(
            f"--sites {scheme} gives {len(sites)} sites, fewer than min_sites={plan.min_sites}",
            key="sites",
        )
    taking_part = budgeted(sites, ledgers, run=run_id or uuid.uuid4().hex, task="sepsis",
                           charge=dp)
    result = run_federation(taking_part, strategy, plan, model=spec, on_round=on_round)
    hybrid, noises = None, {}
    if trees is not None:
        edges = public_edges(trees.n_bins) if tree_dp is not None or tree_edges == "public" \
            else None
        grown = trees
        if tree_dp is not None and dp is not None:
            noises = {s.name: site_noise(n_rows=s.train.n_rows, accountant=s.accountant, dp=dp,
                                         plan=trees, settings=tree_dp) for s in sites}
            for s in sites:
                s.tree_noise = noises[s.name]
            grown = private_plan(trees, list(noises.values()), tree_dp.hessian_floor)
        hybrid = grow_hybrid(admitted(taking_part), result.weights, grown,
                             counts={n: s.count for n, s in result.statistics.items()},
                             min_sites=plan.min_sites, on_tree=on_tree, edges=edges,
                             exact=tree_dp is None)
    return FederatedRun(result=result, strategy=strategy, plan=plan, model=spec, dp=dp,
                        scheme=scheme, data=data, sites=sites, hybrid=hybrid, tree_dp=tree_dp,
                        tree_noise=noises,
                        tree_edges="public" if tree_dp is not None else tree_edges)
