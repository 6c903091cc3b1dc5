"""The arithmetic of secure aggregation: settings, fixed-point quantization, masks.

A site's float vector ``x`` (shape ``(d,)``) is clipped to ``[-c, c]`` and
quantized to integers ``q = round((x + c) * L / (2c))`` in ``[0, L]``
(``c`` the clipping range, ``L`` the quantization range), as in Bonawitz et al.,
"Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017,
section 3 (inputs in ``Z_R``), and Flower's ``flwr.common.secure_aggregation.quantization``
(which rounds stochastically; vigil rounds to the nearest level, so a run is
reproducible). Masks and sums live in ``Z_M`` with ``M = 2**32`` (or ``2**64``,
``modulus_bits``): numpy's ``uint32`` (``uint64``) addition wraps around, which is
exactly addition modulo ``M``. With ``n`` sites and ``n * L < M`` the sum of the
``q`` never wraps, so the coordinator recovers ``sum(q)`` exactly and

    ``sum(x) ~= sum(q) * 2c / L - n * c``

with an error of at most ``n * c / L`` per element for values inside ``[-c, c]``
(half a quantization step per site). Values outside are clipped: that is the
bound on any one site's influence (``c`` per element), see
:mod:`vigil.federation.secagg`.

Masks are pseudo-random ``uint32`` (``uint64``) streams from ChaCha20 (RFC 8439) keyed by a
32-byte seed, with the sum's index as the nonce: a fresh stream per seed and
sum, 256-bit seeds. (Flower's ``pseudo_rand_gen`` folds the seed into 32 bits for
numpy's Mersenne twister, few enough to try them all; vigil does not use it.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

from vigil.core.errors import ConfigError

__all__ = [
    "MODULUS",
    "SecureSumSettings",
    "check_range",
    "dequantize_sum",
    "mask_stream",
    "quantization_error",
    "quantize",
]

MODULUS = 2**32
"""The default modulus: masked vectors and their sums are ``uint32``."""
_EXACT = 2**53
"""Integers a float64 holds exactly: a sum ``n * L`` must stay below it."""


@dataclass(frozen=True)
class SecureSumSettings:
    """How sites' vectors are summed without showing any one of them.

    Parameters
    ----------
    num_shares : int or None, optional
        How many sites (itself included) each site shares its secrets with and
        masks against: the SecAgg+ graph's degree (Bell et al., "Secure
        Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020).
        None: every site (SecAgg, the right choice for a few hospitals).
    reconstruction_threshold : int or None, optional
        Shares needed to rebuild a site's secret: the fewest sites that must
        answer to unmask a sum. None: a strict majority of ``num_shares``.
    clipping_range : float, optional
        ``c``: each element a site contributes is clipped to ``[-c, c]``
        (after vigil's scaling: network deltas times ``n_i / N``; histograms
        and score sums divided by the rows declared across the sites).
    quantization_range : int, optional
        ``L``: levels over ``[-c, c]``; ``n_sites * L`` must stay below ``M``.
    norm_bound : float or None, optional
        ``B``: each site scales its network update to an L2 norm of at most
        ``B`` before masking (:mod:`vigil.federation.secure_screening`); None: not bounded.
    modulus_bits : int, optional
        32 (``uint32``, 4 bytes per element) or 64 (``uint64``: 8 bytes, and
        room for ``L`` up to ``2**53 / n_sites``).
    """

    num_shares: int | None = None
    reconstruction_threshold: int | None = None
    clipping_range: float = 1.0
    quantization_range: int = 2**24
    norm_bound: float | None = None
    modulus_bits: int = 32

    def resolve(self, n_sites: int) -> tuple[int, int]:
        """Check the settings for ``n_sites`` sites and return ``(num_shares, threshold)``.

        Raises
        ------
        ConfigError
            If the settings are unsafe or impossible for ``n_sites`` (one line,
            naming the setting, what was expected and what came).
        """
        if n_sites < 3:
            raise ConfigError(f"secure aggregation needs at least 3 sites (with 2, each site's "
                              f"vector is the sum minus its own); got {n_sites}", key="sites")
        k = n_sites if self.num_shares is None else int(self.num_shares)
        if not 3 <= k <= n_sites or (k < n_sites and k % 2 == 0):
            raise ConfigError(f"expected num_shares odd between 3 and the {n_sites} sites (or "
                              f"equal to it); got {k}", key="num_shares")
        t = k // 2 + 1 if self.reconstruction_threshold is None else int(
            self.reconstruction_threshold)
        if not 2 * t > k or t > k:
            raise ConfigError(f"expected reconstruction_threshold above half of num_shares "
                              f"({k}) and at most {k}; got {t}: with fewer, a coordinator "
                              "could collect both secrets of one site",
                              key="reconstruction_threshold")
        if not (np.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise ConfigError(f"expected clipping_range > 0, got {self.clipping_range}",
                              key="clipping_range")
        if self.modulus_bits not in (32, 64):
            raise ConfigError(f"expected modulus_bits 32 or 64, got {self.modulus_bits}",
                              key="modulus_bits")
        top = min(2**self.modulus_bits, _EXACT)
        if not 2 <= self.quantization_range or n_sites * self.quantization_range >= top:
            raise ConfigError(f"expected 2 <= quantization_range and sites x quantization_range "
                              f"< {top}; got {self.quantization_range} with {n_sites} sites",
                              key="quantization_range")
        if self.norm_bound is not None and not self.norm_bound > 0:
            raise ConfigError(f"expected norm_bound > 0, got {self.norm_bound}", key="norm_bound")
        return k, t

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """``np.uint32`` or ``np.uint64``."""
        return np.uint32 if self.modulus_bits == 32 else np.uint64

    def widened(self, n_sites: int) -> SecureSumSettings:
        """Return the same clipping on 64 bits with the finest ``L`` a float64 sum holds.

        ``L`` is the largest power of two with ``n_sites * L < 2**53`` (``2**51`` for 3
        sites): an error of ``n c / L``, about ``1e-15 c`` per element (the trees'
        histograms and the score sums, whose split gains and standardization must
        come out as the plain sums' do).
        """
        top = 1 << ((_EXACT // (n_sites + 1)).bit_length() - 1)
        return replace(self, modulus_bits=64, quantization_range=top)

    def step(self) -> float:
        """Width of one quantization level, ``2c / L``."""
        return 2.0 * self.clipping_range / self.quantization_range


def quantize(x: NDArray[np.floating], settings: SecureSumSettings) -> NDArray[np.unsignedinteger]:
    """Clip to ``[-c, c]`` and round to the nearest of the ``L + 1`` levels.

    Parameters
    ----------
    x : ndarray of shape (d,)
    settings : SecureSumSettings

    Returns
    -------
    ndarray of ``settings.dtype``, shape (d,)
        Values in ``[0, L]``.

    Raises
    ------
    ValueError
        If ``x`` holds NaN or infinity.
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError("expected finite values to sum securely, got NaN or infinity")
    c = settings.clipping_range
    q = np.rint((np.clip(x, -c, c) + c) / settings.step())
    return np.clip(q, 0, settings.quantization_range).astype(settings.dtype)


def check_range(x: NDArray[np.floating], settings: SecureSumSettings, what: str) -> None:
    """Refuse a vector that quantization would clip (sums that must come out exact).

    Raises
    ------
    ValueError
        Naming ``what``, the largest value and the clipping range.
    """
    top = float(np.max(np.abs(x), initial=0.0))
    if not top <= settings.clipping_range:
        raise ValueError(f"expected {what} scaled within the clipping range "
                         f"{settings.clipping_range}, got {top:.4g}; raise clipping_range")


def dequantize_sum(total: NDArray[np.unsignedinteger], n_sites: int,
                   settings: SecureSumSettings) -> NDArray[np.float64]:
    """Turn the unmasked sum of ``n_sites`` quantized vectors back into floats.

    Parameters
    ----------
    total : ndarray of ``settings.dtype``, shape (d,)
        ``sum(q) mod M`` (exact while ``n_sites * L < M``).
    n_sites : int
    settings : SecureSumSettings

    Returns
    -------
    ndarray of float64, shape (d,)
        ``total * 2c / L - n_sites * c``.
    """
    return total.astype(np.float64) * settings.step() - n_sites * settings.clipping_range


def quantization_error(n_sites: int, settings: SecureSumSettings) -> float:
    """Largest error per element of a dequantized sum of unclipped values: ``n * c / L``."""
    return n_sites * settings.step() / 2.0


def mask_stream(seed: bytes, index: int, size: int,
                dtype: type[np.unsignedinteger] = np.uint32) -> NDArray[np.unsignedinteger]:
    """Return a mask: the ChaCha20 (RFC 8439) keystream of ``seed`` and ``index`` as integers.

    Parameters
    ----------
    seed : bytes
        32 bytes (a pairwise secret or a site's own fresh seed).
    index : int
        Which sum (the nonce): the same seed gives an unrelated mask for each sum.
    size : int
        Elements.
    dtype : np.uint32 or np.uint64, optional

    Returns
    -------
    ndarray of ``dtype``, shape (size,)
    """
    if len(seed) != 32:
        raise ValueError(f"expected a 32-byte mask seed, got {len(seed)} bytes")
    # cryptography's 16-byte ChaCha20 nonce is the 4-byte block counter, then RFC 8439's
    # 12-byte nonce: the counter starts at 0 and the sum's index is the nonce, so the
    # streams of two sums never overlap
    nonce = bytes(4) + int(index).to_bytes(12, "little")
    encryptor = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor()
    width = np.dtype(dtype).itemsize
    stream = encryptor.update(bytes(width * size))
    return np.frombuffer(stream, dtype=f"<u{width}").astype(dtype)
