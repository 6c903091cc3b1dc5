"""The trees' histograms and score sums through secure aggregation, in fewer bytes.

:class:`SecureFlowerTrees` is :class:`~vigil.federation.flower.treewire.FlowerTrees`
whose tree levels (:class:`~vigil.federation.treegrowth.SummedLevels`) and score
sums (:class:`~vigil.federation.hybrid.SummedScores`) reach the coordinator only
summed over the sites (:mod:`vigil.federation.secagg`): each ``level`` or
``score-sums`` request travels inside the ``mask`` stage of a ``query.secagg``
message, and the site's ClientApp turns its answer into the vector to mask
(:func:`level_vector`, :func:`score_vector`).

A level's vector is smaller than the plain answer (float64, every node and bin):

- **one child per split**: below the root only the left child of each split
  node is summed; the coordinator derives the right one as the parent's sum
  minus it (LightGBM's subtraction trick, Ke et al., NeurIPS 2017, section 2,
  done on the sums). If a site drops out at that level, the parents' sums
  included it, so the survivors are asked once more for every node (a request
  that changes nothing on the site);
- **no empty bins**: feature ``f`` has ``len(edges[f]) + 1`` bins
  (:func:`~vigil.federation.boosting.bin_rows`); the others are always zero and
  are not sent (binary and few-valued features use 2 to 10 of 64 bins);
- integers on 64 bits (``uint64``, the finest ``L`` a float64 sum holds,
  :meth:`~vigil.federation.secure_sum.SecureSumSettings.widened`), as many bytes as
  float64 per element. The error, at most ``n c / L`` of ``W`` (all sites' rows) per
  element, must stay far below the gains' differences between candidate splits: on 32
  bits (``1.8e-7 W``) the bundled sample's depth-6 trees came out different (fused
  probabilities 0.2 apart), with ``L = 2**40`` one split of two trees still differed.

Scales (public, so each element is in ``[-1, 1]``, the clipping range ``c >= 1``):
histograms are divided by the weighted rows ``W`` the sites declared at
``begin`` (a bin's gradient sum is at most its rows); score sums by the
sites' training rows ``N`` times ``1``, ``R`` and ``R**2`` (``R = 16``, a logit
bound) for the row counts, sums and sums of squares. A site whose scaled
vector exceeds the clipping range refuses it (clear error) rather than clip
it: these sums must come out right.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import RecordDict
from numpy.typing import NDArray

from vigil.federation.boosting import Tree
from vigil.federation.flower.secure import FlowerSecureSum, decode, open_secure
from vigil.federation.flower.transport import FlowerTransport, RemoteSite
from vigil.federation.flower.treecache import TreeCache
from vigil.federation.flower.treewire import (
    FlowerTrees,
    answer_trees,
    level_to_content,
    score_sums_content,
    stored_edges,
)
from vigil.federation.flower.wire import payload_from_content
from vigil.federation.hybrid import Answers
from vigil.federation.messages import LogitSums
from vigil.federation.secure_sum import SecureSumSettings, check_range, quantization_error
from vigil.federation.site import Site
from vigil.federation.strategies import Weights
from vigil.federation.treegrowth import LevelRequest

__all__ = ["LOGIT_BOUND", "SecureFlowerTrees", "level_vector", "score_vector", "tree_vector",
           "valid_bins"]

LOGIT_BOUND = 16.0
"""``R``: the scale of the score sums (a logit of 16 is a probability of 1 - 1e-7)."""


def valid_bins(edges: Sequence[NDArray[np.float32]], n_bins: int) -> NDArray[np.bool_]:
    """Which ``(feature, bin)`` can hold rows: ``b <= len(edges[f])``.

    Returns
    -------
    ndarray of bool, shape (n_features, n_bins)
    """
    return np.arange(n_bins)[None, :] <= np.array([len(e) for e in edges])[:, None]


def level_vector(content: RecordDict, state: RecordDict, site: Callable[[bool], Site],
                 cache: TreeCache | None = None) -> NDArray[np.float64]:
    """Answer a secure level: the site's histograms of the sent nodes and bins, over ``W``.

    Parameters
    ----------
    content : RecordDict
        A ``level`` request plus the ``secagg`` record (``send``: node
        positions; ``scale``: ``W``).
    state : RecordDict
        The run's state on the SuperNode (the boosting state, the edges).
    site : callable
    cache : TreeCache, optional
        The site's tree cache (:func:`~vigil.federation.flower.treewire.answer_trees`).

    Returns
    -------
    ndarray of shape (len(send) * n_valid_bins * 2,)
    """
    message = decode(content)
    hist = payload_from_content(answer_trees(content, state, site, cache))[1]["histograms"]
    valid = valid_bins(stored_edges(state), hist.shape[2])
    out = hist[np.asarray(message["send"], dtype=np.int64)][:, valid, :].ravel() / float(
        message["scale"])
    return out


def score_vector(content: RecordDict, state: RecordDict, site: Callable[[bool], Site],
                 cache: TreeCache | None = None) -> NDArray[np.float64]:
    """Answer secure score sums: the site's over ``N``, ``R N``, ``R**2 N`` (shape (5,))."""
    message = decode(content)
    _, sums = payload_from_content(answer_trees(content, state, site, cache))
    n, r = float(message["scale"]), LOGIT_BOUND
    return np.array([sums["n_rows"] / n, sums["net_sum"] / (r * n), sums["net_sq"] / (r * r * n),
                     sums["tree_sum"] / (r * n), sums["tree_sq"] / (r * r * n)])


def tree_vector(what: str, content: RecordDict, state: RecordDict, site: Callable[[bool], Site],
                settings: SecureSumSettings, cache: TreeCache | None = None) -> NDArray[np.float64]:
    """Make the vector of a secure ``level`` or ``score-sums`` (the ClientApp's ``mask`` stage).

    Raises
    ------
    ValueError
        If ``what`` is neither, or the scaled vector exceeds the clipping range.
    """
    if what == "level":
        out = level_vector(content, state, site, cache)
    elif what == "score-sums":
        out = score_vector(content, state, site, cache)
    else:
        raise ValueError(f"expected a secure sum of level or score-sums, got {what!r}")
    check_range(out, settings, what)
    return out


class SecureFlowerTrees(FlowerTrees):
    """:class:`FlowerTrees` whose level histograms and score sums are summed securely.

    Parameters
    ----------
    transport : FlowerTransport
    sites : sequence of RemoteSite
    settings : SecureSumSettings
        ``clipping_range`` at least 1 (the scaled elements are in ``[-1, 1]``).
    counts : mapping of str to int
        Training rows each site declared (the score sums' scale).
    """

    def __init__(self, transport: FlowerTransport, sites: Sequence[RemoteSite],
                 settings: SecureSumSettings, counts: Mapping[str, int]) -> None:
        super().__init__(transport, sites)
        self.settings = settings
        self.rows = float(sum(counts.values()))
        self.secure: FlowerSecureSum | None = None
        self.weighted_rows = 0.0
        self._edges: list[NDArray[np.float32]] = []
        self._valid: NDArray[np.bool_] | None = None
        self._last: tuple[NDArray[np.int64], NDArray[np.float64]] | None = None

    def begin(self, names: Sequence[str], edges: Sequence[NDArray[np.float32]]) -> Answers:
        """Send the bin edges; keep ``W``, the weighted rows the sites declared."""
        answers = super().begin(names, edges)
        self.weighted_rows = float(sum(a[1] for a in answers.values()
                                       if not isinstance(a, Exception)))
        self._edges = list(edges)
        return answers

    def _sum(self, names: Sequence[str], what: str, content: RecordDict,
             extra: Mapping[str, Any], size: int, wide: bool = False) -> tuple[
        NDArray[np.float64], list[str], dict[str, Exception]
    ]:
        self.secure, gone = open_secure(self.transport, [self.sites[n] for n in names],
                                        self.settings, self.secure)
        inner = {n: ({"what": what, **extra}, content) for n in self.secure.group}
        total, alive = self.secure.sum(inner, size, wide=wide)
        failed = dict(gone) | {n: self.secure.failures.get(n, ConnectionError("no answer"))
                               for n in inner if n not in alive}
        return total, alive, failed

    def tolerance(self, depth: int, n_bins: int) -> float:
        """Error bound of a summed node total at ``depth`` (``n_bins`` quantized bins each)."""
        n = len(self.sites)
        per_element = quantization_error(n, self.settings.widened(n)) * self.weighted_rows
        return 2.0 * (depth + 1) * n_bins * per_element + 1e-6

    def level_sum(self, names: Sequence[str], request: LevelRequest) -> tuple[
        NDArray[np.float64], dict[str, Exception]
    ]:
        """Sum one level's histograms over the sites (left children only below the root)."""
        n_nodes, n_bins = len(request.nodes), request.n_bins
        valid = valid_bins(self._edges, n_bins)
        derive = request.depth > 0 and self._last is not None and request.split.size > 0
        send = np.arange(0, n_nodes, 2) if derive else np.arange(n_nodes)
        hist, failed = self._gather(names, request, send, valid)
        if derive and failed:  # the parents' sums included the sites gone: every node again
            again = LevelRequest(tree=request.tree, depth=request.depth, nodes=request.nodes,
                                 n_bins=n_bins)
            alive = [n for n in names if n not in failed]
            hist, more = self._gather(alive, again, np.arange(n_nodes), valid)
            failed |= more
        elif derive:
            assert self._last is not None
            last_nodes, last_hist = self._last
            where = {int(n): i for i, n in enumerate(last_nodes)}
            parents = last_hist[[where[int(p)] for p in request.split]]
            hist[1::2] = parents - hist[0::2]
            np.maximum(hist[1::2, ..., 1], 0.0, out=hist[1::2, ..., 1])
        self._last = (np.asarray(request.nodes), hist)
        return hist, failed

    def _gather(self, names: Sequence[str], request: LevelRequest, send: NDArray[np.int64],
                valid: NDArray[np.bool_]) -> tuple[NDArray[np.float64], dict[str, Exception]]:
        n_valid = int(valid.sum())
        total, _, failed = self._sum(names, "level", level_to_content(request),
                                     {"send": send.tolist(), "scale": self.weighted_rows},
                                     send.size * n_valid * 2, wide=True)
        hist = np.zeros((len(request.nodes), *valid.shape, 2))
        part = np.zeros((send.size, *valid.shape, 2))
        part[:, valid, :] = total.reshape(send.size, n_valid, 2) * self.weighted_rows
        hist[send] = part
        return hist, failed

    def score_sum(self, names: Sequence[str], weights: Weights, base: float,
                  trees: Sequence[Tree]) -> tuple[LogitSums, list[str]]:
        """Sum the sites' score sums: a :class:`LogitSums` of ``"(sum)"``, and who is in it."""
        total, alive, _ = self._sum(names, "score-sums", score_sums_content(weights, base, trees),
                                    {"scale": self.rows}, 5, wide=True)
        n, r = self.rows, LOGIT_BOUND
        sums = LogitSums(site="(sum)", n_rows=int(round(total[0] * n)),
                         net_sum=float(total[1] * r * n), net_sq=float(total[2] * r * r * n),
                         tree_sum=float(total[3] * r * n), tree_sq=float(total[4] * r * r * n))
        return sums, alive
