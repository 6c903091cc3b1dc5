"""DP trees on Flower: the in-process model for the same seed, the sites' own noise, the budget.

The ServerApp runs against the fake grid of ``test_flower_transport`` (each message goes
to vigil's ClientApp with the node's own context and state, as a SuperNode would deliver
it). The noise is seeded here (``seeded_noise=True``) so that Flower and in process can be
compared; a deployment draws it from each site's OS (the default on Flower).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from test_flower_transport import FakeGrid, _run_config, site_dirs, task  # noqa: F401
from test_flower_trees import run_serverapp, same_trees_both_ways

from vigil.core.errors import ConfigError, PrivacyBudgetError
from vigil.federation.boosting import BoostingPlan, BoostingSite, bin_rows
from vigil.federation.budget import (
    BUDGET_REASON,
    LEDGER_FILE,
    PrivacyLedger,
    SiteBudget,
    admitted,
    budgeted,
    write_budget,
)
from vigil.federation.driver import Plan, run_federation
from vigil.federation.flower import clientapp
from vigil.federation.flower.settings import RunSettings
from vigil.federation.flower.sitedata import load_site
from vigil.federation.history import Status
from vigil.federation.hybrid import grow_hybrid
from vigil.federation.privacy import DPSettings
from vigil.federation.public_edges import public_edges
from vigil.federation.simulation import FederatedRun, export_run
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy
from vigil.federation.tree_privacy import (
    NoisyBoostingSite,
    TreeDPSettings,
    TreeNoise,
    planned_noises,
    private_plan,
    site_noise,
)

TREES = BoostingPlan(n_trees=3, max_depth=2, n_bins=16)
SEEDED = TreeDPSettings(tree_share=0.5, features_per_tree=8, seed=3, seeded_noise=True)

pytestmark = [
    # Opacus' own warnings on a tiny site (its accountant's alpha grid, torch's backward hook)
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]


def _settings(out_dir: Path | str = "", tree_dp: TreeDPSettings | None = SEEDED) -> RunSettings:
    return RunSettings(plan=Plan(rounds=1, seed=3, time_budget=600.0, batch_size=4096),
                       strategy=make_strategy("fedavg"), sites=3, model=ModelSpec(hidden=(8,)),
                       dp=DPSettings(8.0), trees=TREES, tree_dp=tree_dp, out_dir=str(out_dir),
                       wait=1.0)


def _in_process(dirs: dict[str, Path], settings: RunSettings) -> FederatedRun:
    """The same run in process: DP network, then noisy trees from public edges."""
    assert settings.dp is not None and settings.tree_dp is not None
    sites = [load_site(p, **settings.site_options()) for p in dirs.values()]
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model)
    noises = {s.name: site_noise(n_rows=s.train.n_rows, accountant=s.accountant, dp=settings.dp,
                                 plan=TREES, settings=settings.tree_dp) for s in sites}
    for s in sites:
        s.tree_noise = noises[s.name]
    grown = private_plan(TREES, list(noises.values()), settings.tree_dp.hessian_floor)
    hybrid = grow_hybrid(sites, result.weights, grown,
                         counts={n: s.count for n, s in result.statistics.items()},
                         min_sites=settings.plan.min_sites, edges=public_edges(TREES.n_bins),
                         exact=False)
    return FederatedRun(result=result, strategy=settings.strategy, plan=settings.plan,
                        model=settings.model, dp=settings.dp, scheme="3 sites", data="",
                        sites=sites, hybrid=hybrid, tree_dp=settings.tree_dp, tree_noise=noises,
                        tree_edges="public")


@pytest.mark.slow
def test_dp_trees_over_flower_give_the_in_process_model_for_the_same_seed(
    site_dirs, task, tmp_path  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(tmp_path / "result")
    grid, _, flower, reference = same_trees_both_ways(site_dirs, settings, _in_process)
    # the coordinator's planned noise (from the declared rows) is each site's own
    assert flower.tree_noise == reference.tree_noise
    (a,) = export_run(flower, tmp_path / "flower", name="m", version="1")
    (b,) = export_run(reference, tmp_path / "local", name="m", version="1")
    assert (a.path / "model.onnx").read_bytes() == (b.path / "model.onnx").read_bytes()
    dp = a.manifest.training["differential_privacy"]
    assert dp == b.manifest.training["differential_privacy"]
    assert a.manifest.training["boosting"]["edges"] == "public"
    for name, eps in dp["composed_epsilon"].items():  # network + trees within the target
        assert 7.9 < eps <= 8.0 + 1e-9
        assert dp["trees"]["sites"][name]["network_epsilon"] < eps
    # no quantile was asked; every site was charged the whole epsilon once, in Flower's run
    asks = [m.content.config_records["config"].get("ask") for m in grid.pushed
            if "config" in m.content.config_records]
    assert "quantiles" not in asks and asks.count("begin") == 3
    for name, path in site_dirs.items():
        (entry,) = [e for e in PrivacyLedger(name, path).entries() if e.run == "1"]
        assert entry.epsilon == 8.0


@pytest.mark.slow
def test_a_site_past_its_budget_refuses_the_rounds_and_the_trees(
    site_dirs, task, tmp_path  # noqa: F811
) -> None:  # type: ignore[no-untyped-def]
    dirs = {n: Path(shutil.copytree(p, tmp_path / n)) for n, p in site_dirs.items()}
    for path in dirs.values():  # fresh ledgers (another test may have charged run 1)
        (path / LEDGER_FILE).unlink(missing_ok=True)
    refusing = sorted(dirs)[0]
    write_budget(dirs[refusing], SiteBudget(5.0, 1e-4))  # 8 > 5: refused
    settings = dataclasses.replace(_settings(tmp_path / "result"), plan=Plan(
        rounds=1, seed=3, time_budget=600.0, batch_size=4096, min_sites=2))
    _, out = run_serverapp(dirs, settings)
    (record,) = out.result.history.rounds
    (dropped,) = record.by_status(Status.DROPPED)
    assert (dropped.site, dropped.reason) == (refusing, BUDGET_REASON)
    assert out.hybrid is not None
    # refused at `begin`, before any histogram: the trees are grown by the other two
    assert out.hybrid.boosted.sites == tuple(sorted(dirs)[1:])
    (left_out,) = out.hybrid.boosted.exclusions
    assert (left_out.site, left_out.tree, left_out.detail) == (refusing, -1, "PrivacyBudgetError")
    assert not PrivacyLedger(refusing, dirs[refusing]).entries()
    for name in sorted(dirs)[1:]:
        assert [(e.run, e.epsilon) for e in PrivacyLedger(name, dirs[name]).entries()] == [
            ("1", 8.0)]


def test_a_site_rebuilt_for_every_level_sends_the_same_noisy_histograms() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    y = (rng.random(400) < 0.2).astype(np.float64)
    edges = [np.linspace(-2, 2, 7, dtype=np.float32) for _ in range(6)]
    noise = TreeNoise(noise_multiplier=3.0, features_per_tree=2, seed=5, epsilon=1.0,
                      delta=1e-5, network_epsilon=0.5, releases=9)

    def site() -> NoisyBoostingSite:
        return NoisyBoostingSite("a", bin_rows(X, edges), y, np.ones_like(y), noise=noise,
                                 n_edges=[len(e) for e in edges])

    kept, nodes = site(), np.array([0])
    kept.begin_tree()
    first = kept.histograms(nodes, 8)
    second = kept.histograms(nodes, 8)
    rebuilt = site()
    rebuilt.begin_tree()
    np.testing.assert_array_equal(rebuilt.histograms(nodes, 8), first)
    again = site()
    again.restore(rebuilt.state())
    np.testing.assert_array_equal(again.histograms(nodes, 8), second)
    assert not np.array_equal(first, second)  # each release has its own noise
    # only the tree's features are sent; the others are exact zeros
    sent = np.flatnonzero(np.abs(first).sum(axis=(0, 2, 3)))
    assert sent.size == 2
    # the exact sums of the sent features are the plain site's
    plain = BoostingSite("a", bin_rows(X, edges), y, np.ones_like(y))
    plain.begin_tree()
    exact = plain.histograms(nodes, 8)
    quiet = dataclasses.replace(noise, noise_multiplier=1e-9)
    silent = NoisyBoostingSite("a", bin_rows(X, edges), y, np.ones_like(y), noise=quiet,
                               n_edges=[len(e) for e in edges])
    silent.begin_tree()
    np.testing.assert_allclose(silent.histograms(nodes, 8)[:, sent], exact[:, sent], atol=1e-6)
    # from the OS, the noise differs between two sites built alike
    loud = dataclasses.replace(noise, seeded_noise=False)
    one, two = (NoisyBoostingSite("a", bin_rows(X, edges), y, np.ones_like(y), noise=loud,
                                  n_edges=[len(e) for e in edges]) for _ in range(2))
    one.begin_tree()
    two.begin_tree()
    assert not np.array_equal(one.histograms(nodes, 8), two.histograms(nodes, 8))


def test_the_site_refuses_quantiles_and_releases_past_the_charged_plan() -> None:
    noise = TreeNoise(noise_multiplier=3.0, features_per_tree=2, seed=5, epsilon=1.0,
                      delta=1e-5, network_epsilon=0.5, releases=2)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                      run_config={})
    context.state["vigil-tree-noise"] = ConfigRecord({"released": 0})
    with pytest.raises(PrivacyBudgetError, match="sends no quantiles"):
        clientapp._private_release("quantiles", False, noise, context, "a")
    clientapp._private_release("begin", True, noise, context, "a")
    clientapp._private_release("level", True, noise, context, "a")
    clientapp._private_release("score-sums", False, noise, context, "a")  # no histogram
    clientapp._private_release("level", False, noise, context, "a")  # finishes the last tree
    with pytest.raises(PrivacyBudgetError, match="the 2 noisy tree releases this run was"):
        clientapp._private_release("level", True, noise, context, "a")


def test_run_settings_carry_the_dp_tree_settings_and_default_to_os_noise() -> None:
    settings = _settings()
    assert RunSettings.from_run_config(_run_config(settings)) == settings
    default = _settings(tree_dp=None)
    assert default.tree_dp == TreeDPSettings(seed=3, seeded_noise=False)
    assert RunSettings.from_run_config(_run_config(default)) == default
    # the network gets (1 - share) of epsilon; the site is built with it
    assert default.site_options()["dp"].target_epsilon == pytest.approx(8.0 * (1 - 0.3))
    with pytest.raises(ConfigError, match="DP tree settings only with trees and DP-SGD"):
        dataclasses.replace(_settings(), trees=None)
    # the coordinator's floor needs only the declared rows
    noises = planned_noises({"a": 20_000, "b": 5_000}, dp=DPSettings(8.0), plan=settings.plan,
                            trees=TREES, settings=SEEDED)
    assert noises["a"].delta == 1 / 20_000 and noises["b"].delta == 1 / 5_000
    assert all(7.9 < n.epsilon <= 8.0 + 1e-9 for n in noises.values())


def test_in_process_a_run_is_charged_its_whole_epsilon_and_a_refusing_site_grows_no_tree(
        tmp_path: Path) -> None:
    @dataclasses.dataclass
    class Rows:
        n_rows: int

    @dataclasses.dataclass
    class Simulated:  # what the ledger reads of a site
        name: str
        train: Rows
        dp: DPSettings

    network = DPSettings(4.0)  # the network's half of epsilon 8
    sites = [Simulated(n, Rows(1000), network) for n in ("a", "b")]
    write_budget(tmp_path / "a", SiteBudget(6.0, 1e-2))  # fits the network's 4, not the run's 8
    wrapped = budgeted(sites, tmp_path, run="r1", task="sepsis", charge=DPSettings(8.0))
    assert admitted(wrapped) == [sites[1]]
    assert not PrivacyLedger("a", tmp_path / "a").entries()
    (entry,) = PrivacyLedger("b", tmp_path / "b").entries()
    assert (entry.run, entry.epsilon, entry.delta) == ("r1", 8.0, 1e-3)
    assert admitted(wrapped) == [sites[1]]  # charged once per run
    assert len(PrivacyLedger("b", tmp_path / "b").entries()) == 1
    with pytest.raises(PrivacyBudgetError, match=BUDGET_REASON):
        wrapped[0].admit()
    assert admitted(sites) == sites  # no ledgers: every site


@pytest.mark.slow
def test_the_retraining_job_releases_dp_trees_charged_their_composed_epsilon(
        sample, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from vigil.data import partition
    from vigil.federation.retraining import load_retrain_config, retrain_once

    torch.set_num_threads(1)
    small = sample.select(list(range(400)))
    small.frame.to_parquet(tmp_path / "small.parquet")
    (tmp_path / "retrain.toml").write_text(
        'registry = "registry"\nname = "sepsis-test"\n'
        '[plan]\nrounds = 1\nbatch_size = 4096\n[model]\nhidden = [8]\n'
        '[dp]\ntarget_epsilon = 8.0\n[trees]\nn_trees = 2\nmax_depth = 2\nn_bins = 16\n'
        '[tree_dp]\nfeatures_per_tree = 8\n'
        '[in_process]\ndata = "small.parquet"\nsites = "random:2"\nledgers = "ledgers"\n')
    release = retrain_once(load_retrain_config(tmp_path / "retrain.toml"))
    privacy = release.training["privacy"]
    names = sorted(partition(small, "random:2"))
    assert privacy["trained"] == names and privacy["refused"] == {}
    for name in names:
        site = privacy["sites"][name]
        assert 7.9 < site["epsilon"] <= 8.0 + 1e-9 and site["charged_epsilon"] == 8.0
        (entry,) = PrivacyLedger(name, tmp_path / "ledgers" / name).entries()
        assert entry.epsilon == 8.0
