"""Membership-inference audit of vigil's sepsis models, with and without DP (issue 19, point 4).

Members: a random sample of the training patients (vigil's patient split ``train``: every
shipped and federated model here was trained on them). Non-members: the ``test``
patients (never trained on). For each attacked model, two attacks
(:mod:`vigil.federation.audit`): the loss threshold (Yeom et al. 2018) and offline LiRA
(Carlini et al. 2022) with ``--shadows`` shadow networks, each trained centrally on a
half of the test patients (the attacker's population data; validation patients choose
the epoch). Each test patient is IN exactly half of the shadows (balanced, as Carlini et
al. draw them), so every non-member has ``--shadows / 2`` OUT values and every member
``--shadows``. The attacker knows the recipe: the statistic is the confidence in the
training target (vigil's utility target,
:func:`~vigil.federation.centralized.training_targets`), averaged over a patient's hours.

Attacked models (``--targets``):

- ``shipped``: ``models/sepsis-federated`` (FedProx network + 100 trees, non-private);
- ``network``: FedAvg network, the README's DP recipe without DP (batch 4096, dropout 0);
- ``dp8`` / ``dp1``: the same with DP-SGD at ε = 8 / 1 per site (clip 10, δ = 1/n);
- ``shipped_dp8``: the shipped recipe under DP at ε = 8 per site, network and trees composed
  (``vigil federate --strategy fedprox --mu 0.01 --dp-epsilon 8 --boost-trees 50``: the
  recipe chosen on validation, :data:`vigil.federation.recipes.PRIVATE`, the trees taking
  0.3 of ε; README, "FedProx + trees, DP ε = 8, recipe chosen on validation").

``coordinator`` is not a membership attack but the reconstruction check of what the
coordinator sees under secure aggregation (:mod:`vigil.federation.view_audit`): the four
``hospital-unit`` sites' real round-1 network updates (``s_i * (w_i - w)``, the shipped
recipe's local training) and the root histograms of their first tree (public bin edges,
over the weighted rows ``W``, on 64 bits as the trees sum them) go through the secure
sum in process; each site's view as the coordinator can compute it is decoded and
compared with the site's vector, beside the plain protocol (positive control).

DP-SGD here bounds each *row's* (patient-hour's) influence; a patient contributes many
rows, so its guarantee is the group-privacy bound (ε grows with the rows per patient,
Dwork & Roth 2014, Thm 2.2), which is why the audit attacks patients, not rows.

Usage::

    .venv/bin/python bench/privacy.py --json --out privacy.json
    .venv/bin/python bench/privacy.py --targets shipped --shadows 4 --members 1000   # quick
    .venv/bin/python bench/privacy.py --targets coordinator --json   # no shadows needed
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "physionet2019" / "sepsis_hourly.parquet"
TARGETS = ("shipped", "network", "dp8", "dp1", "shipped_dp8", "coordinator")
ATTACKED = ("shipped", "network", "dp8", "dp1", "shipped_dp8")


def _patient_phi(probability: np.ndarray, table: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per patient: mean confidence logit and minus mean loss, on the utility target."""
    from vigil.federation.audit import confidence_logit, group_mean, loss_scores
    from vigil.federation.centralized import training_targets

    y, _ = training_targets(table.labels, table.grid.starts, target="utility")
    starts = table.grid.starts
    return (group_mean(confidence_logit(probability, y), starts),
            loss_scores(probability, y, starts))


def _federated(table: Any, name: str, log: Any) -> Any:
    """Train an attacked model (the README's DP recipe, 10 rounds; see ``TARGETS``); its package."""
    from vigil.core.package import read_package
    from vigil.federation.boosting import BoostingPlan
    from vigil.federation.driver import Plan
    from vigil.federation.privacy import DPSettings
    from vigil.federation.recipes import DP_CLIP, PRIVATE
    from vigil.federation.simulation import export_run, federate
    from vigil.federation.site import ModelSpec
    from vigil.federation.strategies import make_strategy
    from vigil.federation.tree_privacy import TreeDPSettings

    dp = {"network": None, "dp8": DPSettings(8.0, max_grad_norm=DP_CLIP),
          "dp1": DPSettings(1.0, max_grad_norm=DP_CLIP),
          "shipped_dp8": DPSettings(8.0, max_grad_norm=DP_CLIP)}[name]
    plan = Plan(rounds=10, local_epochs=1, batch_size=PRIVATE.batch_size, lr=PRIVATE.lr, seed=0)
    hybrid: dict[str, Any] = {}
    strategy = make_strategy("fedavg")
    if name == "shipped_dp8":  # the shipped recipe under DP: FedProx, then 50 DP trees
        strategy = make_strategy("fedprox", mu=0.01)
        hybrid = {"trees": BoostingPlan(n_trees=50, max_depth=PRIVATE.tree_depth,
                                        learning_rate=PRIVATE.tree_lr, n_bins=PRIVATE.tree_bins),
                  "tree_dp": TreeDPSettings()}
    t = time.perf_counter()
    run = federate(table, scheme="hospital-unit", strategy=strategy, plan=plan,
                   model=ModelSpec(dropout=PRIVATE.dropout), dp=dp, data="audit", **hybrid)
    out = Path(tempfile.mkdtemp(prefix=f"audit-{name}-"))
    (package,) = export_run(run, out, name=f"audit-{name}", version="0.0.0")
    log(f"{name}: trained in {time.perf_counter() - t:.0f} s")
    return read_package(package.path)


def _site_vectors(table: Any) -> dict[str, np.ndarray]:
    """The four sites' round-1 network updates and first-tree root histograms, as summed."""
    from vigil.federation.driver import Plan
    from vigil.federation.messages import FitConfig
    from vigil.federation.public_edges import public_edges
    from vigil.federation.recipes import NON_PRIVATE, SEPSIS_ROUNDS
    from vigil.federation.simulation import build_sites
    from vigil.federation.site import ModelSpec
    from vigil.federation.strategies import example_shares
    from vigil.federation.tasks import SepsisTask

    spec = ModelSpec(dropout=NON_PRIVATE.dropout)
    plan = Plan(rounds=SEPSIS_ROUNDS, batch_size=NON_PRIVATE.batch_size, lr=NON_PRIVATE.lr)
    sites = sorted(build_sites(table, "hospital-unit", seed=plan.seed, model=spec),
                   key=lambda s: s.name)
    statistics = [s.statistics() for s in sites]
    task = SepsisTask(spec)
    weights = task.initial_weights(statistics, seed=plan.seed, keep_local=False)
    keys = [k for k in weights if not task.is_fixed(k)]
    shares = example_shares([st.count for st in statistics])
    config = FitConfig(round=1, total_rounds=plan.rounds, seed=plan.seed,
                       local_epochs=plan.local_epochs, batch_size=plan.batch_size, lr=plan.lr,
                       weight_decay=plan.weight_decay)
    network = []
    for site, share in zip(sites, shares, strict=True):
        update = site.fit(weights, config)
        network.append(share * np.concatenate([
            (np.asarray(update.weights[k], np.float64) - np.asarray(weights[k], np.float64))
            .ravel() for k in keys]))
    edges = public_edges(NON_PRIVATE.tree_bins)
    boosting = [s.boosting(edges) for s in sites]
    positives, rows = np.sum([b.label_sums() for b in boosting], axis=0)
    histograms = []
    for b in boosting:
        b.start(float(np.log(positives / (rows - positives))))  # the shared initial score
        b.begin_tree()
        histograms.append(b.histograms(np.array([0]), NON_PRIVATE.tree_bins).ravel() / rows)
    return {"network update": np.vstack(network), "root histograms": np.vstack(histograms)}


def _coordinator_view(table: Any, log: Any) -> dict[str, Any]:
    """Run the reconstruction check on the sites' real vectors; a result per vector kind."""
    from vigil.federation.secure_sum import SecureSumSettings
    from vigil.federation.view_audit import reconstruction_check, secure_view

    t = time.perf_counter()
    out: dict[str, Any] = {}
    for what, true in _site_vectors(table).items():
        wide = what == "root histograms"
        total, view = secure_view(true, SecureSumSettings(), wide=wide)
        secure = reconstruction_check(true, view, total)
        plain = reconstruction_check(true, true, total)
        out[what] = {
            "sites": true.shape[0], "elements": true.shape[1], "bits": 64 if wide else 32,
            "sum_max_abs_error": float(np.abs(total - true.sum(axis=0)).max()),
            "secure": [asdict(r) | {"blind": r.blind} for r in secure],
            "plain": [asdict(r) | {"blind": r.blind} for r in plain],
            "every_site_blind": all(r.blind for r in secure),
        }
        worst = max(max(abs(r.correlation), abs(r.correlation_beyond_sum)) for r in secure)
        log(f"coordinator, {what} ({true.shape[1]} elements): secure view max |r| {worst:.4f} "
            f"(bound {secure[0].bound:.4f}), plain view r "
            f"{min(r.correlation for r in plain):.3f}; the sum's own r with a site "
            f"{min(r.sum_correlation for r in secure):.3f} to "
            f"{max(r.sum_correlation for r in secure):.3f}")
    out["seconds"] = round(time.perf_counter() - t, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_file() else "sample")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--shadows", type=int, default=8)
    parser.add_argument("--members", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    from vigil.core.package import read_package
    from vigil.data import load_physionet, patient_split
    from vigil.features import FEATURE_SCHEMA
    from vigil.features.builder import build_features
    from vigil.federation.audit import attack_result, lira_offline
    from vigil.federation.centralized import TorchSetup, fit_torch
    from vigil.runtime.offline import score_table

    torch.set_num_threads(1)

    def log(line: str) -> None:
        if not args.json:
            print(line, flush=True)

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    table = load_physionet(args.data)
    ids = table.grid.patient_ids
    train = np.flatnonzero(patient_split(ids, "train"))
    test = np.flatnonzero(patient_split(ids, "test"))
    valid = table.select(np.flatnonzero(patient_split(ids, "valid")))
    members = np.sort(rng.choice(train, size=min(args.members, train.size), replace=False))
    attacked = np.concatenate([members, test])
    is_member = np.r_[np.ones(members.size, bool), np.zeros(test.size, bool)]
    eval_table = table.select(attacked)
    features = build_features(eval_table.grid)
    log(f"{members.size} members, {test.size} non-members; data {time.perf_counter() - t0:.0f} s")

    if args.shadows < 4 or args.shadows % 2:
        parser.error(f"expected an even number of shadows >= 4, got {args.shadows}")
    attacks = [name for name in args.targets if name in ATTACKED]
    n_shadows = args.shadows if attacks else 0
    inside = np.argsort(rng.random((args.shadows, test.size)), axis=0) < args.shadows // 2
    out_phi = np.full((args.shadows, attacked.size), np.nan)
    for k in range(n_shadows):
        t = time.perf_counter()
        half = test[inside[k]]
        fitted = fit_torch(table.select(half), valid, setup=TorchSetup(seed=args.seed + k))
        phi, _ = _patient_phi(fitted.predict(features), eval_table)
        phi[np.isin(attacked, half)] = np.nan  # IN for this shadow: not an OUT value
        out_phi[k] = phi
        log(f"shadow {k + 1}/{args.shadows}: {time.perf_counter() - t:.0f} s")

    results: dict[str, Any] = {}
    if "coordinator" in args.targets:
        results["coordinator"] = _coordinator_view(table, log)
    for name in attacks:
        if name == "shipped":
            package = read_package(ROOT / "models" / "sepsis-federated",
                                   expected_schema_sha256=FEATURE_SCHEMA.sha256)
        else:
            package = _federated(table, name, log)
        phi, loss = _patient_phi(score_table(package, eval_table), eval_table)
        lira = lira_offline(phi, out_phi)
        results[name] = {
            "model": f"{package.manifest.name}@{package.manifest.version}",
            "loss_threshold": asdict(attack_result(loss[is_member], loss[~is_member])),
            "lira_offline": asdict(attack_result(lira[is_member], lira[~is_member])),
        }
        r = results[name]
        log(f"{name}: loss AUC {r['loss_threshold']['auc']:.3f}, TPR@1%FPR "
            f"{r['loss_threshold']['tpr_at_1pct_fpr']:.3f}; LiRA AUC {r['lira_offline']['auc']:.3f}"
            f", TPR@1%FPR {r['lira_offline']['tpr_at_1pct_fpr']:.3f}")
    summary = {"data": str(args.data), "members": int(members.size),
               "nonmembers": int(test.size), "shadows": args.shadows, "seed": args.seed,
               "targets": results, "seconds": round(time.perf_counter() - t0, 1)}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
