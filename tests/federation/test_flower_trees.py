"""The boosted trees over Flower messages: the same package as in process, and the dropout rule.

The ServerApp runs against the fake grid of ``test_flower_transport`` (each
message goes to vigil's ClientApp with the node's own context and state, as a
SuperNode would deliver it), so the tree protocol crosses Flower's records and
the SuperNode's run state exactly as deployed, without processes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from test_flower_transport import FakeGrid, _run_config, site_dirs, task  # noqa: F401

from vigil.core.errors import AggregationError
from vigil.federation.boosting import BoostingPlan, BoostingSite, Tree
from vigil.federation.driver import Plan, run_federation
from vigil.federation.flower import serverapp
from vigil.federation.flower.results import load_result
from vigil.federation.flower.runner import federated_run
from vigil.federation.flower.settings import RunSettings
from vigil.federation.flower.sitedata import load_site
from vigil.federation.flower.transport import FlowerTransport
from vigil.federation.flower.treewire import FlowerTrees, level_from_content, level_to_content
from vigil.federation.hybrid import grow_hybrid, grow_trees
from vigil.federation.simulation import FederatedRun, export_run
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy
from vigil.federation.treegrowth import LevelRequest

TREES = BoostingPlan(n_trees=3, max_depth=3, n_bins=16)


def _settings(out_dir: Path | str = "", **plan: object) -> RunSettings:
    return RunSettings(plan=Plan(**{"rounds": 1, "seed": 3, "time_budget": 30.0, **plan}),
                       strategy=make_strategy("fedavg"), sites=3, model=ModelSpec(hidden=(8,)),
                       trees=TREES, out_dir=str(out_dir), wait=1.0)


class _Run:
    run_id = 1


class Grid(FakeGrid):
    """The fake grid, with a run id for the ServerApp; ``quiet_after`` silences a node.

    ``quiet_after = (node, n)``: the node answers its first ``n`` tree levels,
    then nothing (a SuperNode gone between two levels).
    """

    run = _Run()
    quiet_after: tuple[int, int] | None = None

    def push_messages(self, messages):  # type: ignore[no-untyped-def]
        if self.quiet_after is not None:
            node, n = self.quiet_after
            for msg in messages:
                if (msg.metadata.dst_node_id == node
                        and msg.content.config_records["config"].get("ask") == "level"):
                    self.levels = getattr(self, "levels", 0) + 1
                    if self.levels > n:
                        self.silent = {node}
        return super().push_messages(messages)


def run_serverapp(dirs, settings):  # type: ignore[no-untyped-def]
    """Run the ServerApp over the fake grid; return the grid and the run's result."""
    grid = Grid(dirs, settings)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=_run_config(settings))
    serverapp.main(grid, context)  # type: ignore[arg-type]
    return grid, load_result(settings.out_dir)


def same_trees_both_ways(dirs, settings, in_process):  # type: ignore[no-untyped-def]
    """Run the ServerApp and ``in_process(dirs, settings)``; check every site grew the same trees.

    Returns the grid, the Flower run's result, and both runs (``FederatedRun``).
    """
    grid, out = run_serverapp(dirs, settings)
    flower, reference = federated_run(settings, out), in_process(dirs, settings)
    assert flower.hybrid is not None and reference.hybrid is not None
    assert flower.hybrid.boosted.exclusions == () and len(flower.hybrid.boosted.sites) == 3
    _same_trees(flower.hybrid.part.trees, reference.hybrid.part.trees)
    assert flower.hybrid.part.base == reference.hybrid.part.base
    return grid, out, flower, reference


def _in_process(dirs, settings):  # type: ignore[no-untyped-def]
    sites = [load_site(p, **settings.site_options()) for p in dirs.values()]
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model)
    hybrid = grow_hybrid(sites, result.weights, TREES,
                         counts={n: s.count for n, s in result.statistics.items()},
                         min_sites=settings.plan.min_sites)
    return FederatedRun(result=result, strategy=settings.strategy, plan=settings.plan,
                        model=settings.model, dp=None, scheme="3 sites", data="", sites=sites,
                        hybrid=hybrid)


def fail_after(sites, name: str, levels: int) -> None:  # type: ignore[no-untyped-def]
    """Make the in-process site ``name`` raise from its ``levels + 1``-th tree level on."""
    failing = next(s for s in sites if s.name == name)
    honest = failing.boosting

    class Gone(BoostingSite):
        count = 0

        def histograms(self, nodes, n_bins):  # type: ignore[no-untyped-def]
            Gone.count += 1
            if Gone.count > levels:
                raise ConnectionError("gone")
            return super().histograms(nodes, n_bins)

    def boosting(edges):  # type: ignore[no-untyped-def]
        b = honest(edges)
        return Gone(b.name, b.binned, b.y, b.weight)

    failing.boosting = boosting


def _same_trees(a: tuple[Tree, ...], b: tuple[Tree, ...]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for field in ("feature", "bin", "threshold", "left", "right", "value"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)


def test_the_serverapp_with_trees_writes_the_in_process_model_onnx_byte_for_byte(
    site_dirs, task, tmp_path  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(tmp_path / "result")
    _, out, flower, reference = same_trees_both_ways(site_dirs, settings, _in_process)
    assert flower.hybrid.part.standardization == reference.hybrid.part.standardization
    assert (flower.hybrid.part.intercept, flower.hybrid.part.slope) == (
        reference.hybrid.part.intercept, reference.hybrid.part.slope)
    assert flower.pooled.to_dict() == reference.pooled.to_dict()
    (a,) = export_run(flower, tmp_path / "flower", name="m", version="1")
    (b,) = export_run(reference, tmp_path / "local", name="m", version="1")
    assert (a.path / "model.onnx").read_bytes() == (b.path / "model.onnx").read_bytes()
    assert a.manifest.training["boosting"]["n_trees"] == TREES.n_trees
    # one event per tree, and the bytes of the network and of the trees counted per site
    assert len(out.info["tree_seconds"]) == TREES.n_trees
    for name, total in out.info["traffic"].items():
        network = out.info["network_traffic"][name]
        assert total["received"] > network["received"] > 0
        assert total["messages"] > network["messages"]


def test_a_site_gone_between_two_tree_levels_is_left_out_and_the_tree_finished_without_it(
    site_dirs, task  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(time_budget=6.0)  # waited for the silent site; ample for the others
    grid = Grid(site_dirs, settings)
    transport = FlowerTransport(grid, timeout=settings.timeout)  # type: ignore[arg-type]
    sites = transport.connect(expected=3, min_sites=2, wait=1.0)
    counts = {s.name: transport.statistics([s])[s.name].count for s in sites}  # type: ignore[union-attr]
    gone = sites[1]
    grid.quiet_after = (gone.node_id, 5)  # tree 0's four levels, then tree 1's root
    boosted, _ = grow_trees(sites, TREES, counts=counts, min_sites=2,
                            transport=FlowerTrees(transport, sites))
    (excluded,) = boosted.exclusions
    assert (excluded.site, excluded.tree, excluded.depth, excluded.reason.value,
            excluded.detail) == (gone.name, 1, 1, "error", "TimeoutError")
    assert boosted.sites == tuple(s.name for s in sites if s is not gone)

    # the same rule in process: the site raising at the same level gives the same trees
    local = [load_site(p, **settings.site_options()) for p in site_dirs.values()]
    fail_after(local, gone.name, 5)
    reference, _ = grow_trees(local, TREES, counts=counts, min_sites=2)
    assert [(e.site, e.tree, e.depth) for e in reference.exclusions] == [(gone.name, 1, 1)]
    _same_trees(boosted.trees, reference.trees)

    # with min_sites = 3 the run stops instead
    grid2 = Grid(site_dirs, settings)
    transport2 = FlowerTransport(grid2, timeout=settings.timeout)  # type: ignore[arg-type]
    sites2 = transport2.connect(expected=3, min_sites=2, wait=1.0)
    grid2.quiet_after = (sites2[1].node_id, 2)
    with pytest.raises(AggregationError, match="boosting needs at least 3 sites, 2 remain"):
        grow_trees(sites2, TREES, counts=counts, min_sites=3,
                   transport=FlowerTrees(transport2, sites2))


def test_a_level_request_crosses_the_wire_bit_for_bit(task) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    tree = Tree(np.array([2, -1, -1]), np.array([5, -1, -1]),
                np.array([0.1, np.nan, np.nan], dtype=np.float32), np.array([1, -1, -1]),
                np.array([2, -1, -1]), np.array([0.0, *rng.normal(size=2)]))
    for request in (
        LevelRequest(tree=0, depth=0, nodes=np.array([0]), n_bins=16, base=-2.718281828459045),
        LevelRequest(tree=4, depth=1, nodes=np.array([1, 2]), n_bins=16, grown=tree,
                     split=np.array([0])),
        LevelRequest(tree=5, depth=0, nodes=np.empty(0, dtype=np.int64), n_bins=16,
                     finished=tree),
    ):
        back = level_from_content(level_to_content(request))
        assert (back.tree, back.depth, back.n_bins, back.base) == (
            request.tree, request.depth, request.n_bins, request.base)
        np.testing.assert_array_equal(back.nodes, request.nodes)
        np.testing.assert_array_equal(back.split, request.split)
        for mine, theirs in ((back.grown, request.grown), (back.finished, request.finished)):
            assert (mine is None) == (theirs is None)
            if mine is not None:
                _same_trees((mine,), (theirs,))


@pytest.mark.slow
def test_the_retraining_job_on_flower_releases_the_shipped_recipe_with_its_trees(
    site_dirs, task, tmp_path, monkeypatch  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    """``engine = "flower"`` with ``[trees]``: network and trees over Flower messages, signed.

    The ServerApp runs over the fake grid in place of ``flwr run`` (the processes are
    ``test_flower_deploy``'s subject); the settings, the result on disk, its wrapping, the
    export and the signed release are the retraining job's own.
    """
    from vigil.core.package import read_package
    from vigil.core.signing import generate_keypair
    from vigil.federation.flower import launch
    from vigil.federation.flower import runner as flower_runner
    from vigil.federation.retraining import Engine, load_retrain_config, retrain_once

    def run_on_fake_grid(coordinator, settings, run_dir, **_):  # type: ignore[no-untyped-def]
        settings = dataclasses.replace(settings, out_dir=str(Path(run_dir) / "result"))
        return run_serverapp(site_dirs, settings)[1]

    monkeypatch.setattr(flower_runner, "run_on_flower", run_on_fake_grid)
    monkeypatch.setattr(launch.Coordinator, "from_certs", lambda *a, **k: None)  # no SuperLink
    private, public = generate_keypair()
    (tmp_path / "release.pem").write_bytes(private)
    (tmp_path / "release.pub").write_bytes(public)
    (tmp_path / "retrain.toml").write_text(
        'engine = "flower"\nregistry = "registry"\nprivate_key = "release.pem"\n'
        'name = "sepsis-test"\n[plan]\nrounds = 1\nseed = 3\ntime_budget = 30.0\n'
        '[model]\nhidden = [8]\n'
        f'[trees]\nn_trees = {TREES.n_trees}\nmax_depth = {TREES.max_depth}\n'
        f'n_bins = {TREES.n_bins}\n'
        '[flower]\nwork = "coord"\ncerts = "pki"\nsites = 3\nwait = 1.0\n')
    config = load_retrain_config(tmp_path / "retrain.toml")
    assert config.engine is Engine.FLOWER and config.trees == TREES
    release = retrain_once(config)

    package = read_package(config.registry / release.version,
                           public_key=tmp_path / "release.pub")
    assert release.signed and package.manifest.training["method"].startswith("federated (Flower")
    assert package.manifest.model_dump()["architecture"]["type"] == "SepsisNet+trees"
    assert package.manifest.training["boosting"]["n_trees"] == TREES.n_trees
    # the same model.onnx as the in-process run of the same sites and settings
    settings = dataclasses.replace(_settings(tmp_path / "reference"), plan=config.plan,
                                   model=config.model)
    (local,) = export_run(_in_process(site_dirs, settings), tmp_path / "local",
                          name="sepsis-test", version=release.version)
    assert (package.path / "model.onnx").read_bytes() == (local.path / "model.onnx").read_bytes()
