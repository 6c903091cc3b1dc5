"""The SMART scope a site's runtime requests: derived from what it is configured to read and write.

A SMART Backend Services client asks the token endpoint for a ``scope`` (SMART App Launch
2.0, "Scopes for requesting clinical data": ``system/<ResourceType>.<permissions>``, the
permissions a subsequence of ``cruds``; the 1.0 forms ``.read``, ``.write`` and ``.*`` are
read as ``rs``, ``cud`` and ``cruds``). The runtime needs:

==========================================================  ====================================
configured                                                  scope
==========================================================  ====================================
``data.source = "fhir"``                                    ``system/Patient.rs``,
                                                            ``system/Encounter.rs``,
                                                            ``system/Location.rs``,
                                                            ``system/Observation.rs``
``outcomes.source = "fhir"``                                ``system/Condition.rs``
``data.writeback = "fhir"``                                 ``system/RiskAssessment.cu``
with ``[imaging]`` and ``imaging.writeback.fhir``           ``system/DiagnosticReport.cu``,
                                                            ``system/Observation.cu``
==========================================================  ====================================

(``cu``: the write-back is an idempotent ``PUT`` with the resource's id, FHIR's update as
create.) :func:`load_settings <vigil.runtime.settings.load_settings>` puts the derived scope
into ``fhir.smart.scope`` when the site sets none; an explicit ``fhir.smart.scope`` is kept
as the override, and :func:`check_scope` (called by ``check_serving``) refuses one that lacks
a write the settings need. Reads are not checked: a server may grant them under another
form (a compartment, a query-restricted scope) the client cannot judge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vigil.core.errors import ConfigError
from vigil.fhir_adapter.settings import AuthMode

if TYPE_CHECKING:
    from vigil.runtime.settings import VigilSettings

__all__ = ["READS", "check_scope", "derived_scope", "missing_scopes", "needed_scopes",
           "with_derived_scope"]

READS: tuple[str, ...] = ("system/Patient.rs", "system/Encounter.rs", "system/Location.rs",
                          "system/Observation.rs")
"""What the sepsis cycle reads from a FHIR source."""

_IMAGING_WRITES = ("system/DiagnosticReport.cu", "system/Observation.cu")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}


def needed_scopes(settings: VigilSettings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Return the scopes the settings need: ``(reads, writes)``, in a fixed order."""
    d, i = settings.data, settings.imaging
    reads = list(READS) if d.source == "fhir" else []
    if settings.outcomes.source == "fhir":
        reads.append("system/Condition.rs")
    writes: list[str] = []
    if d.writeback == "fhir":
        writes.append("system/RiskAssessment.cu")
        if i.enabled and i.writeback.fhir:
            writes += _IMAGING_WRITES
    return tuple(reads), tuple(writes)


def derived_scope(settings: VigilSettings) -> str | None:
    """Return the scope the settings need, space-separated (None when they need none)."""
    reads, writes = needed_scopes(settings)
    return " ".join((*reads, *writes)) or None


def _grant(scope: str) -> tuple[str, frozenset[str]] | None:
    """Return ``(resource type or "*", permissions)`` of one system scope, or None."""
    context, _, rest = scope.partition("/")
    resource, dot, permissions = rest.rpartition(".")
    if context != "system" or not dot or not resource or "?" in rest:
        return None  # another context, or a query-restricted grant: not a whole resource type
    letters = _V1.get(permissions, permissions)
    if not letters or any(c not in "cruds" for c in letters):
        return None
    return resource, frozenset(letters)


def missing_scopes(scope: str, needed: tuple[str, ...]) -> list[str]:
    """Return the scopes of ``needed`` that ``scope`` (space-separated) does not grant.

    A need is granted by the union of the permissions of the scope's system scopes on its
    resource type and on ``*`` (``system/*.cu``, ``system/Observation.write``, or
    ``system/Observation.c system/Observation.u`` all grant ``system/Observation.cu``).
    """
    grants = [g for g in map(_grant, scope.split()) if g is not None]
    out = []
    for need in needed:
        want = _grant(need)
        assert want is not None, need
        have: set[str] = set()
        for resource, letters in grants:
            if resource in (want[0], "*"):
                have |= letters
        if not want[1] <= have:
            out.append(need)
    return out


def with_derived_scope(settings: VigilSettings) -> VigilSettings:
    """Return the settings with the derived scope in ``fhir.smart.scope`` unless one is set."""
    fhir = settings.fhir
    if fhir is None or fhir.smart is None or "scope" in fhir.smart.model_fields_set:
        return settings
    scope = derived_scope(settings)
    if scope is None:
        return settings  # nothing configured uses FHIR: the client's default stays
    smart = fhir.smart.model_copy(update={"scope": scope})
    return settings.model_copy(update={"fhir": fhir.model_copy(update={"smart": smart})})


def check_scope(settings: VigilSettings) -> None:
    """Refuse an explicit ``fhir.smart.scope`` that lacks a write the settings need.

    Raises
    ------
    ConfigError
        One line: the missing scopes, which setting needs them, and the fix.
    """
    fhir = settings.fhir
    if fhir is None or fhir.auth is not AuthMode.SMART or fhir.smart is None:
        return
    _, writes = needed_scopes(settings)
    missing = missing_scopes(fhir.smart.scope, writes)
    if not missing:
        return
    why = ("the imaging write-back (imaging.writeback.fhir = true)"
           if set(missing) & set(_IMAGING_WRITES) else "the write-back (data.writeback = 'fhir')")
    raise ConfigError(
        f"fhir.smart.scope lacks {' '.join(missing)}, which {why} needs; add them (and have the "
        "EHR grant them to vigil's client), or remove fhir.smart.scope to request what the "
        "settings need", key="fhir.smart.scope")
