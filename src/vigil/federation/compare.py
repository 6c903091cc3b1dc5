"""Federated vs centralized vs each site alone, on every site's held-out test patients.

``vigil federate compare`` (docs/federation.md) runs, on one table and one
site partition, with the same network, training loop and budget:

- FedAvg, FedProx and FedBN across the sites (``rounds`` rounds of
  ``local_epochs`` each); under FedBN each site scores with its own
  normalization;
- **centralized**: the same loop on the pooled training patients of all sites,
  as one site (``rounds`` epochs), the upper reference;
- **local-only**: each site alone, the same loop on its own patients;
- optionally FedAvg with DP-SGD at each requested epsilon;
- optionally (``trees``) each model but FedBN and DP with boosted trees grown
  across the same sites and fused with it ("+ trees",
  :mod:`vigil.federation.hybrid`): the federated models share the trees of
  the four sites, the centralized model gets trees grown on the pooled
  patients, each local-only model trees grown on its site alone.

Every model keeps its best round (epoch) by validation utility and its
threshold from validation patients: the pooled validation patients of the
sites it was trained with. All are then scored on the **test** patients of
every site (never used by any training or threshold), per site, per hospital
and overall: AUROC and normalized utility. A federated model is also scored
with **site thresholds** ("+ site thresholds"): at each site, the threshold
that maximizes the utility of that site's own validation patients, from the
utility histogram it reported (what a site's recalibration does; the
local-only models, too, use their own site's threshold).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from vigil.data import PhysioNetTable, partition, patient_split
from vigil.features import build_features
from vigil.features.bootstrap import (
    INTERVAL_METRICS,
    Scored,
    metric_intervals,
    metric_intervals_by_hospital,
)
from vigil.features.metrics import evaluate_by_hospital
from vigil.federation.boosting import Boosted, BoostingPlan
from vigil.federation.driver import Plan, run_federation
from vigil.federation.evaluation import pool_evaluations
from vigil.federation.hybrid import HybridTrees, fuse_trees, grow_trees, hybrid_proba
from vigil.federation.messages import SiteEvaluation
from vigil.federation.privacy import DPSettings
from vigil.federation.site import ModelSpec, Site
from vigil.federation.strategies import Strategy, Weights, make_strategy

__all__ = ["compare", "comparison_markdown"]

Progress = Callable[[str], None]
FEDERATED = ("fedavg", "fedprox", "fedbn")


def _predict(spec: ModelSpec, weights: Weights, x: np.ndarray,
             part: HybridTrees | None = None) -> np.ndarray:
    from vigil.federation.model import SepsisNet, predict_proba, set_weights

    net = SepsisNet(x.shape[1], hidden=spec.hidden, dropout=spec.dropout)
    set_weights(net, weights)
    return predict_proba(net, x) if part is None else hybrid_proba(net, part, x)


def _metrics(table: PhysioNetTable, probability: np.ndarray, alerts: np.ndarray) -> dict[str, Any]:
    full = evaluate_by_hospital(table.labels, probability, alerts, table.grid.starts,
                                table.hospital, threshold=float("nan"))
    pick = ("auroc", "auprc", "utility", "n_patients")
    out = {"all": {k: full[k] for k in pick}}
    out |= {f"hospital {h}": {k: m[k] for k in pick} for h, m in full["by_hospital"].items()}
    return out


def compare(
    table: PhysioNetTable,
    *,
    scheme: str,
    plan: Plan,
    model: ModelSpec | None = None,
    mu: float | None = None,
    dp_epsilons: tuple[float, ...] = (),
    progress: Progress | None = None,
    threads: int = 1,
    n_boot: int = 1000,
    trees: BoostingPlan | None = None,
) -> dict[str, Any]:
    """Train every method and score it on every site's test patients.

    Parameters
    ----------
    table : PhysioNetTable
        All patients.
    scheme : str
        Site partition (``--sites``).
    plan : Plan
        Rounds (epochs for the centralized and local-only models) and local settings.
    model : ModelSpec, optional
    mu : float or None, optional
        FedProx strength.
    dp_epsilons : tuple of float, optional
        Also run FedAvg with DP-SGD at each epsilon (delta = 1/n per site).
    progress : callable, optional
        Receives one line per finished model.
    threads : int, optional
        torch intra-op threads.
    n_boot : int, optional
        Patient resamples of the paired intervals.
    trees : BoostingPlan or None, optional
        Also score each model but FedBN and DP-SGD fused with boosted trees.

    Returns
    -------
    dict
        ``sites`` (train rows, test patients), ``methods``: name -> ``threshold``,
        ``valid_utility``, ``seconds``, ``test`` (per site, per hospital, all:
        AUROC, AUPRC, utility, patients) and, under DP, ``epsilon`` per site;
        ``paired``: for FedAvg, FedProx and FedBN, the AUROC and utility
        differences from the centralized model (all test patients and per
        hospital) and from each site's local-only model (that site's test
        patients), with paired patient-bootstrap intervals; with trees also
        FedAvg and FedProx + trees minus centralized + trees and minus each
        local-only + trees.
    """
    import torch

    torch.set_num_threads(threads)
    say = progress or (lambda line: None)
    spec = model or ModelSpec()
    parts = partition(table, scheme, seed=plan.seed)
    site_tables = {name: table.select(idx) for name, idx in parts.items()}
    sites = [Site.from_table(name, t, model=spec) for name, t in site_tables.items()]
    tests = {}
    for name, t in site_tables.items():
        tests[name] = t.select(np.flatnonzero(patient_split(t.grid.patient_ids, "test")))
    x_test = {name: build_features(t.grid) for name, t in tests.items()}
    order = sorted(tests)
    test_all = table.select(np.concatenate([
        parts[n][np.flatnonzero(patient_split(site_tables[n].grid.patient_ids, "test"))]
        for n in order
    ]))
    say(f"{len(sites)} sites built; {test_all.grid.n_patients:,} test patients")

    scored: dict[str, dict[str, Scored]] = {}
    scored_all: dict[str, Scored] = {}

    def score(label: str, weights_for: Callable[[str], Weights],
              threshold_for: Callable[[str], float],
              part: HybridTrees | None = None) -> dict[str, Any]:
        probs = {n: _predict(spec, weights_for(n), x_test[n], part) for n in order}
        alerts = {n: (probs[n] >= threshold_for(n)).astype(np.int8) for n in order}
        joined = (np.concatenate([probs[n] for n in order]),
                  np.concatenate([alerts[n] for n in order]))
        scored[label] = {n: (probs[n], alerts[n]) for n in order}
        scored_all[label] = joined
        out = _metrics(test_all, *joined)
        for n in order:
            out[n] = _metrics(tests[n], probs[n], alerts[n])["all"]
        return out

    methods: dict[str, Any] = {}
    grown: dict[tuple[str, ...], tuple[Boosted, float]] = {}

    def with_site_thresholds(label: str, evaluations: list[SiteEvaluation], pooled: float,
                             weights_for: Callable[[str], Weights],
                             part: HybridTrees | None = None) -> None:
        """Score ``label`` again, each site at the threshold of its own validation patients."""
        own = {e.site: pool_evaluations([e]).threshold for e in evaluations}
        methods[f"{label} + site thresholds"] = {
            **methods[label], "threshold": own,
            "test": score(f"{label} + site thresholds", weights_for,
                          lambda n: own.get(n, pooled), part),
        }

    def with_trees(label: str, members: list[Site], weights: Weights, min_sites: int) -> None:
        assert trees is not None
        key = tuple(sorted(s.name for s in members))
        if key not in grown:
            grown[key] = grow_trees(members, trees, min_sites=min_sites,
                                    counts={s.name: s.train.n_rows for s in members})
        boosted, seconds = grown[key]
        hybrid = fuse_trees(members, weights, boosted, trees, min_sites=min_sites,
                            seconds=seconds)
        name = f"{label} + trees"
        methods[name] = {
            "threshold": hybrid.pooled.threshold, "valid_utility": hybrid.pooled.utility,
            "valid_auroc": hybrid.pooled.auroc, "seconds": seconds,
            "test": score(name, lambda n: weights, lambda n: hybrid.pooled.threshold,
                          hybrid.part),
        }
        if len(members) > 1:
            with_site_thresholds(name, hybrid.evaluations, hybrid.pooled.threshold,
                                 lambda n: weights, hybrid.part)
        t = methods[name]["test"]["all"]
        say(f"{name}: test AUROC {t['auroc']:.4f}, utility {t['utility']:.4f} "
            f"({seconds:.0f} s of boosting)")

    def federated(label: str, strategy: Strategy, members: list[Site], local_norm: bool = False,
                  run_plan: Plan = plan) -> None:
        t0 = time.perf_counter()
        result = run_federation(members, strategy, run_plan, model=spec)
        by_name = {s.name: s for s in sites}
        weights_for = (lambda n: by_name[n].local_weights(result.weights)) if local_norm else (
            lambda n: result.weights)
        methods[label] = {
            "threshold": result.pooled.threshold, "valid_utility": result.pooled.utility,
            "valid_auroc": result.pooled.auroc, "best_round": result.best_round,
            "seconds": time.perf_counter() - t0,
            "test": score(label, weights_for, lambda n: result.pooled.threshold),
        }
        if len(members) > 1:
            with_site_thresholds(label, result.evaluations, result.pooled.threshold, weights_for)
        if result.privacy:
            methods[label]["epsilon"] = {k: v.epsilon for k, v in result.privacy.items()}
            methods[label]["delta"] = {k: v.delta for k, v in result.privacy.items()}
        t = methods[label]["test"]["all"]
        say(f"{label}: test AUROC {t['auroc']:.4f}, utility {t['utility']:.4f} "
            f"({methods[label]['seconds']:.0f} s)")
        if trees is not None and not local_norm and not result.privacy:
            with_trees(label, members, result.weights, run_plan.min_sites)

    federated("fedavg", make_strategy("fedavg"), sites)
    federated("fedprox", make_strategy("fedprox", mu=mu), sites)
    federated("fedbn", make_strategy("fedbn"), sites, local_norm=True)
    single = replace(plan, min_sites=1)
    pooled_train = table.select(np.concatenate([parts[n] for n in order]))
    federated("centralized", make_strategy("fedavg"),
              [Site.from_table("pooled", pooled_train, model=spec)], run_plan=single)
    for s in sites:
        federated(f"local {s.name}", make_strategy("fedavg"), [s], run_plan=single)
    for eps in dp_epsilons:
        private = [replace(s, dp=DPSettings(eps)) for s in sites]
        federated(f"fedavg dp eps={eps:g}", make_strategy("fedavg"), private)
    say(f"paired bootstrap of the federated models ({n_boot} patient resamples)")
    paired = {label: _paired(scored, scored_all, label, tests, test_all, n_boot=n_boot)
              for label in FEDERATED if label in scored}
    paired |= {f"{label} + trees": _paired(scored, scored_all, label, tests, test_all,
                                           n_boot=n_boot, suffix=" + trees")
               for label in FEDERATED if f"{label} + trees" in scored}
    return {
        "scheme": scheme, "plan": {k: v for k, v in asdict(plan).items() if k != "rule"},
        "trees": None if trees is None else asdict(trees),
        "model": {"hidden": list(spec.hidden), "dropout": spec.dropout},
        "sites": {s.name: {"train_rows": s.train.n_rows,
                           "test_patients": tests[s.name].grid.n_patients} for s in sites},
        "methods": methods,
        "paired": paired,
    }


def _paired(scored: dict[str, dict[str, Scored]], scored_all: dict[str, Scored], label: str,
            tests: dict[str, PhysioNetTable], test_all: PhysioNetTable, *,
            n_boot: int, suffix: str = "") -> dict[str, Any]:
    """Subtract the centralized and the local-only models' test metrics, with intervals.

    The centralized model on all test patients and per hospital; each site's
    local-only model on that site's test patients. ``suffix`` (" + trees")
    picks that variant of the model and of both references.
    """
    mine = label + suffix
    out: dict[str, Any] = {"centralized": metric_intervals_by_hospital(
        test_all.labels, test_all.grid.starts, test_all.hospital, scored_all[mine],
        scored_all["centralized" + suffix], n_boot=n_boot)}
    out["local"] = {}
    for n in scored[mine]:
        diff = metric_intervals(tests[n].labels, tests[n].grid.starts, scored[mine][n],
                                 scored[f"local {n}{suffix}"][n], n_boot=n_boot)
        out["local"][n] = {k: v.to_dict() for k, v in diff.items()}
    return out


def comparison_markdown(result: dict[str, Any]) -> str:
    """Render :func:`compare`'s result as Markdown tables (AUROC, then utility)."""
    methods = result["methods"]
    groups = [*result["sites"], *sorted(k for k in next(iter(methods.values()))["test"]
                                         if k.startswith("hospital")), "all"]
    lines: list[str] = []
    for metric in ("auroc", "utility"):
        lines += [f"Test {'AUROC' if metric == 'auroc' else 'normalized utility'} "
                  "(rows: model; columns: test patients of)", "",
                  "| model | " + " | ".join(groups) + " |",
                  "|---" * (len(groups) + 1) + "|"]
        for name, m in methods.items():
            cells = [f"{m['test'][g][metric]:.3f}" for g in groups]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    for metric in INTERVAL_METRICS:
        lines += _paired_markdown(result, metric)
    private = {k: m for k, m in methods.items() if "epsilon" in m}
    if private:
        lines += ["| model | epsilon per site (delta = 1/n) |", "|---|---|"]
        for name, m in private.items():
            eps = ", ".join(f"{s} {e:.2f}" for s, e in sorted(m["epsilon"].items()))
            lines.append(f"| {name} | {eps} |")
        lines.append("")
    return "\n".join(lines)


def _paired_markdown(result: dict[str, Any], metric: str) -> list[str]:
    paired = result.get("paired") or {}
    if not paired:
        return []
    first = next(iter(paired.values()))
    hospitals = sorted(first["centralized"]["by_hospital"])
    sites = list(first["local"])
    name = "AUROC" if metric == "auroc" else "normalized utility"
    lines = [f"Test {name}, federated minus centralized and minus each site's own model, "
             f"[{first['centralized']['level']:.0%} paired patient-bootstrap interval]", "",
             "| model | " + " | ".join(["vs centralized, all",
                                        *(f"vs centralized, hospital {h}" for h in hospitals),
                                        *(f"vs local at {n}" for n in sites)]) + " |",
             "|---" * (2 + len(hospitals) + len(sites)) + "|"]

    def cell(d: dict[str, dict[str, float]]) -> str:
        e = d[metric]
        return f"{e['value']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"

    for label, p in paired.items():
        cells = [cell(p["centralized"]["all"]),
                 *(cell(p["centralized"]["by_hospital"][h]) for h in hospitals),
                 *(cell(p["local"][n]) for n in sites)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]
