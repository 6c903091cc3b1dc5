import pytest

from vigil.federation.compare import FEDERATED, compare, comparison_markdown
from vigil.federation.driver import Plan

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result(sample):
    return compare(sample, scheme="hospital-unit", plan=Plan(rounds=1, batch_size=2048),
                   n_boot=50)


def test_every_method_is_scored_on_every_site(result):
    sites = set(result["sites"])
    assert sites == {"A-MICU", "A-SICU", "B-MICU", "B-SICU"}
    expected = {*FEDERATED, *(f"{m} + site thresholds" for m in FEDERATED), "centralized",
                *(f"local {s}" for s in sites)}
    assert set(result["methods"]) == expected
    for m in result["methods"].values():
        assert sites | {"all", "hospital A", "hospital B"} <= set(m["test"])


def test_metric_intervalss_are_the_differences_of_the_tables(result):
    methods = result["methods"]
    for label in FEDERATED:
        paired = result["paired"][label]
        for metric in ("auroc", "utility"):
            whole = paired["centralized"]["all"][metric]
            assert whole["value"] == pytest.approx(
                methods[label]["test"]["all"][metric]
                - methods["centralized"]["test"]["all"][metric], abs=1e-9)
            assert whole["low"] <= whole["value"] <= whole["high"]
            at_a = paired["centralized"]["by_hospital"]["A"][metric]["value"]
            assert at_a == pytest.approx(
                methods[label]["test"]["hospital A"][metric]
                - methods["centralized"]["test"]["hospital A"][metric], abs=1e-9)
            for site, diff in paired["local"].items():
                assert diff[metric]["value"] == pytest.approx(
                    methods[label]["test"][site][metric]
                    - methods[f"local {site}"]["test"][site][metric], abs=1e-9)


def test_markdown_has_the_paired_tables(result):
    text = comparison_markdown(result)
    assert "federated minus centralized and minus each site's own model" in text
    row = next(line for line in text.splitlines()
               if line.startswith("| fedprox | ") and "[" in line)
    assert row.count("[") == 1 + 2 + 4
