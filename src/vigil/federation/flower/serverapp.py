"""vigil's Flower ServerApp: the in-process driver's rounds, with SuperNodes as the sites.

Flower starts it on the coordinator (the SuperLink's SuperExec) for each run.
It reads :class:`~vigil.federation.flower.settings.RunSettings` from the run
config, waits for the sites, and calls
:func:`~vigil.federation.driver.run_federation` with a
:class:`~vigil.federation.flower.transport.FlowerTransport`: the same
statistics pooling, initial model, bad-update checks, strategy, dropout rule
and round history as ``vigil federate``. The result goes to the run's
``out-dir`` (:func:`~vigil.federation.flower.results.save_result`) and every
phase to ``out-dir/events.jsonl``.

With ``trees`` in the settings, the boosted trees are then grown across the
same SuperNodes and fused with the kept network
(:func:`~vigil.federation.hybrid.grow_hybrid` over
:class:`~vigil.federation.flower.treewire.FlowerTrees`), as ``vigil federate
--boost-trees`` does in process; one ``tree`` event per finished tree. With
``dp`` too (``RunSettings.tree_dp``), the edges are public and each site noises
its own histograms (:mod:`vigil.federation.tree_privacy`); the coordinator
raises the hessian floor for the noise the sites' declared rows imply
(:func:`~vigil.federation.tree_privacy.planned_noise`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from vigil.federation.driver import run_federation
from vigil.federation.flower.results import EVENTS_FILE, save_result
from vigil.federation.flower.secure import SecureTransport
from vigil.federation.flower.securetrees import SecureFlowerTrees
from vigil.federation.flower.settings import RunSettings
from vigil.federation.flower.transport import EventLog, FlowerTransport
from vigil.federation.flower.treewire import FlowerTrees
from vigil.federation.history import RoundRecord
from vigil.federation.hybrid import grow_hybrid
from vigil.federation.public_edges import public_edges
from vigil.federation.tree_privacy import planned_noises, private_plan

__all__ = ["app", "main"]

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one federated training (Flower calls this once per run)."""
    import torch

    settings = RunSettings.from_run_config(context.run_config)
    torch.set_num_threads(settings.threads)
    out = Path(settings.out_dir)
    events = EventLog(out / EVENTS_FILE)
    events.write("start", run_id=grid.run.run_id, settings=settings.to_run_config())
    transport = FlowerTransport(grid, timeout=settings.timeout, events=events)
    rounds = transport if settings.secure is None else SecureTransport(transport, settings.secure)
    t0 = time.monotonic()
    round_seconds: list[float] = []

    def on_round(record: RoundRecord) -> None:
        round_seconds.append(time.monotonic() - t0 - sum(round_seconds))
        events.write("round", round=record.round, aggregated=record.aggregated,
                     sites={s.site: s.status.value for s in record.sites},
                     valid_auroc=record.valid_auroc, seconds=round_seconds[-1])
        log.info("round %d: aggregated=%s, pooled validation AUROC %s", record.round,
                 record.aggregated, record.valid_auroc)

    try:
        sites = transport.connect(expected=settings.sites, min_sites=settings.plan.min_sites,
                                  wait=settings.wait)
        round_seconds.append(time.monotonic() - t0)  # connecting counts as "round 0"
        result = run_federation(
            sites, settings.strategy, settings.plan, model=settings.model, on_round=on_round,
            transport=rounds, task=settings.driver_task(),
        )
        network_traffic = {name: asdict(t) for name, t in sorted(transport.traffic.items())}
        hybrid, tree_seconds = None, []
        if settings.trees is not None:
            t_trees = time.monotonic()

            def on_tree(done: int) -> None:
                tree_seconds.append(time.monotonic() - t_trees - sum(tree_seconds))
                events.write("tree", tree=done, seconds=tree_seconds[-1])

            counts = {n: s.count for n, s in result.statistics.items()}
            trees = FlowerTrees(transport, sites) if settings.secure is None else (
                SecureFlowerTrees(transport, sites, settings.secure, counts))
            plan, edges = settings.trees, None
            if settings.tree_dp is not None:
                noises = planned_noises(counts, dp=settings.dp, plan=settings.plan,
                                        trees=settings.trees, settings=settings.tree_dp)
                plan = private_plan(plan, list(noises.values()), settings.tree_dp.hessian_floor)
                edges = public_edges(plan.n_bins)
            hybrid = grow_hybrid(
                sites, result.weights, plan, counts=counts,
                min_sites=settings.plan.min_sites, on_tree=on_tree, transport=trees,
                edges=edges, exact=settings.tree_dp is None,
            )
            events.write("trees", sites=list(hybrid.boosted.sites),
                         exclusions=len(hybrid.boosted.exclusions),
                         seconds=time.monotonic() - t_trees)
    except Exception as exc:
        events.write("failed", error=type(exc).__name__, detail=str(exc))
        raise
    info = {
        "run_id": grid.run.run_id,
        "settings": settings.to_run_config(),
        "nodes": {s.name: s.node_id for s in sites},
        "traffic": {name: asdict(t) for name, t in sorted(transport.traffic.items())},
        "network_traffic": network_traffic,
        "connect_seconds": round_seconds[0],
        "round_seconds": round_seconds[1:],
        "tree_seconds": tree_seconds,
    }
    save_result(out, result, info, hybrid)
    events.write("done", seconds=time.monotonic() - t0)
