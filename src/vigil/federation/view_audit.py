"""What the coordinator's view of a secure sum reveals about one site: a reconstruction check.

Under secure aggregation (:mod:`vigil.federation.secagg`) the coordinator holds, per
site ``u`` and sum ``j``, the masked upload ``y_u = q_u + PRG(b_u, j) + sum_v ±PRG(s_uv, j)``
and, after the unmask stage, the seed ``b_u`` of every survivor, which it rebuilds from
the other sites' shares. Its strongest per-site view is therefore

    ``z_u = y_u - PRG(b_u, j) = q_u + sum_v ±PRG(s_uv, j)  (mod M)``,

still hidden by the pairwise masks, which cancel only in the sum (Bonawitz et al., CCS 2017,
section 4; the honest-but-curious theorem 6.2 says ``z_u`` is uniform given the sum). The
check runs the real protocol in process (:class:`InProcessSites`), takes ``z_u`` as the
coordinator can compute it, decodes it as if it were the site's quantized vector, and
measures how much of the site's true vector comes back (:func:`reconstruction_check`):

- the Pearson correlation of the decoded view with the site's vector, and with the part of
  it the sum does not already tell (the vector minus the sites' mean, ``x_u - S / n``);
- the relative error ``||x_hat - x|| / ||x||`` of the decoded view.

Under independence a correlation over ``d`` elements has standard deviation about
``1 / sqrt(d)``; :data:`Z_999` times that is the two-sided 99.9 % bound a view that
reveals nothing stays within. The positive control is the plain protocol, where the view
*is* the site's vector (correlation 1, error 0); what the sum itself tells about a site
(the correlation of ``S / n`` with ``x_u``) is reported beside it, since no protocol
that delivers the sum can hide it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.federation.secagg import Message, SecAggClient, SecureAggregator
from vigil.federation.secure_sum import SecureSumSettings, dequantize_sum, mask_stream

__all__ = ["Z_999", "InProcessSites", "SiteReconstruction", "reconstruction_check",
           "secure_view"]

Z_999 = 3.2905267314918945
"""Two-sided 99.9 % standard-normal quantile: the bound on ``|r| sqrt(d)`` of a blind view."""


class InProcessSites:
    """``n`` secure-aggregation sites in this process, behind one exchange that records all.

    The exchange a :class:`~vigil.federation.secagg.SecureAggregator` is built with:
    each stage's message goes to that site's :class:`~vigil.federation.secagg.SecAggClient`
    (its state kept here), and every request and answer is appended to :attr:`seen`:
    everything the coordinator (and a relay) gets to see.

    Parameters
    ----------
    vectors : ndarray of shape (n_sites, d)
        What each site sums (row ``i`` is site ``i``'s).
    settings : SecureSumSettings
    """

    def __init__(self, vectors: NDArray[np.floating], settings: SecureSumSettings) -> None:
        self.vectors = np.asarray(vectors, dtype=np.float64)
        self.settings = settings
        self.states: list[dict[str, bytes]] = [{} for _ in range(self.vectors.shape[0])]
        self.seen: list[tuple[str, int, str, Any]] = []

    def answer(self, stage: str, site: int, message: Message) -> Message:
        """Site ``site``'s answer to its message of ``stage`` (raises what the site raises)."""
        return SecAggClient(self.states[site]).answer(
            stage, message, lambda: self.vectors[site], self.settings, me=site)

    def __call__(self, stage: str, messages: Mapping[int, Message]) -> dict[int, Any]:
        """Deliver each site its message of ``stage``; its answer or what it raised."""
        out: dict[int, Any] = {}
        for i, m in messages.items():
            self.seen.append((stage, i, "request", m))
            try:
                out[i] = self.answer(stage, i, m)
            except (ValueError, TimeoutError) as exc:
                out[i] = exc
            self.seen.append((stage, i, "answer", out[i]))
        return out

    def answers(self, stage: str, index: int) -> dict[int, Message]:
        """Return the answers of ``stage`` for sum number ``index`` (1-based), by site."""
        asked = {i for s, i, d, m in self.seen
                 if s == stage and d == "request" and m.get("index") == index}
        return {i: m for s, i, d, m in self.seen
                if s == stage and d == "answer" and i in asked and not isinstance(m, Exception)}


def secure_view(vectors: NDArray[np.floating], settings: SecureSumSettings, *,
                wide: bool = False) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Sum ``vectors`` securely in process; return the sum and the coordinator's per-site view.

    Parameters
    ----------
    vectors : ndarray of shape (n_sites, d)
        Each site's vector, inside the clipping range.
    settings : SecureSumSettings
    wide : bool, optional
        Sum on 64 bits, as the trees' histograms are.

    Returns
    -------
    total : ndarray of float64, shape (d,)
        The sum the coordinator recovers.
    view : ndarray of float64, shape (n_sites, d)
        Row ``u``: ``z_u`` (the upload without the self-mask the coordinator rebuilt),
        decoded as a single site's quantized vector (``z * 2c / L - c``).
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise DataError(f"expected vectors of shape (n_sites >= 3, d), got {x.shape}")
    sites = InProcessSites(x, settings)
    aggregator = SecureAggregator(x.shape[0], settings, sites)
    aggregator.setup()
    total, survivors = aggregator.sum({i: {} for i in range(x.shape[0])}, x.shape[1], wide=wide)
    index = aggregator.index
    chosen = settings.widened(x.shape[0]) if wide else settings
    masked = sites.answers("mask", index)
    unmasked = sites.answers("unmask", index)
    view = np.empty_like(x)
    for u in survivors:
        seed = aggregator.rebuild(u, "seeds", unmasked)  # as the coordinator does, to unmask
        z = np.asarray(masked[u]["masked"], dtype=chosen.dtype) - mask_stream(
            seed, index, x.shape[1], chosen.dtype)
        view[u] = dequantize_sum(z, 1, chosen)  # read as one site's quantized vector
    return total, view


@dataclass(frozen=True)
class SiteReconstruction:
    """How much of one site's vector its view gives back.

    Attributes
    ----------
    correlation : float
        Pearson correlation of the decoded view with the site's vector.
    correlation_beyond_sum : float
        The same with the site's vector minus the sites' mean (what the sum does not tell).
    relative_error : float
        ``||view - x|| / ||x||``.
    sum_correlation : float
        Correlation of the sites' mean ``S / n`` with the site's vector: what the sum
        itself reveals, under any protocol that delivers it.
    bound : float
        ``Z_999 / sqrt(d)``: a view that reveals nothing has ``|correlation|`` below it
        in 999 of 1000 checks.
    """

    correlation: float
    correlation_beyond_sum: float
    relative_error: float
    sum_correlation: float
    bound: float

    @property
    def blind(self) -> bool:
        """Whether both correlations are within the bound."""
        return (abs(self.correlation) <= self.bound
                and abs(self.correlation_beyond_sum) <= self.bound)


def _corr(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / den if den > 0 else 0.0


def reconstruction_check(true: NDArray[np.floating], view: NDArray[np.floating],
                         total: NDArray[np.floating]) -> list[SiteReconstruction]:
    """Compare each site's view with its vector.

    Parameters
    ----------
    true : ndarray of shape (n_sites, d)
        The sites' vectors.
    view : ndarray of shape (n_sites, d)
        What the coordinator holds per site, decoded (:func:`secure_view`; the plain
        protocol's view is ``true`` itself).
    total : ndarray of shape (d,)
        The sum the coordinator recovers.

    Returns
    -------
    list of SiteReconstruction, one per site
    """
    x = np.asarray(true, dtype=np.float64)
    v = np.asarray(view, dtype=np.float64)
    s = np.asarray(total, dtype=np.float64)
    if x.ndim != 2 or v.shape != x.shape or s.shape != x.shape[1:]:
        raise DataError(f"expected true and view of one shape (n_sites, d) and total (d,); got "
                        f"{x.shape}, {v.shape} and {s.shape}")
    mean = s / x.shape[0]
    bound = Z_999 / float(np.sqrt(x.shape[1]))
    return [SiteReconstruction(
        correlation=_corr(v[u], x[u]), correlation_beyond_sum=_corr(v[u], x[u] - mean),
        relative_error=float(np.linalg.norm(v[u] - x[u]) / max(np.linalg.norm(x[u]), 1e-300)),
        sum_correlation=_corr(mean, x[u]), bound=bound) for u in range(x.shape[0])]
