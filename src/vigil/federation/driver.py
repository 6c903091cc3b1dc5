"""The in-process federation driver: rounds of fit, screen, aggregate, evaluate.

It runs the same :class:`~vigil.federation.site.Site` and
:class:`~vigil.federation.strategies.Strategy` code a Flower deployment runs,
in one process, sites one after the other. A round:

1. the coordinator sends the global weights and a :class:`FitConfig`;
2. each site trains and answers an :class:`Update`; a site that raises, or
   whose answer comes after ``time_budget`` seconds, is dropped for the round
   (its late answer is discarded), with a record;
3. :func:`~vigil.federation.checks.screen_updates` rejects bad updates;
4. with at least ``min_sites`` accepted updates, the strategy aggregates
   them; otherwise the global model stays as it was (the round is recorded
   as not aggregated);
5. each site evaluates the new global model on its validation rows.

With ``keep_best`` the result is the global model of the round with the best
pooled validation utility (validation patients only; the same rule the
centralized reference uses to pick its epoch), else the last round's; with
``Plan.keep_by = "site"`` the utility is that of each site at its own best
threshold (site calibration, the imaging recipe).

Before round 1 every site sends its :class:`SiteStatistics`; for FedAvg and
FedProx the global standardization is formed from their pooled sums.

How the requests reach the sites is a :class:`Transport`: :class:`InProcess`
(the default) calls each site in turn in this process; the Flower ServerApp
(:mod:`vigil.federation.flower.serverapp`) sends them as Flower messages to
every SuperNode at once. The round logic above is the same for both.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import AggregationError, ConfigError, PrivacyBudgetError
from vigil.federation.budget import BUDGET_REASON
from vigil.federation.checks import Rejection, ScreenRule, screen_updates
from vigil.federation.evaluation import PooledMetrics, pool_evaluations, site_calibrated_utility
from vigil.federation.history import History, RoundRecord, SiteRound, Status
from vigil.federation.messages import (
    FitConfig,
    PrivacySpent,
    SiteEvaluation,
    SiteStatistics,
    Update,
)
from vigil.federation.secure_round import SecureRounds, secure_round, with_evaluation
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import Strategy, Weights
from vigil.federation.tasks import SepsisTask, Task

__all__ = [
    "KEEP_RULES",
    "FederatedSite",
    "FederationResult",
    "InProcess",
    "Plan",
    "Transport",
    "pooled_statistics",
    "run_federation",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

KEEP_RULES = ("pooled", "site")
"""How :attr:`Plan.keep_by` ranks rounds: the pooled threshold's utility, or each site's own."""


class FederatedSite(Protocol):
    """What the driver needs of a site (:class:`vigil.federation.site.Site`)."""

    name: str

    def statistics(self) -> SiteStatistics:
        """Aggregate statistics of the training rows."""
        ...

    def fit(self, global_weights: Weights, config: FitConfig) -> Update:
        """Train and return the update."""
        ...

    def evaluate(self, global_weights: Weights) -> SiteEvaluation:
        """Return validation metrics of a model."""
        ...


class Transport(Protocol):
    """How the driver reaches the sites: one call per phase covers every site of the phase.

    Each answer maps a site name to its result, or to the exception that
    stands for its failure (an error, a timeout, a lost node).
    """

    def statistics(self, sites: Sequence[FederatedSite]) -> dict[str, SiteStatistics | Exception]:
        """Ask every site for its statistics."""
        ...

    def fit(
        self, sites: Sequence[FederatedSite], weights: Weights, config: FitConfig
    ) -> dict[str, tuple[Update | Exception, float]]:
        """Ask every site to train; each answer comes with the site's wall time in seconds."""
        ...

    def evaluate(
        self, sites: Sequence[FederatedSite], weights: Weights
    ) -> dict[str, SiteEvaluation | Exception]:
        """Ask every site to evaluate the weights."""
        ...


def _outcome(call: Callable[[], T]) -> T | Exception:
    try:
        return call()
    except Exception as exc:  # a failing site must not stop the federation
        return exc


class InProcess:
    """The in-process transport: call each site's method in turn."""

    def statistics(self, sites: Sequence[FederatedSite]) -> dict[str, SiteStatistics | Exception]:
        """Call ``site.statistics()`` for each site."""
        return {s.name: _outcome(s.statistics) for s in sites}

    def fit(
        self, sites: Sequence[FederatedSite], weights: Weights, config: FitConfig
    ) -> dict[str, tuple[Update | Exception, float]]:
        """Call ``site.fit(weights, config)`` for each site, timing each."""
        out: dict[str, tuple[Update | Exception, float]] = {}
        for site in sites:
            t0 = time.perf_counter()
            outcome = _outcome(lambda site=site: site.fit(weights, config))  # type: ignore[misc]
            out[site.name] = (outcome, time.perf_counter() - t0)
        return out

    def evaluate(
        self, sites: Sequence[FederatedSite], weights: Weights
    ) -> dict[str, SiteEvaluation | Exception]:
        """Call ``site.evaluate(weights)`` for each site."""
        return {s.name: _outcome(lambda s=s: s.evaluate(weights)) for s in sites}  # type: ignore[misc]


@dataclass(frozen=True)
class Plan:
    """How the federation trains.

    Parameters
    ----------
    rounds : int
    local_epochs, batch_size : int, optional
    lr, weight_decay : float, optional
        Local AdamW settings.
    seed : int, optional
        Seeds the initial model and every site's local training.
    min_sites : int, optional
        Accepted updates a round needs to be aggregated.
    time_budget : float or None, optional
        Seconds a site's ``fit`` may take; None for no limit.
    rule : ScreenRule, optional
        Bad-update thresholds.
    keep_best : bool, optional
        Return the round with the best validation utility, not the last.
    keep_by : str, optional
        Which validation utility ranks the rounds (:data:`KEEP_RULES`): ``"pooled"``, at
        the one threshold best for the pooled histograms
        (:func:`~vigil.federation.evaluation.pool_evaluations`), or ``"site"``, each
        site at its own best threshold
        (:func:`~vigil.federation.evaluation.site_calibrated_utility`), the rule of a
        model whose sites each calibrate their threshold (the imaging recipe).
    """

    rounds: int
    local_epochs: int = 1
    batch_size: int = 1024
    lr: float = 3e-4
    weight_decay: float = 1e-2
    seed: int = 0
    min_sites: int = 2
    time_budget: float | None = None
    rule: ScreenRule = field(default_factory=ScreenRule)
    keep_best: bool = True
    keep_by: str = "pooled"

    def __post_init__(self) -> None:
        if self.keep_by not in KEEP_RULES:
            raise ConfigError(f"expected keep_by to be one of {KEEP_RULES}, got {self.keep_by!r}",
                              key="keep_by")
        for key in ("rounds", "local_epochs", "batch_size", "min_sites"):
            if getattr(self, key) < 1:
                raise ConfigError(f"expected {key} >= 1, got {getattr(self, key)}", key=key)
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError(f"expected a time budget > 0 s, got {self.time_budget}",
                              key="time_budget")


@dataclass(frozen=True, eq=False)
class FederationResult:
    """What a federated training produced.

    Attributes
    ----------
    weights : OrderedDict of str to ndarray
        The chosen global weights (under FedBN without normalization entries).
    best_round : int
        The round they come from.
    history : History
    statistics : dict of str to SiteStatistics
        What each site declared before round 1.
    evaluations : list of SiteEvaluation
        Each site's validation summary of the chosen model.
    pooled : PooledMetrics
        The chosen model's pooled validation metrics (and best-utility threshold).
    privacy : dict of str to PrivacySpent
        Under DP-SGD, each site's final privacy spent.
    """

    weights: OrderedDict[str, NDArray[np.float32]]
    best_round: int
    history: History
    statistics: dict[str, SiteStatistics]
    evaluations: list[SiteEvaluation]
    pooled: PooledMetrics
    privacy: dict[str, PrivacySpent]


def pooled_statistics(statistics: Sequence[SiteStatistics]) -> tuple[
    int, int, NDArray[np.float64], NDArray[np.float64]
]:
    """Sum the sites' row and positive counts, feature sums and sums of squares."""
    return (
        sum(s.count for s in statistics),
        sum(s.positives for s in statistics),
        np.sum([s.total for s in statistics], axis=0),
        np.sum([s.total_sq for s in statistics], axis=0),
    )


def _evaluate(
    sites: Sequence[FederatedSite], weights: Weights, transport: Transport
) -> tuple[list[SiteEvaluation], dict[str, SiteEvaluation]]:
    evaluations: list[SiteEvaluation] = []
    answers = transport.evaluate(sites, weights)
    for site in sites:
        answer = answers.get(site.name, ConnectionError("no answer"))
        if isinstance(answer, Exception):
            log.warning("site %s failed to evaluate: %s", site.name, type(answer).__name__)
        else:
            evaluations.append(answer)
    return evaluations, {e.site: e for e in evaluations}


def run_federation(
    sites: Sequence[FederatedSite],
    strategy: Strategy,
    plan: Plan,
    *,
    model: ModelSpec | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    transport: Transport | None = None,
    task: Task | None = None,
) -> FederationResult:
    """Train a model across sites.

    Parameters
    ----------
    sites : sequence of FederatedSite
        Distinct names; the order does not change the result.
    strategy : Strategy
    plan : Plan
    model : ModelSpec, optional
        Architecture of the initial model: the one the sites were built with.
    on_round : callable, optional
        Called with each round's record (progress display).
    transport : Transport or None, optional
        How requests reach the sites; default :class:`InProcess`.
    task : Task or None, optional
        What is trained (:mod:`vigil.federation.tasks`); default the sepsis network
        of ``model``. The round logic is the same for every task.

    Returns
    -------
    FederationResult

    Raises
    ------
    AggregationError
        If fewer than ``plan.min_sites`` sites can take part at all, or no
        round could be aggregated.
    """
    sites = sorted(sites, key=lambda s: s.name)
    if len({s.name for s in sites}) != len(sites):
        raise ConfigError("expected distinct site names", key="sites")
    transport = transport or InProcess()
    statistics: dict[str, SiteStatistics] = {}
    answers = transport.statistics(sites)
    for site in sites:
        answer = answers.get(site.name, ConnectionError("no answer"))
        if isinstance(answer, Exception):
            log.warning("site %s failed to send statistics: %s", site.name, type(answer).__name__)
        else:
            statistics[site.name] = answer
    if len(statistics) < plan.min_sites:
        raise AggregationError(
            f"expected at least {plan.min_sites} sites, {len(statistics)} sent statistics", round_=0
        )
    task = task or SepsisTask(model or ModelSpec())
    weights = task.initial_weights(list(statistics.values()), seed=plan.seed,
                                   keep_local=strategy.keeps_norm_local)
    declared = {name: s.count for name, s in statistics.items()}
    records: list[RoundRecord] = []
    privacy: dict[str, PrivacySpent] = {}
    best: tuple[float, int, OrderedDict[str, NDArray[np.float32]], list[SiteEvaluation]] | None
    best = None
    # the change of the global trainable weights over the last aggregated round:
    # the direction rule's reference (checks.py)
    previous_step: OrderedDict[str, NDArray[np.float32]] | None = None
    norms: list[float] = []  # the mean updates' norms under secure aggregation
    for r in range(1, plan.rounds + 1):
        config = FitConfig(
            round=r, total_rounds=plan.rounds, seed=plan.seed, local_epochs=plan.local_epochs,
            batch_size=plan.batch_size, lr=plan.lr, weight_decay=plan.weight_decay,
            proximal_mu=strategy.proximal_mu,
        )
        trainable = OrderedDict((k, v) for k, v in weights.items() if not task.is_fixed(k))
        updates: list[Update] = []
        dropped: dict[str, SiteRound] = {}
        seconds: dict[str, float] = {}
        taking_part = [s for s in sites if s.name in statistics]
        if isinstance(transport, SecureRounds):  # the coordinator sees the mean update only
            aggregated, weights, secured = secure_round(
                transport, taking_part, weights, config, keys=list(trainable),
                declared=declared, strategy=strategy, history=norms, min_sites=plan.min_sites,
                rule=plan.rule)
        else:
            fitted = transport.fit(taking_part, weights, config)
            for site in taking_part:
                update, elapsed = fitted.get(site.name, (ConnectionError("no answer"), 0.0))
                if isinstance(update, Exception):
                    log.warning("round %d: site %s dropped: %s", r, site.name,
                                type(update).__name__)
                    reason = ("timeout" if isinstance(update, TimeoutError) else BUDGET_REASON
                              if isinstance(update, PrivacyBudgetError) else "error")
                    # a refusal's message is the site's budget arithmetic (no patient data)
                    detail = (str(update) if isinstance(update, PrivacyBudgetError)
                              else type(update).__name__)
                    dropped[site.name] = SiteRound(site.name, Status.DROPPED, reason, detail,
                                                   seconds=elapsed)
                    continue
                seconds[site.name] = elapsed
                if plan.time_budget is not None and elapsed > plan.time_budget:
                    log.warning("round %d: site %s dropped: %.1f s > budget %.1f s", r, site.name,
                                elapsed, plan.time_budget)
                    dropped[site.name] = SiteRound(
                        site.name, Status.DROPPED, "timeout",
                        f"{elapsed:.1f} s > budget {plan.time_budget:.1f} s", seconds=elapsed,
                    )
                    continue
                if update.privacy is not None:
                    privacy[site.name] = update.privacy
                updates.append(update)
            accepted, rejections = screen_updates(updates, trainable, rule=plan.rule,
                                                  declared_rows=declared,
                                                  previous_step=previous_step)
            aggregated = len(accepted) >= plan.min_sites
            if aggregated:
                new = strategy.aggregate([u.weights for u in accepted],
                                         [u.num_examples for u in accepted], is_local=task.is_local)
                weights = OrderedDict((k, new.get(k, v)) for k, v in weights.items())
            else:
                log.warning("round %d not aggregated: %d accepted updates < min_sites %d", r,
                            len(accepted), plan.min_sites)
        if aggregated:
            previous_step = OrderedDict((k, weights[k] - v) for k, v in trainable.items())
        evaluations, by_site = _evaluate(taking_part, weights, transport)
        pooled = pool_evaluations(evaluations)
        record = RoundRecord(
            round=r, aggregated=aggregated,
            sites=tuple(with_evaluation(secured[s.name], by_site.get(s.name))
                        if isinstance(transport, SecureRounds) else
                        _site_round(s.name, updates, accepted, rejections, dropped, seconds,
                                    by_site.get(s.name)) for s in sites if s.name in statistics),
            valid_auroc=pooled.auroc, valid_utility=pooled.utility, valid_loss=pooled.loss,
        )
        records.append(record)
        if on_round is not None:
            on_round(record)
        utility = (site_calibrated_utility(evaluations) if plan.keep_by == "site" else
                   pooled.utility)
        score = utility if np.isfinite(utility) else -np.inf
        if aggregated and (best is None or not plan.keep_best or score > best[0]):
            best = (score, r, weights, evaluations)
    if best is None:
        raise AggregationError(
            f"no round had {plan.min_sites} acceptable updates; see the rejections and dropouts "
            "logged above", round_=plan.rounds,
        )
    _, best_round, chosen, final = best
    return FederationResult(
        weights=chosen, best_round=best_round, history=History(tuple(records)),
        statistics=statistics, evaluations=final, pooled=pool_evaluations(final), privacy=privacy,
    )


def _site_round(
    name: str,
    updates: list[Update],
    accepted: list[Update],
    rejections: list[Rejection],
    dropped: dict[str, SiteRound],
    seconds: dict[str, float],
    evaluation: SiteEvaluation | None,
) -> SiteRound:
    valid = {} if evaluation is None else {"valid_loss": evaluation.loss,
                                           "valid_auroc": evaluation.auroc}
    if name in dropped:
        d = dropped[name]
        return SiteRound(name, d.status, d.reason, d.detail, seconds=d.seconds, **valid)
    update = next(u for u in updates if u.site == name)
    common = {
        "num_examples": int(update.num_examples), "train_loss": float(update.loss),
        "seconds": seconds[name],
        "epsilon": None if update.privacy is None else update.privacy.epsilon, **valid,
    }
    rejection = next((j for j in rejections if j.site == name), None)
    if rejection is not None:
        return SiteRound(name, Status.REJECTED, rejection.reason.value, rejection.detail, **common)
    assert any(u.site == name for u in accepted)
    return SiteRound(name, Status.ACCEPTED, **common)
