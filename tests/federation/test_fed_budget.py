"""A site's lifetime privacy budget: the ledger's arithmetic, refusals in process and on Flower."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_flower_registry import _package, keys  # noqa: F401
from test_flower_transport import FakeGrid, _settings, site_dirs, task  # noqa: F401
from typer.testing import CliRunner

from vigil.core.errors import ConfigError, DataError, PrivacyBudgetError
from vigil.features import FEATURE_SCHEMA
from vigil.federation.budget import (
    BUDGET_REASON,
    LEDGER_FILE,
    LedgerEntry,
    PrivacyLedger,
    SiteBudget,
    budgeted,
    check_planned_rounds,
    compose,
    read_budget,
    run_cost,
    write_budget,
)
from vigil.federation.driver import Plan, run_federation
from vigil.federation.flower.sitedata import load_site
from vigil.federation.flower.transport import FlowerTransport
from vigil.federation.history import HISTORY_FILE, Status
from vigil.federation.privacy import DPSettings
from vigil.federation.registry import Registry
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy


def _ledger(tmp_path: Path, budget: SiteBudget | None) -> PrivacyLedger:
    if budget is not None:
        write_budget(tmp_path, budget)
    return PrivacyLedger("site1", tmp_path)


def test_basic_composition_adds_epsilons_and_deltas() -> None:
    entries = [LedgerEntry(str(i), "sepsis", e, d, 0.0)
               for i, (e, d) in enumerate([(0.5, 1e-6), (1.25, 2e-6), (2.0, 3e-6)])]
    spent = compose([*entries, LedgerEntry("x", "imaging", None, None, 0.0)])
    assert spent.epsilon == pytest.approx(3.75, abs=1e-12)
    assert spent.delta == pytest.approx(6e-6, rel=1e-12)
    assert (spent.runs, spent.non_private_runs) == (3, 1)
    assert compose([]).to_dict() == {"epsilon": 0.0, "delta": 0.0, "runs": 0,
                                     "non_private_runs": 0}


def test_a_runs_cost_is_its_target_epsilon_at_one_over_n() -> None:
    assert run_cost(DPSettings(8.0), 2000) == (8.0, 1 / 2000)
    assert run_cost(DPSettings(3.0, delta=1e-5), 2000) == (3.0, 1e-5)
    assert run_cost(None, 2000) is None


def test_runs_are_charged_once_and_refused_past_the_budget(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, SiteBudget(epsilon=5.0, delta=1e-4))
    ledger.admit("run-1", "sepsis", (2.0, 1e-5))
    ledger.admit("run-1", "sepsis", (2.0, 1e-5))  # round 2 of the same run: no new charge
    ledger.admit("run-2", "sepsis", (2.0, 1e-5))
    assert len((tmp_path / LEDGER_FILE).read_text().splitlines()) == 2
    with pytest.raises(PrivacyBudgetError, match="^privacy budget exhausted: site site1 has "
                       r"spent ε=4, .* would add ε=2, .* budget ε=5") as info:
        ledger.admit("run-3", "sepsis", (2.0, 1e-5))
    assert info.value.site == "site1"
    assert len(ledger.entries()) == 2  # a refusal charges nothing
    ledger.admit("run-4", "sepsis", (1.0, 1e-5))  # exactly at the budget: allowed
    assert ledger.spent().epsilon == pytest.approx(5.0)
    with pytest.raises(PrivacyBudgetError):
        ledger.admit("run-5", "sepsis", (0.01, 1e-9))


def test_delta_is_a_budget_too(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, SiteBudget(epsilon=100.0, delta=1e-4))
    ledger.admit("a", "sepsis", (1.0, 6e-5))
    with pytest.raises(PrivacyBudgetError, match="δ"):
        ledger.admit("b", "sepsis", (1.0, 6e-5))


def test_a_run_without_dp_is_refused_unless_the_site_allows_it(tmp_path: Path) -> None:
    strict = _ledger(tmp_path / "strict", SiteBudget(epsilon=5.0, delta=1e-4))
    with pytest.raises(PrivacyBudgetError, match="without DP"):
        strict.admit("r", "sepsis", None)
    lenient = _ledger(tmp_path / "lenient", SiteBudget(5.0, 1e-4, allow_non_private=True))
    entry = lenient.admit("r", "sepsis", None)
    assert (entry.epsilon, entry.delta) == (None, None)
    assert lenient.spent().to_dict() == {"epsilon": 0.0, "delta": 0.0, "runs": 0,
                                         "non_private_runs": 1}


def test_without_a_budget_every_run_is_recorded_and_none_refused(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, None)
    for i in range(3):
        ledger.admit(str(i), "imaging", (50.0, 0.1))
    ledger.admit("plain", "sepsis", None)
    assert ledger.spent().epsilon == pytest.approx(150.0)
    assert [e.run for e in ledger.entries()] == ["0", "1", "2", "plain"]


def test_a_torn_last_line_was_never_charged_and_a_bad_line_stops_training(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, SiteBudget(10.0, 1e-3))
    ledger.admit("a", "sepsis", (1.0, 1e-5))
    with (tmp_path / LEDGER_FILE).open("ab") as f:
        f.write(b'{"run": "b", "task": "sep')  # killed mid-append: training never started
    assert [e.run for e in ledger.entries()] == ["a"]
    ledger.admit("c", "sepsis", (1.0, 1e-5))  # the next append starts on a new line
    assert [e.run for e in ledger.entries()] == ["a", "c"]
    (tmp_path / LEDGER_FILE).write_text('{"run": "a"}\nnot json\n')
    with pytest.raises(DataError, match="line 1"):
        ledger.admit("d", "sepsis", (1.0, 1e-5))


def test_a_round_past_the_runs_plan_is_refused() -> None:
    class Accountant:
        planned_steps = 6

        def __init__(self, steps: int) -> None:
            self.steps = steps

        def spent(self) -> Accountant:
            return self

    class Site:
        name = "site1"

        def __init__(self, accountant: Accountant | None) -> None:
            self.accountant = accountant

    check_planned_rounds(Site(None))  # the first round: nothing spent yet
    check_planned_rounds(Site(Accountant(5)))
    with pytest.raises(PrivacyBudgetError, match="taken the 6 noisy steps this run was charged"):
        check_planned_rounds(Site(Accountant(6)))


@pytest.mark.parametrize(("epsilon", "delta", "key"), [
    (0.0, 1e-5, "budget_epsilon"), (float("inf"), 1e-5, "budget_epsilon"),
    (1.0, 0.0, "budget_delta"), (1.0, 1.0, "budget_delta"),
])
def test_a_bad_budget_names_its_setting(epsilon: float, delta: float, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SiteBudget(epsilon, delta)
    assert info.value.key == key


def test_an_unreadable_budget_file_is_an_error(tmp_path: Path) -> None:
    assert read_budget(tmp_path) is None
    (tmp_path / "privacy-budget.json").write_text('{"epsilon": 1}')
    with pytest.raises(ConfigError, match="epsilon and delta"):
        read_budget(tmp_path)


def test_in_process_a_refusing_site_is_dropped_with_the_reason(site_dirs, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    import torch

    torch.set_num_threads(1)
    small_sites = [load_site(p, model=ModelSpec(hidden=(8,), dropout=0.0))
                   for p in site_dirs.values()]
    refusing = small_sites[0].name
    write_budget(tmp_path / refusing, SiteBudget(5.0, 1e-4))  # no DP in this run: refused
    plan = Plan(rounds=2, batch_size=4096, keep_best=False, min_sites=2)
    sites = budgeted(small_sites, tmp_path, run="run-1", task="sepsis")
    result = run_federation(sites, make_strategy("fedavg"), plan,
                            model=ModelSpec(hidden=(8,), dropout=0.0))
    for record in result.history.rounds:
        assert record.aggregated
        (dropped,) = record.by_status(Status.DROPPED)
        assert (dropped.site, dropped.reason) == (refusing, BUDGET_REASON)
        assert "without DP" in (dropped.detail or "")
    assert not (tmp_path / refusing / LEDGER_FILE).exists()
    for other in small_sites[1:]:
        (entry,) = PrivacyLedger(other.name, tmp_path / other.name).entries()
        assert (entry.run, entry.epsilon) == ("run-1", None)


def test_on_flower_the_site_answers_a_refusal_the_coordinator_records(  # type: ignore[no-untyped-def]
        site_dirs, task, tmp_path) -> None:  # noqa: F811
    dirs = {name: Path(shutil.copytree(path, tmp_path / name)) for name, path in site_dirs.items()}
    refusing = sorted(dirs)[0]
    write_budget(dirs[refusing], SiteBudget(5.0, 1e-4))
    settings = _settings()
    grid = FakeGrid(dirs, settings)
    transport = FlowerTransport(grid, timeout=settings.timeout)  # type: ignore[arg-type]
    sites = transport.connect(expected=3, min_sites=2, wait=1.0)
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model,
                            transport=transport)
    for record in result.history.rounds:
        (dropped,) = record.by_status(Status.DROPPED)
        assert (dropped.site, dropped.reason) == (refusing, BUDGET_REASON)
        assert record.aggregated
    assert not (dirs[refusing] / LEDGER_FILE).exists()
    for name in sorted(dirs)[1:]:  # Flower's run id is the ledger's
        assert [e.run for e in PrivacyLedger(name, dirs[name]).entries()] == ["1"]


def _dp_package(path: Path, version: str, eps: dict[str, float], refused: dict[str, str],
                key: bytes) -> None:
    package = _package(path, version, w=np.zeros(len(FEATURE_SCHEMA)), auroc=0.8,
                       sites={"a": 10, "b": 20, "c": 30}, key=None)
    manifest = json.loads((package.path / "manifest.json").read_text())
    manifest["training"]["differential_privacy"] = {
        "target_epsilon": 2.0, "sites": {s: {"epsilon": e, "delta": 1e-5} for s, e in eps.items()}}
    history = {"rounds": [{"round": 1, "sites": [
        {"site": s, "status": "dropped", "reason": BUDGET_REASON, "detail": d}
        for s, d in refused.items()]}]}
    shutil.rmtree(path)
    from test_flower_registry import _onnx

    from vigil.core.package import write_package

    write_package(path, onnx_model=_onnx(np.zeros(len(FEATURE_SCHEMA)), -2.0), model_card="# t\n",
                  manifest=manifest, private_key_pem=key,
                  extra_files={HISTORY_FILE: json.dumps(history).encode()})


def test_releases_record_each_sites_spend_and_the_running_sum(tmp_path, keys) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from vigil.cli.main import app

    private, public = keys
    reg = Registry(tmp_path / "registry")
    _dp_package(reg.staging("1.0.0"), "1.0.0", {"a": 1.9, "b": 2.0, "c": 1.5}, {}, private)
    reg.add(reg.path / ".staging" / "1.0.0", public_key=public)
    _dp_package(reg.staging("1.1.0"), "1.1.0", {"b": 1.8, "c": 1.7},
                {"a": "privacy budget exhausted: site a has spent ε=2"}, private)
    second = reg.add(reg.path / ".staging" / "1.1.0", public_key=public)
    privacy = second.training["privacy"]
    assert privacy["trained"] == ["b", "c"] and list(privacy["refused"]) == ["a"]
    assert privacy["sites"]["b"] == {"epsilon": 1.8, "delta": 1e-5, "charged_epsilon": 2.0}
    total = privacy["cumulative"]
    assert (total["a"]["epsilon"], total["a"]["runs"]) == (2.0, 1)  # the refused run adds nothing
    assert (total["b"]["epsilon"], total["b"]["runs"]) == (4.0, 2)
    assert total["c"]["delta"] == pytest.approx(2e-5)
    shown = CliRunner().invoke(app, ["federation", "releases", "--registry", str(reg.path)],
                               env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "privacy per site" in shown.output and "privacy budget exhausted" in shown.output


def test_the_budget_command_sets_and_shows_the_ledger(tmp_path: Path) -> None:
    from vigil.cli.main import app

    runner = CliRunner()
    site = tmp_path / "site1"
    made = runner.invoke(app, ["federation", "budget", "--site-dir", str(site), "--epsilon", "6",
                               "--delta", "1e-4", "--json"])
    assert made.exit_code == 0, made.output
    PrivacyLedger("site1", site).admit("r1", "sepsis", (2.5, 1e-5))
    shown = runner.invoke(app, ["federation", "budget", "--site-dir", str(site), "--json"])
    body = json.loads(shown.stdout)
    assert body["budget"] == {"epsilon": 6.0, "delta": 1e-4, "allow_non_private": False}
    assert body["spent"]["epsilon"] == 2.5 and [r["run"] for r in body["runs"]] == ["r1"]
    bad = runner.invoke(app, ["federation", "budget", "--site-dir", str(site), "--epsilon", "-1",
                              "--delta", "1e-4"])
    assert bad.exit_code == 2 and "lifetime epsilon > 0" in bad.output
    half = runner.invoke(app, ["federation", "budget", "--site-dir", str(site), "--epsilon", "1"])
    assert half.exit_code == 2 and "both a lifetime epsilon and delta" in half.output
