"""The round history of a federated training: per round and site, what happened.

Kept in the model package as ``history.json`` and printed by
``vigil federate history DIR``. It holds only aggregate numbers: losses,
AUROCs, example counts, timings, privacy spent, and the reason of every
rejection or dropout.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from vigil.core.errors import ModelArtifactError

__all__ = ["HISTORY_FILE", "History", "RoundRecord", "SiteRound", "Status"]

HISTORY_FILE = "history.json"


class Status(StrEnum):
    """What became of a site's update in a round."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DROPPED = "dropped"


@dataclass(frozen=True)
class SiteRound:
    """One site in one round.

    Attributes
    ----------
    site : str
    status : Status
    reason : str or None
        Rejection rule (``schema``, ``non-finite``, ``examples``, ``norm``,
        ``direction``) or dropout cause (``error``, ``timeout``).
    detail : str or None
        The numbers or the error type behind the reason.
    num_examples : int or None
    train_loss : float or None
        Mean loss of the site's last local epoch.
    seconds : float
        Wall time of the site's ``fit``.
    valid_loss, valid_auroc : float or None
        The site's validation metrics of the model after this round.
    epsilon : float or None
        Privacy spent so far under DP-SGD.
    """

    site: str
    status: Status
    reason: str | None = None
    detail: str | None = None
    num_examples: int | None = None
    train_loss: float | None = None
    seconds: float = 0.0
    valid_loss: float | None = None
    valid_auroc: float | None = None
    epsilon: float | None = None


@dataclass(frozen=True)
class RoundRecord:
    """One round.

    Attributes
    ----------
    round : int
    aggregated : bool
        False when fewer than ``min_sites`` updates were accepted: the global
        model was left unchanged.
    sites : tuple of SiteRound
        In site-name order.
    valid_auroc, valid_utility, valid_loss : float or None
        Pooled validation metrics of the model after the round.
    """

    round: int
    aggregated: bool
    sites: tuple[SiteRound, ...]
    valid_auroc: float | None = None
    valid_utility: float | None = None
    valid_loss: float | None = None

    def by_status(self, status: Status) -> list[SiteRound]:
        """Return the sites of the round with this status."""
        return [s for s in self.sites if s.status is status]


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    return value


@dataclass(frozen=True)
class History:
    """All rounds of a training.

    Attributes
    ----------
    rounds : tuple of RoundRecord
    """

    rounds: tuple[RoundRecord, ...]

    def __repr__(self) -> str:
        return f"History(n_rounds={len(self.rounds)})"

    def events(self, status: Status) -> list[tuple[int, SiteRound]]:
        """Return ``(round, site record)`` of every rejection or dropout."""
        return [(r.round, s) for r in self.rounds for s in r.by_status(status)]

    def to_dict(self) -> dict[str, Any]:
        """Plain values (NaN becomes null)."""
        out = []
        for r in self.rounds:
            d = {k: _nan_to_none(v) for k, v in asdict(r).items() if k != "sites"}
            d["sites"] = [{k: _nan_to_none(v) for k, v in asdict(s).items()} for s in r.sites]
            out.append(d)
        return {"rounds": out}

    def to_json(self) -> bytes:
        """Serialize as the package's ``history.json``."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes | str) -> History:
        """Parse ``history.json``.

        Raises
        ------
        ModelArtifactError
            If it is not a round history.
        """
        try:
            body = json.loads(raw)
            rounds = tuple(
                RoundRecord(
                    **{k: v for k, v in r.items() if k != "sites"},
                    sites=tuple(
                        SiteRound(**{**s, "status": Status(s["status"])}) for s in r["sites"]
                    ),
                )
                for r in body["rounds"]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelArtifactError(f"expected a round history ({HISTORY_FILE}): {exc}") from None
        return cls(rounds)
