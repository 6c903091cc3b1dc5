"""Drift statistics from binned data: pure numpy/scipy, no state and no I/O.

Every statistic compares a *reference* histogram with a *current* one over the
same bins, so the reference can be the aggregate profile shipped in a model
package (no patient rows ever leave a site) or a site's own baseline window.

- Population stability index (Siddiqi, *Credit Risk Scorecards*, Wiley 2006;
  its sampling distribution: Yurdakul, *Statistical properties of the population
  stability index*, PhD thesis, Western Michigan University 2018): under no
  change, ``PSI * n m / (n + m)`` is asymptotically chi-squared with ``k - 1``
  degrees of freedom, which gives :func:`psi_noise_floor`.
- Two-sample Kolmogorov-Smirnov statistic at the bin edges (Smirnov 1948), with
  the asymptotic p-value scipy uses for ``ks_2samp(method="asymp")``.
- Wasserstein-1 distance between the binned distributions (Vaserstein 1969;
  Ramdas, Garcia & Cuturi, Entropy 19:47, 2017), and the *normed* version
  (divided by the reference standard deviation) Evidently uses with threshold
  0.1.
- Jensen-Shannon distance (Lin, IEEE Trans Inf Theory 37:145-151, 1991), the
  square root of the divergence, as :func:`scipy.spatial.distance.jensenshannon`.
- A change of a proportion (missingness rate, alert rate) by the pooled
  two-proportion z-test (Agresti, *Categorical Data Analysis*, 3rd ed., 2013,
  sec. 3.1).
- Kish's effective sample size of rows clustered in patients, the sample size
  the tests use (hours of one patient are not independent).

Bins: ``edges`` of length ``k + 1`` define ``k`` bins; the first and last bins
are open (values below ``edges[0]`` or above ``edges[-1]`` count in them), so a
current value outside the reference range is never dropped. NaN is not binned;
missingness is its own statistic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

__all__ = [
    "PSI_EPS",
    "KSResult",
    "ProportionChange",
    "binned_std",
    "effective_size",
    "histogram",
    "jensen_shannon",
    "ks_binned",
    "normed_wasserstein",
    "proportion_change",
    "psi",
    "psi_noise_floor",
    "quantile_edges",
    "wasserstein_binned",
]

PSI_EPS = 1e-4
"""Share given to an empty bin before the logarithm (Evidently's default)."""


def _counts(x: ArrayLike, name: str) -> NDArray[np.float64]:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d array of bin counts, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must hold finite non-negative counts")
    return a


def _pair(
    reference: ArrayLike, current: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r = _counts(reference, "reference")
    c = _counts(current, "current")
    if r.shape != c.shape:
        raise ValueError(
            f"reference and current must have the same bins, got {r.size} and {c.size} counts; "
            "bin the current values with the reference's edges"
        )
    if r.sum() == 0 or c.sum() == 0:
        raise ValueError(
            f"both histograms need at least one value, got {r.sum():g} reference and "
            f"{c.sum():g} current"
        )
    return r, c


def _edges(edges: ArrayLike, n_bins: int) -> NDArray[np.float64]:
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size != n_bins + 1:
        raise ValueError(f"expected {n_bins + 1} bin edges for {n_bins} bins, got shape {e.shape}")
    if not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ValueError("bin edges must be finite and strictly increasing")
    return e


def quantile_edges(values: ArrayLike, *, n_bins: int = 10) -> NDArray[np.float64]:
    """Bin edges at the quantiles of ``values`` (duplicates merged).

    Parameters
    ----------
    values : array-like of shape (n,)
        Reference values; NaN is ignored.
    n_bins : int, optional
        Wanted number of bins for a continuous variable.

    Returns
    -------
    ndarray of shape (k + 1,)
        Strictly increasing edges. A variable with at most ``n_bins``
        distinct values gets one bin per value plus an empty bin on each side
        (the outer bins are open), so a value never seen in the reference, a
        0 where the reference only had 1s, lands in a bin of its own.

    Examples
    --------
    >>> quantile_edges([0, 0, 1, 1, 1], n_bins=4).tolist()
    [-1.0, -0.5, 0.5, 1.5, 2.0]
    >>> histogram([0, 1, 1], quantile_edges([1, 1])).tolist()
    [1, 2, 0]
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("cannot place bin edges: no finite reference value")
    uniq = np.unique(v)
    if uniq.size <= n_bins:
        half = float(np.min(np.diff(uniq))) / 2 if uniq.size > 1 else 0.5
        mid = (uniq[1:] + uniq[:-1]) / 2
        return np.concatenate(([uniq[0] - 2 * half, uniq[0] - half], mid,
                               [uniq[-1] + half, uniq[-1] + 2 * half]))
    return np.unique(np.quantile(v, np.linspace(0.0, 1.0, n_bins + 1)))


def histogram(values: ArrayLike, edges: ArrayLike) -> NDArray[np.int64]:
    """Count ``values`` in the bins of ``edges``, outer bins open, NaN left out.

    Parameters
    ----------
    values : array-like of shape (n,)
    edges : array-like of shape (k + 1,)

    Returns
    -------
    ndarray of shape (k,)

    Examples
    --------
    >>> histogram([-5.0, 0.5, 1.5, 1.5, 9.0, float("nan")], [0.0, 1.0, 2.0]).tolist()
    [2, 3]
    """
    e = np.asarray(edges, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    idx = np.searchsorted(e[1:-1], v, side="right")
    return np.bincount(idx, minlength=e.size - 1).astype(np.int64)


def psi(reference: ArrayLike, current: ArrayLike, *, eps: float = PSI_EPS) -> float:
    """Compute the population stability index ``sum_i (c_i - r_i) ln(c_i / r_i)`` of bin shares.

    Parameters
    ----------
    reference, current : array-like of shape (k,)
        Bin counts (or shares) over the same bins.
    eps : float, optional
        Shares below ``eps`` are raised to it, so an empty bin gives a large
        but finite value.

    Returns
    -------
    float
        0 for identical shares; 0.1 and 0.25 are the usual "watch" and "act"
        levels (Siddiqi 2006).

    Examples
    --------
    >>> round(psi([50, 50], [25, 75]), 6)
    0.274653
    """
    r, c = _pair(reference, current)
    p = np.maximum(r / r.sum(), eps)
    q = np.maximum(c / c.sum(), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def psi_noise_floor(
    n_bins: int, *, n_reference: float, n_current: float, quantile: float = 0.99
) -> float:
    """Return the PSI that sampling noise alone exceeds with probability ``1 - quantile``.

    Under no change, ``PSI * n m / (n + m)`` is asymptotically chi-squared with
    ``k - 1`` degrees of freedom (Yurdakul 2018), so the floor is
    ``chi2.ppf(quantile, k - 1) * (1/n + 1/m)``.

    Parameters
    ----------
    n_bins : int
        Number of bins ``k``.
    n_reference, n_current : float
        Effective sample sizes ``n`` and ``m`` (independent units: patients,
        not their correlated hourly rows). ``inf`` for an exact reference.
    quantile : float, optional

    Returns
    -------
    float

    Examples
    --------
    >>> round(psi_noise_floor(2, n_reference=float("inf"), n_current=100), 4)
    0.0663
    """
    if n_bins < 2:
        return 0.0
    if n_current <= 0 or n_reference <= 0:
        return float("inf")
    # the chi-square quantile as scipy.stats.chi2.ppf computes it (scipy.stats is not imported
    # by the runtime: it costs about 50 MB of memory)
    chi2 = 2.0 * special.gammaincinv((n_bins - 1) / 2.0, quantile)
    return float(chi2 * (1.0 / n_reference + 1.0 / n_current))


@dataclass(frozen=True)
class KSResult:
    """A two-sample Kolmogorov-Smirnov comparison.

    Attributes
    ----------
    statistic : float
        Largest distance between the two empirical CDFs at the bin edges.
    pvalue : float
        Asymptotic p-value (conservative for binned data: binning can only
        lower the statistic).
    """

    statistic: float
    pvalue: float


def ks_binned(
    reference: ArrayLike,
    current: ArrayLike,
    *,
    n_reference: float | None = None,
    n_current: float | None = None,
    limit: bool = False,
) -> KSResult:
    """Two-sample Kolmogorov-Smirnov test on binned data.

    ``D = max_j |F_ref(j) - F_cur(j)|`` over the cumulative bin shares; the
    p-value is ``kstwo.sf(D, round(n m / (n + m)))``, the asymptotic form of
    :func:`scipy.stats.ks_2samp`, or with ``limit`` Kolmogorov's limiting
    law ``kolmogorov(D sqrt(n m / (n + m)))`` (Kolmogorov 1933), much faster
    and close to it for effective sizes above about 20. When every distinct
    value has its own bin, ``D`` equals the statistic on the raw samples.

    Parameters
    ----------
    reference, current : array-like of shape (k,)
        Bin counts over the same bins.
    n_reference, n_current : float, optional
        Effective sample sizes for the p-value; default the count totals.
    limit : bool, optional
        Use the limiting distribution.

    Returns
    -------
    KSResult

    Examples
    --------
    >>> ks_binned([10, 10], [5, 15]).statistic
    0.25
    """
    r, c = _pair(reference, current)
    d = float(np.max(np.abs(np.cumsum(r) / r.sum() - np.cumsum(c) / c.sum())))
    n = float(r.sum() if n_reference is None else n_reference)
    m = float(c.sum() if n_current is None else n_current)
    en = n if not np.isfinite(m) else m if not np.isfinite(n) else n * m / (n + m)
    if limit:
        pvalue = float(special.kolmogorov(d * math.sqrt(max(en, 1.0))))
    else:
        from scipy import stats as sps  # only here: the runtime uses ``limit``

        pvalue = float(sps.kstwo.sf(d, max(1, round(en))))
    return KSResult(statistic=d, pvalue=min(1.0, max(0.0, pvalue)))


def _centers(edges: NDArray[np.float64]) -> NDArray[np.float64]:
    return (edges[1:] + edges[:-1]) / 2


def wasserstein_binned(reference: ArrayLike, current: ArrayLike, edges: ArrayLike) -> float:
    """Wasserstein-1 distance between two histograms, each bin's mass at its centre.

    ``W1 = sum_j |F_ref(j) - F_cur(j)| (x_{j+1} - x_j)`` over bin centres ``x``
    (Ramdas et al. 2017, eq. 2), equal to
    ``scipy.stats.wasserstein_distance(x, x, reference, current)``.

    Parameters
    ----------
    reference, current : array-like of shape (k,)
        Bin counts.
    edges : array-like of shape (k + 1,)

    Returns
    -------
    float
        In the unit of the binned variable.

    Examples
    --------
    >>> wasserstein_binned([1, 0], [0, 1], [0.0, 1.0, 2.0])
    1.0
    """
    r, c = _pair(reference, current)
    x = _centers(_edges(edges, r.size))
    gap = np.abs(np.cumsum(r) / r.sum() - np.cumsum(c) / c.sum())[:-1]
    return float(np.sum(gap * np.diff(x)))


def binned_std(counts: ArrayLike, edges: ArrayLike) -> float:
    """Return the standard deviation of a histogram, each bin's mass at its centre.

    Examples
    --------
    >>> binned_std([1, 1], [0.0, 1.0, 2.0])
    0.5
    """
    w = _counts(counts, "counts")
    x = _centers(_edges(edges, w.size))
    if w.sum() == 0:
        raise ValueError("cannot take the spread of an empty histogram")
    mean = float(np.sum(w * x) / w.sum())
    return float(np.sqrt(np.sum(w * (x - mean) ** 2) / w.sum()))


def normed_wasserstein(reference: ArrayLike, current: ArrayLike, edges: ArrayLike) -> float:
    """Wasserstein-1 distance in units of the reference standard deviation.

    Evidently's default numerical drift test for references above 1,000 rows,
    drift at 0.1. A reference with no spread (one bin holds everything) uses
    the width of that bin as its scale.

    Examples
    --------
    >>> normed_wasserstein([1, 1], [0, 2], [0.0, 1.0, 2.0])
    1.0
    """
    e = np.asarray(edges, dtype=np.float64)
    scale = binned_std(reference, e)
    if scale == 0.0:
        scale = float(np.min(np.diff(e)))
    return wasserstein_binned(reference, current, e) / scale


def jensen_shannon(reference: ArrayLike, current: ArrayLike, *, base: float = 2.0) -> float:
    """Jensen-Shannon distance, ``sqrt((KL(p||m) + KL(q||m)) / 2)`` with ``m = (p + q) / 2``.

    Same definition as :func:`scipy.spatial.distance.jensenshannon`; with
    ``base=2`` it lies in [0, 1] (Evidently's categorical drift at 0.1).

    Examples
    --------
    >>> jensen_shannon([1, 0], [0, 1])
    1.0
    """
    r, c = _pair(reference, current)
    p, q = r / r.sum(), c / c.sum()
    m = (p + q) / 2

    def kl(a: NDArray[np.float64]) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))

    div = (kl(p) + kl(q)) / 2 / np.log(base)
    return float(np.sqrt(max(div, 0.0)))


@dataclass(frozen=True)
class ProportionChange:
    """A proportion (missingness, alert rate) in the reference and now.

    Attributes
    ----------
    reference_rate, current_rate : float
    difference : float
        ``current_rate - reference_rate``.
    z : float
        Pooled two-proportion z statistic (0 when both rates are 0 or 1).
    pvalue : float
        Two-sided.
    """

    reference_rate: float
    current_rate: float
    difference: float
    z: float
    pvalue: float


def proportion_change(
    *, reference_events: float, reference_n: float, current_events: float, current_n: float
) -> ProportionChange:
    """Compare two proportions with the pooled two-proportion z-test.

    ``z = (p1 - p0) / sqrt(pbar (1 - pbar) (1/n0 + 1/n1))`` (Agresti 2013,
    sec. 3.1); its square is Pearson's chi-squared of the 2x2 table.

    Parameters
    ----------
    reference_events, reference_n : float
        Events (e.g. missing values) and trials in the reference.
    current_events, current_n : float
        The same now.

    Returns
    -------
    ProportionChange

    Examples
    --------
    >>> r = proportion_change(reference_events=10, reference_n=100,
    ...                       current_events=30, current_n=100)
    >>> round(r.z, 4), round(r.pvalue, 5)
    (3.5355, 0.00041)
    """
    if not (0 < reference_n < float("inf") and 0 < current_n < float("inf")):
        raise ValueError(
            f"both proportions need a finite number of trials, got reference_n={reference_n} "
            f"and current_n={current_n}"
        )
    if not (0 <= reference_events <= reference_n and 0 <= current_events <= current_n):
        raise ValueError("events must lie between 0 and the number of trials")
    p0 = reference_events / reference_n
    p1 = current_events / current_n
    pooled = (reference_events + current_events) / (reference_n + current_n)
    var = pooled * (1 - pooled) * (1 / reference_n + 1 / current_n)
    z = 0.0 if var <= 0 else (p1 - p0) / float(np.sqrt(var))
    if var <= 0 and p1 != p0:
        z = float(np.sign(p1 - p0)) * float("inf")
    pvalue = math.erfc(abs(z) / math.sqrt(2.0))
    return ProportionChange(
        reference_rate=float(p0), current_rate=float(p1), difference=float(p1 - p0),
        z=float(z), pvalue=pvalue,
    )


def effective_size(codes: NDArray[np.integer]) -> float:
    """Kish's effective sample size of rows clustered in patients.

    ``(sum m_i)^2 / sum m_i^2`` for ``m_i`` rows of patient ``i``: the number of
    independent values the rows are worth when a patient's rows are fully
    correlated (Kish, *Survey Sampling*, Wiley 1965, sec. 11.7).

    Examples
    --------
    >>> effective_size(np.array([0, 0, 0, 1]))
    1.6
    """
    if codes.size == 0:
        return 0.0
    m = np.bincount(codes).astype(np.float64)
    return float(m.sum() ** 2 / np.sum(m * m))
