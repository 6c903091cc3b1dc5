"""Which version of a resource wins: one rule for the adapter, the grid builder and the store.

Several versions of one Observation (same resource id) can arrive in any order: a
``history`` Bundle lists the newest first, an amendment can be written to a file
before its original, REST pages come in any order, a late page reaches a later
cycle. The newest version wins, by these keys in this order:

1. ``meta.versionId``, compared as an integer (the servers' usual ``"1"``,
   ``"2"``...);
2. ``meta.lastUpdated``;
3. ``issued``;
4. reading order (``seq``; a later cycle reads after an earlier one), only as the
   last tie-break.

A key is used for a resource only when **every** version of it being compared
has that key (a versionId that is not an integer counts as absent); otherwise
the next key decides. Comparing pair by pair instead ("by versionId when both
have one, else ...") is not an order: three versions can beat each other in a
circle. So a resource whose versions all carry an integer versionId is ordered by
it (then by the next keys on a tie); if one of them has a non-numeric or no
versionId, ``meta.lastUpdated`` orders them, and so on.

An ``entered-in-error`` version (a :class:`~vigil.fhir_adapter.records.Deletion`)
is a version like the others: it removes the resource's values only when it is
the newest; a newer version read after it, or before it, brings the resource back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.fhir_adapter.records import NO_TIME, NO_VERSION, ObservationBatch

__all__ = ["latest_in_batch", "newest", "version_number"]

_MAX_DIGITS = 18
"""Longest versionId read as a number (fits an int64)."""


def version_number(version_id: object) -> int:
    """Return ``meta.versionId`` as an integer, or :data:`NO_VERSION` if it is not one.

    Parameters
    ----------
    version_id : object
        ``meta.versionId`` as read (a FHIR ``id``: ``[A-Za-z0-9.-]{1,64}``), or None.

    Returns
    -------
    int
        The version number (``"007"`` is 7), or :data:`NO_VERSION` when absent, not made of
        ASCII digits only, or longer than 18 digits.

    Examples
    --------
    >>> version_number("12"), version_number("v2") == NO_VERSION
    (12, True)
    """
    if (type(version_id) is str and version_id.isascii() and version_id.isdigit()
            and len(version_id) <= _MAX_DIGITS):
        return int(version_id)
    return NO_VERSION


def newest(resource_id: NDArray[np.object_], seq: NDArray[np.int64], *,
           version: NDArray[np.int64] | None = None,
           last_updated: NDArray[np.int64] | None = None,
           issued: NDArray[np.int64] | None = None) -> NDArray[np.bool_]:
    """Mask of the values that belong to the newest version of their resource.

    Parameters
    ----------
    resource_id : ndarray of object (str), shape (n,)
    seq : ndarray of int64, shape (n,)
        Reading order; the values of one version (a panel's components) share it, and two
        versions of one resource never do.
    version, last_updated, issued : ndarray of int64, shape (n,), optional
        The keys of the module docstring (:data:`NO_VERSION` / :data:`NO_TIME` where
        unknown); None when no value has the key.

    Returns
    -------
    ndarray of bool, shape (n,)
        True for every value of each resource's winning version.
    """
    n = len(seq)
    if n == 0:
        return np.zeros(0, dtype=bool)
    codes, unique = pd.factorize(resource_id)
    keys = []
    for key, unknown in ((version, NO_VERSION), (last_updated, NO_TIME), (issued, NO_TIME)):
        if key is None:
            continue
        missing = np.bincount(codes, weights=key == unknown, minlength=len(unique)) > 0
        if missing.all():
            continue
        # a key counts only for the resources whose every version has it
        keys.append(np.where(missing[codes], 0, key))
    order = np.lexsort((seq, *keys[::-1], codes))
    last = np.ones(n, dtype=bool)
    last[:-1] = codes[order][1:] != codes[order][:-1]
    top = np.empty(len(unique), dtype=np.int64)
    top[codes[order[last]]] = seq[order[last]]
    return np.asarray(seq == top[codes])


def latest_in_batch(batch: ObservationBatch) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Masks of a batch's values and deletions that are the newest version of their resource.

    Values and deletions are ordered together by :func:`newest`: a deletion wins only over
    older versions, and a newer version wins over a deletion.

    Returns
    -------
    values : ndarray of bool, shape (len(batch),)
    deletions : ndarray of bool, shape (len(batch.deletions),)
    """
    if not batch.deletions:
        return newest(batch.resource_id, batch.seq, version=batch.version,
                      last_updated=batch.last_updated, issued=batch.issued), np.zeros(0, bool)
    dels = batch.deletions
    rid = np.concatenate([batch.resource_id, np.array([d.resource_id for d in dels], object)])
    seq = np.concatenate([batch.seq, np.array([d.seq for d in dels], dtype=np.int64)])
    latest = newest(
        rid, seq,
        version=np.concatenate([batch.column("version"),
                                np.array([d.version for d in dels], dtype=np.int64)]),
        last_updated=np.concatenate([batch.last_updated,
                                     np.array([d.last_updated for d in dels], dtype=np.int64)]),
        issued=np.concatenate([batch.column("issued"),
                               np.array([d.issued for d in dels], dtype=np.int64)]),
    )
    return latest[: len(batch)], latest[len(batch):]
