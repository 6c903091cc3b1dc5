"""A site's lifetime privacy budget across retrains, and its append-only ledger.

Each retraining of the federated model trains on the same hospital's rows
again, so the privacy each run spends adds up. The budget is the *site's*
setting, never the coordinator's: ``SITE_DIR/privacy-budget.json``
(:data:`BUDGET_FILE`, written by ``vigil federation budget --site-dir DIR
--epsilon E --delta D`` or ``vigil federation site --budget-epsilon``), and the
ledger of what every run spent is ``SITE_DIR/privacy-ledger.jsonl``
(:data:`LEDGER_FILE`), one JSON line per run, appended with
:func:`vigil.core.files.append_durably` and never rewritten.

Composition rule: basic (sequential) composition, Dwork & Roth, "The
Algorithmic Foundations of Differential Privacy", 2014, Theorem 3.16: runs
that are (ε_i, δ_i)-DP on the same rows are together (Σ ε_i, Σ δ_i)-DP. It is the conservative
choice: it needs nothing about the mechanisms of the runs (DP-SGD with
different noise, another task's model), only their guarantees. A run is
charged its *planned* guarantee, the ``target_epsilon`` its noise is
calibrated for (:class:`~vigil.federation.privacy.SiteAccountant`; the
achieved ε after all planned rounds is at most that) and its δ (``1 / n``
unless the run sets one), when the site first trains in that run, *before*
any noisy step: a run that crashes or is stopped early stays charged in full.

Before its first round of a run, a site admits it (:meth:`PrivacyLedger.admit`):

- a run already in the ledger (a later round of the same run) goes on;
- a DP run whose planned (ε, δ) plus the spent would pass the budget is
  refused with :class:`~vigil.core.errors.PrivacyBudgetError` (the coordinator
  drops the site with the reason ``"privacy budget exhausted"``);
- a run without DP is refused at a site with a budget (its ε is unbounded)
  unless the site allows non-private training (``allow_non_private``); it is
  then recorded with ``epsilon: null`` and listed apart: the lifetime
  guarantee holds only over the DP runs.

A site without a budget file records every run it trains and refuses none.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vigil.core.errors import ConfigError, DataError, PrivacyBudgetError
from vigil.core.files import append_durably, replace_durably, split_torn_tail

log = logging.getLogger(__name__)

__all__ = [
    "BUDGET_FILE",
    "BUDGET_REASON",
    "LEDGER_FILE",
    "BudgetedSite",
    "LedgerEntry",
    "PrivacyLedger",
    "SiteBudget",
    "Spent",
    "admitted",
    "budgeted",
    "check_planned_rounds",
    "compose",
    "read_budget",
    "run_cost",
    "training_rows",
    "write_budget",
]

BUDGET_FILE = "privacy-budget.json"
LEDGER_FILE = "privacy-ledger.jsonl"
BUDGET_REASON = "privacy budget exhausted"
"""The dropout reason of a refusing site, and the prefix of its error reply on Flower."""


@dataclass(frozen=True)
class SiteBudget:
    """A site's lifetime (ε, δ) over every run it trains in.

    Parameters
    ----------
    epsilon : float
        Total ε, > 0.
    delta : float
        Total δ, in (0, 1).
    allow_non_private : bool, optional
        Train in runs without DP too (recorded, outside the guarantee).
    """

    epsilon: float
    delta: float
    allow_non_private: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"expected a lifetime epsilon > 0, got {self.epsilon}",
                              key="budget_epsilon")
        if not 0 < self.delta < 1:
            raise ConfigError(f"expected a lifetime delta in (0, 1), got {self.delta}",
                              key="budget_delta")


@dataclass(frozen=True)
class Spent:
    """Privacy spent over a set of runs (basic composition).

    Attributes
    ----------
    epsilon, delta : float
        Sums over the DP runs.
    runs : int
        DP runs.
    non_private_runs : int
        Runs without DP (outside the guarantee).
    """

    epsilon: float
    delta: float
    runs: int
    non_private_runs: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain values, for ``index.json`` and the CLI."""
        return asdict(self)


@dataclass(frozen=True)
class LedgerEntry:
    """One run a site trained in.

    Attributes
    ----------
    run : str
        The run's id (Flower's run id, or the in-process run's).
    task : str
        ``"sepsis"`` or ``"imaging"``.
    epsilon, delta : float or None
        The run's planned guarantee; None for a run without DP.
    time : float
        Unix time of the charge.
    """

    run: str
    task: str
    epsilon: float | None
    delta: float | None
    time: float


def compose(entries: Sequence[LedgerEntry]) -> Spent:
    """Add up the runs' guarantees by basic composition (Dwork & Roth 2014, Thm 3.16).

    Parameters
    ----------
    entries : sequence of LedgerEntry

    Returns
    -------
    Spent

    Examples
    --------
    >>> e = [LedgerEntry("a", "sepsis", 2.0, 1e-5, 0.0), LedgerEntry("b", "sepsis", 3.0, 2e-5, 0.0),
    ...      LedgerEntry("c", "sepsis", None, None, 0.0)]
    >>> s = compose(e); (s.epsilon, round(s.delta, 10), s.runs, s.non_private_runs)
    (5.0, 3e-05, 2, 1)
    """
    private = [e for e in entries if e.epsilon is not None]
    return Spent(epsilon=float(sum(e.epsilon for e in private)),  # type: ignore[misc]
                 delta=float(sum(e.delta or 0.0 for e in private)), runs=len(private),
                 non_private_runs=len(entries) - len(private))


def run_cost(dp: Any, n_rows: int) -> tuple[float, float] | None:
    """Return a run's planned (ε, δ) at a site: its target ε and its δ (``1 / n`` by default).

    Parameters
    ----------
    dp : DPSettings or None
        The run's DP settings (:class:`~vigil.federation.privacy.DPSettings`).
    n_rows : int
        The site's training rows (images).

    Returns
    -------
    tuple of float or None
        None for a run without DP.
    """
    if dp is None:
        return None
    return float(dp.target_epsilon), float(dp.delta if dp.delta is not None else 1.0 / n_rows)


def write_budget(site_dir: str | Path, budget: SiteBudget) -> Path:
    """Write a site's budget into ``site_dir`` (atomically); return the file."""
    path = Path(site_dir) / BUDGET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_durably(path, (json.dumps(asdict(budget), indent=1) + "\n").encode())
    return path


def read_budget(site_dir: str | Path) -> SiteBudget | None:
    """Read a site's budget, or None if it has none.

    Raises
    ------
    ConfigError
        If the file is there but is not a budget.
    """
    path = Path(site_dir) / BUDGET_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return SiteBudget(epsilon=float(raw["epsilon"]), delta=float(raw["delta"]),
                          allow_non_private=bool(raw.get("allow_non_private", False)))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"expected {BUDGET_FILE} with epsilon and delta, got an unreadable "
                          f"file ({type(exc).__name__}); write it again with `vigil federation "
                          "budget`", key="budget") from None


class PrivacyLedger:
    """One site's ledger file and budget.

    Parameters
    ----------
    site : str
        The site's name (for messages).
    site_dir : str or Path
        Holds :data:`LEDGER_FILE` and, if the site has one, :data:`BUDGET_FILE`.
    """

    def __init__(self, site: str, site_dir: str | Path) -> None:
        self.site = site
        self.dir = Path(site_dir)
        self.budget = read_budget(self.dir)

    def __repr__(self) -> str:
        return f"PrivacyLedger({self.site!r}, budget={self.budget!r})"

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self.dir / LEDGER_FILE

    def entries(self) -> list[LedgerEntry]:
        """Return every recorded run, oldest first (a torn last line was never charged).

        Raises
        ------
        DataError
            If a complete line is not a ledger entry (the site then trains in no run).
        """
        if not self.path.is_file():
            return []
        good, _torn = split_torn_tail(self.path.read_bytes())
        out = []
        for number, line in enumerate(good.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(LedgerEntry(**json.loads(line)))
            except (ValueError, TypeError):
                raise DataError(f"expected a ledger entry on line {number}, got an unreadable "
                                "line; the site refuses to train until its ledger is repaired",
                                source=str(self.path)) from None
        return out

    def spent(self) -> Spent:
        """Return what the recorded runs spent (basic composition)."""
        return compose(self.entries())

    def admit(self, run: str, task: str, cost: tuple[float, float] | None) -> LedgerEntry:
        """Charge a run before the site's first training step in it, or refuse it.

        Parameters
        ----------
        run : str
            The run's id; a run already charged is admitted again without a new charge.
        task : str
        cost : tuple of float or None
            The run's planned (ε, δ) (:func:`run_cost`); None without DP.

        Returns
        -------
        LedgerEntry
            The run's charge (the earlier one for a run already charged).

        Raises
        ------
        PrivacyBudgetError
            If the run would take the site past its budget, or has no DP and
            the site does not allow non-private training.
        """
        entries = self.entries()
        earlier = next((e for e in entries if e.run == run), None)
        if earlier is not None:
            return earlier
        if self.budget is not None:
            self._check(compose(entries), cost)
        entry = LedgerEntry(run=run, task=task, epsilon=None if cost is None else cost[0],
                            delta=None if cost is None else cost[1], time=time.time())
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():  # a torn last line (killed mid-append) was never charged: cut it
            good, torn = split_torn_tail(self.path.read_bytes())
            if torn:
                replace_durably(self.path, good)
        append_durably(self.path, (json.dumps(asdict(entry)) + "\n").encode())
        return entry

    def _check(self, spent: Spent, cost: tuple[float, float] | None) -> None:
        budget = self.budget
        assert budget is not None
        if cost is None:
            if budget.allow_non_private:
                return
            raise PrivacyBudgetError(
                f"{BUDGET_REASON}: site {self.site} has a lifetime budget (ε={budget.epsilon:g}, "
                f"δ={budget.delta:g}) and this run trains without DP (unbounded ε); run with "
                "DP-SGD, or let the site allow non-private training", site=self.site)
        epsilon, delta = spent.epsilon + cost[0], spent.delta + cost[1]
        # a tiny tolerance: sums of decimal budgets are not exact in binary
        if epsilon > budget.epsilon * (1 + 1e-9) or delta > budget.delta * (1 + 1e-9):
            raise PrivacyBudgetError(
                f"{BUDGET_REASON}: site {self.site} has spent ε={spent.epsilon:g}, "
                f"δ={spent.delta:.3g} over {spent.runs} runs; this run would add "
                f"ε={cost[0]:g}, δ={cost[1]:.3g}, past its lifetime budget ε={budget.epsilon:g}, "
                f"δ={budget.delta:.3g}", site=self.site)


def training_rows(site: Any) -> int:
    """Return a site's training rows (images for the imaging task): the n of δ = 1/n."""
    train = site.train
    return int(train.n_rows if hasattr(train, "n_rows") else train.n)


def check_planned_rounds(site: Any) -> None:
    """Refuse a round past the run's plan: its ε would exceed what the run was charged.

    The noise is calibrated once, for ``total_rounds`` of the first round's config
    (:class:`~vigil.federation.privacy.SiteAccountant`); a coordinator asking for
    more rounds would make the site spend past its charge.

    Raises
    ------
    PrivacyBudgetError
        If the site's accountant has taken every planned noisy step.
    """
    accountant = getattr(site, "accountant", None)
    if accountant is None:
        return
    done = accountant.spent().steps
    if done >= accountant.planned_steps:
        raise PrivacyBudgetError(
            f"{BUDGET_REASON}: site {site.name} has taken the {accountant.planned_steps} noisy "
            f"steps this run was charged for ({done} done); a further round would spend past "
            "the charged ε", site=site.name)


class BudgetedSite:
    """A site that admits the run in its ledger before it trains (the in-process driver).

    Everything but :meth:`fit` is the wrapped site's. On Flower the ClientApp
    does the same with the SuperNode's site directory and Flower's run id.

    Parameters
    ----------
    site : Site or ImagingSite
    ledger : PrivacyLedger
    run : str
        The run's id, unique per training run.
    task : str
    charge : DPSettings or None, optional
        What the run is charged: its whole per-site budget when the network's
        DP-SGD has only part of it (DP trees, :mod:`vigil.federation.tree_privacy`);
        default the site's own DP settings.
    """

    def __init__(self, site: Any, ledger: PrivacyLedger, *, run: str, task: str,
                 charge: Any = None) -> None:
        self.site = site
        self.ledger = ledger
        self.run = run
        self.task = task
        self.charge = charge

    def __repr__(self) -> str:
        return f"BudgetedSite({self.site!r}, run={self.run!r})"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.site, name)

    def admit(self) -> None:
        """Charge the run in the ledger (once per run); past the budget raise PrivacyBudgetError."""
        charge = self.charge if self.charge is not None else self.site.dp
        self.ledger.admit(self.run, self.task, run_cost(charge, training_rows(self.site)))

    def fit(self, global_weights: Any, config: Any) -> Any:
        """Admit the run (or raise :class:`PrivacyBudgetError`), then train."""
        self.admit()
        check_planned_rounds(self.site)
        return self.site.fit(global_weights, config)


def budgeted(sites: Sequence[Any], ledgers: str | Path | None, *, run: str,
             task: str, charge: Any = None) -> list[Any]:
    """Wrap simulated sites so each keeps its ledger in ``ledgers/NAME`` (None: unwrapped).

    ``charge``: the DP settings each site is charged for (:class:`BudgetedSite`).
    """
    if ledgers is None:
        return list(sites)
    return [BudgetedSite(s, PrivacyLedger(s.name, Path(ledgers) / s.name), run=run, task=task,
                         charge=charge)
            for s in sites]


def admitted(sites: Sequence[Any]) -> list[Any]:
    """Return the sites that admit the run (the unwrapped sites), for a step after the rounds.

    A :class:`BudgetedSite` admits it again (a no-op if it trained in the run); one
    past its budget is left out (the trees must not use a site that refused to
    train). Sites without a ledger all take part.
    """
    out = []
    for s in sites:
        if not isinstance(s, BudgetedSite):
            out.append(s)
            continue
        try:
            s.admit()
        except PrivacyBudgetError:
            log.warning("site %s left out of the trees: %s", s.site.name, BUDGET_REASON)
            continue
        out.append(s.site)
    return out
