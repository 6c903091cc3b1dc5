"""vigil's federation messages as Flower records, and back.

Every message crosses the wire as its own ``payload()``
(:mod:`vigil.federation.messages`): the arrays go into one ``ArrayRecord``
(``"arrays"``), the scalars into one ``ConfigRecord`` (``"scalars"``), and the
site name into ``ConfigRecord("meta")``. Nothing is added on the way, so what
a site sends over Flower is exactly what it hands the in-process driver:
weights, counts and aggregate statistics. Arrays keep their dtype and shape
bit for bit.

A reply that does not decode (a missing entry, a wrong type) raises
:class:`ValueError`; the ServerApp turns it into a dropped site, and the
driver's bad-update checks then judge the content of the ones that decode.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from numpy.typing import NDArray

from vigil.federation.messages import (
    FitConfig,
    PrivacySpent,
    SiteEvaluation,
    SiteStatistics,
    Update,
)
from vigil.federation.strategies import Weights

__all__ = [
    "ARRAYS",
    "CONFIG",
    "META",
    "SCALARS",
    "config_from_record",
    "config_to_record",
    "evaluation_from_content",
    "evaluation_to_content",
    "payload_from_content",
    "payload_to_content",
    "statistics_from_content",
    "statistics_to_content",
    "update_from_content",
    "update_to_content",
    "weights_from_record",
    "weights_to_record",
    "wire_bytes",
]

ARRAYS = "arrays"
SCALARS = "scalars"
META = "meta"
CONFIG = "config"
_WEIGHTS = "weights/"
_PRIVACY = "privacy/"


def weights_to_record(weights: Weights) -> ArrayRecord:
    """Put ``name -> ndarray`` weights into an ``ArrayRecord`` (order kept)."""
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in weights.items()))


def weights_from_record(record: ArrayRecord) -> OrderedDict[str, NDArray[np.float32]]:
    """Read ``name -> ndarray`` weights out of an ``ArrayRecord`` (order kept)."""
    return OrderedDict((k, record[k].numpy()) for k in record.keys())


def config_to_record(config: FitConfig) -> ConfigRecord:
    """Put a round's :class:`FitConfig` into a ``ConfigRecord``."""
    return ConfigRecord(dict(config.to_dict()))


def config_from_record(record: ConfigRecord) -> FitConfig:
    """Read a :class:`FitConfig` back (entries it lacks take their defaults).

    Raises
    ------
    ValueError
        If an entry without a default is missing.
    """
    try:
        return FitConfig(**{f.name: record[f.name] for f in fields(FitConfig)  # type: ignore[arg-type]
                            if f.name in record})
    except TypeError as exc:
        raise ValueError(f"expected a complete fit config, got {sorted(record)}: {exc}") from None


def _to_content(site: str, payload: Mapping[str, Any]) -> RecordDict:
    arrays: OrderedDict[str, Array] = OrderedDict()
    scalars: dict[str, Any] = {}
    for key, value in payload.items():
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            arrays[key] = Array(np.ascontiguousarray(value))
        elif isinstance(value, bool | int | np.integer):
            scalars[key] = int(value)
        else:
            scalars[key] = float(value)
    return RecordDict({ARRAYS: ArrayRecord(arrays), SCALARS: ConfigRecord(scalars),
                       META: ConfigRecord({"site": site})})


def _from_content(content: RecordDict) -> tuple[str, dict[str, Any]]:
    try:
        arrays = content.array_records[ARRAYS]
        scalars = content.config_records[SCALARS]
        site = content.config_records[META]["site"]
    except KeyError as exc:
        raise ValueError(f"expected records {ARRAYS!r}, {SCALARS!r} and {META!r}; "
                         f"missing {exc}") from None
    if not isinstance(site, str):
        raise ValueError(f"expected the site name as a string, got {type(site).__name__}")
    payload: dict[str, Any] = {k: arrays[k].numpy() for k in arrays.keys()}
    payload.update(dict(scalars))
    return site, payload


def statistics_to_content(statistics: SiteStatistics) -> RecordDict:
    """Make message content of a site's :class:`SiteStatistics`."""
    return _to_content(statistics.site, statistics.payload())


def statistics_from_content(content: RecordDict) -> SiteStatistics:
    """Read :class:`SiteStatistics` back; raises ValueError if malformed."""
    site, payload = _from_content(content)
    try:
        return SiteStatistics(site=site, **payload)
    except TypeError as exc:
        raise ValueError(f"expected site statistics: {exc}") from None


def evaluation_to_content(evaluation: SiteEvaluation) -> RecordDict:
    """Make message content of a site's :class:`SiteEvaluation`."""
    return _to_content(evaluation.site, evaluation.payload())


def evaluation_from_content(content: RecordDict) -> SiteEvaluation:
    """Read a :class:`SiteEvaluation` back; raises ValueError if malformed."""
    site, payload = _from_content(content)
    try:
        return SiteEvaluation(site=site, **payload)
    except TypeError as exc:
        raise ValueError(f"expected a site evaluation: {exc}") from None


def update_to_content(update: Update) -> RecordDict:
    """Make message content of a site's :class:`Update`."""
    return _to_content(update.site, update.payload())


def update_from_content(content: RecordDict) -> Update:
    """Read an :class:`Update` back; raises ValueError if malformed."""
    site, payload = _from_content(content)
    weights = OrderedDict((k[len(_WEIGHTS):], v) for k, v in payload.items()
                          if k.startswith(_WEIGHTS))
    privacy = {k[len(_PRIVACY):]: v for k, v in payload.items() if k.startswith(_PRIVACY)}
    try:
        return Update(
            site=site, weights=weights, num_examples=payload["num_examples"],
            loss=payload["loss"], privacy=PrivacySpent(**privacy) if privacy else None,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"expected an update with weights, num_examples and loss: {exc}") from None


def wire_bytes(message: Message | RecordDict) -> int:
    """Bytes of a message (or its content) as Flower ships it: its serialized object tree.

    Flower sends a message as content-addressed objects (the message, its
    records, each array, each array chunk); this sums their serialized sizes,
    which is the payload a SuperNode and the SuperLink exchange before HTTP
    and TLS framing.
    """
    total = 0
    stack: list[Any] = [message]
    while stack:
        obj = stack.pop()
        total += len(obj.deflate())
        stack.extend((obj.children or {}).values())
    return total


def payload_to_content(site: str, payload: Mapping[str, Any]) -> RecordDict:
    """Make message content of any ``payload()``: arrays, then int and float scalars."""
    return _to_content(site, payload)


def payload_from_content(content: RecordDict) -> tuple[str, dict[str, Any]]:
    """Read back the site name and payload; raises ValueError if malformed."""
    return _from_content(content)
