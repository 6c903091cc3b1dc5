"""What a release records of the sites' privacy: this run's (ε, δ), refusals, the running sum.

The registry's view (:class:`~vigil.federation.registry.Registry`) of what each
site spent is built from the released packages alone:

- ``sites``: each site's (ε, δ) in this run, from the manifest's
  ``training.differential_privacy`` (the achieved ε of the accountant, or with DP
  trees the network and trees composed, and the ε the site was charged: the
  run's target, see :mod:`vigil.federation.budget`);
- ``refused``: the sites that refused the run for their privacy budget, with
  their reason, from the package's round history (``history.json``);
- ``cumulative``: per site, the charges summed over every release so far by
  basic composition (Dwork & Roth 2014, Theorem 3.16), and the runs it
  trained in without DP.

The sites' own ledgers are the authority: they also hold runs that were
charged but never released (a run that failed after training), so the
registry's sum is a lower bound of a site's ledger, never more.
"""

from __future__ import annotations

import json
from typing import Any

from vigil.core.package import ModelPackage
from vigil.federation.budget import BUDGET_REASON
from vigil.federation.history import HISTORY_FILE

__all__ = ["cumulative_privacy", "run_privacy"]


def _refused(package: ModelPackage) -> dict[str, str]:
    path = package.path / HISTORY_FILE
    if not path.is_file():
        return {}
    try:
        rounds = json.loads(path.read_text())["rounds"]
    except (ValueError, KeyError):
        return {}
    out: dict[str, str] = {}
    for record in rounds:
        for site in record.get("sites", []):
            if site.get("reason") == BUDGET_REASON:
                out.setdefault(site["site"], site.get("detail") or BUDGET_REASON)
    return dict(sorted(out.items()))


def run_privacy(package: ModelPackage) -> dict[str, Any]:
    """Return a release's ``training.privacy`` without its ``cumulative`` part.

    Parameters
    ----------
    package : ModelPackage

    Returns
    -------
    dict
        ``dp`` (bool), ``sites`` (name to ``epsilon``, ``delta``, ``charged_epsilon``)
        and ``refused`` (name to reason); every site that trained is in ``trained``.
    """
    m = package.manifest
    dp = m.training.get("differential_privacy")
    refused = _refused(package)
    trained = sorted(set(m.training.get("sites") or {}) - set(refused))
    sites: dict[str, dict[str, float]] = {}
    if dp:
        target = float(dp["target_epsilon"])
        composed = dp.get("composed_epsilon") or {}  # DP trees: network and trees together
        for name, spent in sorted((dp.get("sites") or {}).items()):
            sites[name] = {"epsilon": float(composed.get(name, spent["epsilon"])),
                           "delta": float(spent["delta"]), "charged_epsilon": target}
    return {"dp": bool(dp), "trained": trained, "sites": sites, "refused": refused}


def cumulative_privacy(previous: dict[str, Any] | None, run: dict[str, Any]) -> dict[str, Any]:
    """Add a run's charges to the previous release's cumulative ones (basic composition).

    Parameters
    ----------
    previous : dict or None
        The previous release's ``training.privacy`` (None for the first release,
        or one made before releases recorded privacy).
    run : dict
        This release's (:func:`run_privacy`).

    Returns
    -------
    dict
        Site name to ``epsilon``, ``delta`` (sums of the charges), ``runs`` (DP runs)
        and ``non_private_runs``.

    Examples
    --------
    >>> one = {"dp": True, "trained": ["a"], "refused": {},
    ...        "sites": {"a": {"epsilon": 1.9, "delta": 1e-4, "charged_epsilon": 2.0}}}
    >>> first = cumulative_privacy(None, one)
    >>> cumulative_privacy({**one, "cumulative": first}, one)["a"]
    {'epsilon': 4.0, 'delta': 0.0002, 'runs': 2, 'non_private_runs': 0}
    """
    total: dict[str, dict[str, Any]] = {
        name: dict(v) for name, v in ((previous or {}).get("cumulative") or {}).items()
    }
    for name in run["trained"]:
        entry = total.setdefault(name, {"epsilon": 0.0, "delta": 0.0, "runs": 0,
                                        "non_private_runs": 0})
        spent = run["sites"].get(name)
        if spent is None:
            if not run["dp"]:
                entry["non_private_runs"] += 1
            continue
        entry["epsilon"] += spent["charged_epsilon"]
        entry["delta"] += spent["delta"]
        entry["runs"] += 1
    return dict(sorted(total.items()))
