"""A :class:`~vigil.federation.driver.FederationResult` on disk: what the ServerApp hands back.

The ServerApp runs in its own process under the SuperLink; it writes the
result of the run into ``OUT_DIR`` and the coordinator's ``vigil federation
run`` reads it back to export the model package. The files hold only what the
driver holds: global weights, the round history, and the sites' aggregate
statistics, evaluations and privacy spent.

``OUT_DIR/``
    ``weights.npz`` (in state order), ``history.json``, ``statistics.npz`` and
    ``evaluations.npz`` (``SITE/FIELD`` arrays), ``result.json`` (privacy per
    site, the round whose model was kept, the pooled metrics, the run
    settings, per-site traffic and the round timings) and, last, ``DONE``
    (its presence says the rest is complete). With boosted trees also
    ``trees.npz`` (:func:`~vigil.federation.boosting.trees_to_arrays`),
    ``hybrid_evaluations.npz`` and ``result.json``'s ``hybrid`` (the fusion's
    standardization and Platt scaling, the exclusions, the sites).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vigil.core.errors import ModelArtifactError
from vigil.federation.boosting import (
    Boosted,
    BoostingPlan,
    Exclusion,
    ExclusionReason,
    trees_from_arrays,
    trees_to_arrays,
)
from vigil.federation.driver import FederationResult
from vigil.federation.evaluation import pool_evaluations
from vigil.federation.history import HISTORY_FILE, History
from vigil.federation.hybrid import HybridResult, HybridTrees, Standardization
from vigil.federation.messages import PrivacySpent, SiteEvaluation, SiteStatistics

__all__ = [
    "DONE_FILE",
    "EVENTS_FILE",
    "RESULT_FILE",
    "RunOutput",
    "load_result",
    "save_result",
]

DONE_FILE = "DONE"
EVENTS_FILE = "events.jsonl"
"""The ServerApp's progress, one JSON object per line (written as the run goes)."""
RESULT_FILE = "result.json"
T = TypeVar("T", SiteStatistics, SiteEvaluation)


@dataclass(frozen=True, eq=False)
class RunOutput:
    """A finished Flower run as read from disk.

    Attributes
    ----------
    result : FederationResult
    info : dict
        ``settings`` (the run config), ``traffic`` (bytes per site) and
        ``rounds`` (seconds per round), as the ServerApp wrote them.
    hybrid : HybridResult or None
        The trees grown after the rounds, if the run had any.
    """

    result: FederationResult
    info: dict[str, Any]
    hybrid: HybridResult | None = None


def _save_messages(path: Path, messages: dict[str, Any]) -> None:
    arrays = {f"{site}/{k}": np.asarray(v) for site, m in messages.items()
              for k, v in m.payload().items()}
    np.savez(path, **arrays)


def _load_messages(path: Path, cls: type[T]) -> dict[str, T]:
    fields: dict[str, dict[str, Any]] = {}
    with np.load(path) as z:
        for key in z.files:
            site, name = key.rsplit("/", 1)
            value = z[key]
            fields.setdefault(site, {})[name] = value.item() if value.ndim == 0 else value
    return {site: cls(site=site, **f) for site, f in fields.items()}


def save_result(out_dir: str | Path, result: FederationResult, info: dict[str, Any],
                hybrid: HybridResult | None = None) -> Path:
    """Write a run's result; ``DONE`` is written last.

    Parameters
    ----------
    out_dir : str or Path
    result : FederationResult
    info : dict
        JSON-ready run information (settings, traffic, round timings).
    hybrid : HybridResult or None, optional
        The trees grown after the rounds.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE_FILE).unlink(missing_ok=True)
    np.savez(out / "weights.npz", **result.weights)
    (out / HISTORY_FILE).write_bytes(result.history.to_json())
    _save_messages(out / "statistics.npz", result.statistics)
    _save_messages(out / "evaluations.npz", {e.site: e for e in result.evaluations})
    body = {
        "best_round": result.best_round,
        "privacy": {site: p.to_dict() for site, p in result.privacy.items()},
        "pooled": result.pooled.to_dict(),
        **info,
    }
    if hybrid is not None:
        np.savez(out / "trees.npz", **trees_to_arrays(hybrid.part.trees))
        _save_messages(out / "hybrid_evaluations.npz", {e.site: e for e in hybrid.evaluations})
        part = hybrid.part
        body["hybrid"] = {
            "base": part.base, "plan": asdict(part.plan),
            "standardization": part.standardization.to_dict(),
            "intercept": part.intercept, "slope": part.slope,
            "exclusions": [asdict(e) for e in hybrid.boosted.exclusions],
            "sites": list(hybrid.boosted.sites), "seconds": hybrid.seconds,
        }
    (out / RESULT_FILE).write_text(json.dumps(body, indent=1, default=_jsonable) + "\n")
    (out / DONE_FILE).write_text("ok\n")
    return out


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


def load_result(out_dir: str | Path) -> RunOutput:
    """Read back what :func:`save_result` wrote.

    Raises
    ------
    ModelArtifactError
        If the run did not finish (no ``DONE``) or a file is missing or unreadable.
    """
    out = Path(out_dir)
    if not (out / DONE_FILE).is_file():
        raise ModelArtifactError(
            f"expected a finished run in {out} ({DONE_FILE} missing); see the run's log "
            "(`flwr log RUN_ID`) and events.jsonl", path=str(out),
        )
    try:
        with np.load(out / "weights.npz") as z:
            weights = OrderedDict((k, z[k]) for k in z.files)
        history = History.from_json((out / HISTORY_FILE).read_bytes())
        statistics = _load_messages(out / "statistics.npz", SiteStatistics)
        by_site = _load_messages(out / "evaluations.npz", SiteEvaluation)
        body = json.loads((out / RESULT_FILE).read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelArtifactError(f"expected a complete run result: {exc}", path=str(out)) from None
    evaluations = [by_site[s] for s in sorted(by_site)]
    privacy = {site: PrivacySpent(**p) for site, p in body.pop("privacy", {}).items()}
    body.pop("pooled", None)
    hybrid = None if "hybrid" not in body else _load_hybrid(out, body.pop("hybrid"))
    result = FederationResult(
        weights=weights, best_round=int(body.pop("best_round")), history=history,
        statistics=dict(sorted(statistics.items())),
        evaluations=evaluations, pooled=pool_evaluations(evaluations), privacy=privacy,
    )
    return RunOutput(result=result, info=body, hybrid=hybrid)


def _load_hybrid(out: Path, saved: dict[str, Any]) -> HybridResult:
    try:
        with np.load(out / "trees.npz") as z:
            trees = trees_from_arrays({k: z[k] for k in z.files})
        by_site = _load_messages(out / "hybrid_evaluations.npz", SiteEvaluation)
        plan = BoostingPlan(**saved["plan"])
        part = HybridTrees(float(saved["base"]), trees,
                           Standardization(**saved["standardization"]), plan,
                           float(saved["intercept"]), float(saved["slope"]))
        exclusions = tuple(Exclusion(**{**e, "reason": ExclusionReason(e["reason"])})
                           for e in saved["exclusions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelArtifactError(f"expected the run's trees: {exc}", path=str(out)) from None
    evaluations = [by_site[s] for s in sorted(by_site)]
    boosted = Boosted(part.base, trees, exclusions, tuple(saved["sites"]))
    return HybridResult(part, boosted, evaluations, pool_evaluations(evaluations),
                        float(saved["seconds"]))
