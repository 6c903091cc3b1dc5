"""What the monitor compares against: the package's reference profile or a site baseline.

A model package's manifest carries ``reference_profile`` (written by
:mod:`vigil.federation.profile`, format ``vigil-reference-profile/1``): for each
of the 39 grid variables, bin edges and counts of the measured hourly values
summed over the training sites, the number of hours without a value, the
number of training rows, and optionally a histogram of validation
probabilities. Only aggregates: no patient row leaves a site.

A site without such a profile, or one that prefers its own case mix, uses a
*baseline window* instead: its first hours of operation, binned at quantile
edges (:func:`vigil.runtime.monitoring.stats.quantile_edges`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ModelArtifactError
from vigil.features.grid import GRID_COLUMNS
from vigil.runtime.monitoring.stats import effective_size, histogram, quantile_edges

__all__ = ["PROFILE_FORMAT", "Histogram", "Reference"]

PROFILE_FORMAT = "vigil-reference-profile/1"


@dataclass(frozen=True, eq=False)
class Histogram:
    """Binned reference values of one variable (or of the model score).

    Attributes
    ----------
    edges : ndarray of shape (k + 1,)
    counts : ndarray of shape (k,)
        Measured values per bin.
    missing : int
        Rows without a value (0 for the score).
    rows : int
        Rows in the reference.
    n_values, n_rows : float or None
        Effective sample sizes of the values and of the rows (Kish, over the
        patients they come from); None: the counts themselves (a large profile).
    """

    edges: NDArray[np.float64]
    counts: NDArray[np.float64]
    missing: int
    rows: int
    n_values: float | None = None
    n_rows: float | None = None

    @property
    def values_size(self) -> float:
        """Effective number of independent values."""
        return float(self.counts.sum()) if self.n_values is None else self.n_values

    @property
    def rows_size(self) -> float:
        """Effective number of independent rows."""
        return float(self.rows) if self.n_rows is None else self.n_rows

    @property
    def n_bins(self) -> int:
        """Number of bins."""
        return int(self.counts.size)

    def merged(self, max_bins: int) -> Histogram:
        """Merge adjacent bins into at most ``max_bins`` of about equal reference mass.

        Examples
        --------
        >>> h = Histogram(np.arange(5.0), np.array([1.0, 1, 1, 1]), missing=0, rows=4)
        >>> h.merged(2).edges.tolist(), h.merged(2).counts.tolist()
        ([0.0, 2.0, 4.0], [2.0, 2.0])
        """
        if self.n_bins <= max_bins or self.counts.sum() == 0:
            return self
        cum = np.cumsum(self.counts)
        targets = cum[-1] * np.arange(1, max_bins) / max_bins
        cuts = np.searchsorted(cum, targets, side="left") + 1
        keep = np.r_[0, np.unique(np.clip(cuts, 1, self.n_bins - 1)), self.n_bins]
        counts = np.diff(np.r_[0.0, cum][keep])
        return Histogram(edges=self.edges[keep], counts=counts, missing=self.missing,
                         rows=self.rows, n_values=self.n_values, n_rows=self.n_rows)

    @property
    def measured_rate(self) -> float:
        """Share of reference rows with a value."""
        return 1.0 - self.missing / self.rows if self.rows else float("nan")

    def __repr__(self) -> str:
        return f"Histogram(bins={self.n_bins}, measured={int(self.counts.sum())}, rows={self.rows})"


@dataclass(frozen=True, eq=False)
class Reference:
    """Reference histograms of the grid variables and of the score.

    Attributes
    ----------
    source : str
        ``"profile"`` (from a model package) or ``"baseline"`` (the site's own first hours).
    variables : dict of str to Histogram
        By grid column name; variables the reference has no value for are absent.
    score : Histogram or None
        Model probabilities per hourly row.
    """

    source: str
    variables: dict[str, Histogram]
    score: Histogram | None

    def __repr__(self) -> str:
        return (f"Reference(source={self.source!r}, variables={len(self.variables)}, "
                f"score={self.score is not None})")

    @classmethod
    def from_profile(
        cls, profile: Mapping[str, Any], *, where: str = "the manifest"
    ) -> Reference | None:
        """Read a manifest's ``reference_profile``; None when the package has none.

        Raises
        ------
        ModelArtifactError
            When the profile is present but not of the expected format.
        """
        if not profile:
            return None
        fmt = profile.get("format")
        if fmt != PROFILE_FORMAT:
            raise ModelArtifactError(
                f"expected a reference profile of format {PROFILE_FORMAT!r} in {where}, got "
                f"{fmt!r}; re-export the package with this vigil or monitor against the site "
                "baseline"
            )
        try:
            rows = int(profile["rows"])
            variables = {
                name: _histogram(spec, rows) for name, spec in profile["variables"].items()
                if name in GRID_COLUMNS
            }
            score = profile.get("score")
            score_hist = None
            if score:
                total = int(np.sum(score["counts"]))
                score_hist = _histogram({**score, "missing": 0}, total)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelArtifactError(
                f"the reference profile in {where} is malformed ({type(exc).__name__}: {exc}); "
                "re-export the package"
            ) from exc
        return cls(source="profile", variables=variables, score=score_hist)

    @classmethod
    def from_baseline(
        cls,
        values: NDArray[np.floating],
        scores: NDArray[np.floating] | None = None,
        *,
        patients: NDArray[np.integer] | None = None,
        score_patients: NDArray[np.integer] | None = None,
        n_bins: int = 10,
    ) -> Reference:
        """Build a reference from the site's baseline window.

        Parameters
        ----------
        values : ndarray of shape (n_rows, len(GRID_COLUMNS))
            Completed hourly grid rows, NaN where not measured.
        scores : ndarray of shape (n_scores,), optional
            Probabilities of the same window.
        patients, score_patients : ndarray of int, optional
            Patient code of each row and of each score: the baseline's sample
            sizes are then its effective numbers of patients, not of hours.
        n_bins : int, optional
            Quantile bins per variable.

        Returns
        -------
        Reference
        """
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(GRID_COLUMNS):
            raise ValueError(
                f"expected baseline values of shape (n_rows, {len(GRID_COLUMNS)}), got {x.shape}"
            )
        variables = {}
        for j, name in enumerate(GRID_COLUMNS):
            col = x[:, j]
            seen = col[np.isfinite(col)]
            if seen.size == 0:
                continue
            edges = quantile_edges(seen, n_bins=n_bins)
            variables[name] = Histogram(
                edges=edges, counts=histogram(seen, edges).astype(np.float64),
                missing=int(col.size - seen.size), rows=int(col.size),
                n_values=None if patients is None else effective_size(patients[np.isfinite(col)]),
                n_rows=None if patients is None else effective_size(patients),
            )
        score_hist = None
        if scores is not None and np.isfinite(scores).any():
            s = np.asarray(scores, dtype=np.float64)
            s = s[np.isfinite(s)]
            edges = quantile_edges(s, n_bins=n_bins)
            score_hist = Histogram(
                edges=edges, counts=histogram(s, edges).astype(np.float64), missing=0,
                rows=int(s.size),
                n_values=None if score_patients is None else effective_size(score_patients),
            )
        return cls(source="baseline", variables=variables, score=score_hist)


def _histogram(spec: Mapping[str, Any], rows: int) -> Histogram:
    edges = np.asarray(spec["edges"], dtype=np.float64)
    counts = np.asarray(spec["counts"], dtype=np.float64)
    if edges.ndim != 1 or counts.ndim != 1 or edges.size != counts.size + 1 or counts.size == 0:
        raise ValueError(f"{counts.size} counts need {counts.size + 1} edges, got {edges.size}")
    if np.any(np.diff(edges) <= 0) or np.any(counts < 0):
        raise ValueError("edges must increase and counts must be non-negative")
    return Histogram(edges=edges, counts=counts, missing=int(spec.get("missing", 0)), rows=rows)
