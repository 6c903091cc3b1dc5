"""Flower deployment on loopback: a SuperLink and three SuperNodes as separate processes.

TLS with a test CA, SuperNode authentication with registered keys, state in a
database, each site with its own partition of the bundled sample. The runs must
reproduce the in-process driver to 1e-6 (with trees: the same trees bit for bit, the
fused probabilities to 1e-6); an unregistered SuperNode is refused;
a SuperNode killed mid-run leaves the round to the other two within the
configured timeout; every process is stopped at the end, also on failure.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

from vigil.data import load_physionet, partition
from vigil.federation.boosting import BoostingPlan
from vigil.federation.driver import Plan, run_federation
from vigil.federation.flower.certs import make_test_pki
from vigil.federation.flower.launch import (
    Coordinator,
    Process,
    SiteNode,
    _alive,
    _descendants,
    register_site,
    start_superlink,
    start_supernode,
)
from vigil.federation.flower.runner import federated_run, read_events, run_on_flower
from vigil.federation.flower.settings import RunSettings
from vigil.federation.flower.sitedata import load_site, prepare_site
from vigil.federation.history import Status
from vigil.federation.hybrid import grow_hybrid, hybrid_proba
from vigil.federation.simulation import FederatedRun, export_run
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy

pytestmark = pytest.mark.slow

SITES = ("site1", "site2", "site3")
TIMEOUT = 60.0
"""Seconds a site has to answer a request (the configured round timeout)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Federation:
    root: Path
    coordinator: Coordinator
    superlink: Process
    nodes: dict[str, Process] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)

    def processes(self) -> list[Process]:
        return [self.superlink, *self.nodes.values()]

    def remember_tree(self) -> None:
        """Note every process Flower started so far (SuperExecs, app processes)."""
        for proc in self.processes():
            self.seen.update([proc.pid, *_descendants(proc.pid)])

    def stop(self) -> None:
        self.remember_tree()
        for proc in self.processes():
            proc.stop(timeout=10)


def _settings(rounds: int) -> RunSettings:
    plan = Plan(rounds=rounds, batch_size=2048, seed=7, time_budget=TIMEOUT, keep_best=False)
    return RunSettings(plan=plan, strategy=make_strategy("fedavg"), sites=len(SITES),
                       model=ModelSpec(hidden=(16,)), wait=120.0)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("flower")
    table = load_physionet("sample")
    for name, positions in partition(table, "random:3").items():
        table.select(positions).frame.to_parquet(root / f"{name}.parquet")
        prepare_site(name, root / f"{name}.parquet", root / "sites" / name)
    pki = make_test_pki(root / "pki", sites=[*SITES, "intruder"])
    coordinator = Coordinator.from_certs(root / "coordinator", root / "pki", port=_free_port())
    fed = Federation(root, coordinator, start_superlink(coordinator))
    try:
        for key in pki.sites[: len(SITES)]:
            assert register_site(coordinator, key.public_key, name=key.name) is not None
        for key in pki.sites[: len(SITES)]:
            fed.nodes[key.name] = start_supernode(SiteNode(
                root / "sites" / key.name, coordinator.address, pki.ca_cert, key.private_key,
                port=_free_port(),
            ))
        yield fed
    finally:
        fed.stop()


def _in_process(root: Path, settings: RunSettings, *, fail: str | None = None):  # type: ignore[no-untyped-def]
    sites = [load_site(root / "sites" / name, **settings.site_options()) for name in SITES]
    if fail is not None:
        sites = [_Unreachable(s) if s.name == fail else s for s in sites]
    return run_federation(sites, settings.strategy, settings.plan, model=settings.model)


class _Unreachable:
    """A site that sent its statistics and then went away (the in-process twin of a killed node)."""

    def __init__(self, site) -> None:  # type: ignore[no-untyped-def]
        self.site, self.name = site, site.name

    def statistics(self):  # type: ignore[no-untyped-def]
        return self.site.statistics()

    def fit(self, weights, config):  # type: ignore[no-untyped-def]
        raise TimeoutError("gone")

    def evaluate(self, weights):  # type: ignore[no-untyped-def]
        raise TimeoutError("gone")


def _max_diff(a, b) -> float:  # type: ignore[no-untyped-def]
    assert list(a) == list(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def test_flower_run_equals_in_process_driver(federation: Federation) -> None:
    settings = _settings(rounds=2)
    out = run_on_flower(federation.coordinator, settings, federation.root / "runs" / "plain")
    federation.remember_tree()
    reference = _in_process(federation.root, settings)

    assert _max_diff(out.result.weights, reference.weights) <= 1e-6
    assert [r.aggregated for r in out.result.history.rounds] == [True, True]
    for record in out.result.history.rounds:
        assert [s.status for s in record.sites] == [Status.ACCEPTED] * 3
        assert [s.num_examples for s in record.sites] == [
            s.num_examples for s in reference.history.rounds[record.round - 1].sites
        ]
    assert out.result.pooled.auroc == pytest.approx(reference.pooled.auroc, abs=1e-6)
    assert federation.coordinator.database.stat().st_size > 0  # state persisted (--database)
    # statistics, two train and two evaluate requests per site, and each answered
    traffic = out.info["traffic"]
    weights_bytes = sum(v.nbytes for v in reference.weights.values())
    assert sorted(traffic) == list(SITES)
    for t in traffic.values():
        assert t["messages"] == 5
        assert t["sent"] > 4 * weights_bytes
        assert t["received"] > 2 * weights_bytes


def test_flower_run_with_trees_is_the_in_process_recipe(federation: Federation) -> None:
    """The shipped recipe on real SuperNodes: the network, then trees grown over Flower."""
    trees = BoostingPlan(n_trees=1, max_depth=2, n_bins=16)
    settings = replace(_settings(rounds=1), trees=trees)
    out = run_on_flower(federation.coordinator, settings, federation.root / "runs" / "trees")
    federation.remember_tree()
    sites = [load_site(federation.root / "sites" / name, **settings.site_options())
             for name in SITES]
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model)
    hybrid = grow_hybrid(sites, result.weights, trees,
                         counts={n: s.count for n, s in result.statistics.items()}, min_sites=2)
    assert out.hybrid is not None and out.hybrid.boosted.exclusions == ()
    # the trees do not depend on the network: the same arrays, bit for bit
    for a, b in zip(out.hybrid.part.trees, hybrid.part.trees, strict=True):
        for name in ("feature", "bin", "threshold", "left", "right", "value"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    flower = federated_run(settings, out)
    reference = FederatedRun(result=result, strategy=settings.strategy, plan=settings.plan,
                             model=settings.model, dp=None, scheme="", data="", sites=sites,
                             hybrid=hybrid)
    root = federation.root / "packages"
    (a,) = export_run(flower, root / "flower", name="m", version="1")
    (b,) = export_run(reference, root / "local", name="m", version="1")
    if _max_diff(out.result.weights, result.weights) == 0:
        assert (a.path / "model.onnx").read_bytes() == (b.path / "model.onnx").read_bytes()
    X = np.concatenate([s.valid.X for s in sites])
    p_flower = hybrid_proba(_net(flower), flower.hybrid.part, X)  # type: ignore[union-attr]
    p_local = hybrid_proba(_net(reference), hybrid.part, X)
    assert float(np.max(np.abs(p_flower - p_local))) <= 1e-6
    assert len(out.info["tree_seconds"]) == 1


def _net(run: FederatedRun):  # type: ignore[no-untyped-def]
    from vigil.federation.model import SepsisNet, set_weights

    net = SepsisNet(int(np.shape(run.result.weights["norm.mean"])[0]), hidden=run.model.hidden,
                    dropout=run.model.dropout)
    set_weights(net, run.result.weights)
    return net


def test_unregistered_supernode_is_refused(federation: Federation) -> None:
    pki = federation.root / "pki" / "sites"
    intruder = start_supernode(SiteNode(
        federation.root / "sites" / "site1", federation.coordinator.address,
        federation.root / "pki" / "ca.crt", pki / "intruder.key", port=_free_port(),
    ))
    try:
        deadline = time.monotonic() + 90
        while intruder.alive and time.monotonic() < deadline:
            time.sleep(0.5)
        log = intruder.log_text()
        assert not intruder.alive, "an unregistered SuperNode kept running"
        assert intruder.popen.returncode != 0
        assert "Failed to activate SuperNode" in log
    finally:
        intruder.stop(timeout=5)


def test_killed_supernode_round_completes_with_the_others(federation: Federation) -> None:
    settings = replace(_settings(rounds=1))
    run_dir = federation.root / "runs" / "kill"
    victim = federation.nodes["site3"]

    def on_event(event: dict) -> None:  # type: ignore[type-arg]
        if event["event"] == "train-sent" and victim.alive:
            federation.remember_tree()
            victim.kill()

    out = run_on_flower(federation.coordinator, settings, run_dir, on_event=on_event)
    federation.remember_tree()

    (record,) = out.result.history.rounds
    assert record.aggregated
    status = {s.site: s for s in record.sites}
    assert status["site1"].status is Status.ACCEPTED and status["site2"].status is Status.ACCEPTED
    assert status["site3"].status is Status.DROPPED
    assert status["site3"].reason in ("timeout", "error")
    events = read_events(run_dir / "result")
    sent = next(e["t"] for e in events if e["event"] == "train-sent")
    done = next(e["t"] for e in events if e["event"] == "train-done")
    assert done - sent <= TIMEOUT + 5.0
    reference = _in_process(federation.root, settings, fail="site3")
    assert _max_diff(out.result.weights, reference.weights) <= 1e-6


def test_every_process_is_stopped(federation: Federation) -> None:
    federation.stop()
    assert federation.seen
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in federation.seen) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in federation.seen if _alive(p)]
