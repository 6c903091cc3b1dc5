"""Where a tree level's time goes on Flower: each piece of one ``query.trees`` message, measured.

A tree level on Flower is one message to each SuperNode, answered by a fresh
ClientApp process (flwr 1.42, ``subprocess`` isolation). This script measures,
in one run on this machine, what that process does for a level, on one
prepared site of ``--data`` (partition ``--sites``, the first site):

- ``process``: a Python process that imports Flower's ClientApp runner
  (``flwr.supernode.runtime.run_clientapp``), what ``flwr-clientapp`` costs
  before vigil's code runs (median of ``--repeat`` processes);
- ``vigil_import``: then importing vigil's ClientApp (and whether pandas or
  torch came with it: the tree path needs neither); ``pandas_import`` and
  ``torch_import``, each in a fresh process, for what either would add;
- ``fab_install``: ``flwr.cli.install.install_from_fab`` of the run's app
  (each ClientApp process installs the FAB again);
- per level of one real tree of depth ``--depth`` (the requests of an
  in-process :func:`~vigil.federation.hybrid.grow_trees` of the sites, replayed
  on the first site), two ways:

  - ``uncached`` (the state in ``context.state``, as before the tree cache):
    read ``site.npz`` and bin the rows, the run's context through Flower's
    protobuf both ways (pulled, then pushed with the new state), the histograms;
  - ``cached`` (:class:`~vigil.federation.flower.treecache.TreeCache`): the
    binning mapped from the site's disk, the state read and written there, the
    small context through protobuf, the histograms;

  and ``histograms`` alone (:meth:`BoostingSite.histograms`), the compute an
  in-process tree pays.

Not measured here, the waits Flower's loops build in (from flwr 1.42's source):
the SuperNode sleeps 3 s when it pulled no message (``start_client_internal``),
the SuperExec polls for work every ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (1 s
by default, 0.2 s as vigil starts it), the SuperNode waits 0.5 s between looks for
the ClientApp's reply, vigil's ServerApp pulls replies every 0.25 s. They are
the rest of the end-to-end ``bench/federation.py --trees`` per-tree seconds.

Usage: ``.venv/bin/python bench/tree_levels.py [--data sample] [--sites random:3] [--depth 6]
[--repeat 3] [--prepared DIR] [--json]`` (``--prepared``: sites already prepared by
``vigil federation site``, one per subdirectory of DIR, used in place of ``--data``)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vigil.data import load_physionet, partition
from vigil.federation.boosting import BoostingPlan
from vigil.federation.flower.sitedata import load_site, prepare_site
from vigil.federation.flower.treecache import TreeCache
from vigil.federation.flower.treewire import _STATE, answer_trees, level_to_content
from vigil.federation.hybrid import InProcessTrees, grow_trees
from vigil.federation.treegrowth import LevelRequest

_PROBE = """
import sys, time
t0 = time.perf_counter()
{pre}
t1 = time.perf_counter()
{what}
t2 = time.perf_counter()
print(t1 - t0, t2 - t1, int('pandas' in sys.modules), int('torch' in sys.modules))
"""


def _probe(pre: str, what: str, repeat: int) -> dict[str, float]:
    """Run a fresh interpreter ``repeat`` times; medians of its start, ``pre`` and ``what``."""
    walls, firsts, seconds, flags = [], [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _PROBE.format(pre=pre, what=what)],
                             capture_output=True, text=True, check=True).stdout.split()
        walls.append(time.perf_counter() - t)
        firsts.append(float(out[0]))
        seconds.append(float(out[1]))
        flags.append((int(out[2]), int(out[3])))
    return {"wall": statistics.median(walls), "pre": statistics.median(firsts),
            "what": statistics.median(seconds), "pandas": flags[-1][0], "torch": flags[-1][1]}


class Recording(InProcessTrees):
    """The in-process trees transport, keeping every level request."""

    def __init__(self, sites: Any) -> None:
        super().__init__(sites)
        self.requests: list[LevelRequest] = []
        self.edges: list[Any] = []

    def begin(self, names, edges):  # type: ignore[no-untyped-def]
        self.edges = list(edges)
        return super().begin(names, edges)

    def level(self, names, request):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        return super().level(names, request)


def _context_round_trip(state: Any) -> tuple[float, int]:
    """Seconds to send the run's context through Flower's protobuf both ways; its bytes."""
    from flwr.app import Context
    from flwr.common.serde import context_from_proto, context_to_proto

    context = Context(run_id=1, node_id=1, node_config={}, state=state, run_config={})
    t = time.perf_counter()
    proto = context_to_proto(context)
    raw = proto.SerializeToString()
    back = type(proto).FromString(raw)
    context_from_proto(back)
    proto2 = context_to_proto(context)  # pushed back with the new state
    proto2.SerializeToString()
    return time.perf_counter() - t, len(raw)


def _fab_install(tmp: Path) -> float:
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.install import install_from_fab

    from vigil.federation.driver import Plan
    from vigil.federation.flower.settings import RunSettings, app_pyproject
    from vigil.federation.strategies import make_strategy

    app = tmp / "app"
    app.mkdir()
    settings = RunSettings(plan=Plan(rounds=1, time_budget=60.0),
                           strategy=make_strategy("fedavg"), sites=3)
    (app / "pyproject.toml").write_text(app_pyproject(settings))
    fab = build_fab_from_disk(app)
    t = time.perf_counter()
    install_from_fab(fab, install_dir=tmp / "installed", skip_prompt=True)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="sample")
    parser.add_argument("--sites", default="random:3")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--prepared", default=None,
                        help="a directory of prepared sites (one per subdirectory) to use "
                             "instead of partitioning --data")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from flwr.app import RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    report: dict[str, Any] = {"data": args.data, "sites": args.sites, "depth": args.depth}
    flwr = "import flwr.supernode.runtime.run_clientapp"
    report["process"] = _probe("", flwr, args.repeat)
    report["vigil_import"] = _probe(flwr, "import vigil.federation.flower.clientapp",
                                    args.repeat)
    report["pandas_import"] = _probe(flwr, "import pandas", args.repeat)
    report["torch_import"] = _probe(flwr, "import torch", args.repeat)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        report["fab_install"] = _fab_install(tmp)
        dirs = {}
        if args.prepared is not None:  # copies: the cache is written beside site.npz
            for source in sorted(p for p in Path(args.prepared).iterdir()
                                 if (p / "site.npz").exists()):
                dirs[source.name] = tmp / source.name
                dirs[source.name].mkdir()
                for f in ("site.npz", "site.json"):
                    shutil.copy2(source / f, dirs[source.name] / f)
            report["data"], report["sites"] = "prepared", str(args.prepared)
        else:
            table = load_physionet(args.data)
            for name, positions in sorted(partition(table, args.sites).items()):
                path = tmp / f"{name}.parquet"
                table.select(positions).frame.to_parquet(path)
                dirs[name] = tmp / name
                prepare_site(name, path, dirs[name])
            del table
        sites = [load_site(p) for p in dirs.values()]
        recording = Recording(sites)
        plan = BoostingPlan(n_trees=1, max_depth=args.depth)
        counts = {s.name: s.train.n_rows for s in sites}
        grow_trees(sites, plan, counts=counts, min_sites=1, transport=recording)
        first = sites[0].name
        site_dir = dirs[first]
        report["site_rows"] = sites[0].train.n_rows
        report["features"] = int(sites[0].train.X.shape[1])
        from flwr.app import Array, ArrayRecord, ConfigRecord

        from vigil.federation.flower.wire import ARRAYS, CONFIG

        begin = RecordDict({CONFIG: ConfigRecord({"ask": "begin"}), ARRAYS: ArrayRecord(
            {f"edges/{f}": Array(np.ascontiguousarray(e)) for f, e in enumerate(recording.edges)})})

        def load(network: bool) -> Any:
            return load_site(site_dir)

        levels: list[dict[str, float]] = []
        states = {"uncached": RecordDict(), "cached": RecordDict()}
        cache = TreeCache(site_dir, "1")
        answer_trees(begin, states["uncached"], load)
        answer_trees(begin, states["cached"], load, cache)
        for request in recording.requests:
            content = level_to_content(request)
            row: dict[str, float] = {"nodes": float(len(request.nodes))}
            for way, state in states.items():
                t = time.perf_counter()
                answer_trees(content, state, load, cache if way == "cached" else None)
                row[way] = time.perf_counter() - t
                seconds, size = _context_round_trip(state)
                row[way] += seconds
                row[f"{way}_context_bytes"] = float(size)
            # the compute alone, on the site as the in-process path holds it
            t = time.perf_counter()
            load_site(site_dir)
            row["site_read"] = time.perf_counter() - t
            levels.append(row)
        report["context_uncached_bytes_max"] = max(r["uncached_context_bytes"] for r in levels)
        report["context_cached_bytes_max"] = max(r["cached_context_bytes"] for r in levels)
        live = [r for r in levels if r["nodes"] > 0]
        boosting = sites[0].boosting(recording.edges)
        hist = 0.0
        for request in recording.requests:
            from vigil.federation.treegrowth import answer_level

            t = time.perf_counter()
            answer_level(boosting, request)
            hist += time.perf_counter() - t
        report["levels"] = len(live)
        report["per_level"] = {
            "uncached": statistics.mean(r["uncached"] for r in live),
            "cached": statistics.mean(r["cached"] for r in live),
            "site_read": statistics.mean(r["site_read"] for r in live),
            "histograms": hist / max(len(live), 1),
        }
        report["cache_bytes"] = cache.size()
        assert _STATE in states["cached"].array_records
    if args.json:
        print(json.dumps(report, indent=1))
        return
    p = report
    print(f"site {p['site_rows']} training rows x {p['features']} features, tree depth "
          f"{p['depth']} ({p['levels']} levels with nodes)")
    print(f"python + flwr ClientApp imports     {p['process']['wall']:.2f} s (process wall)")
    print(f"vigil ClientApp import              {p['vigil_import']['what']:.2f} s "
          f"(pandas {bool(p['vigil_import']['pandas'])}, torch {bool(p['vigil_import']['torch'])})")
    print(f"  pandas would add                  {p['pandas_import']['what']:.2f} s")
    print(f"  torch would add                   {p['torch_import']['what']:.2f} s")
    print(f"FAB install                         {p['fab_install']:.3f} s")
    lv = p["per_level"]
    print(f"per level, uncached (read+bin+ctx)  {lv['uncached']:.3f} s "
          f"(context up to {p['context_uncached_bytes_max'] / 1e6:.1f} MB each way)")
    print(f"  of which reading site.npz         {lv['site_read']:.3f} s")
    print(f"per level, cached                   {lv['cached']:.3f} s "
          f"(context up to {p['context_cached_bytes_max'] / 1e3:.1f} kB; "
          f"cache {p['cache_bytes'] / 1e6:.1f} MB on disk)")
    print(f"histograms alone (in-process work)  {lv['histograms']:.3f} s")
    print(f"ratio uncached / cached             {lv['uncached'] / lv['cached']:.1f}x")


if __name__ == "__main__":
    main()
