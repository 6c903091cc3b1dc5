"""The driver's :class:`~vigil.federation.driver.Transport` over a Flower ``Grid``.

In the ServerApp, :func:`~vigil.federation.driver.run_federation` runs its
rounds unchanged; this transport turns each phase into one Flower message per
SuperNode, pushed to all at once:

- ``query`` before round 1: each site answers its
  :class:`~vigil.federation.messages.SiteStatistics` and thereby its name
  (:meth:`FlowerTransport.connect`);
- ``train`` per round: the global weights and the round's ``FitConfig``;
  the answer is an :class:`~vigil.federation.messages.Update`;
- ``evaluate`` per round: the new global weights; the answer is a
  :class:`~vigil.federation.messages.SiteEvaluation`.

A site has ``timeout`` seconds to answer. One whose SuperNode is gone, whose
ClientApp failed, or who is late counts as failed for that request (the
driver drops it from the round and records why); its late answer is ignored,
and its message expires on the SuperLink after ``timeout``. A site late for
``train`` is not asked to ``evaluate`` in the same round. Every message's
size on the wire is counted per site (:attr:`FlowerTransport.traffic`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from vigil.core.errors import AggregationError, ConfigError, PrivacyBudgetError
from vigil.federation.budget import BUDGET_REASON
from vigil.federation.driver import FederatedSite
from vigil.federation.flower.wire import (
    ARRAYS,
    CONFIG,
    config_to_record,
    evaluation_from_content,
    statistics_from_content,
    update_from_content,
    weights_to_record,
    wire_bytes,
)
from vigil.federation.messages import FitConfig, SiteEvaluation, SiteStatistics, Update
from vigil.federation.strategies import Weights

__all__ = ["EventLog", "FlowerTransport", "RemoteSite", "SiteTraffic"]

log = logging.getLogger(__name__)

T = TypeVar("T")
POLL_SECONDS = 0.25
"""How often replies are pulled from the SuperLink (Flower's own loop sleeps 3 s)."""


class EventLog:
    """Append one JSON object per line to a file (the run's progress, for operators and tests)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        """Append ``{"t": unix time, "event": event, **fields}``."""
        with self.path.open("a") as fh:
            fh.write(json.dumps({"t": time.time(), "event": event, **fields}) + "\n")


@dataclass
class SiteTraffic:
    """Bytes one site exchanged with the coordinator (Flower's serialized objects).

    Attributes
    ----------
    sent, received : int
        Coordinator to site, and site to coordinator.
    messages : int
        Requests sent to the site.
    """

    sent: int = 0
    received: int = 0
    messages: int = 0


@dataclass(frozen=True, eq=False)
class RemoteSite:
    """A site behind a SuperNode, as the driver sees it."""

    name: str
    node_id: int
    transport: FlowerTransport = field(repr=False)

    def statistics(self) -> SiteStatistics:
        """Return the statistics the site sent when it connected."""
        return _raise(self.transport.statistics([self])[self.name])

    def fit(self, global_weights: Weights, config: FitConfig) -> Update:
        """Ask this site alone to train."""
        return _raise(self.transport.fit([self], global_weights, config)[self.name][0])

    def evaluate(self, global_weights: Weights) -> SiteEvaluation:
        """Ask this site alone to evaluate."""
        return _raise(self.transport.evaluate([self], global_weights)[self.name])


def _raise(outcome: Any) -> Any:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class FlowerTransport:
    """Send the driver's requests as Flower messages and collect the answers.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The ServerApp's grid.
    timeout : float
        Seconds each site has to answer a request.
    events : EventLog or None, optional
        Where each phase is logged (start, answers, failures).
    """

    def __init__(self, grid: Grid, *, timeout: float, events: EventLog | None = None) -> None:
        self.grid = grid
        self.timeout = float(timeout)
        self.events = events
        self.traffic: dict[str, SiteTraffic] = {}
        self._statistics: dict[str, SiteStatistics | Exception] = {}
        self._late: set[str] = set()
        self._pending_traffic: dict[int, SiteTraffic] = {}

    def _event(self, event: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.write(event, **fields)

    def connect(self, *, expected: int, min_sites: int, wait: float) -> list[RemoteSite]:
        """Wait for the SuperNodes, ask each for its statistics, and name the sites.

        Parameters
        ----------
        expected : int
            SuperNodes to wait for.
        min_sites : int
            Fewest sites the run may start with once ``wait`` has passed.
        wait : float
            Seconds to wait for ``expected`` SuperNodes.

        Returns
        -------
        list of RemoteSite
            The sites that answered, by name.

        Raises
        ------
        AggregationError
            If fewer than ``min_sites`` connected or answered.
        ConfigError
            If two SuperNodes serve sites of the same name.
        """
        deadline = time.monotonic() + wait
        nodes = sorted(self.grid.get_node_ids())
        while len(nodes) < expected and time.monotonic() < deadline:
            time.sleep(1.0)
            nodes = sorted(self.grid.get_node_ids())
        self._event("connected", nodes=len(nodes), expected=expected)
        if len(nodes) < min_sites:
            raise AggregationError(
                f"expected at least {min_sites} SuperNodes, {len(nodes)} connected after "
                f"{wait:.0f} s; start the sites (`vigil federation site`) and check their logs",
                round_=0,
            )
        ask = {n: RecordDict({CONFIG: ConfigRecord({"ask": "statistics"})}) for n in nodes}
        sites: dict[str, RemoteSite] = {}
        for node, (reply, _) in self._exchange(MessageType.QUERY, ask).items():
            try:
                stats = statistics_from_content(_content(reply))
            except (ValueError, ConnectionError, TimeoutError) as exc:
                log.warning("a SuperNode did not send statistics: %s", type(exc).__name__)
                continue
            if stats.site in sites:
                raise ConfigError(
                    f"two SuperNodes serve a site named {stats.site!r}; give each site its own "
                    "name (`vigil federation site --name`)", key="name",
                )
            sites[stats.site] = RemoteSite(stats.site, node, self)
            self._statistics[stats.site] = stats
            self.traffic[stats.site] = self._pending_traffic.pop(node)
        self._pending_traffic.clear()
        self._event("statistics", sites=sorted(sites))
        if len(sites) < min_sites:
            raise AggregationError(
                f"expected statistics from at least {min_sites} sites, got {len(sites)}",
                round_=0,
            )
        return [sites[name] for name in sorted(sites)]

    def statistics(self, sites: Sequence[FederatedSite]) -> dict[str, SiteStatistics | Exception]:
        """Return the statistics each site sent on :meth:`connect`."""
        return {s.name: self._statistics.get(s.name, ConnectionError("site not connected"))
                for s in sites}

    def fit(
        self, sites: Sequence[FederatedSite], weights: Weights, config: FitConfig
    ) -> dict[str, tuple[Update | Exception, float]]:
        """Send ``train`` to every site; return each update (or failure) and its wait."""
        content = RecordDict({ARRAYS: weights_to_record(weights), CONFIG: config_to_record(config)})
        answers = self._ask(MessageType.TRAIN, sites, content, round_=config.round)
        out: dict[str, tuple[Update | Exception, float]] = {}
        for name, (reply, seconds) in answers.items():
            out[name] = (_decode(reply, update_from_content), seconds)
        self._late = {n for n, (u, _) in out.items() if isinstance(u, TimeoutError)}
        return out

    def evaluate(
        self, sites: Sequence[FederatedSite], weights: Weights
    ) -> dict[str, SiteEvaluation | Exception]:
        """Send ``evaluate`` to every site that was not late to train this round."""
        asked = [s for s in sites if s.name not in self._late]
        content = RecordDict({ARRAYS: weights_to_record(weights)})
        answers = self._ask(MessageType.EVALUATE, asked, content)
        out: dict[str, SiteEvaluation | Exception] = {
            name: TimeoutError("late to train this round") for name in self._late
        }
        for name, (reply, _) in answers.items():
            out[name] = _decode(reply, evaluation_from_content)
        return out

    def request(
        self, kind: str, sites: Sequence[FederatedSite], content: RecordDict,
        decode: Callable[[RecordDict], T],
    ) -> dict[str, T | Exception]:
        """Send one message of type ``kind`` to every site; return each decoded answer.

        For the other protocols run over the same sites (the boosted trees,
        :mod:`vigil.federation.flower.treewire`): the same timeout and traffic
        count, no event per message. A failure (an error reply, a timeout, a
        lost node, an answer that does not decode) is the site's exception.
        """
        answers = self._ask(kind, sites, content, quiet=True)
        return {name: _decode(reply, decode) for name, (reply, _) in answers.items()}

    def request_each(
        self, kind: str, contents: Mapping[FederatedSite, RecordDict],
        decode: Callable[[RecordDict], T],
    ) -> dict[str, T | Exception]:
        """:meth:`request` with a message of its own for each site (secure aggregation)."""
        answers = self._ask(kind, list(contents), None, quiet=True,
                            each={_node(s): c for s, c in contents.items()})
        return {name: _decode(reply, decode) for name, (reply, _) in answers.items()}

    def _ask(
        self, kind: str, sites: Sequence[FederatedSite], content: RecordDict | None, *,
        round_: int | None = None, quiet: bool = False,
        each: Mapping[int, RecordDict] | None = None,
    ) -> dict[str, tuple[Message | Exception, float]]:
        nodes = {_node(s): s.name for s in sites}
        if not quiet:
            self._event(f"{kind}-sent", round=round_, sites=sorted(nodes.values()))
        answers = self._exchange(kind, dict(each) if each is not None
                                 else dict.fromkeys(nodes, content))
        for node, name in nodes.items():
            got = self._pending_traffic.pop(node)
            mine = self.traffic.setdefault(name, SiteTraffic())
            mine.sent += got.sent
            mine.received += got.received
            mine.messages += got.messages
        failed = sorted(nodes[n] for n, (r, _) in answers.items() if isinstance(r, Exception)
                        or r.has_error())
        if not quiet or failed:
            self._event(f"{kind}-done", round=round_, failed=failed)
        return {nodes[node]: answer for node, answer in answers.items()}

    def _exchange(
        self, kind: str, contents: dict[int, RecordDict]
    ) -> dict[int, tuple[Message | Exception, float]]:
        """Push one message per node, pull replies until all came or ``timeout`` passed."""
        self._pending_traffic = {n: SiteTraffic() for n in contents}
        messages = [Message(c, dst_node_id=n, message_type=kind, ttl=self.timeout)
                    for n, c in contents.items()]
        size = {n: wire_bytes(c) for n, c in contents.items()}
        t0 = time.monotonic()
        ids = list(self.grid.push_messages(messages))
        out: dict[int, tuple[Message | Exception, float]] = {}
        pending: dict[str, int] = {}
        for node, mid in zip(contents, ids, strict=True):
            if mid:
                pending[mid] = node
                self._pending_traffic[node].sent += size[node]
                self._pending_traffic[node].messages += 1
            else:
                out[node] = (ConnectionError("the SuperLink did not accept the message"), 0.0)
        while pending and time.monotonic() - t0 < self.timeout:
            for reply in self.grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                out[node] = (reply, time.monotonic() - t0)
                if reply.has_content():
                    self._pending_traffic[node].received += wire_bytes(reply)
            if pending:
                time.sleep(POLL_SECONDS)
        for node in pending.values():
            out[node] = (TimeoutError(f"no answer within {self.timeout:.0f} s"), self.timeout)
        return out


def _node(site: FederatedSite) -> int:
    if not isinstance(site, RemoteSite):
        raise ConfigError(f"expected a RemoteSite from FlowerTransport.connect, got "
                          f"{type(site).__name__}", key="sites")
    return site.node_id


def _content(reply: Message | Exception) -> RecordDict:
    if isinstance(reply, Exception):
        raise reply
    if reply.has_error():
        reason = reply.error.reason or ""
        if reason.startswith(BUDGET_REASON):  # the site refused the run (vigil.federation.budget)
            raise PrivacyBudgetError(reason)
        raise ConnectionError(f"the site answered an error: {reason}")
    return reply.content


def _decode(reply: Message | Exception, decode: Any) -> Any:
    try:
        return decode(_content(reply))
    except (ValueError, ConnectionError, TimeoutError, PrivacyBudgetError) as exc:
        return exc
