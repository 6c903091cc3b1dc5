"""vigil's Flower ClientApp: a hospital's :class:`~vigil.federation.site.Site` behind its SuperNode.

The SuperNode runs it in a fresh process for each message. It loads the site
prepared by ``vigil federation site`` (``node_config["site-dir"]``,
:func:`~vigil.federation.flower.sitedata.load_site`) with the options of the
run (:class:`~vigil.federation.flower.settings.RunSettings`), and answers:

- ``query``: :meth:`Site.statistics`;
- ``train``: :meth:`Site.fit` on the global weights and the round's config;
- ``evaluate``: :meth:`Site.evaluate` of the global weights;
- ``query.trees``: one step of the boosted trees
  (:func:`~vigil.federation.flower.treewire.answer_trees`), whose state
  between tree levels is kept on the site's disk
  (:class:`~vigil.federation.flower.treecache.TreeCache`, ``SITE_DIR/tree-cache/``)
  and stamped in ``context.state``. Under DP trees (``RunSettings.tree_dp``) the
  site calibrates its own tree noise against its DP-SGD accountant once
  (:func:`~vigil.federation.tree_privacy.site_noise`, kept in the run's state),
  adds it to every release, refuses to send quantiles, and refuses a release
  past the number the run was charged for; its tree state stays in
  ``context.state`` (no disk cache).

The pieces of a site's state that live across rounds, its DP-SGD accountant
and, for the imaging task under FedBN, its BatchNorm tensors after each round
(:meth:`~vigil.federation.image_task.ImagingSite.kept_batchnorm`), are kept in
the run's ``context.state`` on the SuperNode, so the privacy spent adds up over
all rounds and the BatchNorm stays at the site, as in the in-process driver.
Before it trains, the site charges the run in its privacy ledger
(:class:`~vigil.federation.budget.PrivacyLedger`, in the site directory, keyed by
Flower's run id); a run past the site's lifetime budget gets an error reply whose
reason starts with ``"privacy budget exhausted"``, which the coordinator records
as that reason.
The run's task (``RunSettings.task``) decides which site is loaded
(:func:`~vigil.federation.flower.imagesite.load_task_site`). Any
exception becomes an error reply; the coordinator drops the site for that
request.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from numpy.typing import NDArray

from vigil.core.errors import ConfigError, PrivacyBudgetError
from vigil.federation.budget import (
    BUDGET_REASON,
    PrivacyLedger,
    check_planned_rounds,
    run_cost,
    training_rows,
)
from vigil.federation.flower.imagesite import load_task_site
from vigil.federation.flower.secure import ACTION as SECURE_ACTION
from vigil.federation.flower.secure import answer_secure, fit_vector
from vigil.federation.flower.securetrees import tree_vector
from vigil.federation.flower.settings import RunSettings
from vigil.federation.flower.sitedata import SITE_DIR_KEY, site_name
from vigil.federation.flower.treecache import TreeCache
from vigil.federation.flower.treewire import ACTION, answer_trees, level_from_content
from vigil.federation.flower.wire import (
    ARRAYS,
    CONFIG,
    config_from_record,
    evaluation_to_content,
    statistics_to_content,
    update_to_content,
    weights_from_record,
)
from vigil.federation.image_task import ImagingSite
from vigil.federation.site import Site
from vigil.federation.tree_privacy import TreeNoise, site_noise

__all__ = ["app"]

_STATE = "vigil-site"
_NOISE = "vigil-tree-noise"

app = ClientApp()


def _site(context: Context, network: bool = True) -> Site:
    site_dir = context.node_config.get(SITE_DIR_KEY)
    if not isinstance(site_dir, str) or not site_dir:
        raise ConfigError(
            f"expected the SuperNode's --node-config to set {SITE_DIR_KEY}=\"DIR\" "
            "(`vigil federation site` does)", key=SITE_DIR_KEY,
        )
    settings = RunSettings.from_run_config(context.run_config)
    if network:  # the trees' levels need no torch (about 2 s to import, per message)
        import torch

        torch.set_num_threads(settings.threads)
    site: Any = load_task_site(site_dir, settings)
    saved = context.state.config_records.get(_STATE)
    # the state is written by this ClientApp only, into this run's state on this SuperNode
    if network and saved is not None and "accountant" in saved:
        site.resume_accountant(pickle.loads(saved["accountant"]))  # noqa: S301
    if saved is not None and "batchnorm" in saved:
        site.resume_batchnorm(pickle.loads(saved["batchnorm"]))  # noqa: S301
    return site  # type: ignore[no-any-return]


@app.query()
def statistics(msg: Message, context: Context) -> Message:
    """Answer the coordinator's request for the site's statistics."""
    return Message(statistics_to_content(_site(context).statistics()), reply_to=msg)


def _admit(site: Any, context: Context) -> str | None:
    """Charge this run in the site's ledger; return the refusal's reason, or None to train."""
    settings = RunSettings.from_run_config(context.run_config)
    ledger = PrivacyLedger(site.name, str(context.node_config[SITE_DIR_KEY]))
    try:
        ledger.admit(str(context.run_id), settings.task, run_cost(settings.dp, training_rows(site)))
        check_planned_rounds(site)
    except PrivacyBudgetError as exc:
        return str(exc)  # starts with BUDGET_REASON: the coordinator's transport reads it
    return None


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the global model on the site's rows and answer the update."""
    site = _site(context)
    refusal = _admit(site, context)
    if refusal is not None:
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=refusal),
                       reply_to=msg)
    update = site.fit(weights_from_record(msg.content.array_records[ARRAYS]),
                      config_from_record(msg.content.config_records[CONFIG]))
    state: dict[str, bytes] = {}
    if site.accountant is not None:
        state["accountant"] = pickle.dumps(site.accountant)
    if isinstance(site, ImagingSite) and site.keep_bn_local:
        state["batchnorm"] = pickle.dumps(site.kept_batchnorm())
    if state:
        context.state[_STATE] = ConfigRecord(state)
    return Message(update_to_content(update), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's validation rows."""
    site = _site(context)
    evaluation = site.evaluate(weights_from_record(msg.content.array_records[ARRAYS]))
    return Message(evaluation_to_content(evaluation), reply_to=msg)


def _tree_noise(site: Site, context: Context, settings: RunSettings) -> TreeNoise:
    """Return the site's tree noise: calibrated once per run, then kept in the run's state."""
    saved = context.state.config_records.get(_NOISE)
    if saved is not None:
        return TreeNoise(**{k: v for k, v in saved.items() if k != "released"})  # type: ignore[arg-type]
    kept = context.state.config_records.get(_STATE)
    # the accountant (Opacus, so torch) is read here only, not for every tree level
    accountant = None
    if kept is not None and "accountant" in kept:
        accountant = pickle.loads(kept["accountant"])  # noqa: S301
    assert settings.dp is not None and settings.trees is not None and settings.tree_dp is not None
    noise = site_noise(n_rows=training_rows(site), accountant=accountant, dp=settings.dp,
                       plan=settings.trees, settings=settings.tree_dp)
    context.state[_NOISE] = ConfigRecord({**asdict(noise), "released": 0})
    return noise


def _private_release(ask: object, releases: bool, noise: TreeNoise, context: Context,
                     name: str) -> None:
    """Refuse what DP trees must not send; count the noisy releases against the charged plan.

    ``releases``: the request is answered with noisy sums (``begin``, or a ``level``
    with nodes to split; the request that only finishes the last tree has none).

    Raises
    ------
    PrivacyBudgetError
        For a quantiles request (raw quantiles are patients' values) or a
        release past the ``1 + n_trees * (max_depth + 1)`` the run was charged for.
    """
    if ask == "quantiles":
        raise PrivacyBudgetError(f"{BUDGET_REASON}: site {name} sends no quantiles under DP "
                                 "trees (public bin edges only)", site=name)
    if not releases:
        return
    record = context.state.config_records[_NOISE]
    released = int(record["released"])  # type: ignore[arg-type]
    if released >= noise.releases:
        raise PrivacyBudgetError(f"{BUDGET_REASON}: site {name} has made the {noise.releases} "
                                 "noisy tree releases this run was charged for", site=name)
    record["released"] = released + 1


@app.query(ACTION)
def trees(msg: Message, context: Context) -> Message:
    """Answer one step of the boosted trees grown across the sites."""
    site_dir = str(context.node_config.get(SITE_DIR_KEY, ""))
    settings = RunSettings.from_run_config(context.run_config)
    ask = msg.content.config_records[CONFIG].get("ask")
    try:
        if settings.tree_dp is None:  # the trees' histograms are not DP: a run without DP
            PrivacyLedger(site_name(site_dir), site_dir).admit(
                str(context.run_id), settings.task, None)
            content = answer_trees(msg.content, context.state,
                                   lambda network: _site(context, network),
                                   TreeCache(site_dir, str(context.run_id)))
        else:  # charged the run's whole epsilon, as for training (a no-op if it trained)
            me = _site(context, False)
            PrivacyLedger(me.name, site_dir).admit(
                str(context.run_id), settings.task, run_cost(settings.dp, training_rows(me)))
            noise = _tree_noise(me, context, settings)
            releases = ask == "begin" or (
                ask == "level" and level_from_content(msg.content).nodes.size > 0)
            _private_release(ask, releases, noise, context, me.name)

            def noisy(network: bool) -> Site:
                site = me if not network else _site(context, True)
                site.tree_noise = noise
                return site

            content = answer_trees(msg.content, context.state, noisy)
    except PrivacyBudgetError as exc:
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)),
                       reply_to=msg)
    return Message(content, reply_to=msg)


@app.query(SECURE_ACTION)
def secure(msg: Message, context: Context) -> Message:
    """Answer one stage of secure aggregation (the vector to sum is made here, at ``mask``)."""
    settings = RunSettings.from_run_config(context.run_config)
    if settings.secure is None:
        raise ConfigError("expected secure aggregation in the run's settings, got none",
                          key="secure")
    norm_bound = settings.secure.norm_bound

    def vector(what: str, content: RecordDict) -> NDArray[np.floating]:
        if what == "fit":
            site = _site(context)
            refusal = _admit(site, context)
            if refusal is not None:  # under SecAgg+ the coordinator records it as an error
                raise PrivacyBudgetError(refusal, site=site.name)
            return fit_vector(site, content, norm_bound)
        return tree_vector(what, content, context.state,
                           lambda network: _site(context, network), settings.secure,
                           TreeCache(str(context.node_config[SITE_DIR_KEY]), str(context.run_id)))

    content = answer_secure(msg.content, context.state, settings.secure, vector)
    return Message(content, reply_to=msg)
