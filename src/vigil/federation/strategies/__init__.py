"""Federated strategies: pure numpy aggregation over ``name -> ndarray`` weights."""

from vigil.federation.strategies._aggregate import (
    Weights,
    coordinate_median,
    example_shares,
    trimmed_mean,
    weighted_mean,
)
from vigil.federation.strategies.base import DEFAULT_MU, Strategy, StrategyName, make_strategy
from vigil.federation.strategies.fedavg import fedavg
from vigil.federation.strategies.fedbn import fedbn, shared_keys
from vigil.federation.strategies.fedprox import fedprox, proximal_penalty
from vigil.federation.strategies.robust import DEFAULT_TRIM, Robust, robust_aggregate

__all__ = [
    "DEFAULT_MU",
    "DEFAULT_TRIM",
    "Robust",
    "Strategy",
    "StrategyName",
    "Weights",
    "coordinate_median",
    "example_shares",
    "fedavg",
    "fedbn",
    "fedprox",
    "make_strategy",
    "proximal_penalty",
    "robust_aggregate",
    "shared_keys",
    "trimmed_mean",
    "weighted_mean",
]
