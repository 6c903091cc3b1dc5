"""Secure aggregation over Flower: :mod:`vigil.federation.secagg` as ``query.secagg`` messages.

The coordinator's :class:`FlowerSecureSum` runs the protocol's four stages
(``keys`` and ``share`` once per run, ``mask`` and ``unmask`` per sum) through
the run's :class:`~vigil.federation.flower.transport.FlowerTransport` (its
timeout and traffic count); the ClientApp answers with :func:`answer_secure`,
keeping the site's protocol state (its private keys, the sums it masked, the
sites whose key it helped rebuild) in the run's ``context.state`` on the
SuperNode. A ``mask`` request also carries what the site is to sum (``what``):

- ``fit``: train on the global weights (the ``train`` message's content) and
  sum ``s_i * clip(w_i - w, B)`` over the trainable entries, followed by
  ``s_i * loss_i``: ``s_i`` the site's share of the weighted average
  (:func:`~vigil.federation.strategies.example_shares` of the declared rows,
  sent by the coordinator), ``clip(., B)`` the site's own L2 norm bound
  (:mod:`vigil.federation.secure_screening`);
- anything else: the vector a callable of the ClientApp makes from the request
  (the trees' histograms and score sums, :mod:`vigil.federation.flower.treewire`).

What the SuperLink stores and relays for a sum is public keys, ciphertexts of
Shamir shares (Fernet, keys the SuperLink does not have), masked ``uint32``
vectors (uniform), and the survivors' seeds and dropped sites' keys only as
shares, never both for one site.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, RecordDict
from numpy.typing import NDArray

from vigil.core.errors import AggregationError, ConfigError
from vigil.federation.flower.transport import FlowerTransport, RemoteSite
from vigil.federation.flower.wire import (
    ARRAYS,
    CONFIG,
    config_from_record,
    config_to_record,
    weights_from_record,
    weights_to_record,
)
from vigil.federation.messages import FitConfig
from vigil.federation.secagg import Message, SecAggClient, SecureAggregator
from vigil.federation.secure_round import SecureFit
from vigil.federation.secure_screening import bound_norm
from vigil.federation.secure_sum import SecureSumSettings
from vigil.federation.site import Site
from vigil.federation.strategies import Weights

__all__ = ["ACTION", "FlowerSecureSum", "SecureTransport", "answer_secure", "decode", "encode",
           "fit_vector", "open_secure"]

ACTION = "secagg"
"""The ClientApp's query action of secure aggregation (message type ``query.secagg``)."""
_KIND = f"{MessageType.QUERY}.{ACTION}"
_RECORD = "secagg"
_SUB = "secagg."
_STATE = "vigil-secagg"


def encode(message: Mapping[str, Any], into: RecordDict | None = None) -> RecordDict:
    """Put a protocol message into Flower records (``secagg`` and ``secagg.NAME`` records).

    Scalars, bytes and lists go into ``ConfigRecord("secagg")``; an ndarray into
    ``ArrayRecord("secagg.NAME")``; a mapping of site numbers to bytes or to
    pairs of bytes into ``ConfigRecord("secagg.NAME")``.
    """
    content = RecordDict() if into is None else into
    scalars: dict[str, Any] = {}
    for key, value in message.items():
        if isinstance(value, np.ndarray):
            content[_SUB + key] = ArrayRecord({"v": Array(np.ascontiguousarray(value))})
        elif isinstance(value, Mapping):
            content[_SUB + key] = ConfigRecord(
                {str(k): list(v) if isinstance(v, tuple) else v for k, v in value.items()})
        else:
            scalars[key] = value
    content[_RECORD] = ConfigRecord(scalars)
    return content


def decode(content: RecordDict) -> Message:
    """Read a protocol message back from :func:`encode`'s records.

    Raises
    ------
    ValueError
        If the content holds no ``secagg`` record.
    """
    if _RECORD not in content.config_records:
        raise ValueError("expected a secure aggregation message (no 'secagg' record)")
    out: Message = dict(content.config_records[_RECORD])
    for name, record in content.config_records.items():
        if name.startswith(_SUB):
            out[name[len(_SUB):]] = {int(k): tuple(v) if isinstance(v, list) else v
                                     for k, v in record.items()}
    for name, arrays in content.array_records.items():
        if name.startswith(_SUB):
            out[name[len(_SUB):]] = arrays["v"].numpy()
    return out


def answer_secure(
    content: RecordDict, state: RecordDict, settings: SecureSumSettings,
    vector: Callable[[str, RecordDict], NDArray[np.floating]],
) -> RecordDict:
    """Answer one stage of secure aggregation on the site (the ClientApp's ``query.secagg``).

    Parameters
    ----------
    content : RecordDict
        The request: the stage's ``secagg`` records, plus at ``mask`` the
        records of what is summed.
    state : RecordDict
        The run's state on the SuperNode (the protocol's state is kept there).
    settings : SecureSumSettings
        The run's (quantization of the ``mask`` stage).
    vector : callable
        ``vector(what, content)``: the site's float vector of shape (d,) to sum.

    Returns
    -------
    RecordDict

    Raises
    ------
    ValueError
        If the request is not a stage, or following it would reveal more than a sum.
    """
    message = decode(content)
    saved = state.config_records.get(_STATE)
    client = SecAggClient({k: v for k, v in saved.items()} if saved is not None else {})  # type: ignore[misc]
    stage = message.get("stage")
    answer = client.answer(stage, message, lambda: vector(str(message["what"]), content),
                           settings)
    state[_STATE] = ConfigRecord(dict(client.state))
    return encode({"stage": stage, **answer})


def fit_vector(site: Site, content: RecordDict, norm_bound: float | None) -> NDArray[np.float64]:
    """Train; return ``s * clip(w_site - w, B)`` over the summed entries, then ``s * loss``.

    Parameters
    ----------
    site : Site
    content : RecordDict
        A ``train`` request's records plus ``secagg`` (``share``, ``keys``).
    norm_bound : float or None
        ``B``, the L2 bound of the site's own update (None: not bounded).

    Returns
    -------
    ndarray of shape (d + 1,)
        ``d`` the elements of the summed entries.
    """
    message = decode(content)
    weights = weights_from_record(content.array_records[ARRAYS])
    update = site.fit(weights, config_from_record(content.config_records[CONFIG]))
    keys = list(message["keys"])
    delta = np.concatenate([(np.asarray(update.weights[k], np.float64)
                             - np.asarray(weights[k], np.float64)).ravel() for k in keys])
    share = float(message["share"])
    return np.append(share * bound_norm(delta, norm_bound), share * float(update.loss))


class FlowerSecureSum:
    """The coordinator's secure sums over the run's SuperNodes.

    Parameters
    ----------
    transport : FlowerTransport
    sites : sequence of RemoteSite
        From :meth:`FlowerTransport.connect`; numbered by sorted name.
    settings : SecureSumSettings
    """

    def __init__(self, transport: FlowerTransport, sites: Sequence[RemoteSite],
                 settings: SecureSumSettings) -> None:
        self.transport = transport
        self.sites = sorted(sites, key=lambda s: s.name)
        self.number = {s.name: i for i, s in enumerate(self.sites)}
        self.settings = settings
        self.aggregator = SecureAggregator(len(self.sites), settings, self._exchange)
        self._inner: dict[int, tuple[Message, RecordDict]] = {}
        self.failures: dict[str, Exception] = {}

    def setup(self) -> None:
        """Run the set-up stages (``keys``, ``share``) with every site.

        Raises
        ------
        AggregationError
            If a site failed either stage (:attr:`failures` names them).
        """
        self.failures = {}
        self.aggregator.setup()

    @property
    def group(self) -> list[str]:
        """The sites still in the protocol (a site that dropped out of a sum is not)."""
        return [self.sites[i].name for i in self.aggregator.group]

    def _exchange(self, stage: str, messages: Mapping[int, Message]) -> dict[int, Any]:
        contents = {}
        for i, message in messages.items():
            extra, base = ({"me": i}, None) if stage == "keys" else ({}, None)
            if stage == "mask":
                extra, records = self._inner[i]
                base = RecordDict(dict(records.items()))
            contents[self.sites[i]] = encode({"stage": stage, **extra, **message}, base)
        answers = self.transport.request_each(_KIND, contents, decode)
        out = {self.number[name]: answer for name, answer in answers.items()}
        for i, answer in out.items():
            if isinstance(answer, Exception):
                self.failures[self.sites[i].name] = answer
        return out

    def sum(self, inner: Mapping[str, tuple[Message, RecordDict]], size: int, *,
            wide: bool = False) -> tuple[NDArray[np.float64], list[str]]:
        """Sum the vectors the named sites make from their requests.

        Parameters
        ----------
        inner : mapping of str to (dict, RecordDict)
            Per site in the group: what it sums (``{"what": ..., ...}``, into its
            ``secagg`` record) and the records of the request it answers.
        size : int
            Elements of each vector.
        wide : bool, optional
            On 64 bits (:meth:`SecureSumSettings.widened`).

        Returns
        -------
        total : ndarray of shape (size,)
        survivors : list of str

        Raises
        ------
        AggregationError
            Fewer than the reconstruction threshold of sites took part.
        """
        self.failures = {}
        self._inner = {self.number[n]: c for n, c in inner.items()}
        total, alive = self.aggregator.sum({self.number[n]: {} for n in inner}, size, wide=wide)
        return total, [self.sites[i].name for i in alive]

    def fit(self, weights: Weights, config: FitConfig, keys: Sequence[str],
            shares: Mapping[str, float]) -> SecureFit:
        """One training round whose updates the coordinator sees only as their weighted mean.

        Parameters
        ----------
        weights : Weights
            The global weights sent to train.
        config : FitConfig
        keys : sequence of str
            The entries summed (the trainable ones).
        shares : mapping of str to float
            Each asked site's share of the average (summing to 1).

        Raises
        ------
        AggregationError
            Fewer than the reconstruction threshold of sites took part.
        """
        size = int(sum(np.asarray(weights[k]).size for k in keys)) + 1
        inner = {}
        for name, share in shares.items():
            content = RecordDict({ARRAYS: weights_to_record(weights),
                                  CONFIG: config_to_record(config)})
            inner[name] = ({"what": "fit", "share": float(share), "keys": list(keys)}, content)
        total, alive = self.sum(inner, size)
        dropped = {n: self.failures.get(n, ConnectionError("no answer")) for n in shares
                   if n not in alive}
        weight = float(sum(shares[n] for n in alive))
        mean = total / weight
        delta: OrderedDict[str, NDArray[np.float32]] = OrderedDict()
        at = 0
        for k in keys:
            shape = np.shape(weights[k])
            n = int(np.prod(shape))
            delta[k] = mean[at:at + n].reshape(shape).astype(np.float32)
            at += n
        return SecureFit(delta, float(mean[-1]), alive, dropped)


class SecureTransport:
    """The run's transport with training rounds through secure aggregation.

    Statistics, evaluation and the trees' requests go through ``transport`` as
    before; :meth:`secure_fit` (what :func:`~vigil.federation.secure_round.secure_round`
    calls) runs the protocol. The set-up (``keys``, ``share``) runs on the
    first round, and again after a site dropped out (its mask key was rebuilt,
    so it needs new keys to come back).

    Parameters
    ----------
    transport : FlowerTransport
    settings : SecureSumSettings
    """

    def __init__(self, transport: FlowerTransport, settings: SecureSumSettings) -> None:
        self.transport = transport
        self.settings = settings
        self.secure: FlowerSecureSum | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)

    def statistics(self, sites: Sequence[Any]) -> Any:
        """As :meth:`FlowerTransport.statistics`."""
        return self.transport.statistics(sites)

    def fit(self, sites: Sequence[Any], weights: Weights, config: FitConfig) -> Any:
        """As :meth:`FlowerTransport.fit` (not used by the driver under secure aggregation)."""
        return self.transport.fit(sites, weights, config)

    def evaluate(self, sites: Sequence[Any], weights: Weights) -> Any:
        """As :meth:`FlowerTransport.evaluate`."""
        return self.transport.evaluate(sites, weights)

    def secure_fit(self, sites: Sequence[Any], weights: Weights, config: FitConfig,
                   keys: Sequence[str], shares: Mapping[str, float]) -> SecureFit:
        """One round whose updates the coordinator sees only as their weighted mean."""
        self.secure, gone = open_secure(self.transport, sites, self.settings, self.secure)
        kept = {n: shares[n] for n in self.secure.group}
        fit = self.secure.fit(weights, config, keys, kept)
        fit.dropped |= gone
        return fit


def open_secure(transport: FlowerTransport, sites: Sequence[RemoteSite],
                settings: SecureSumSettings, current: FlowerSecureSum | None = None) -> tuple[
    FlowerSecureSum, dict[str, Exception]
]:
    """Return a set-up :class:`FlowerSecureSum` over ``sites`` (``current`` if still whole).

    A new set-up runs when the group changed since the last one: a site that
    dropped out of a sum comes back with new keys, and after a dropout the
    survivors get a new SecAgg+ graph (on a sparse one, a site's neighbours
    holding its shares may be gone). If sites fail the set-up, it runs again
    without them.

    Returns
    -------
    secure : FlowerSecureSum
    gone : dict of str to Exception
        The sites left out because they failed the set-up.

    Raises
    ------
    AggregationError
        If fewer than 3 sites complete the set-up, or the settings do
        not fit the sites left (``num_shares`` or the threshold above their number).
    """
    names = sorted(s.name for s in sites)
    if current is not None and current.group == names and len(names) == current.aggregator.n:
        return current, {}  # nobody dropped out since the set-up (a sparse graph needs all)
    try:
        secure = FlowerSecureSum(transport, sites, settings)
    except ConfigError as exc:  # the settings fitted the run's sites, not the ones left
        raise AggregationError(f"secure aggregation cannot go on with {len(sites)} sites: "
                               f"{exc}") from None
    try:
        secure.setup()
        return secure, {}
    except AggregationError:
        gone = dict(secure.failures)
        if not gone:
            raise
    kept = [s for s in sites if s.name not in gone]
    if len(kept) < 3:
        raise AggregationError(f"secure aggregation needs at least 3 sites; {len(kept)} of "
                               f"{len(sites)} completed the set-up")
    secure, more = open_secure(transport, kept, settings)  # fewer sites each time
    return secure, gone | more
