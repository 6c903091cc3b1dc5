"""The versioned, hashed feature schema: the contract between training and the runtime."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["FeatureSchema"]


@dataclass(frozen=True)
class FeatureSchema:
    """An ordered list of feature names with a version and a content hash.

    Parameters
    ----------
    version : str
        Bumped by hand whenever the meaning of a feature changes.
    names : tuple of str
        Feature names in column order.
    parameters : dict
        Everything else the features depend on (windows, maximum ages,
        imputation values, plausible ranges); part of the hash.
    """

    version: str
    names: tuple[str, ...]
    parameters: dict[str, Any]

    @property
    def sha256(self) -> str:
        """Hash of version, names and parameters (canonical JSON)."""
        body = json.dumps(
            {"version": self.version, "names": list(self.names), "parameters": self.parameters},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(body.encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        n, digest = len(self.names), self.sha256[:12]
        return f"FeatureSchema(version={self.version!r}, n={n}, sha256={digest})"

    def to_dict(self) -> dict[str, Any]:
        """Return the schema as stored in a model package manifest."""
        return {
            "version": self.version,
            "sha256": self.sha256,
            "names": list(self.names),
            "parameters": self.parameters,
        }
