"""The sepsis network: site-local standardization followed by a small MLP.

API (stable; federation builds on it)
-------------------------------------
``SepsisNet(n_features, *, hidden=(256, 128), dropout=0.2)``
    ``torch.nn.Module``. Stage one, ``norm``, standardizes each feature with the
    NON-trainable buffers ``norm.mean`` and ``norm.std`` of shape (n_features,);
    stage two, ``mlp``, is ``Linear -> ReLU -> Dropout`` per hidden layer and a
    final ``Linear(., 1)``. ``forward(x)`` takes float32 (N, n_features) and
    returns logits of shape (N,). No BatchNorm anywhere, so Opacus DP-SGD works
    on the model unchanged; the standardization is the "site-local
    normalization" that FedBN keeps at each site (Li et al., ICLR 2021).
    The standardized values then pass through ``asinh``, a fixed squash that
    is linear near 0 and logarithmic in the tails: a lab value 50 standard
    deviations out (troponin, lactate) no longer dominates the first layer.
``predict_proba(model, X) -> ndarray (N,)``
    Sigmoid of the logits, in eval mode, without gradients.
``get_weights(model) -> dict[str, ndarray]`` / ``set_weights(model, weights, *, strict=True)``
    The state as an ORDERED dict ``name -> float32 ndarray`` (copies), in
    ``state_dict`` order: ``norm.mean``, ``norm.std``, then ``mlp.<i>.weight``,
    ``mlp.<i>.bias``. Both see through an Opacus ``GradSampleModule`` wrapper.
    ``set_weights(..., strict=False)`` sets only the given entries (FedBN sends
    the trainable ones and keeps its own ``norm.*``).
``is_norm_key(name) -> bool``
    True for the normalization entries (``norm.mean``, ``norm.std``).
``feature_sums(X) -> (count, sum, sumsq)`` / ``norm_stats_from_sums(count, sum, sumsq)``
    A site shares only the aggregate ``(count, sum, sum of squares)`` of its
    features; the coordinator adds them up and forms the global mean and
    standard deviation. ``set_norm(model, mean, std)`` writes them into the
    model; ``fit_norm(model, X)`` does all three locally.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from vigil.core.errors import ModelArtifactError

__all__ = [
    "MIN_STD",
    "NORM_PREFIX",
    "SepsisNet",
    "Standardize",
    "feature_sums",
    "fit_norm",
    "get_weights",
    "is_norm_key",
    "norm_stats_from_sums",
    "predict_logit",
    "predict_proba",
    "set_norm",
    "set_weights",
    "unwrap",
]

NORM_PREFIX = "norm."
"""State entries whose name starts with this are normalization statistics, not trained."""
MIN_STD = 1e-6
"""A feature whose standard deviation is below this is constant: its std is set to 1."""


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature, with non-trainable buffers.

    Parameters
    ----------
    n_features : int
        Width of the input.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features, dtype=torch.float32))
        self.register_buffer("std", torch.ones(n_features, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Standardize ``x`` of shape (N, n_features)."""
        return (x - self.mean) / self.std


class SepsisNet(nn.Module):
    """Standardization, ``asinh``, then an MLP with ReLU and dropout, ending in one logit.

    Parameters
    ----------
    n_features : int
        Width of the feature rows (``len(vigil.features.FEATURE_SCHEMA)``).
    hidden : sequence of int, optional
        Widths of the hidden layers.
    dropout : float, optional
        Dropout probability after each hidden layer (0 disables it).

    Examples
    --------
    >>> net = SepsisNet(4, hidden=(8,), dropout=0.0)
    >>> tuple(net(torch.zeros(3, 4)).shape)
    (3,)
    """

    def __init__(
        self, n_features: int, *, hidden: Sequence[int] = (256, 128), dropout: float = 0.2
    ) -> None:
        super().__init__()
        if n_features < 1 or any(h < 1 for h in hidden) or not 0.0 <= dropout < 1.0:
            raise ValueError(
                "expected n_features >= 1, hidden widths >= 1 and 0 <= dropout < 1; got "
                f"n_features={n_features}, hidden={tuple(hidden)}, dropout={dropout}"
            )
        self.n_features = int(n_features)
        self.hidden = tuple(int(h) for h in hidden)
        self.dropout = float(dropout)
        self.norm = Standardize(self.n_features)
        layers: list[nn.Module] = []
        width = self.n_features
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N,) for features of shape (N, n_features)."""
        return self.mlp(torch.asinh(self.norm(x))).squeeze(-1)

    def config(self) -> dict[str, object]:
        """Return the constructor arguments, to rebuild the same architecture."""
        return {"n_features": self.n_features, "hidden": list(self.hidden), "dropout": self.dropout}

    def extra_repr(self) -> str:
        """Summarize the architecture in ``repr``."""
        return f"n_features={self.n_features}, hidden={self.hidden}, dropout={self.dropout}"


def unwrap(model: nn.Module) -> nn.Module:
    """Return the module inside wrappers such as Opacus' ``GradSampleModule`` (``._module``)."""
    while isinstance(getattr(model, "_module", None), nn.Module):
        model = model._module  # type: ignore[assignment]
    return model


def is_norm_key(name: str) -> bool:
    """Whether a weight entry is a normalization statistic (kept at the site in FedBN)."""
    return name.startswith(NORM_PREFIX)


def get_weights(model: nn.Module) -> OrderedDict[str, NDArray[np.float32]]:
    """Return the model state as an ordered ``name -> float32 ndarray`` dict (copies).

    Parameters
    ----------
    model : nn.Module
        A :class:`SepsisNet`, possibly inside an Opacus wrapper.

    Returns
    -------
    OrderedDict of str to ndarray
        In ``state_dict`` order; normalization entries satisfy :func:`is_norm_key`.
    """
    return OrderedDict(
        (name, t.detach().cpu().numpy().astype(np.float32, copy=True))
        for name, t in unwrap(model).state_dict().items()
    )


def set_weights(
    model: nn.Module, weights: Mapping[str, NDArray[np.floating]], *, strict: bool = True
) -> None:
    """Load weights from a ``name -> ndarray`` mapping, in place.

    Parameters
    ----------
    model : nn.Module
        A :class:`SepsisNet`, possibly inside an Opacus wrapper.
    weights : mapping of str to ndarray
        As returned by :func:`get_weights`.
    strict : bool, optional
        If True every entry of the model must be given; if False only the given
        ones are set (e.g. the trainable entries, keeping the local ``norm.*``).

    Raises
    ------
    ModelArtifactError
        If a name is unknown, an entry is missing (``strict``) or a shape differs.
    """
    state = unwrap(model).state_dict()
    unknown = [k for k in weights if k not in state]
    missing = [k for k in state if k not in weights] if strict else []
    if unknown or missing:
        raise ModelArtifactError(
            f"expected weights named like the model's; unknown: {unknown or 'none'}, missing: "
            f"{missing or 'none'}. Build the model with the same architecture as the weights"
        )
    with torch.no_grad():
        for name, value in weights.items():
            arr = np.asarray(value, dtype=np.float32)
            if tuple(arr.shape) != tuple(state[name].shape):
                raise ModelArtifactError(
                    f"weight {name!r}: expected shape {tuple(state[name].shape)}, got {arr.shape}"
                )
            state[name].copy_(torch.from_numpy(arr))


def feature_sums(X: NDArray[np.floating]) -> tuple[int, NDArray[np.float64], NDArray[np.float64]]:
    """Aggregate statistics a site may share: row count, column sums, column sums of squares.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)

    Returns
    -------
    count : int
    total, total_sq : ndarray of shape (n_features,)
        Computed in float64.
    """
    x = np.asarray(X, dtype=np.float64)
    return int(x.shape[0]), x.sum(axis=0), np.square(x).sum(axis=0)


def norm_stats_from_sums(
    count: int, total: NDArray[np.floating], total_sq: NDArray[np.floating]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Mean and (population) standard deviation from summed statistics.

    ``mean = S1 / n`` and ``std = sqrt(max(S2 / n - mean^2, 0))`` (the textbook
    moment identity, computed in float64); a std below :data:`MIN_STD` becomes 1
    so that constant features pass through unscaled.

    Parameters
    ----------
    count : int
        Number of rows, summed over sites.
    total, total_sq : ndarray of shape (n_features,)
        Sums of ``x`` and ``x**2``, summed over sites.

    Returns
    -------
    mean, std : ndarray of shape (n_features,), float32

    Raises
    ------
    ValueError
        If ``count`` is not positive or the shapes differ.

    Examples
    --------
    >>> m, s = norm_stats_from_sums(4, np.array([10.0]), np.array([30.0]))
    >>> float(m[0]), round(float(s[0]), 4)
    (2.5, 1.118)
    """
    s1 = np.asarray(total, dtype=np.float64)
    s2 = np.asarray(total_sq, dtype=np.float64)
    if count <= 0 or s1.shape != s2.shape:
        raise ValueError(
            f"expected count > 0 and sums of equal shape; got count={count}, "
            f"shapes {s1.shape} and {s2.shape}"
        )
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    std = np.where(std < MIN_STD, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def set_norm(model: nn.Module, mean: NDArray[np.floating], std: NDArray[np.floating]) -> None:
    """Write standardization statistics (shape (n_features,)) into the model."""
    set_weights(model, {"norm.mean": mean, "norm.std": std}, strict=False)


def fit_norm(model: nn.Module, X: NDArray[np.floating]) -> None:
    """Set the model's standardization from the rows ``X`` of shape (n_rows, n_features)."""
    set_norm(model, *norm_stats_from_sums(*feature_sums(X)))


def _forward(model: nn.Module, X: NDArray[np.floating], batch_size: int,
             out_fn: Callable[[torch.Tensor], torch.Tensor]) -> NDArray[np.float64]:
    net = unwrap(model)
    was_training = net.training
    net.eval()
    x = np.ascontiguousarray(X, dtype=np.float32)
    out = np.empty(x.shape[0], dtype=np.float64)
    try:
        with torch.no_grad():
            for lo in range(0, x.shape[0], batch_size):
                logits = net(torch.from_numpy(x[lo : lo + batch_size]))
                out[lo : lo + batch_size] = out_fn(logits).double().numpy()
    finally:
        net.train(was_training)
    return out


def predict_proba(
    model: nn.Module, X: NDArray[np.floating], *, batch_size: int = 65536
) -> NDArray[np.float64]:
    """Probabilities (sigmoid of the logits) for rows ``X`` of shape (N, n_features).

    The model is put in eval mode for the call and back in its previous mode after.

    Returns
    -------
    ndarray of shape (N,)
    """
    return _forward(model, X, batch_size, torch.sigmoid)


def predict_logit(
    model: nn.Module, X: NDArray[np.floating], *, batch_size: int = 65536
) -> NDArray[np.float64]:
    """Logits (float32 network output, before the sigmoid) for rows ``X`` of shape (N, n_features).

    Returns
    -------
    ndarray of shape (N,)
    """
    return _forward(model, X, batch_size, lambda z: z)
