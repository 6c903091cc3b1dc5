"""``vigil federate``: partition a table into sites, train across them in-process, export.

The whole pipeline of the command, kept out of the CLI: build one
:class:`~vigil.federation.site.Site` per partition (each keeps its train and
valid patients; test patients are never given to a site), run
:func:`~vigil.federation.driver.run_federation`, then write the model package
with the manifest sections a federated model owes: strategy, rounds, sites
with sample counts, DP epsilon/delta per site, pooled validation metrics and
the drift reference profile, plus ``history.json``.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vigil.core.errors import ConfigError
from vigil.core.package import ModelPackage
from vigil.data import PhysioNetTable, partition
from vigil.federation.boosting import BoostingPlan
from vigil.federation.budget import admitted, budgeted
from vigil.federation.driver import FederationResult, Plan, pooled_statistics, run_federation
from vigil.federation.evaluation import SCORE_EDGES, PooledMetrics, site_utility
from vigil.federation.history import HISTORY_FILE, History, RoundRecord, Status
from vigil.federation.hybrid import HybridResult, grow_hybrid, refuse_trees
from vigil.federation.integrity import PUBLIC_KEY_FILE
from vigil.federation.messages import SiteEvaluation
from vigil.federation.privacy import DPSettings, manifest_section
from vigil.federation.profile import reference_profile
from vigil.federation.public_edges import public_edges
from vigil.federation.site import ModelSpec, Site
from vigil.federation.strategies import Strategy, Weights
from vigil.federation.tree_privacy import (
    TreeDPSettings,
    TreeNoise,
    manifest_trees,
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

THRESHOLD_RULE = (
    "score-bin edge maximizing the normalized utility of the validation patients of all sites, "
    "pooled from the sites' utility histograms"
)


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


def training_section(run: FederatedRun) -> dict[str, Any]:
    """Build the manifest's ``training`` section: strategy, rounds, sites, DP."""
    r = run.result
    history = r.history
    evaluations = {e.site: e for e in run.evaluations}
    sites = {
        name: {"train_rows": s.count, "train_positive_rows": s.positives,
               "valid_rows": evaluations[name].n_rows if name in evaluations else None}
        for name, s in r.statistics.items()
    }
    dp = manifest_section(run.dp, r.privacy, unit="one hourly row of a site's training data")
    if dp is not None and run.tree_dp is not None and run.dp is not None:
        dp |= manifest_trees(dp["mechanism"], run.dp.target_epsilon, run.tree_dp,
                             run.tree_noise)
    return {
        "method": run.method,
        "strategy": run.strategy.describe(),
        "rounds": run.plan.rounds,
        "rounds_aggregated": sum(rec.aggregated for rec in history.rounds),
        "best_round": r.best_round,
        "plan": {k: v for k, v in asdict(run.plan).items() if k != "rule"},
        "update_screening": asdict(run.plan.rule),
        "model": {"hidden": list(run.model.hidden), "dropout": run.model.dropout},
        "data": run.data,
        "site_scheme": run.scheme,
        "sites": sites,
        "rejections": len(history.events(Status.REJECTED)),
        "dropouts": len(history.events(Status.DROPPED)),
        "differential_privacy": dp,
        "boosting": None if run.hybrid is None else {**run.hybrid.describe(),
                                                     "edges": run.tree_edges},
        "threshold_rule": THRESHOLD_RULE,
    }


def validation_section(run: FederatedRun) -> dict[str, Any]:
    """Build the manifest's ``validation`` section: pooled and per-site validation metrics.

    With trees these are the fused model's, and ``network`` holds the network's alone.
    """
    def section(pooled: PooledMetrics, evaluations: list[SiteEvaluation]) -> dict[str, Any]:
        return {
            **pooled.to_dict(),
            "by_site": {
                e.site: {"n_rows": e.n_rows, "auroc": e.auroc, "loss": e.loss,
                         "utility": site_utility(e, pooled.threshold)}
                for e in evaluations
            },
        }

    out = {"split": "validation patients of every site (pooled from site histograms)",
           **section(run.pooled, run.evaluations)}
    if run.hybrid is not None:
        out["network"] = section(run.result.pooled, run.result.evaluations)
    return out


def _profile(run: FederatedRun) -> dict[str, Any]:
    stats = list(run.result.statistics.values())
    count = pooled_statistics(stats)[0]
    scores = np.sum([e.positive_hist + e.negative_hist for e in run.evaluations], axis=0)
    return reference_profile(
        np.sum([s.histograms for s in stats], axis=0), np.sum([s.missing for s in stats], axis=0),
        count, score_edges=SCORE_EDGES, score_counts=scores,
    )


def _card(run: FederatedRun, site: str | None) -> str:
    valid = {e.site: e for e in run.evaluations}
    lines = [
        "", "## Federated training", "",
        f"Strategy **{run.strategy.name.value}**"
        + (f" (mu = {run.strategy.proximal_mu:g})" if run.strategy.proximal_mu else "")
        + (f", robust aggregation {run.strategy.robust.value}" if run.strategy.robust else "")
        + f"; {run.plan.rounds} rounds of {run.plan.local_epochs} local epoch(s), sites "
        f"`{run.scheme}`; the global model of round {run.result.best_round} is kept (best pooled "
        "validation utility). No patient row left a site: sites sent weights, counts and "
        "aggregate histograms only.",
    ]
    if site is not None:
        lines += ["", f"This package carries the normalization of site **{site}** (FedBN)."]
    if run.hybrid is not None:
        net, fused = run.result.pooled, run.hybrid.pooled
        lines += ["", f"Trees grown across the sites {', '.join(run.hybrid.boosted.sites)} after "
                  f"the rounds; pooled validation AUROC {net.auroc:.3f} -> {fused.auroc:.3f}, "
                  f"utility {net.utility:.3f} -> {fused.utility:.3f} (network alone -> network "
                  f"and trees). Sites left out of the trees: "
                  f"{len(run.hybrid.boosted.exclusions)}."]
    lines += ["", "| site | train rows | validation AUROC | DP epsilon |", "|---|---|---|---|"]
    for name, s in run.result.statistics.items():
        eps = run.result.privacy.get(name)
        auc = valid[name].auroc if name in valid else float("nan")
        noise = run.tree_noise.get(name)
        shown = ("—" if eps is None else f"{eps.epsilon:.2f} (delta {eps.delta:.1e})") \
            if noise is None else (f"{noise.epsilon:.2f} network + trees (delta "
                                   f"{noise.delta:.1e}; network alone {eps.epsilon:.2f})"
                                   if eps is not None else f"{noise.epsilon:.2f} trees")
        lines.append(f"| {name} | {s.count:,} | {auc:.3f} | {shown} |")
    history = run.result.history
    lines += ["", f"Rejected updates: {len(history.events(Status.REJECTED))}; dropped site "
              f"rounds: {len(history.events(Status.DROPPED))} (see `{HISTORY_FILE}`).", ""]
    return "\n".join(lines)


def package_targets(
    strategy: Strategy,
    sites: list[str],
    out: str | Path,
    *,
    export_site: str | None,
    history: History,
    private_key_pem: bytes | None,
) -> tuple[list[tuple[str | None, Path]], dict[str, bytes]]:
    """Where a run's packages go, and the files every one of them carries.

    FedAvg and FedProx: one package at ``out``. FedBN: ``export_site``'s at ``out``, or one
    per site at ``out/<site>``. Every package carries the round history and, when signed,
    the public key.

    Returns
    -------
    targets : list of (site name or None, directory)
    extra : dict of str to bytes

    Raises
    ------
    ConfigError
        If ``export_site`` is given for a strategy without site-local normalization.
    """
    from vigil.core.signing import public_key_of

    if export_site is not None and not strategy.keeps_norm_local:
        raise ConfigError("--export-site applies to --strategy fedbn only", key="export_site")
    if strategy.keeps_norm_local:
        targets: list[tuple[str | None, Path]] = [(export_site, Path(out))] if export_site else [
            (name, Path(out) / name) for name in sites]
    else:
        targets = [(None, Path(out))]
    extra = {HISTORY_FILE: history.to_json()}
    if private_key_pem is not None:
        extra[PUBLIC_KEY_FILE] = public_key_of(private_key_pem)
    return targets, extra


def export_run(
    run: FederatedRun,
    out: str | Path,
    *,
    name: str,
    version: str,
    private_key_pem: bytes | None = None,
    export_site: str | None = None,
) -> list[ModelPackage]:
    """Write the run as model package(s).

    FedAvg and FedProx give one package at ``out``. FedBN gives the package of
    ``export_site`` at ``out``, or, without it, one package per site at
    ``out/<site>``, each with that site's normalization.

    Parameters
    ----------
    run : FederatedRun
    out : str or Path
    name, version : str
    private_key_pem : bytes or None, optional
        Signs the manifest; its public key is included as ``public_key.pem``.
    export_site : str or None, optional
        FedBN only: the site whose package to write.

    Returns
    -------
    list of ModelPackage

    Raises
    ------
    ConfigError
        If ``export_site`` is given for a strategy without site-local normalization.
    """
    from vigil.federation.export import export_package
    from vigil.federation.model import SepsisNet, set_weights

    targets, extra = package_targets(run.strategy, [s.name for s in run.sites], out,
                                     export_site=export_site, history=run.result.history,
                                     private_key_pem=private_key_pem)
    training, validation, profile = training_section(run), validation_section(run), _profile(run)
    packages = []
    for site, path in targets:
        weights = run.site_weights(site)
        net = SepsisNet(int(np.shape(weights["norm.mean"])[0]), hidden=run.model.hidden,
                        dropout=run.model.dropout)
        set_weights(net, weights)
        packages.append(export_package(
            net, path, name=name if site is None else f"{name}-{site}", version=version,
            threshold=run.pooled.threshold,
            training={**training, "export_site": site}, validation=validation,
            reference_profile=profile, private_key_pem=private_key_pem, extra_files=extra,
            model_card_extra=_card(run, site),
            trees=None if run.hybrid is None else run.hybrid.part,
        ))
    return packages


def history_events(history: History) -> dict[str, list[dict[str, Any]]]:
    """Every rejected update and dropped site of a history: round, site, reason, detail."""
    return {key: [{"round": r, "site": s.site, "reason": s.reason, "detail": s.detail}
                  for r, s in history.events(status)]
            for key, status in (("rejections", Status.REJECTED), ("dropouts", Status.DROPPED))}


def run_summary(run: FederatedRun, packages: list[ModelPackage]) -> dict[str, Any]:
    """Summarize a run for the command line: packages, kept round, validation, privacy, events."""
    history = run.result.history
    return {
        "packages": [str(p.path) for p in packages],
        "signed": all(p.signed for p in packages),
        "best_round": run.result.best_round,
        "validation": run.pooled.to_dict(),
        "network_validation": run.result.pooled.to_dict(),
        "privacy": {k: v.to_dict() for k, v in sorted(run.result.privacy.items())},
        "tree_privacy": {k: v.to_dict() for k, v in sorted(run.tree_noise.items())},
        **history_events(history),
        "boosting": None if run.hybrid is None else run.hybrid.describe(),
    }
