"""Secure aggregation (SecAgg / SecAgg+): the coordinator learns sums across sites only.

The protocol of Bonawitz et al., "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", CCS 2017 (section 4, the
honest-but-curious version with double masking), on the sparse graph of Bell et
al., CCS 2020 (SecAgg+: each site masks against and shares with ``num_shares``
sites), built on Flower's primitives (``flwr.common.secure_aggregation``:
Shamir sharing, ECDH + HKDF shared keys, Fernet encryption; EC keys from
``flwr.supercore.primitives.asymmetric``) and carried by vigil's own messages
(:mod:`vigil.federation.flower.secure`), because Flower's
``SecAggPlusWorkflow`` drives a legacy ``Strategy``'s fit round only and
``secaggplus_mod`` masks ``train`` replies only, while vigil sums network
updates, tree histograms and score sums.

Sites are numbered ``0 .. n-1`` (their names, sorted). Per run (``setup``):

1. ``keys``: each site makes two EC key pairs, ``enc`` (to encrypt shares to
   other sites) and ``mask`` (pairwise mask agreement), and sends the public keys.
2. ``share``: each site gets its neighbours' public keys, Shamir-shares its
   ``mask`` private key among them (threshold ``t``), and sends each share
   encrypted to its holder (the coordinator only routes ciphertexts).

Per sum ``j`` (:meth:`SecureAggregator.sum`):

3. ``mask``: site ``u`` quantizes its vector (:func:`~vigil.federation.secure_sum.quantize`)
   and sends ``y_u = q_u + PRG(b_u, j) + sum_{v in N(u), v>u} PRG(s_uv, j)
   - sum_{v in N(u), v<u} PRG(s_uv, j)`` modulo ``2**32``, with ``b_u`` a fresh
   32-byte seed whose shares it sends encrypted alongside, and ``s_uv`` the
   ECDH secret of ``u``'s and ``v``'s ``mask`` keys. ``y_u`` alone is uniform.
4. ``unmask``: each site that sent ``y`` is told who did (survivors ``S``) and
   who did not (dropped ``D``) and sends its shares of ``b_u`` for ``u`` in
   ``S`` and of the ``mask`` key of ``v`` in ``D``, never both for one site (it
   refuses a request that asks). With at least ``t`` shares of each, the
   coordinator rebuilds them, removes the masks and gets ``sum_{u in S} q_u``.

A site in ``D`` has had its ``mask`` key rebuilt: it is out of the group for the
rest of the run (the sites refuse to mask with it or to unmask it as a
survivor), as the trees' dropout rule already leaves it out. Fewer than ``t``
survivors (and never fewer than :data:`MIN_SUMMED`, 3: a sum of two sites is
each one's vector to the other), or fewer than ``t`` unmask answers, is a clear
refusal (:class:`~vigil.core.errors.AggregationError` naming the threshold and the count).

What is protected: against a coordinator (or SuperLink operator) that follows
the protocol and sees every message, any set of fewer than ``t`` colluding
sites plus the coordinator learns nothing about an honest site's vector beyond
the sum (Bonawitz et al., theorem 6.2). Not protected: a coordinator that
fakes sites or lies about dropouts to different sites (the malicious-server
version needs signatures and a consistency round); nothing here checks that a
site's vector is honest (see :mod:`vigil.federation.secure_screening`); a sum
outside ``[0, n L]`` proves a site sent out-of-range integers and is refused.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)
from numpy.typing import NDArray

from vigil.core.errors import AggregationError
from vigil.federation.secure_sum import SecureSumSettings, dequantize_sum, mask_stream, quantize

__all__ = ["MIN_SUMMED", "Exchange", "Message", "SecAggClient", "SecureAggregator", "neighbours"]

MIN_SUMMED = 3
"""No sum of fewer sites is revealed: a sum of two is each one's vector to the other."""
_KEY_SHARE = 2**64 - 1
"""The sum index written into the plaintext of a ``mask``-key share."""

Message = dict[str, Any]
Exchange = Callable[[str, Mapping[int, Message]], Mapping[int, Message | Exception]]
"""Send each site (by number) its message of a stage; its answer or the exception it raised."""


def neighbours(i: int, n: int, k: int) -> list[int]:
    """Site ``i``'s SecAgg+ neighbours, itself included: ``(k-1)/2`` on each side of a ring.

    Parameters
    ----------
    i, n, k : int
        Site, sites, ``num_shares`` (``k == n``: every site, as in SecAgg).

    Returns
    -------
    list of int
        Sorted, ``k`` sites.
    """
    if k >= n:
        return list(range(n))
    half = (k - 1) // 2
    return sorted({(i + d) % n for d in range(-half, half + 1)})


def _pair_secret(private_mask: bytes, public_mask: bytes) -> bytes:
    import base64

    return base64.urlsafe_b64decode(generate_shared_key(
        bytes_to_private_key(private_mask), bytes_to_public_key(public_mask)))


def _sealed(src: int, dst: int, index: int, share: bytes) -> bytes:
    return b"".join([src.to_bytes(8, "little"), dst.to_bytes(8, "little"),
                     index.to_bytes(8, "little"), share])


class SecAggClient:
    """One site's side of the protocol; all its state is a ``dict[str, bytes]``.

    The ClientApp is a fresh process per message, so the state travels in the
    run's ``context.state`` on the SuperNode between stages (the private keys
    never leave the site). Each method checks the coordinator's request and
    raises ``ValueError`` (one line) when following it would reveal more than the sum.

    Parameters
    ----------
    state : dict of str to bytes
        Empty before ``keys``.
    """

    def __init__(self, state: dict[str, bytes]) -> None:
        self.state = state

    def _get(self, key: str) -> Any:
        if key not in self.state:
            raise ValueError(f"expected the secure aggregation set-up (no {key!r} in the site's "
                             "state): the coordinator skipped a stage")
        return json.loads(self.state[key])

    def _put(self, key: str, value: Any) -> None:
        self.state[key] = json.dumps(value).encode()

    def keys(self, me: int, n: int, num_shares: int, threshold: int) -> Message:
        """Stage 1: make the key pairs; answer the public keys."""
        enc, mask = generate_key_pairs(), generate_key_pairs()
        self.state.clear()
        self.state["sk_enc"], self.state["sk_mask"] = (private_key_to_bytes(enc[0]),
                                                       private_key_to_bytes(mask[0]))
        self._put("group", {"me": me, "n": n, "k": num_shares, "t": threshold})
        self._put("revealed", [])
        self._put("sums", {})
        return {"pk_enc": public_key_to_bytes(enc[1]), "pk_mask": public_key_to_bytes(mask[1])}

    def _enc_key(self, other: int) -> bytes:
        public = self._get("public")[str(other)]
        return generate_shared_key(bytes_to_private_key(self.state["sk_enc"]),
                                   bytes_to_public_key(bytes.fromhex(public[0])))

    def share(self, public: Mapping[int, tuple[bytes, bytes]]) -> Message:
        """Stage 2: keep the neighbours' public keys; answer encrypted shares of the mask key."""
        g = self._get("group")
        mine = neighbours(g["me"], g["n"], g["k"])
        if sorted(public) != mine:
            raise ValueError(f"expected the public keys of my {len(mine)} neighbours, got "
                             f"{len(public)}")
        self._put("public", {str(i): [p[0].hex(), p[1].hex()] for i, p in public.items()})
        shares = create_shares(self.state["sk_mask"], g["t"], len(mine))
        return {"shares": {v: encrypt(self._enc_key(v), _sealed(g["me"], v, _KEY_SHARE, s))
                           for v, s in zip(mine, shares, strict=True)}}

    def mask(self, index: int, active: Sequence[int], vector: NDArray[np.floating],
             settings: SecureSumSettings) -> Message:
        """Stage 3: answer the masked, quantized vector and the encrypted shares of its seed.

        Parameters
        ----------
        index : int
            The sum's number in the run (each is masked once).
        active : sequence of int
            The sites asked for this sum.
        vector : ndarray of shape (d,)
        settings : SecureSumSettings
        """
        g, sums, revealed = self._get("group"), self._get("sums"), set(self._get("revealed"))
        me, active = g["me"], sorted(int(a) for a in active)
        if str(index) in sums:
            raise ValueError(f"sum {index} was already masked: refusing to mask it twice")
        floor = max(g["t"], MIN_SUMMED)
        if me not in active or revealed & set(active) or len(active) < floor:
            raise ValueError(f"expected at least {floor} active sites including me and none "
                             f"whose mask key was revealed; got {len(active)}")
        q = quantize(np.asarray(vector).ravel(), settings)
        seed = os.urandom(32)
        y = q + mask_stream(seed, index, q.size, q.dtype.type)
        for v in neighbours(me, g["n"], g["k"]):
            if v != me and v in active:
                pairwise = mask_stream(self._pair(v), index, q.size, q.dtype.type)
                y = y + pairwise if v > me else y - pairwise
        mine = neighbours(me, g["n"], g["k"])
        shares = create_shares(seed, g["t"], len(mine))
        sums[str(index)] = {"active": active, "unmasked": False}
        self._put("sums", sums)
        return {"masked": y,
                "shares": {v: encrypt(self._enc_key(v), _sealed(me, v, index, s))
                           for v, s in zip(mine, shares, strict=True)}}

    def _pair(self, other: int) -> bytes:
        public = self._get("public")[str(other)]
        return _pair_secret(self.state["sk_mask"], bytes.fromhex(public[1]))

    def unmask(self, index: int, survivors: Sequence[int], dropped: Sequence[int],
               seed_shares: Mapping[int, bytes], key_shares: Mapping[int, bytes]) -> Message:
        """Stage 4: answer the shares of the survivors' seeds and of the dropped sites' mask keys.

        Raises
        ------
        ValueError
            If the request would reveal both secrets of a site, does not match
            the sites of the sum, has fewer than the threshold of survivors, or
            comes twice.
        """
        g, sums = self._get("group"), self._get("sums")
        me, alive, gone = g["me"], {int(s) for s in survivors}, {int(d) for d in dropped}
        this = sums.get(str(index))
        if this is None or this["unmasked"]:
            raise ValueError(f"expected one unmask request after masking sum {index}")
        if alive & gone or alive | gone != set(this["active"]) or me not in alive:
            raise ValueError("expected survivors and dropped sites to split the sum's sites")
        if len(alive) < max(g["t"], MIN_SUMMED):
            raise ValueError(f"refusing to unmask: {len(alive)} survivors < "
                             f"{max(g['t'], MIN_SUMMED)}")
        this["unmasked"] = True
        self._put("sums", sums)
        mine = set(neighbours(me, g["n"], g["k"]))
        self._put("revealed", sorted(set(self._get("revealed")) | (gone & mine)))
        out: dict[str, dict[int, bytes]] = {"seeds": {}, "keys": {}}
        for kind, wanted, sealed, idx in (("seeds", alive, seed_shares, index),
                                          ("keys", gone, key_shares, _KEY_SHARE)):
            for src, ct in sealed.items():
                src = int(src)
                if src not in wanted or src not in mine:
                    raise ValueError(f"expected {kind} shares of the sum's "
                                     f"{'surviving' if kind == 'seeds' else 'dropped'} "
                                     "neighbours only")
                plain = decrypt(self._enc_key(src), ct)
                if plain[:24] != _sealed(src, me, idx, b""):
                    raise ValueError("a share was not addressed to me for this sum")
                out[kind][src] = plain[24:]
        return out


    def answer(self, stage: str, message: Message, values: Callable[[], NDArray[np.floating]],
               settings: SecureSumSettings, *, me: int | None = None) -> Message:
        """Answer the coordinator's message of ``stage`` (one of the four stages above).

        ``values()``: the vector to sum (asked at ``mask`` only), quantized by
        ``settings`` (widened to 64 bits when the message says ``wide``); ``me``: this
        site's number at ``keys`` (default: the message's ``me``).

        Raises
        ------
        ValueError
            If ``stage`` is none of them, or following the message would reveal more
            than a sum.
        """
        if stage == "keys":
            return self.keys(int(message["me"]) if me is None else me, int(message["n"]),
                             int(message["k"]), int(message["t"]))
        if stage == "share":
            return self.share(message["public"])
        if stage == "mask":
            chosen = settings.widened(int(message["n"])) if message.get("wide") else settings
            return self.mask(int(message["index"]), message["active"], values(), chosen)
        if stage == "unmask":
            return self.unmask(int(message["index"]), message["survivors"], message["dropped"],
                               message.get("seed_shares", {}), message.get("key_shares", {}))
        raise ValueError(f"expected a secure aggregation stage among keys, share, mask, "
                         f"unmask; got {stage!r}")

class SecureAggregator:
    """The coordinator's side: set-up once, then sums that reveal only their totals.

    Parameters
    ----------
    n_sites : int
        Sites ``0 .. n-1``.
    settings : SecureSumSettings
        Checked for ``n_sites`` (:meth:`SecureSumSettings.resolve`).
    exchange : Exchange
        Sends each stage's messages (Flower messages, or in-process calls in tests).
    """

    def __init__(self, n_sites: int, settings: SecureSumSettings, exchange: Exchange) -> None:
        self.n = n_sites
        self.settings = settings
        self.k, self.t = settings.resolve(n_sites)
        self.exchange = exchange
        self.group: list[int] = []
        self.index = 0
        self._public: dict[int, tuple[bytes, bytes]] = {}
        self._key_shares: dict[int, dict[int, bytes]] = {}  # holder -> source -> ciphertext

    def _fail_below(self, count: int, what: str, floor: int | None = None) -> None:
        need = max(self.t, MIN_SUMMED) if floor is None else floor
        if count < need:
            raise AggregationError(f"secure aggregation needs at least {need} sites (the "
                                   f"reconstruction threshold {self.t}, never fewer than "
                                   f"{MIN_SUMMED}); {count} {what}")

    def setup(self) -> list[int]:
        """Stages 1-2; return the sites in the group (all must answer both stages).

        Raises
        ------
        AggregationError
            If a site fails either stage (set-up is cheap: run it again without it).
        """
        config = {"n": self.n, "k": self.k, "t": self.t}
        answers = self.exchange("keys", {i: dict(config) for i in range(self.n)})
        failed = [i for i, a in answers.items() if isinstance(a, Exception)]
        if failed or len(answers) != self.n:
            raise AggregationError(f"secure aggregation set-up: {len(failed)} of {self.n} sites "
                                   "failed to send their keys")
        self._public = {i: (a["pk_enc"], a["pk_mask"]) for i, a in answers.items()}  # type: ignore[index]
        requests = {i: {"public": {v: self._public[v] for v in neighbours(i, self.n, self.k)}}
                    for i in range(self.n)}
        shares = self.exchange("share", requests)
        failed = [i for i, a in shares.items() if isinstance(a, Exception)]
        if failed or len(shares) != self.n:
            raise AggregationError(f"secure aggregation set-up: {len(failed)} of {self.n} sites "
                                   "failed to share their keys")
        self._key_shares = {i: {} for i in range(self.n)}
        for src, answer in shares.items():
            for holder, ct in answer["shares"].items():  # type: ignore[index]
                self._key_shares[int(holder)][src] = ct
        self.group = list(range(self.n))
        return list(self.group)

    def sum(self, requests: Mapping[int, Message], size: int, *, wide: bool = False) -> tuple[
        NDArray[np.float64], list[int]
    ]:
        """Stages 3-4: the sum of the vectors of the sites that answered.

        Parameters
        ----------
        requests : mapping of int to dict
            What each site in the group is asked to sum (passed to its ``mask`` stage).
        size : int
            Elements of each vector.
        wide : bool, optional
            Sum on 64 bits (:meth:`SecureSumSettings.widened`; the sites are told).

        Returns
        -------
        total : ndarray of float64, shape (size,)
            Sum of the survivors' dequantized vectors (error at most
            :func:`~vigil.federation.secure_sum.quantization_error` per element).
        survivors : list of int
            Whose vectors are in it.

        Raises
        ------
        AggregationError
            If fewer than the threshold of sites sent a masked vector or
            answered the unmask stage, or the sum is out of range (a site
            sent integers above ``L``: no honest site can).
        """
        self.index += 1
        active = [i for i in self.group if i in requests]
        self._fail_below(len(active), "are asked")
        settings = self.settings.widened(self.n) if wide else self.settings
        masked = self.exchange("mask", {i: {**requests[i], "index": self.index, "active": active,
                                            "wide": wide, "n": self.n} for i in active})
        alive = [i for i in active if not isinstance(masked.get(i, KeyError()), Exception)
                 and np.shape(masked[i]["masked"]) == (size,)  # type: ignore[index]
                 and np.asarray(masked[i]["masked"]).dtype == settings.dtype]  # type: ignore[index]
        self._fail_below(len(alive), f"of {len(active)} sent a masked vector")
        gone = [i for i in active if i not in alive]
        unmask = {}
        for h in alive:
            mine = set(neighbours(h, self.n, self.k))
            unmask[h] = {"index": self.index, "survivors": alive, "dropped": gone,
                         "seed_shares": {u: masked[u]["shares"][h] for u in alive if u in mine},  # type: ignore[index]
                         "key_shares": {v: self._key_shares[h][v] for v in gone
                                        if v in mine and v in self._key_shares[h]}}
        answers = self.exchange("unmask", unmask)
        ok = {h: a for h, a in answers.items() if not isinstance(a, Exception)}
        self._fail_below(len(ok), f"of {len(alive)} survivors answered the unmask stage", self.t)
        self.group = [i for i in self.group if i not in gone]
        dtype = settings.dtype
        total = np.zeros(size, dtype=dtype)
        for u in alive:
            total += np.asarray(masked[u]["masked"], dtype=dtype)  # type: ignore[index]
            total -= mask_stream(self.rebuild(u, "seeds", ok), self.index, size, dtype)
        for v in gone:
            key = self.rebuild(v, "keys", ok)
            for w in alive:
                if w in neighbours(v, self.n, self.k):
                    pairwise = mask_stream(_pair_secret(key, self._public[w][1]), self.index,
                                           size, dtype)
                    # w added +PRG(s_wv) when v > w and -PRG when v < w: take it back
                    total = total - pairwise if v > w else total + pairwise
        top = len(alive) * settings.quantization_range
        if (total > top).any():
            raise AggregationError(f"the unmasked sum has {int((total > top).sum())} elements "
                                   f"above what {len(alive)} sites can send ({top}): a site sent "
                                   "values outside the quantization range; sum refused")
        return dequantize_sum(total, len(alive), settings), alive

    def rebuild(self, site: int, kind: str, answers: Mapping[int, Message]) -> bytes:
        """Rebuild a site's secret from the unmask ``answers``, as the unmask stage does.

        ``kind`` ``"seeds"``: a survivor's self-mask seed ``b_u``; ``"keys"``: a dropped
        site's ``mask`` private key. What the coordinator can rebuild is what it learns
        (:mod:`vigil.federation.view_audit` checks what that reveals).

        Raises
        ------
        AggregationError
            With fewer than the threshold of shares.
        """
        shares = [a[kind][site] for a in answers.values() if site in a[kind]]
        if len(shares) < self.t:
            raise AggregationError(f"secure aggregation needs at least the reconstruction "
                                   f"threshold of {self.t} shares of a site's secret; "
                                   f"{len(shares)} came")
        return combine_shares(shares[: self.t])
