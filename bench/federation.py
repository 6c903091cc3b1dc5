"""Federation on Flower vs in-process: time per round, bytes per site, update vs raw data.

Both paths run the same federated training of the sepsis model (``ModelSpec()``
defaults, FedAvg) on the same sites, each the partition ``--sites`` of
``--data`` written to its own parquet file and prepared once
(``vigil federation site --prepare-only``):

- ``in-process``: :func:`vigil.federation.driver.run_federation` with the
  default :class:`~vigil.federation.driver.InProcess` transport;
- ``flower``: a SuperLink (TLS, node authentication, ``--database``) and one
  SuperNode per site as separate processes on loopback, the run submitted with
  ``flwr run`` (:func:`vigil.federation.flower.runner.run_on_flower`).

Printed per path: seconds per round (Flower: from request to the last answer,
training and evaluation included; the connection and statistics phase is
reported apart) and, per site, the bytes sent each way. In-process the bytes
are the message payloads (:meth:`payload` arrays and scalars) that a transport
would carry; on Flower they are the serialized Flower objects counted by the
ServerApp (:class:`~vigil.federation.flower.transport.SiteTraffic`), before HTTP
and TLS framing. Then the size of one update against the raw data it stands in
for: the site's parquet file, its hourly grid (rows x 39 float32) and its
feature rows (rows x n_features float32). The two runs must give the same weights
(``max_abs_diff``).

With ``--trees N`` both paths then grow N boosted trees (``--depth``, 64 bins)
across the same sites and fuse them with the network (in process:
:func:`~vigil.federation.hybrid.grow_hybrid` over
:class:`~vigil.federation.hybrid.InProcessTrees`; on Flower: the ServerApp over
:class:`~vigil.federation.flower.treewire.FlowerTrees`); printed: seconds per
tree, the trees' bytes per site apart from the network's (in process the raw
array bytes of each request and answer), and whether the fused models are the
same (trees bit for bit, ``max |delta p|`` on the sites' validation rows).

With ``--secure``, a second Flower run on the same SuperLink trains with secure
aggregation (:mod:`vigil.federation.flower.secure`, default
:class:`~vigil.federation.secure_sum.SecureSumSettings`; ``--bits 64`` for the
64-bit sums): its seconds, bytes per site (network and trees) and its distance to
the in-process model (``max |delta w|``, trees' structure, ``max |delta p|``) are
printed beside the plain run's.

Usage: ``.venv/bin/python bench/federation.py [--data sample] [--sites random:3] [--rounds 2]
[--trees 0] [--depth 6] [--secure] [--bits 32] [--json]``
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vigil.data import load_physionet, partition
from vigil.features import FEATURE_SCHEMA, GRID_COLUMNS
from vigil.federation.boosting import BoostingPlan, trees_to_arrays
from vigil.federation.driver import Plan, run_federation
from vigil.federation.flower.certs import make_test_pki
from vigil.federation.flower.launch import (
    Coordinator,
    SiteNode,
    register_site,
    start_superlink,
    start_supernode,
)
from vigil.federation.flower.runner import run_on_flower
from vigil.federation.flower.settings import RunSettings
from vigil.federation.flower.sitedata import load_site, prepare_site
from vigil.federation.hybrid import InProcessTrees, grow_hybrid, hybrid_proba
from vigil.federation.secure_sum import SecureSumSettings
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _payload_bytes(payload: dict[str, Any]) -> int:
    return sum(v.nbytes if isinstance(v, np.ndarray) else 8 for v in payload.values()
               if v is not None)


class Counting:
    """The in-process transport, counting each message's payload bytes per site."""

    def __init__(self) -> None:
        from vigil.federation.driver import InProcess

        self.inner = InProcess()
        self.traffic: dict[str, dict[str, int]] = {}

    def _add(self, site: str, sent: int, received: int) -> None:
        t = self.traffic.setdefault(site, {"sent": 0, "received": 0, "messages": 0})
        t["sent"] += sent
        t["received"] += received
        t["messages"] += 1

    def statistics(self, sites):  # type: ignore[no-untyped-def]
        out = self.inner.statistics(sites)
        for name, s in out.items():
            self._add(name, 0, 0 if isinstance(s, Exception) else _payload_bytes(s.payload()))
        return out

    def fit(self, sites, weights, config):  # type: ignore[no-untyped-def]
        out = self.inner.fit(sites, weights, config)
        down = sum(v.nbytes for v in weights.values()) + 8 * len(config.to_dict())
        for name, (u, _) in out.items():
            self._add(name, down, 0 if isinstance(u, Exception) else _payload_bytes(u.payload()))
        return out

    def evaluate(self, sites, weights):  # type: ignore[no-untyped-def]
        out = self.inner.evaluate(sites, weights)
        down = sum(v.nbytes for v in weights.values())
        for name, e in out.items():
            self._add(name, down, 0 if isinstance(e, Exception) else _payload_bytes(e.payload()))
        return out


def _nbytes(*parts: Any) -> int:
    total = 0
    for part in parts:
        if isinstance(part, np.ndarray):
            total += part.nbytes
        elif isinstance(part, dict):
            total += _nbytes(*part.values())
        elif isinstance(part, list | tuple):
            total += _nbytes(*part)
        elif part is not None:
            total += 8
    return total


class CountingTrees(InProcessTrees):
    """The in-process trees transport, counting raw array bytes of each request and answer."""

    def __init__(self, sites: Any) -> None:
        super().__init__(sites)
        self.traffic: dict[str, dict[str, int]] = {}

    def _count(self, out: dict[str, Any], down: int, up: Any) -> dict[str, Any]:
        for name, answer in out.items():
            t = self.traffic.setdefault(name, {"sent": 0, "received": 0, "messages": 0})
            t["sent"] += down
            t["received"] += 0 if isinstance(answer, Exception) else _nbytes(up(answer))
            t["messages"] += 1
        return out

    def quantiles(self, names, n_bins):  # type: ignore[no-untyped-def]
        return self._count(super().quantiles(names, n_bins), 8, lambda a: a)

    def begin(self, names, edges):  # type: ignore[no-untyped-def]
        return self._count(super().begin(names, edges), _nbytes(list(edges)), lambda a: a)

    def level(self, names, request):  # type: ignore[no-untyped-def]
        trees = [t for t in (request.grown, request.finished) if t is not None]
        down = _nbytes(request.nodes, request.split, trees_to_arrays(trees), 8, 8, 8, 8)
        return self._count(super().level(names, request), down, lambda a: a)

    def score_sums(self, names, weights, base, trees):  # type: ignore[no-untyped-def]
        down = _nbytes(dict(weights), trees_to_arrays(trees), 8)
        return self._count(super().score_sums(names, weights, base, trees), down,
                           lambda a: a.payload())

    def evaluate(self, names, weights, part):  # type: ignore[no-untyped-def]
        down = _nbytes(dict(weights), trees_to_arrays(part.trees), [8] * 12)
        return self._count(super().evaluate(names, weights, part), down, lambda a: a.payload())


def _secure_report(out: Any, local: Any, local_hybrid: Any, sites: Any, bits: int) -> dict[
    str, Any
]:
    """The secure run against the in-process one: time, bytes per site, model distance."""
    from vigil.federation.model import SepsisNet, set_weights

    weights = out.result.weights
    report: dict[str, Any] = {
        "modulus_bits": bits,
        "max_abs_diff_weights": max(float(np.max(np.abs(weights[k] - local.weights[k])))
                                    for k in weights),
        "connect_seconds": out.info["connect_seconds"], "round_seconds": out.info["round_seconds"],
        "network_traffic": out.info.get("network_traffic", out.info["traffic"]),
    }
    if out.hybrid is not None and local_hybrid is not None:
        network = report["network_traffic"]
        same = [np.array_equal(a.feature, b.feature) and np.array_equal(a.bin, b.bin)
                for a, b in zip(out.hybrid.part.trees, local_hybrid.part.trees, strict=True)]
        X = np.concatenate([s.valid.X for s in sites])
        nets = []
        for w in (weights, local.weights):
            net = SepsisNet(int(np.shape(w["norm.mean"])[0]))
            set_weights(net, w)
            nets.append(net)
        dp = float(np.max(np.abs(hybrid_proba(nets[0], out.hybrid.part, X)
                                 - hybrid_proba(nets[1], local_hybrid.part, X))))
        report |= {
            "same_tree_structure": same, "max_abs_diff_probability": dp,
            "max_abs_diff_leaf": max(float(np.max(np.abs(a.value - b.value))) for a, b in zip(
                out.hybrid.part.trees, local_hybrid.part.trees, strict=True)
                if a.value.shape == b.value.shape),
            "tree_seconds": out.info["tree_seconds"],
            "trees_traffic": {n: {k: t[k] - network[n][k] for k in t}
                              for n, t in out.info["traffic"].items()},
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="sample")
    parser.add_argument("--sites", default="random:3")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--trees", type=int, default=0)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--secure", action="store_true")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = load_physionet(args.data)
        raw: dict[str, dict[str, int]] = {}
        names = []
        for name, positions in partition(table, args.sites).items():
            part = table.select(positions)
            part.frame.to_parquet(root / f"{name}.parquet")
            prepare_site(name, root / f"{name}.parquet", root / "sites" / name)
            names.append(name)
            raw[name] = {"patients": int(part.grid.n_patients), "rows": int(part.grid.n_rows),
                         "parquet_bytes": (root / f"{name}.parquet").stat().st_size,
                         "grid_bytes": int(part.grid.n_rows) * len(GRID_COLUMNS) * 4,
                         "feature_bytes": int(part.grid.n_rows) * len(FEATURE_SCHEMA) * 4}
        settings = RunSettings(
            plan=Plan(rounds=args.rounds, seed=0, time_budget=args.timeout, keep_best=False),
            strategy=make_strategy("fedavg"), sites=len(names), model=ModelSpec(), wait=300.0,
            trees=BoostingPlan(n_trees=args.trees, max_depth=args.depth) if args.trees else None,
        )

        counting = Counting()
        sites = [load_site(root / "sites" / n, **settings.site_options()) for n in names]
        stamps = [time.perf_counter()]
        local = run_federation(sites, settings.strategy, settings.plan, model=settings.model,
                               transport=counting,  # type: ignore[arg-type]
                               on_round=lambda _: stamps.append(time.perf_counter()))
        local_rounds = list(np.diff(stamps))
        local_hybrid, counting_trees, local_trees = None, None, []
        if settings.trees is not None:
            counting_trees = CountingTrees(sites)
            tree_stamps = [time.perf_counter()]
            local_hybrid = grow_hybrid(
                sites, local.weights, settings.trees,
                counts={n: st.count for n, st in local.statistics.items()},
                min_sites=settings.plan.min_sites, transport=counting_trees,
                on_tree=lambda _: tree_stamps.append(time.perf_counter()))
            local_trees = list(np.diff(tree_stamps))

        pki = make_test_pki(root / "pki", sites=names)
        coordinator = Coordinator.from_certs(root / "coordinator", root / "pki", port=_port())
        procs = [start_superlink(coordinator)]
        try:
            for key in pki.sites:
                register_site(coordinator, key.public_key, name=key.name)
                procs.append(start_supernode(SiteNode(
                    root / "sites" / key.name, coordinator.address, pki.ca_cert,
                    key.private_key, port=_port())))
            out = run_on_flower(coordinator, settings, root / "run")
            secure_out = None
            if args.secure:
                secure_settings = dataclasses.replace(
                    settings, secure=SecureSumSettings(modulus_bits=args.bits))
                secure_out = run_on_flower(coordinator, secure_settings, root / "secure-run")
        finally:
            for proc in procs:
                proc.stop()

    weights = out.result.weights
    from vigil.federation.model import is_norm_key

    update_bytes = sum(v.nbytes for k, v in weights.items() if not is_norm_key(k))
    diff = max(float(np.max(np.abs(weights[k] - local.weights[k]))) for k in weights)
    flower_rounds = out.info["round_seconds"]
    trees_report = None
    if local_hybrid is not None and out.hybrid is not None and counting_trees is not None:
        from vigil.federation.model import SepsisNet, set_weights

        same_trees = all(
            np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True)
            for a, b in zip(out.hybrid.part.trees, local_hybrid.part.trees, strict=True)
            for f in ("feature", "bin", "threshold", "left", "right", "value"))
        net = SepsisNet(int(np.shape(weights["norm.mean"])[0]))
        set_weights(net, weights)
        X = np.concatenate([s.valid.X for s in sites])
        dp = float(np.max(np.abs(hybrid_proba(net, out.hybrid.part, X)
                                 - hybrid_proba(net, local_hybrid.part, X))))
        network = out.info["network_traffic"]
        trees_report = {
            "n_trees": args.trees, "depth": args.depth, "same_trees": same_trees,
            "max_abs_diff_probability": dp,
            "in_process": {"tree_seconds": local_trees, "traffic": counting_trees.traffic},
            "flower": {"tree_seconds": out.info["tree_seconds"], "traffic": {
                n: {k: t[k] - network[n][k] for k in t} for n, t in out.info["traffic"].items()}},
        }
    report = {
        "data": args.data, "sites": args.sites, "rounds": args.rounds,
        "model_parameters": int(sum(v.size for v in weights.values())),
        "max_abs_diff": diff,
        "in_process": {"round_seconds": local_rounds, "traffic": counting.traffic},
        "flower": {"connect_seconds": out.info["connect_seconds"],
                   "round_seconds": flower_rounds,
                   "traffic": out.info.get("network_traffic", out.info["traffic"])},
        "flower_over_in_process_round": float(np.mean(flower_rounds) / np.mean(local_rounds)),
        "update_bytes": update_bytes,
        "raw": raw,
        "raw_over_update": {n: {k: raw[n][k] / update_bytes for k in
                                ("parquet_bytes", "grid_bytes", "feature_bytes")} for n in raw},
        "trees": trees_report,
        "secure": None if secure_out is None else _secure_report(
            secure_out, local, local_hybrid, sites, args.bits),
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    if report["secure"] is not None:
        print("secure aggregation:", json.dumps(report["secure"], indent=1))
    print(f"sepsis model, {report['model_parameters']:,} parameters ({update_bytes:,} bytes as "
          f"float32); {args.sites} on {args.data}, {args.rounds} rounds; max |flower - "
          f"in-process| = {diff:.2g}")
    print(f"seconds per round: in-process {', '.join(f'{s:.1f}' for s in local_rounds)}; flower "
          f"{', '.join(f'{s:.1f}' for s in flower_rounds)} (+ {out.info['connect_seconds']:.1f} "
          f"to connect); flower / in-process = {report['flower_over_in_process_round']:.1f}")
    print(f"{'site':10} {'in-proc sent':>13} {'in-proc recv':>13} {'flower sent':>12} "
          f"{'flower recv':>12} {'parquet/update':>15} {'grid/update':>12} {'features/update':>16}")
    for n in names:
        a, b, r = counting.traffic[n], report["flower"]["traffic"][n], report["raw_over_update"][n]
        print(f"{n:10} {a['sent']:>13,} {a['received']:>13,} {b['sent']:>12,} "
              f"{b['received']:>12,} {r['parquet_bytes']:>15.2f} {r['grid_bytes']:>12.1f} "
              f"{r['feature_bytes']:>16.1f}")

    if trees_report is not None:
        a, b = trees_report["in_process"], trees_report["flower"]
        print(f"{args.trees} trees of depth {args.depth}: same trees {same_trees}, max |delta p| "
              f"{trees_report['max_abs_diff_probability']:.2g}; seconds per tree: in-process "
              f"{', '.join(f'{x:.1f}' for x in a['tree_seconds'])}; flower "
              f"{', '.join(f'{x:.1f}' for x in b['tree_seconds'])}")
        for n in names:
            x, y = a["traffic"][n], b["traffic"][n]
            print(f"{n:10} trees: in-proc sent {x['sent']:,} recv {x['received']:,} "
                  f"({x['messages']} requests); flower sent {y['sent']:,} recv "
                  f"{y['received']:,} ({y['messages']} requests)")


if __name__ == "__main__":
    main()
