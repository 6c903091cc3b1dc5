"""Maximum-likelihood logistic regression on a few columns, with an offset and sign constraints.

Every parametric recalibration map of this package is a logistic regression
of the outcome on one to three functions of the model's probability ``p``
(Cox, Biometrika 45:562-565, 1958; Van Calster et al., BMC Med 17:230, 2019;
Kull, Silva Filho & Flach, AISTATS 2017). They are fitted here by Newton's
method with step halving, which converges quadratically on these small,
strictly convex problems.

A non-negativity constraint on some coefficients (the slope of logistic
recalibration, ``a`` and ``b`` of beta calibration) is handled exactly by
enumerating the faces of the feasible box: the constrained optimum of a convex
function is the unconstrained optimum on the face whose relative interior
contains it, so the best feasible face optimum is the constrained optimum.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError

__all__ = ["EPS", "LogisticFit", "fit_logistic", "logit", "separated", "sigmoid"]

EPS = 1e-7
"""Probabilities are clipped to ``[EPS, 1 - EPS]`` before any logarithm."""


def logit(p: NDArray[np.floating]) -> NDArray[np.float64]:
    """``ln(p / (1 - p))`` of probabilities clipped to ``[EPS, 1 - EPS]``, shape of ``p``."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def sigmoid(z: NDArray[np.floating]) -> NDArray[np.float64]:
    """Compute the logistic function ``1 / (1 + exp(-z))``, computed without overflow."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def separated_each(score: NDArray[np.floating], y: NDArray[np.integer] | NDArray[np.bool_],
                   weights: NDArray[np.floating]) -> NDArray[np.bool_]:
    """:func:`separated` for many weightings of the same rows at once (bootstrap resamples).

    Parameters
    ----------
    score : ndarray of shape (n_samples,)
    y : ndarray of shape (n_samples,)
        0/1 outcomes.
    weights : ndarray of shape (n_weightings, n_samples)
        A row counts in a weighting where its weight is > 0.

    Returns
    -------
    ndarray of bool, shape (n_weightings,)
    """
    s = np.asarray(score, dtype=np.float64)
    yb = np.asarray(y) == 1
    drawn = np.asarray(weights) > 0
    top_negative = np.where(drawn & ~yb, s, -np.inf).max(axis=1)
    low_positive = np.where(drawn & yb, s, np.inf).min(axis=1)
    both = (drawn & yb).any(axis=1) & (drawn & ~yb).any(axis=1)
    return both & (top_negative <= low_positive)


def separated(score: NDArray[np.floating], y: NDArray[np.integer] | NDArray[np.floating],
              sample_weight: NDArray[np.floating] | None = None) -> bool:
    """Whether a non-decreasing map of ``score`` separates the outcomes perfectly.

    True when both outcomes occur and no row with outcome 0 scores above any row
    with outcome 1 (complete or quasi-complete separation, rows of zero weight
    ignored). A logistic fit increasing in the score then has no finite
    maximum-likelihood estimate: its slope grows until the iterations stop, and
    the map is a near step (Albert & Anderson, Biometrika 71:1-10, 1984).

    Parameters
    ----------
    score : ndarray of shape (n_samples,)
    y : ndarray of shape (n_samples,)
        0/1 outcomes.
    sample_weight : ndarray of shape (n_samples,), optional
    """
    w = np.ones(np.shape(score)) if sample_weight is None else np.asarray(sample_weight)
    return bool(separated_each(score, y, w[np.newaxis])[0])


@dataclass(frozen=True)
class LogisticFit:
    """A fitted logistic regression ``logit P(y=1) = offset + intercept + x @ coef``.

    Attributes
    ----------
    intercept : float
    coef : ndarray of shape (n_columns,)
    log_likelihood : float
        Weighted log-likelihood at the optimum.
    n_iter : int
        Newton iterations used (summed over the faces tried).
    """

    intercept: float
    coef: NDArray[np.float64]
    log_likelihood: float
    n_iter: int


def _log_likelihood(
    eta: NDArray[np.float64], y: NDArray[np.float64], w: NDArray[np.float64]
) -> float:
    return float(np.sum(w * (y * eta - np.logaddexp(0.0, eta))))


def _newton(
    design: NDArray[np.float64],
    y: NDArray[np.float64],
    w: NDArray[np.float64],
    offset: NDArray[np.float64],
    *,
    max_iter: int,
    tol: float,
) -> tuple[NDArray[np.float64], float, int]:
    """Unconstrained MLE of ``beta`` in ``logit P = offset + design @ beta``."""
    beta = np.zeros(design.shape[1])
    eta = offset + design @ beta
    ll = _log_likelihood(eta, y, w)
    for it in range(1, max_iter + 1):
        p = sigmoid(eta)
        grad = design.T @ (w * (y - p))
        hess = (design * (w * p * (1.0 - p))[:, None]).T @ design
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while True:
            cand = beta + t * step
            eta_c = offset + design @ cand
            ll_c = _log_likelihood(eta_c, y, w)
            if ll_c >= ll - 1e-12 * abs(ll) or t < 1e-10:
                break
            t *= 0.5
        beta, eta, ll_old, ll = cand, eta_c, ll, ll_c
        small_step = np.max(np.abs(t * step), initial=0.0) < tol
        if small_step or abs(ll - ll_old) < tol * 1e-3 * (1.0 + abs(ll)):
            return beta, ll, it
    raise DataError(
        f"logistic recalibration did not converge in {max_iter} Newton iterations (the outcome "
        "may be perfectly separated by the score); use more data or --method isotonic"
    )


def fit_logistic(
    x: NDArray[np.floating],
    y: NDArray[np.integer] | NDArray[np.floating],
    *,
    offset: NDArray[np.floating] | None = None,
    sample_weight: NDArray[np.floating] | None = None,
    nonnegative: tuple[int, ...] = (),
    max_iter: int = 100,
    tol: float = 1e-10,
) -> LogisticFit:
    """Fit ``logit P(y=1) = offset + intercept + x @ coef`` by maximum likelihood.

    Parameters
    ----------
    x : ndarray of shape (n_samples, n_columns)
        Covariates (``n_columns`` may be 0: intercept only).
    y : ndarray of shape (n_samples,)
        0/1 outcomes.
    offset : ndarray of shape (n_samples,), optional
        Fixed term with coefficient 1 (e.g. the model's logit).
    sample_weight : ndarray of shape (n_samples,), optional
    nonnegative : tuple of int, optional
        Columns of ``x`` whose coefficient must be >= 0.
    max_iter : int, optional
        Newton iterations per face.
    tol : float, optional
        Convergence tolerance on the Newton step.

    Returns
    -------
    LogisticFit

    Raises
    ------
    DataError
        If Newton's method does not converge (separated data).

    Examples
    --------
    >>> fit = fit_logistic(np.zeros((4, 0)), np.array([0, 0, 0, 1]))
    >>> round(fit.intercept, 6) == round(float(np.log(1 / 3)), 6)
    True
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(y), -1)
    yf = np.asarray(y, dtype=np.float64)
    w = np.ones_like(yf) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    off = np.zeros_like(yf) if offset is None else np.asarray(offset, dtype=np.float64)
    k = x.shape[1]
    best: LogisticFit | None = None
    total_iter = 0
    for n_fixed in range(len(nonnegative) + 1):
        for fixed in itertools.combinations(nonnegative, n_fixed):
            free = [j for j in range(k) if j not in fixed]
            design = np.column_stack([np.ones_like(yf), x[:, free]])
            beta, ll, it = _newton(design, yf, w, off, max_iter=max_iter, tol=tol)
            total_iter += it
            coef = np.zeros(k)
            coef[free] = beta[1:]
            if np.any(coef[list(nonnegative)] < 0):
                continue
            if best is None or ll > best.log_likelihood:
                best = LogisticFit(float(beta[0]), coef, ll, total_iter)
        if best is not None and n_fixed == 0:
            break  # the unconstrained optimum is feasible, so it is the constrained one
    assert best is not None  # the face with every constrained column at 0 is always feasible
    return LogisticFit(best.intercept, best.coef, best.log_likelihood, total_iter)
