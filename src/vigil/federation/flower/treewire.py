"""The boosted trees over Flower: each step of :mod:`vigil.federation.hybrid` as a message.

The coordinator's side is :class:`FlowerTrees`, the
:class:`~vigil.federation.hybrid.TreeTransport` of the ServerApp; the site's
side is :func:`answer_trees`, which the ClientApp runs on the SuperNode. Every
request is a ``query.trees`` message whose ``config`` record names the step
(``ask``):

- ``quantiles``: the site's per-feature quantiles of its training rows;
- ``begin``: the shared bin edges; the site answers its weighted positives
  and rows (and keeps the edges in the run's state);
- ``level``: a :class:`~vigil.federation.treegrowth.LevelRequest`; the site
  answers its histograms (:func:`~vigil.federation.treegrowth.answer_level`);
- ``score-sums``: the network's weights and the trees; the site answers its
  :class:`~vigil.federation.messages.LogitSums`;
- ``evaluate``: the weights and the fused model; the site answers its
  :class:`~vigil.federation.messages.SiteEvaluation`.

A ClientApp runs in a fresh process for every message, so a site's running
scores, row-to-node assignment and the histograms the subtraction trick reuses
(:meth:`BoostingSite.state`) are kept between two levels on the site's own
disk, with its binned rows (:class:`~vigil.federation.flower.treecache.TreeCache`;
the run's ``context.state`` on the SuperNode holds the edges and a stamp), or,
without a cache, in ``context.state`` itself; never sent. The arrays cross the wire bit for
bit and the site-side step is the in-process one, so the trees are the
in-process trees.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict
from numpy.typing import NDArray

from vigil.federation.boosting import (
    BoostingPlan,
    BoostingSite,
    Tree,
    trees_from_arrays,
    trees_to_arrays,
)
from vigil.federation.flower.sitedata import site_name
from vigil.federation.flower.transport import FlowerTransport, RemoteSite
from vigil.federation.flower.treecache import Stamp, TreeCache, data_key
from vigil.federation.flower.wire import (
    ARRAYS,
    CONFIG,
    evaluation_from_content,
    evaluation_to_content,
    payload_from_content,
    payload_to_content,
    weights_from_record,
    weights_to_record,
)
from vigil.federation.hybrid import Answers, HybridTrees, Standardization
from vigil.federation.messages import LogitSums
from vigil.federation.site import Site
from vigil.federation.strategies import Weights
from vigil.federation.treegrowth import LevelRequest, answer_level

__all__ = [
    "ACTION",
    "FlowerTrees",
    "answer_trees",
    "level_from_content",
    "level_to_content",
    "score_sums_content",
    "stored_edges",
]

ACTION = "trees"
"""The ClientApp's query action of the trees (message type ``query.trees``)."""
_KIND = f"{MessageType.QUERY}.{ACTION}"
_WEIGHTS = "weights"
_STATE = "vigil-trees"
_EDGES = "edges/"
_SITE_STATE = "state/"
_STAMP = "vigil-trees-cache"


def _content(ask: str, scalars: Mapping[str, Any] | None = None,
             arrays: Mapping[str, NDArray[Any]] | None = None,
             weights: Weights | None = None) -> RecordDict:
    records: dict[str, Any] = {
        CONFIG: ConfigRecord({"ask": ask, **(scalars or {})}),
        ARRAYS: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in (arrays or {}).items()}),
    }
    if weights is not None:
        records[_WEIGHTS] = weights_to_record(weights)
    return RecordDict(records)


def _arrays(content: RecordDict) -> dict[str, NDArray[Any]]:
    record = content.array_records[ARRAYS]
    return {k: record[k].numpy() for k in record.keys()}


def level_to_content(request: LevelRequest) -> RecordDict:
    """Make the message content of a tree level's request."""
    scalars: dict[str, Any] = {"tree": request.tree, "depth": request.depth,
                               "n_bins": request.n_bins}
    if request.base is not None:
        scalars["base"] = float(request.base)
    arrays = {"nodes": np.asarray(request.nodes, dtype=np.int64),
              "split": np.asarray(request.split, dtype=np.int64)}
    if request.grown is not None:
        arrays |= trees_to_arrays([request.grown], "grown/")
    if request.finished is not None:
        arrays |= trees_to_arrays([request.finished], "finished/")
    return _content("level", scalars, arrays)


def level_from_content(content: RecordDict) -> LevelRequest:
    """Read a tree level's request back (bit for bit)."""
    config, arrays = content.config_records[CONFIG], _arrays(content)
    grown = trees_from_arrays(arrays, "grown/")
    finished = trees_from_arrays(arrays, "finished/")
    base = config.get("base")
    return LevelRequest(
        tree=int(config["tree"]), depth=int(config["depth"]), nodes=arrays["nodes"],
        n_bins=int(config["n_bins"]), grown=grown[0] if grown else None, split=arrays["split"],
        finished=finished[0] if finished else None,
        base=None if base is None else float(base),  # type: ignore[arg-type]
    )


def _part_to_content(weights: Weights, part: HybridTrees) -> RecordDict:
    scalars = {"base": part.base, "intercept": part.intercept, "slope": part.slope,
               **{f"st.{k}": v for k, v in part.standardization.to_dict().items()},
               **{f"plan.{k}": v for k, v in asdict(part.plan).items()}}
    return _content("evaluate", scalars, trees_to_arrays(part.trees), weights)


def _part_from_content(content: RecordDict) -> HybridTrees:
    config = content.config_records[CONFIG]
    st = Standardization(**{f.name: float(config[f"st.{f.name}"])  # type: ignore[arg-type]
                            for f in fields(Standardization)})
    plan = BoostingPlan(**{f.name: config[f"plan.{f.name}"] for f in fields(BoostingPlan)})  # type: ignore[arg-type]
    return HybridTrees(float(config["base"]), trees_from_arrays(_arrays(content)), st,  # type: ignore[arg-type]
                       plan, float(config["intercept"]), float(config["slope"]))  # type: ignore[arg-type]


def stored_edges(state: RecordDict) -> list[NDArray[np.float32]]:
    """Return the bin edges a site keeps in the run's state since ``begin``.

    Raises
    ------
    ValueError
        If ``begin`` has not come yet.
    """
    if _STATE not in state.array_records:
        raise ValueError("expected the bin edges (`begin`) before a tree level")
    return _state(state)[0]


def score_sums_content(weights: Weights, base: float, trees: Sequence[Tree]) -> RecordDict:
    """Make the message content of a ``score-sums`` request."""
    return _content("score-sums", {"base": float(base)}, trees_to_arrays(trees), weights)


def _state(state: RecordDict) -> tuple[list[NDArray[np.float32]], dict[str, NDArray[Any]]]:
    record = state.array_records[_STATE]
    arrays = {k: record[k].numpy() for k in record.keys()}
    n = sum(k.startswith(_EDGES) for k in arrays)
    edges = [arrays[f"{_EDGES}{f}"] for f in range(n)]
    site = {k[len(_SITE_STATE):]: v for k, v in arrays.items() if k.startswith(_SITE_STATE)}
    return edges, site


def _save_state(state: RecordDict, edges: Sequence[NDArray[np.float32]],
                site: Mapping[str, NDArray[Any]]) -> None:
    arrays = {f"{_EDGES}{f}": e for f, e in enumerate(edges)}
    arrays |= {f"{_SITE_STATE}{k}": v for k, v in site.items()}
    state[_STATE] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _cached_level(content: RecordDict, state: RecordDict, site: Callable[[bool], Site],
                  cache: TreeCache | None, edges: Sequence[NDArray[np.float32]]) -> RecordDict:
    """Answer a level from the site's tree cache (no ``site.npz``, no binning, no torch)."""
    if cache is None:
        raise ValueError("expected the site's tree cache: `begin` kept the state there")
    stamp = Stamp.from_mapping(state.config_records[_STAMP])
    key = data_key(cache.site_dir, edges)
    if key != stamp.key:
        raise ValueError("expected the site's data of `begin`; it was prepared again since")
    boosting = cache.boosting(site_name(cache.site_dir), key)
    if boosting is None:  # the binning was removed: bin again (same data, same edges)
        fresh = site(False).boosting(edges)
        cache.store_binning(key, fresh.binned, fresh.y)
        boosting = fresh
    boosting.restore(cache.load_state(stamp))
    hist = answer_level(boosting, level_from_content(content))
    done = Stamp(stamp.key, stamp.nonce, stamp.answered + 1)
    cache.save_state(done, boosting.state())
    state[_STAMP] = ConfigRecord(done.to_dict())
    return payload_to_content(boosting.name, {"histograms": hist})


def answer_trees(
    content: RecordDict, state: RecordDict, site: Callable[[bool], Site],
    cache: TreeCache | None = None,
) -> RecordDict:
    """Answer one step of the trees on the site (the ClientApp's ``query.trees``).

    Parameters
    ----------
    content : RecordDict
        The request (see the module docstring).
    state : RecordDict
        The run's state on the SuperNode: the bin edges and the boosting state
        between levels are kept there.
    site : callable
        Builds the site; its argument says whether the network is needed (torch).
    cache : TreeCache, optional
        The site's tree cache on its disk (:mod:`~vigil.federation.flower.treecache`):
        with it, ``begin`` keeps the binned rows and the running state there and a
        level reads them back (the state record then holds only the edges and a
        stamp); without it, the running state travels in ``state``.

    Returns
    -------
    RecordDict
        The answer's content.

    Raises
    ------
    ValueError
        If the request is not one of the steps, or a level comes before ``begin``.
    """
    ask = content.config_records[CONFIG]["ask"]
    if ask == "quantiles":
        me = site(False)
        n_bins = int(content.config_records[CONFIG]["n_bins"])  # type: ignore[arg-type]
        return payload_to_content(me.name, {"quantiles": me.quantiles(n_bins)})
    if ask == "begin":
        me = site(False)
        arrays = _arrays(content)
        edges = [arrays[f"{_EDGES}{f}"] for f in range(len(arrays))]
        boosting = me.boosting(edges)
        if cache is not None and type(boosting) is BoostingSite:  # noqa: E721 (DP sites: no)
            key = data_key(cache.site_dir, edges)
            if cache.binning(key) is None:
                cache.store_binning(key, boosting.binned, boosting.y)
            stamp = cache.begin(key)
            cache.save_state(stamp, boosting.state())
            _save_state(state, edges, {})
            state[_STAMP] = ConfigRecord(stamp.to_dict())
        else:
            _save_state(state, edges, boosting.state())
            if _STAMP in state.config_records:
                del state[_STAMP]
        positives, rows = boosting.label_sums()
        return payload_to_content(me.name, {"positives": positives, "rows": rows})
    if ask == "level":
        if _STATE not in state.array_records:
            raise ValueError("expected the bin edges (`begin`) before a tree level")
        edges, saved = _state(state)
        if _STAMP in state.config_records:
            return _cached_level(content, state, site, cache, edges)
        me = site(False)
        boosting = me.boosting(edges)
        boosting.restore(saved)
        hist = answer_level(boosting, level_from_content(content))
        _save_state(state, edges, boosting.state())
        return payload_to_content(me.name, {"histograms": hist})
    if ask == "score-sums":  # the trees are grown: the run's state files are done with
        if cache is not None:
            cache.clear()
        me = site(True)
        weights = weights_from_record(content.array_records[_WEIGHTS])
        base = float(content.config_records[CONFIG]["base"])  # type: ignore[arg-type]
        sums = me.logit_sums(weights, base, trees_from_arrays(_arrays(content)))
        return payload_to_content(me.name, sums.payload())
    if ask == "evaluate":
        me = site(True)
        weights = weights_from_record(content.array_records[_WEIGHTS])
        return evaluation_to_content(me.evaluate_hybrid(weights, _part_from_content(content)))
    raise ValueError(f"expected a trees request among quantiles, begin, level, score-sums, "
                     f"evaluate; got {ask!r}")


def _field(name: str) -> Callable[[RecordDict], Any]:
    return lambda content: payload_from_content(content)[1][name]


def _label_sums(content: RecordDict) -> tuple[float, float]:
    payload = payload_from_content(content)[1]
    return float(payload["positives"]), float(payload["rows"])


def _logit_sums(content: RecordDict) -> LogitSums:
    site, payload = payload_from_content(content)
    try:
        return LogitSums(site=site, **payload)
    except TypeError as exc:
        raise ValueError(f"expected score sums: {exc}") from None


class FlowerTrees:
    """The ServerApp's :class:`~vigil.federation.hybrid.TreeTransport`: one message per step.

    Parameters
    ----------
    transport : FlowerTransport
        The run's transport (its timeout and traffic count apply).
    sites : sequence of RemoteSite
        From :meth:`FlowerTransport.connect`.
    """

    def __init__(self, transport: FlowerTransport, sites: Sequence[RemoteSite]) -> None:
        self.transport = transport
        self.sites = {s.name: s for s in sites}

    def _ask(self, names: Sequence[str], content: RecordDict,
             decode: Callable[[RecordDict], Any]) -> Answers:
        return self.transport.request(_KIND, [self.sites[n] for n in names], content, decode)

    def quantiles(self, names: Sequence[str], n_bins: int) -> Answers:
        """Ask every site for its quantiles."""
        return self._ask(names, _content("quantiles", {"n_bins": n_bins}), _field("quantiles"))

    def begin(self, names: Sequence[str], edges: Sequence[NDArray[np.float32]]) -> Answers:
        """Send the bin edges; each site answers its weighted positives and rows."""
        arrays = {f"{_EDGES}{f}": np.asarray(e) for f, e in enumerate(edges)}
        return self._ask(names, _content("begin", arrays=arrays), _label_sums)

    def level(self, names: Sequence[str], request: LevelRequest) -> Answers:
        """Send one tree level's request; each site answers its histograms."""
        return self._ask(names, level_to_content(request), _field("histograms"))

    def score_sums(self, names: Sequence[str], weights: Weights, base: float,
                   trees: Sequence[Tree]) -> Answers:
        """Send the network and the trees; each site answers its score sums."""
        return self._ask(names, score_sums_content(weights, base, trees), _logit_sums)

    def evaluate(self, names: Sequence[str], weights: Weights, part: HybridTrees) -> Answers:
        """Send the fused model; each site answers its evaluation."""
        return self._ask(names, _part_to_content(weights, part), evaluation_from_content)
