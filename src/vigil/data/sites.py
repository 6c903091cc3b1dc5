"""Partitioning patients into federated sites.

Schemes (``--sites``):

- ``hospital``: one site per hospital system, ``A`` and ``B``.
- ``hospital-unit``: ``A-MICU``, ``A-SICU``, ``B-MICU``, ``B-SICU``. A patient
  whose unit is never recorded goes to one of its hospital's two sites by a
  salted hash of its identifier (deterministic, about half each).
- ``random:N``: N sites of about equal size, by a hash of the identifier.
- ``dirichlet:N:ALPHA``: label-skewed non-IID sites: for each outcome class,
  the share of its patients at each site is drawn from Dirichlet(ALPHA)
  (Hsu et al., arXiv:1909.06335, 2019); smaller ALPHA, more skew. Seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.core.errors import ConfigError
from vigil.data.loader import PhysioNetTable
from vigil.data.splits import patient_uniform

__all__ = ["SiteScheme", "parse_scheme", "partition", "site_summary"]


@dataclass(frozen=True)
class SiteScheme:
    """A parsed ``--sites`` value.

    Parameters
    ----------
    kind : str
        ``hospital``, ``hospital-unit``, ``random`` or ``dirichlet``.
    n : int
        Number of sites for ``random`` and ``dirichlet``.
    alpha : float
        Dirichlet concentration.
    """

    kind: str
    n: int = 0
    alpha: float = 0.0


def parse_scheme(text: str) -> SiteScheme:
    """Parse ``hospital``, ``hospital-unit``, ``random:N`` or ``dirichlet:N:ALPHA``.

    Raises
    ------
    ConfigError
        Naming the accepted forms, if ``text`` is none of them.
    """
    forms = "hospital, hospital-unit, random:N or dirichlet:N:ALPHA"
    parts = text.strip().split(":")
    try:
        if parts == ["hospital"]:
            return SiteScheme("hospital")
        if parts == ["hospital-unit"]:
            return SiteScheme("hospital-unit")
        if parts[0] == "random" and len(parts) == 2:
            scheme = SiteScheme("random", n=int(parts[1]))
        elif parts[0] == "dirichlet" and len(parts) == 3:
            scheme = SiteScheme("dirichlet", n=int(parts[1]), alpha=float(parts[2]))
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(f"expected a site scheme {forms}; got {text!r}", key="sites") from None
    if scheme.n < 1 or (scheme.kind == "dirichlet" and scheme.alpha <= 0):
        raise ConfigError(f"expected N >= 1 and ALPHA > 0 in {forms}; got {text!r}", key="sites")
    return scheme


def _patient_unit(table: PhysioNetTable) -> NDArray[np.str_]:
    starts = table.grid.starts[:-1]
    u1 = np.nan_to_num(table.grid.column("Unit1"), nan=0.0)
    u2 = np.nan_to_num(table.grid.column("Unit2"), nan=0.0)
    micu = np.maximum.reduceat(u1, starts) > 0 if starts.size else np.zeros(0, bool)
    sicu = np.maximum.reduceat(u2, starts) > 0 if starts.size else np.zeros(0, bool)
    coin = patient_uniform(table.grid.patient_ids, salt="vigil-unit-v1") < 0.5
    return np.where(micu, "MICU", np.where(sicu, "SICU", np.where(coin, "MICU", "SICU")))


def partition(
    table: PhysioNetTable, scheme: SiteScheme | str, *, seed: int = 0
) -> dict[str, NDArray[np.int64]]:
    """Assign every patient to exactly one site.

    Parameters
    ----------
    table : PhysioNetTable
    scheme : SiteScheme or str
    seed : int, optional
        Seed of the Dirichlet draw (other schemes do not draw).

    Returns
    -------
    dict of str to ndarray
        Site name to the positions of its patients, ascending; sites sorted by name.
    """
    if isinstance(scheme, str):
        scheme = parse_scheme(scheme)
    n = table.grid.n_patients
    hosp = table.patient_hospital
    if scheme.kind == "hospital":
        labels = hosp
    elif scheme.kind == "hospital-unit":
        labels = np.char.add(np.char.add(hosp.astype(str), "-"), _patient_unit(table))
    elif scheme.kind == "random":
        u = patient_uniform(table.grid.patient_ids, salt=f"vigil-random-{seed}")
        labels = np.array([f"site{int(x * scheme.n) + 1}" for x in u]) if n else np.zeros(0, str)
    else:
        rng = np.random.default_rng(seed)
        septic = table.patient_septic()
        site_of = np.zeros(n, dtype=np.int64)
        order = np.argsort(patient_uniform(table.grid.patient_ids, salt=f"vigil-dir-{seed}"))
        for cls in (False, True):
            members = order[septic[order] == cls]
            shares = rng.dirichlet(np.full(scheme.n, scheme.alpha))
            cuts = np.round(np.cumsum(shares)[:-1] * members.size).astype(np.int64)
            for k, part in enumerate(np.split(members, cuts)):
                site_of[part] = k
        labels = np.array([f"site{k + 1}" for k in site_of]) if n else np.zeros(0, str)
    return {str(s): np.flatnonzero(labels == s) for s in sorted(set(labels.tolist()))}


def site_summary(table: PhysioNetTable, sites: dict[str, NDArray[np.int64]]) -> pd.DataFrame:
    """Patients, rows, septic patients and prevalence per site.

    Returns
    -------
    DataFrame of shape (n_sites, 5)
        Columns ``site``, ``patients``, ``rows``, ``septic``, ``prevalence``.
    """
    lengths = np.diff(table.grid.starts)
    septic = table.patient_septic()
    records = [
        {
            "site": name,
            "patients": int(idx.size),
            "rows": int(lengths[idx].sum()),
            "septic": int(septic[idx].sum()),
            "prevalence": float(septic[idx].mean()) if idx.size else float("nan"),
        }
        for name, idx in sites.items()
    ]
    return pd.DataFrame.from_records(
        records, columns=["site", "patients", "rows", "septic", "prevalence"]
    )
