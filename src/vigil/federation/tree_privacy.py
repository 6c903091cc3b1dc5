"""Differential privacy for the boosted trees: Gaussian noise on the histograms, RDP accounting.

Under ``--dp-epsilon`` the trees of :mod:`vigil.federation.boosting` grow from
noisy site histograms, and each site's single (epsilon, delta) covers both its
DP-SGD network and its trees.

**Unit of privacy.** One hourly training row of a site, as for the network's
DP-SGD (:mod:`vigil.federation.privacy`); neighbouring datasets differ by
adding or removing one row. A patient's stay of k rows is protected at about
k times epsilon (group privacy).

**What a site releases** (all with public bin edges, :mod:`vigil.federation.public_edges`):

1. once, its weighted positives and rows ``(P, W)``: a row changes them by at
   most ``(1, 1)``, L2 sensitivity ``sqrt(2)``;
2. per tree level, the per-node, per-feature, per-bin sums of gradients and
   hessians over the ``k`` features the tree uses (``features_per_tree``, drawn
   from a public seed; the other features are sent as exact zeros, which do
   not depend on the data). Logistic loss with unit row weights gives
   ``g = p - y`` in ``[-1, 1]`` and ``h = p (1 - p)`` in ``[0, 1/4]``; a row
   lies in one node of the level and one bin of each feature, so the level's
   L2 sensitivity is ``sqrt(k (1 + 1/16))``.

Each release gets Gaussian noise of standard deviation ``z * sensitivity``
(noise multiplier ``z``); negative hessian sums and out-of-range label sums are
clipped afterwards (post-processing). Bins above a feature's last edge are never
filled and are sent as exact zeros.

**Accounting.** The Gaussian mechanism of sensitivity ``Delta`` and noise
``sigma`` is ``(alpha, alpha Delta^2 / (2 sigma^2))``-RDP (Mironov, "Renyi
Differential Privacy", CSF 2017, Proposition 7), ``alpha / (2 z^2)`` for every
release here; RDP adds up over the ``1 + n_trees * (max_depth + 1)`` releases
(Proposition 1) and over the network's DP-SGD steps (Opacus' subsampled
Gaussian RDP at the same orders). The sum is converted to (epsilon, delta)
once, at the end, by Opacus' ``get_privacy_spent`` (Balle et al. 2020).

**Budget split.** The network's DP-SGD is calibrated alone to
``(1 - tree_share) * epsilon``; then each site's tree noise multiplier is the
smallest ``z`` (bisection) whose composition with the network's planned RDP
stays within ``epsilon``. Because RDP composes more tightly than epsilons add,
the trees get more than ``tree_share * epsilon`` and the total never exceeds
the target.

Not covered: the validation rows (the score sums, the Platt fit and the
threshold come from sums over validation patients, like the network's round
evaluations), and the training statistics sent before round 1; the guarantee
is for the training rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ConfigError
from vigil.federation.boosting import BoostingPlan, BoostingSite
from vigil.federation.recipes import DP_TREE_SHARE

__all__ = [
    "NoisyBoostingSite",
    "TreeDPSettings",
    "TreeNoise",
    "calibrate_tree_noise",
    "gaussian_rdp",
    "level_sensitivity",
    "manifest_trees",
    "network_dp",
    "network_rdp",
    "planned_noise",
    "planned_noises",
    "private_plan",
    "rdp_epsilon",
    "site_noise",
    "site_tree_noise",
    "tree_features",
    "tree_releases",
]

HESSIAN_BOUND = 0.25
"""Largest hessian of a row, ``p (1 - p) <= 1/4``."""


@dataclass(frozen=True)
class TreeDPSettings:
    """How the trees share a site's privacy budget.

    Parameters
    ----------
    tree_share : float, optional
        Share of epsilon the network's DP-SGD gives up, in (0, 1).
    features_per_tree : int, optional
        Features each tree may split on (and the sites send), >= 1.
    seed : int, optional
        Seed of the public feature draws.
    hessian_floor : float, optional
        ``min_child_weight`` is raised to this many standard deviations of the
        noise on a hessian sum over all bins of a feature, summed over the
        sites (:func:`private_plan`), > 0.
    seeded_noise : bool, optional
        Draw each release's noise from a generator seeded by ``seed``, the
        site's name and the release (reproducible runs: the in-process
        simulation, tests). False draws it from the operating system's entropy,
        as a deployment must: with a seed the coordinator knows, the noise
        could be subtracted.
    """

    tree_share: float = DP_TREE_SHARE
    features_per_tree: int = 16
    seed: int = 0
    hessian_floor: float = 2.0
    seeded_noise: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.tree_share < 1:
            raise ConfigError(f"expected 0 < tree share < 1, got {self.tree_share}",
                              key="dp_tree_share")
        if self.features_per_tree < 1:
            raise ConfigError(f"expected features per tree >= 1, got {self.features_per_tree}",
                              key="dp_tree_features")
        if not (math.isfinite(self.hessian_floor) and self.hessian_floor > 0):
            raise ConfigError(f"expected a hessian floor > 0 noise SDs, got {self.hessian_floor}",
                              key="dp_tree_floor")


def level_sensitivity(features: int) -> float:
    """L2 sensitivity of one level's histograms to one row: ``sqrt(k (1 + 1/16))``."""
    return math.sqrt(features * (1.0 + HESSIAN_BOUND**2))


def tree_releases(plan: BoostingPlan) -> int:
    """Gaussian releases of a site: the label sums and every level of every tree."""
    return 1 + plan.n_trees * (plan.max_depth + 1)


def gaussian_rdp(orders: Sequence[float], *, noise_multiplier: float, count: int) -> NDArray[
    np.float64
]:
    """RDP of ``count`` Gaussian releases at noise ``z`` times their sensitivity.

    ``count * alpha / (2 z^2)`` at each order (Mironov 2017, Prop. 7 and 1).

    Returns
    -------
    ndarray of shape (len(orders),)
    """
    return count * np.asarray(orders, dtype=np.float64) / (2.0 * noise_multiplier**2)


def network_rdp(*, sample_rate: float, noise_multiplier: float, steps: int,
                orders: Sequence[float]) -> NDArray[np.float64]:
    """RDP of DP-SGD's subsampled Gaussian steps (Opacus' ``compute_rdp``), shape (len(orders),)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps,
                                  orders=list(orders)), dtype=np.float64)


def rdp_epsilon(rdp: NDArray[np.float64], orders: Sequence[float], delta: float) -> float:
    """Convert RDP to epsilon at ``delta`` (Opacus ``get_privacy_spent``, best order)."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings():  # a valid bound at any order
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def calibrate_tree_noise(*, epsilon: float, delta: float, releases: int,
                         network: NDArray[np.float64], orders: Sequence[float]) -> tuple[
    float, float
]:
    """Smallest tree noise multiplier keeping the composed epsilon within ``epsilon``.

    Parameters
    ----------
    epsilon, delta : float
        The site's whole budget.
    releases : int
        Gaussian releases of the trees (:func:`tree_releases`).
    network : ndarray of shape (len(orders),)
        RDP the network's DP-SGD spends (:func:`network_rdp`; zeros without it).
    orders : sequence of float

    Returns
    -------
    noise_multiplier, composed_epsilon : float

    Raises
    ------
    ConfigError
        If the network alone already spends the budget.
    """
    def composed(z: float) -> float:
        return rdp_epsilon(network + gaussian_rdp(orders, noise_multiplier=z, count=releases),
                           orders, delta)

    alone = rdp_epsilon(network, orders, delta)
    if not alone < epsilon:
        raise ConfigError(f"expected the network to leave part of epsilon {epsilon:g} for the "
                          f"trees, it spends {alone:.3g}", key="dp_tree_share")
    low, high = 1e-3, 1.0
    while composed(high) > epsilon:
        low, high = high, high * 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if composed(mid) > epsilon else (low, mid)
    return high, composed(high)


def tree_features(seed: int, tree: int, n_features: int, k: int) -> NDArray[np.int64]:
    """Draw tree ``tree``'s features publicly: ``k`` of ``n_features``, sorted."""
    rng = np.random.default_rng([seed, tree])
    return np.sort(rng.choice(n_features, size=min(k, n_features), replace=False))


@dataclass(frozen=True)
class TreeNoise:
    """One site's noise for the trees, and what it composes to.

    Attributes
    ----------
    noise_multiplier : float
    features_per_tree : int
    seed : int
        Seed of the public feature draws.
    epsilon, delta : float
        The site's composed guarantee (network and trees).
    network_epsilon : float
        The network's DP-SGD alone, at the same delta.
    releases : int
    seeded_noise : bool, optional
        Noise from generators seeded by ``seed`` (reproducible), else from the OS.
    """

    noise_multiplier: float
    features_per_tree: int
    seed: int
    epsilon: float
    delta: float
    network_epsilon: float
    releases: int
    seeded_noise: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Manifest form, with the per-release noise standard deviations."""
        return {
            "epsilon": self.epsilon, "delta": self.delta,
            "network_epsilon": self.network_epsilon,
            "tree_noise_multiplier": self.noise_multiplier,
            "histogram_sigma": self.noise_multiplier * level_sensitivity(self.features_per_tree),
            "label_sums_sigma": self.noise_multiplier * math.sqrt(2.0),
            "releases": self.releases,
            "noise_source": "seeded (reproducible simulation)" if self.seeded_noise
            else "operating system entropy",
        }


@dataclass(eq=False)
class NoisyBoostingSite(BoostingSite):
    """A :class:`BoostingSite` that releases only Gaussian-noised sums (module docstring).

    Each release draws its noise from its own generator: seeded by the tree
    noise's seed, the site's name and the release's place (tree, level), so a
    site rebuilt for every message (Flower) gives the same noise as one kept in
    process; or, without ``seeded_noise``, from the operating system.

    Parameters
    ----------
    noise : TreeNoise
    n_edges : sequence of int
        Edges per feature (bins above ``n_edges[f]`` hold no row).
    """

    noise: TreeNoise | None = None
    n_edges: Sequence[int] = ()
    _tree: int = field(default=-1, init=False, repr=False)
    _level: int = field(default=0, init=False, repr=False)
    _features: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64),
                                         init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise is None or len(self.n_edges) != self.binned.shape[1]:
            raise ConfigError(f"site {self.name}: expected the tree noise and the edges of "
                              f"{self.binned.shape[1]} features", key="dp_epsilon")

    def _release_rng(self, tree: int, level: int) -> np.random.Generator:
        assert self.noise is not None
        if not self.noise.seeded_noise:
            return np.random.default_rng()
        return np.random.default_rng([self.noise.seed, *self.name.encode(), tree + 1, level])

    def label_sums(self) -> tuple[float, float]:
        """Noisy weighted positives and rows, clipped to ``1 <= W``, ``0 <= P <= W``."""
        positives, rows = super().label_sums()
        assert self.noise is not None
        sigma = self.noise.noise_multiplier * math.sqrt(2.0)
        rng = self._release_rng(-1, 0)
        rows_n = max(1.0, rows + float(rng.normal(0.0, sigma)))
        return float(np.clip(positives + rng.normal(0.0, sigma), 0.0, rows_n)), rows_n

    def begin_tree(self) -> None:
        """Start a tree: gradients, and the tree's public feature draw."""
        super().begin_tree()
        self._tree += 1
        self._level = 0
        self._draw()

    def _draw(self) -> None:
        assert self.noise is not None
        self._features = tree_features(self.noise.seed, self._tree, self.binned.shape[1],
                                       self.noise.features_per_tree)

    def _summed_features(self) -> NDArray[np.int64]:
        """Only the tree's features are summed (the others are never released)."""
        return self._features

    def histograms(self, nodes: NDArray[np.int64], n_bins: int) -> NDArray[np.float64]:
        """Return the exact sums of the tree's features plus Gaussian noise; zeros elsewhere.

        Returns
        -------
        ndarray of shape (len(nodes), n_features, n_bins, 2)
        """
        exact = super().histograms(nodes, n_bins)
        assert self.noise is not None
        sigma = self.noise.noise_multiplier * level_sensitivity(self.noise.features_per_tree)
        rng = self._release_rng(self._tree, self._level)
        self._level += 1
        out = np.zeros_like(exact)
        for f in self._features:
            used = min(int(self.n_edges[f]) + 1, n_bins)
            out[:, f, :used] = exact[:, f, :used] + rng.normal(
                0.0, sigma, size=(exact.shape[0], used, 2))
        np.maximum(out[..., 1], 0.0, out=out[..., 1])
        return out

    def state(self) -> dict[str, NDArray[Any]]:
        """:meth:`BoostingSite.state` plus the tree and the level being released."""
        return super().state() | {"release": np.array([self._tree, self._level], np.int64)}

    def restore(self, state: Mapping[str, NDArray[Any]]) -> None:
        """Take up the running state :meth:`state` returned."""
        super().restore(state)
        if "release" in state:
            self._tree, self._level = (int(v) for v in state["release"])
            if self._tree >= 0:
                self._draw()


def site_tree_noise(*, epsilon: float, delta: float, sample_rate: float,
                    network_noise: float, network_steps: int, plan: BoostingPlan,
                    settings: TreeDPSettings, orders: Sequence[float]) -> TreeNoise:
    """Calibrate one site's tree noise against the RDP its network's DP-SGD plan spends.

    Parameters
    ----------
    epsilon, delta : float
        The site's whole budget (``--dp-epsilon``) and its delta.
    sample_rate, network_noise : float
        DP-SGD's Poisson rate and noise multiplier
        (:class:`~vigil.federation.privacy.SiteAccountant`).
    network_steps : int
        DP-SGD's planned noisy steps.
    plan : BoostingPlan
    settings : TreeDPSettings
    orders : sequence of float
        RDP orders (:data:`vigil.federation.privacy.ALPHAS`).

    Returns
    -------
    TreeNoise
    """
    net = network_rdp(sample_rate=sample_rate, noise_multiplier=network_noise,
                      steps=network_steps, orders=orders)
    releases = tree_releases(plan)
    z, composed = calibrate_tree_noise(epsilon=epsilon, delta=delta, releases=releases,
                                       network=net, orders=orders)
    return TreeNoise(noise_multiplier=z, features_per_tree=settings.features_per_tree,
                     seed=settings.seed, epsilon=composed, delta=delta,
                     network_epsilon=rdp_epsilon(net, orders, delta), releases=releases,
                     seeded_noise=settings.seeded_noise)


def network_dp(dp: Any, settings: TreeDPSettings) -> Any:
    """Return the network's DP-SGD settings: ``dp`` at ``(1 - tree_share) * epsilon``."""
    return replace(dp, target_epsilon=dp.target_epsilon * (1.0 - settings.tree_share))


def site_noise(*, n_rows: int, accountant: Any, dp: Any, plan: BoostingPlan,
               settings: TreeDPSettings) -> TreeNoise:
    """Calibrate a site's tree noise against its network's DP-SGD plan (its accountant).

    Parameters
    ----------
    n_rows : int
        The site's training rows (``delta = 1 / n_rows`` unless ``dp`` sets it).
    accountant : SiteAccountant or None
        The site's DP-SGD accountant (:class:`~vigil.federation.privacy.SiteAccountant`);
        None if the site trained no noisy step, and then the trees get all of epsilon.
    dp : DPSettings
        The whole per-site budget (``--dp-epsilon``).
    plan : BoostingPlan
    settings : TreeDPSettings

    Returns
    -------
    TreeNoise
    """
    from vigil.federation.privacy import ALPHAS

    delta = dp.delta if dp.delta is not None else 1.0 / n_rows
    acc = accountant
    return site_tree_noise(
        epsilon=dp.target_epsilon, delta=acc.delta if acc is not None else delta,
        sample_rate=acc.sample_rate if acc is not None else 1.0,
        network_noise=acc.noise_multiplier if acc is not None else 1.0,
        network_steps=acc.planned_steps if acc is not None else 0, plan=plan,
        settings=settings, orders=ALPHAS)


def planned_noise(*, n_rows: int, dp: Any, rounds: int, local_epochs: int, batch_size: int,
                  plan: BoostingPlan, settings: TreeDPSettings) -> TreeNoise:
    """Return the tree noise a site of ``n_rows`` training rows calibrates (:func:`site_noise`).

    What the coordinator computes from the rows each site declared before round 1
    (on Flower the sites calibrate their own noise): the site's DP-SGD plan at
    ``(1 - tree_share) * epsilon`` for the run's rounds, epochs and batch size.
    """
    from vigil.federation.privacy import SiteAccountant

    acc = SiteAccountant(network_dp(dp, settings), n_rows=n_rows, batch_size=batch_size,
                         local_epochs=local_epochs, total_rounds=rounds)
    return site_noise(n_rows=n_rows, accountant=acc, dp=dp, plan=plan, settings=settings)


def planned_noises(counts: Mapping[str, int], *, dp: Any, plan: Any, trees: BoostingPlan,
                   settings: TreeDPSettings) -> dict[str, TreeNoise]:
    """Return :func:`planned_noise` of every site, from the training rows it declared.

    Parameters
    ----------
    counts : mapping of str to int
        Each site's training rows (its statistics before round 1).
    dp : DPSettings
        The whole per-site budget.
    plan : Plan
        The run's rounds, local epochs and batch size (:class:`~vigil.federation.driver.Plan`).
    trees : BoostingPlan
    settings : TreeDPSettings
    """
    return {name: planned_noise(n_rows=n, dp=dp, rounds=plan.rounds,
                                local_epochs=plan.local_epochs, batch_size=plan.batch_size,
                                plan=trees, settings=settings)
            for name, n in sorted(counts.items())}


def private_plan(plan: BoostingPlan, noises: Sequence[TreeNoise],
                 hessian_floor: float = 2.0) -> BoostingPlan:
    """Return the plan for noisy trees: a child's hessian floor above the noise.

    ``min_child_weight`` becomes at least ``hessian_floor`` (default 2) standard
    deviations of the noise on a hessian sum over all ``n_bins`` bins of one
    feature, summed over the sites (``c sqrt(n_bins * sum_s sigma_s^2)``), so
    that no split is made on noise alone; it depends on the noise only, not on
    the data.
    """
    var = sum((n.noise_multiplier * level_sensitivity(n.features_per_tree)) ** 2 for n in noises)
    floor = hessian_floor * math.sqrt(plan.n_bins * var)
    return replace(plan, min_child_weight=max(plan.min_child_weight, floor))


def manifest_trees(mechanism: str, epsilon: float, settings: TreeDPSettings,
                   noises: Mapping[str, TreeNoise]) -> dict[str, Any]:
    """Return what the trees add to the manifest's ``training.differential_privacy``.

    Parameters
    ----------
    mechanism : str
        The network's mechanism line, extended.
    epsilon : float
        The per-site target (``--dp-epsilon``).
    settings : TreeDPSettings
    noises : mapping of str to TreeNoise
        Each site's calibration.
    """
    return {
        "mechanism": mechanism + "; trees: Gaussian noise on every released histogram and "
                     "label sum, public bin edges (vigil.federation.tree_privacy)",
        "split": {"rule": "network DP-SGD calibrated to (1 - tree_share) * epsilon; tree noise "
                          "the smallest whose RDP composition with the network's planned steps "
                          "stays within epsilon; converted to (epsilon, delta) once",
                  "tree_share": settings.tree_share,
                  "network_target_epsilon": epsilon * (1.0 - settings.tree_share)},
        "trees": {"features_per_tree": settings.features_per_tree,
                  "hessian_floor_sds": settings.hessian_floor,
                  "sensitivity": "per level sqrt(k (1 + 1/16)), k features; label sums "
                                 "sqrt(2); one row = one unit",
                  "sites": {n: t.to_dict() for n, t in sorted(noises.items())}},
        "composed_epsilon": {n: t.epsilon for n, t in sorted(noises.items())},
    }
