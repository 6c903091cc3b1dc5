"""Secure aggregation over real Flower messages (the fake grid: no processes, the real ClientApp).

Every message the ServerApp pushes and every reply goes through the fake
grid, which stands where the SuperLink stands: what it holds is what the
SuperLink would store and relay. The ClientApp keeps its protocol state in the
node's ``context.state`` between messages, as on a SuperNode.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from test_flower_transport import (  # noqa: F401
    FakeGrid,
    _reference,
    _run_config,
    _settings,
    site_dirs,
    task,
)
from test_flower_trees import TREES, _in_process, fail_after

from vigil.core.errors import AggregationError
from vigil.data import PhysioNetTable, partition
from vigil.federation.driver import Plan, run_federation
from vigil.federation.flower import clientapp, serverapp
from vigil.federation.flower.results import load_result
from vigil.federation.flower.runner import federated_run
from vigil.federation.flower.secure import SecureTransport, decode
from vigil.federation.flower.securetrees import SecureFlowerTrees, valid_bins
from vigil.federation.flower.settings import RunSettings
from vigil.federation.flower.sitedata import load_site, prepare_site
from vigil.federation.flower.transport import FlowerTransport, RemoteSite
from vigil.federation.flower.wire import config_from_record, weights_from_record
from vigil.federation.history import Status
from vigil.federation.hybrid import grow_trees, hybrid_proba
from vigil.federation.model import SepsisNet, set_weights
from vigil.federation.secure_sum import SecureSumSettings
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy

SECURE = SecureSumSettings()
pytestmark = pytest.mark.slow


class Grid(FakeGrid):
    """The fake grid, delivering each message when its reply is first pulled (so the time a
    ClientApp takes never counts against the timeout of a silent node's request).

    ``quiet_at = (stage, count)`` silences each node in ``quiet`` from its ``count``-th
    message of that secure aggregation stage on. ``log`` keeps every request and reply.
    """

    run = type("Run", (), {"run_id": 1})()
    quiet: set[int] = set()
    quiet_at: tuple[str, int] = ("mask", 1)

    def push_messages(self, messages: list[Message]) -> list[str]:
        self.__dict__.setdefault("log", [])
        self.__dict__.setdefault("seen", {})
        self.__dict__.setdefault("queue", {})
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            record = msg.content.config_records.get("secagg")
            if node in self.quiet and record is not None and record["stage"] == self.quiet_at[0]:
                self.seen[node] = self.seen.get(node, 0) + 1
                if self.seen[node] >= self.quiet_at[1]:
                    self.silent = self.silent | {node}
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            self.pushed.append(msg)
            if node not in self.silent:
                self.queue[mid] = msg
            ids.append(mid)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        for mid in ids:
            msg = self.queue.pop(mid, None)
            if msg is not None:
                self.replies[mid] = clientapp.app(msg, self.contexts[msg.metadata.dst_node_id])
                self.log.append((msg, self.replies[mid]))
        return super().pull_messages(ids)


def _connected(dirs: dict[str, Path], settings: RunSettings) -> tuple[
    Grid, FlowerTransport, list[RemoteSite]
]:
    grid = Grid(dirs, settings)
    transport = FlowerTransport(grid, timeout=settings.timeout)  # type: ignore[arg-type]
    return grid, transport, transport.connect(expected=len(dirs), min_sites=2, wait=1.0)


def _secure(**plan: object) -> RunSettings:
    return dataclasses.replace(_settings(**plan), secure=SECURE)


def test_secure_rounds_equal_the_plain_driver_and_the_superlink_sees_no_site_vector(
    site_dirs, task  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    settings = _secure()
    grid, plain, sites = _connected(site_dirs, settings)
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model,
                            transport=SecureTransport(plain, SECURE))
    reference = _reference(site_dirs, settings)

    # (a) the model: the plain driver's within the quantization error (measured 3e-7)
    diff = max(float(np.abs(result.weights[k] - reference.weights[k]).max())
               for k in reference.weights)
    assert diff < 1e-5
    assert [r.aggregated for r in result.history.rounds] == [True, True]
    assert {s.status for r in result.history.rounds for s in r.sites} == {Status.ACCEPTED}

    # (b) what crossed the SuperLink: no train message, no float array from any site
    kinds = {m.metadata.message_type for m, _ in grid.log}
    assert kinds == {"query", "query.secagg", "evaluate"}
    masked = []
    for request, reply in grid.log:
        if request.metadata.message_type != "query.secagg":
            continue
        stage = request.content.config_records["secagg"]["stage"]
        for name, arrays in reply.content.array_records.items():
            assert stage == "mask" and name == "secagg.masked", (stage, name)
            assert arrays["v"].numpy().dtype == np.uint32
        if stage == "mask":
            masked.append((request, decode(reply.content)["masked"]))
    assert len(masked) == 6  # 2 rounds x 3 sites
    # each masked vector is uniform and uncorrelated with what its site (or any site) summed
    local = {s.name: load_site(p, **settings.site_options()) for s, p in
             zip(sites, site_dirs.values(), strict=True)}
    for request, y in masked[:3]:
        weights = weights_from_record(request.content.array_records["arrays"])
        config = config_from_record(request.content.config_records["config"])
        u = y.astype(np.float64) / 2**32
        limit = 5 / np.sqrt(u.size)
        assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / u.size)
        for site in local.values():
            update = site.fit(weights, config)
            true = np.concatenate([(update.weights[k] - weights[k]).ravel()
                                   for k in decode(request.content)["keys"]])
            assert abs(np.corrcoef(u[:-1], true)[0, 1]) < limit


@pytest.fixture(scope="module")
def four_sites(sample: PhysioNetTable, tmp_path_factory: pytest.TempPathFactory) -> dict[
    str, Path
]:
    root = tmp_path_factory.mktemp("four")
    out = {}
    for name, positions in partition(sample, "random:4", seed=0).items():
        sample.select(positions[:150]).frame.to_parquet(root / f"{name}.parquet")
        out[name] = root / name
        prepare_site(name, root / f"{name}.parquet", out[name])
    return out


def test_a_site_dropping_out_mid_round_and_below_the_threshold(four_sites, site_dirs, task) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(_secure(time_budget=1.0), sites=4)  # threshold 3 of 4
    grid, plain, sites = _connected(four_sites, settings)
    grid.quiet = {sites[2].node_id}  # answers the set-up, then nothing from its masked vector on
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model,
                            transport=SecureTransport(plain, SECURE))
    # the same site gone from round 1's training in the plain driver
    grid2, plain2, sites2 = _connected(four_sites, settings)
    grid2.silent = {sites2[2].node_id}
    reference = run_federation(sites2, settings.strategy, settings.plan, model=settings.model,
                               transport=plain2)

    for record in result.history.rounds:
        assert record.aggregated
        gone = {s.site: s for s in record.sites}[sites[2].name]
        assert (gone.status, gone.reason) == (Status.DROPPED, "timeout")
    diff = max(float(np.abs(result.weights[k] - reference.weights[k]).max())
               for k in reference.weights)
    assert diff < 1e-5

    # one of three gone: below 3, the round is refused, naming the threshold and the count
    settings = _secure(time_budget=1.0)
    grid3, plain3, sites3 = _connected(site_dirs, settings)
    grid3.quiet = {sites3[2].node_id}
    records = []
    with pytest.raises(AggregationError, match="no round had 2 acceptable updates"):
        run_federation(sites3, settings.strategy, dataclasses.replace(settings.plan, rounds=1),
                       model=settings.model, transport=SecureTransport(plain3, SECURE),
                       on_round=records.append)
    (record,) = records
    assert not record.aggregated
    assert {s.detail for s in record.sites} == {
        "secure aggregation needs at least 3 sites (the reconstruction threshold 2, never "
        "fewer than 3); 2 of 3 sent a masked vector"}


def _tree_settings(out_dir: str = "", secure: bool = True, **plan: object) -> RunSettings:
    return RunSettings(plan=Plan(**{"rounds": 1, "seed": 3, "time_budget": 30.0, **plan}),
                       strategy=make_strategy("fedavg"), sites=3, model=ModelSpec(hidden=(8,)),
                       trees=TREES, out_dir=out_dir, wait=1.0,
                       secure=SECURE if secure else None)


def test_trees_over_secure_sums_match_the_in_process_model(site_dirs, task, tmp_path) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    settings = _tree_settings(str(tmp_path / "result"))
    grid = Grid(site_dirs, settings)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=_run_config(settings))
    serverapp.main(grid, context)  # type: ignore[arg-type]
    flower = federated_run(settings, load_result(tmp_path / "result"))
    reference = _in_process(site_dirs, _tree_settings(secure=False))

    assert flower.hybrid is not None and reference.hybrid is not None
    for mine, theirs in zip(flower.hybrid.part.trees, reference.hybrid.part.trees, strict=True):
        np.testing.assert_array_equal(mine.feature, theirs.feature)
        np.testing.assert_array_equal(mine.bin, theirs.bin)
        np.testing.assert_allclose(mine.value, theirs.value, rtol=0, atol=1e-6)
    nets = []
    for weights in (flower.result.weights, reference.result.weights):
        net = SepsisNet(int(np.shape(weights["norm.mean"])[0]), hidden=(8,))
        set_weights(net, weights)
        nets.append(net)
    X = np.concatenate([s.valid.X for s in reference.sites])
    dp = np.abs(hybrid_proba(nets[0], flower.hybrid.part, X)
                - hybrid_proba(nets[1], reference.hybrid.part, X))
    assert dp.max() < 1e-5  # measured 6.7e-7: the network's 32-bit sums (leaves within 5e-12)

    # the levels' vectors: left children only below the root, no empty bins, uint32
    edges = None
    for request, reply in grid.log:
        record = request.content.config_records.get("config")
        if record is not None and record.get("ask") == "begin":
            arrays = request.content.array_records["arrays"]
            edges = [arrays[f"edges/{f}"].numpy() for f in range(len(arrays))]
        secagg = request.content.config_records.get("secagg")
        if secagg is None or secagg["stage"] != "mask" or secagg["what"] != "level":
            continue
        nodes = request.content.array_records["arrays"]["nodes"].numpy()
        sent = decode(reply.content)["masked"]
        assert edges is not None
        n_valid = int(valid_bins(edges, TREES.n_bins).sum())
        expected = 1 if nodes.size == 1 else nodes.size // 2
        assert sent.shape == (expected * n_valid * 2,) and sent.dtype == np.uint64
        assert n_valid < 0.7 * len(edges) * TREES.n_bins


def test_a_site_gone_between_secure_tree_levels_is_left_out(four_sites, site_dirs, task) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(_tree_settings(time_budget=1.0), sites=4)
    grid, transport, sites = _connected(four_sites, settings)
    counts = {s.name: transport.statistics([s])[s.name].count for s in sites}  # type: ignore[union-attr]
    gone = sites[1]
    grid.quiet, grid.quiet_at = {gone.node_id}, ("mask", 6)  # tree 0's 4 levels, tree 1's root
    boosted, _ = grow_trees(sites, TREES, counts=counts, min_sites=2,
                            transport=SecureFlowerTrees(transport, sites, SECURE, counts))
    (excluded,) = boosted.exclusions
    assert (excluded.site, excluded.tree, excluded.depth, excluded.detail) == (
        gone.name, 1, 1, "TimeoutError")

    # in process, the site raising at the same level: the same trees (to the quantization)
    local = [load_site(p, **settings.site_options()) for p in four_sites.values()]
    fail_after(local, gone.name, 5)
    reference, _ = grow_trees(local, TREES, counts=counts, min_sites=2)
    assert [(e.site, e.tree, e.depth) for e in reference.exclusions] == [(gone.name, 1, 1)]
    for mine, theirs in zip(boosted.trees, reference.trees, strict=True):
        np.testing.assert_array_equal(mine.feature, theirs.feature)
        np.testing.assert_allclose(mine.value, theirs.value, rtol=0, atol=1e-6)

    # three sites: one gone leaves a sum of two, which is refused (and the boosting stops)
    grid3, transport3, sites3 = _connected(site_dirs, settings)
    counts3 = {s.name: transport3.statistics([s])[s.name].count for s in sites3}  # type: ignore[union-attr]
    grid3.quiet, grid3.quiet_at = {sites3[0].node_id}, ("mask", 2)
    with pytest.raises(AggregationError, match=r"at least 3 sites .*; 2 of 3 sent a masked"):
        grow_trees(sites3, TREES, counts=counts3, min_sites=2,
                   transport=SecureFlowerTrees(transport3, sites3, SECURE, counts3))
