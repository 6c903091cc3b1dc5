import pytest

from vigil.federation.boosting import BoostingPlan
from vigil.federation.compare import FEDERATED, compare, comparison_markdown
from vigil.federation.driver import Plan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result(sample):
    return compare(sample, scheme="hospital-unit", plan=Plan(rounds=1, batch_size=2048),
                   n_boot=50, trees=BoostingPlan(n_trees=3, max_depth=3, n_bins=32))


def test_every_method_is_scored_on_every_site(result):
    sites = set(result["sites"])
    assert sites == {"A-MICU", "A-SICU", "B-MICU", "B-SICU"}
    expected = {*FEDERATED, *(f"{m} + site thresholds" for m in FEDERATED), "centralized",
                *(f"local {s}" for s in sites)}
    expected |= {f"{m} + trees" for m in expected - {"fedbn"} if "site thresholds" not in m}
    expected |= {"fedavg + trees + site thresholds", "fedprox + trees + site thresholds"}
    assert set(result["methods"]) == expected
    methods = result["methods"]
    # fedavg and fedprox share the trees of the four sites; each fuses them with its network
    assert methods["fedavg + trees"]["seconds"] == methods["fedprox + trees"]["seconds"]
    for name in ("fedavg", "centralized", "local A-MICU"):
        assert methods[f"{name} + trees"]["test"]["all"] != methods[name]["test"]["all"]
    for m in result["methods"].values():
        assert sites | {"all", "hospital A", "hospital B"} <= set(m["test"])


def test_metric_intervalss_are_the_differences_of_the_tables(result):
    methods = result["methods"]
    assert set(result["paired"]) == {*FEDERATED, "fedavg + trees", "fedprox + trees"}
    for label, suffix in [*((f, "") for f in FEDERATED), ("fedavg", " + trees"),
                          ("fedprox", " + trees")]:
        paired = result["paired"][label + suffix]
        for metric in ("auroc", "utility"):
            whole = paired["centralized"]["all"][metric]
            assert whole["value"] == pytest.approx(
                methods[label + suffix]["test"]["all"][metric]
                - methods["centralized" + suffix]["test"]["all"][metric], abs=1e-9)
            assert whole["low"] <= whole["value"] <= whole["high"]
            at_a = paired["centralized"]["by_hospital"]["A"][metric]["value"]
            assert at_a == pytest.approx(
                methods[label + suffix]["test"]["hospital A"][metric]
                - methods["centralized" + suffix]["test"]["hospital A"][metric], abs=1e-9)
            for site, diff in paired["local"].items():
                assert diff[metric]["value"] == pytest.approx(
                    methods[label + suffix]["test"][site][metric]
                    - methods[f"local {site}{suffix}"]["test"][site][metric], abs=1e-9)


def test_markdown_has_the_paired_tables(result):
    text = comparison_markdown(result)
    assert "federated minus centralized and minus each site's own model" in text
    row = next(line for line in text.splitlines()
               if line.startswith("| fedprox | ") and "[" in line)
    assert row.count("[") == 1 + 2 + 4
    assert any(line.startswith("| fedprox + trees | ") and "[" in line
               for line in text.splitlines())
