"""Record-level differential privacy inside each site: DP-SGD with Opacus, RDP accounting.

Each site trains with DP-SGD (Abadi et al., "Deep Learning with Differential
Privacy", CCS 2016): Poisson-sampled batches, every row's gradient clipped to
``max_grad_norm`` in L2, Gaussian noise of standard deviation
``noise_multiplier * max_grad_norm`` added to the sum. Opacus' RDP accountant
(Mironov, CSF 2017; subsampled Gaussian of Mironov, Talwar & Zhang 2019)
composes every noisy step of every round, so the reported epsilon is the
site's total over the whole federated training.

A budget is targeted, not merely reported: before its first round, a site
finds the smallest noise multiplier whose RDP epsilon after all planned steps
(``rounds * local_epochs * ceil(n / batch_size)``, sample rate
``1 / ceil(n / batch_size)``) stays within the target, at ``delta = 1 / n``
(n = the site's training rows) unless a delta is given.

RDP orders: Opacus' defaults (1.1 to 63) extended to 4096, because with few
steps or a large noise multiplier the best order lies above 63; any order
gives a valid bound, the extra ones only make it tighter.

The unit of privacy is one hourly row. A patient contributes many rows, so the
patient-level guarantee is weaker (group privacy: about ``k * epsilon`` for k
rows). The proximal term of FedProx is not privatized by Opacus, but it
depends only on the global weights, which are already public to the site.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vigil.core.errors import ConfigError
from vigil.federation.messages import FitConfig, PrivacySpent

if TYPE_CHECKING:
    from vigil.federation.training import OptimizerHook

__all__ = ["ALPHAS", "DPSettings", "PrivateSite", "SiteAccountant", "manifest_section",
           "quiet_hooks"]

ALPHAS: list[float] = [1 + x / 10.0 for x in range(1, 100)] + [
    float(a) for a in (*range(12, 64), *range(64, 256, 8), 256, 384, 512, 1024, 2048, 4096)
]
"""RDP orders searched for the tightest (epsilon, delta) conversion."""


@dataclass(frozen=True)
class DPSettings:
    """A privacy budget for every site.

    Parameters
    ----------
    target_epsilon : float
        Epsilon each site may spend over the whole training, > 0.
    delta : float or None, optional
        Delta; None means ``1 / n`` with n the site's training rows.
    max_grad_norm : float, optional
        Per-row gradient clipping norm.
    """

    target_epsilon: float
    delta: float | None = None
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise ConfigError(
                f"expected --dp-epsilon > 0, got {self.target_epsilon}", key="dp_epsilon"
            )
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"expected 0 < delta < 1, got {self.delta}", key="dp_delta")
        if not self.max_grad_norm > 0:
            raise ConfigError(
                f"expected a clipping norm > 0, got {self.max_grad_norm}", key="dp_clip"
            )


@contextmanager
def quiet_hooks() -> Iterator[None]:
    """Silence torch's note that Opacus' per-sample hooks fire on module outputs (harmless)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing",
                                category=UserWarning)
        yield


class SiteAccountant:
    """One site's DP-SGD calibration and its RDP accountant, across all rounds.

    Parameters
    ----------
    settings : DPSettings
    n_rows : int
        The site's training rows.
    batch_size, local_epochs, total_rounds : int
        The plan the noise is calibrated for.
    """

    def __init__(
        self, settings: DPSettings, *, n_rows: int, batch_size: int, local_epochs: int,
        total_rounds: int,
    ) -> None:
        from opacus.accountants import RDPAccountant
        from opacus.accountants.utils import get_noise_multiplier

        steps_per_epoch = math.ceil(n_rows / batch_size)
        self.settings = settings
        self.sample_rate = 1.0 / steps_per_epoch
        self.planned_steps = steps_per_epoch * local_epochs * total_rounds
        self.delta = settings.delta if settings.delta is not None else 1.0 / n_rows
        with warnings.catch_warnings():  # the search tries huge noise, where the best order is 4096
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            self.noise_multiplier = float(get_noise_multiplier(
                target_epsilon=settings.target_epsilon, target_delta=self.delta,
                sample_rate=self.sample_rate, steps=self.planned_steps, accountant="rdp",
                alphas=ALPHAS,
            ))
        self._accountant = RDPAccountant()

    def __repr__(self) -> str:
        return (f"SiteAccountant(noise_multiplier={self.noise_multiplier:.3f}, "
                f"planned_steps={self.planned_steps})")

    def hook(self) -> OptimizerHook:
        """Return the ``optimizer_hook`` of ``train_local`` that makes one round DP-SGD.

        Every call builds a fresh Opacus ``PrivacyEngine`` whose accountant is
        this site's, so the steps of all rounds add up in one place. Clipping
        uses Opacus' ghost clipping (Li et al., "Large Language Models Can Be
        Strong Differentially Private Learners", ICLR 2022; Bu et al. 2023):
        each row's gradient norm is computed from the layer inputs and output
        gradients (for a linear layer ``||g_i a_i^T|| = ||g_i|| ||a_i||``)
        without materializing the per-row gradients, then a second backward
        pass sums the clipped gradients. Same clipping and noise as the
        per-sample hooks, at about twice the cost of a plain step instead of
        ``batch x parameters`` memory traffic.
        """
        from opacus import PrivacyEngine

        def make_private(model, optimizer, loader, criterion):  # type: ignore[no-untyped-def]
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Secure RNG turned off")
                engine = PrivacyEngine(accountant="rdp")
            engine.accountant = self._accountant
            model, optimizer, criterion, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=self.settings.max_grad_norm, poisson_sampling=True,
                grad_sample_mode="ghost",
            )
            return model, optimizer, loader, criterion

        return make_private

    def spent(self) -> PrivacySpent:
        """Return the privacy spent so far (epsilon at this site's delta)."""
        steps = sum(n for _, _, n in self._accountant.history)
        with warnings.catch_warnings():  # a valid bound either way; see ALPHAS
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            epsilon = self._accountant.get_epsilon(self.delta, alphas=ALPHAS) if steps else 0.0
        return PrivacySpent(
            epsilon=float(epsilon), delta=float(self.delta),
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.settings.max_grad_norm, sample_rate=self.sample_rate, steps=steps,
        )


class PrivateSite:
    """What every task's site does for DP-SGD: one accountant for all its rounds.

    A mixin for the sites' dataclasses (:class:`vigil.federation.site.Site`,
    :class:`vigil.federation.image_task.ImagingSite`), which declare the two fields
    ``dp`` (the budget, or None) and ``_accountant`` (None until the first round).
    """

    dp: DPSettings | None
    _accountant: SiteAccountant | None

    @property
    def accountant(self) -> SiteAccountant | None:
        """The site's privacy accountant: None until the first DP-SGD round has run."""
        return self._accountant

    def resume_accountant(self, accountant: SiteAccountant) -> None:
        """Go on spending from an accountant saved after an earlier round.

        For a site rebuilt for every round (the Flower ClientApp), so that ε
        accumulates over the run instead of restarting at 0.
        """
        self._accountant = accountant

    def privacy_hook(self, n_rows: int, config: FitConfig) -> OptimizerHook | None:
        """Return this round's DP-SGD hook for ``train_local`` (None without a budget).

        The first call calibrates the noise for the whole plan (``config.total_rounds``
        rounds of ``config.local_epochs`` epochs over ``n_rows`` training rows).
        """
        if self.dp is None:
            return None
        if self._accountant is None:
            self._accountant = SiteAccountant(
                self.dp, n_rows=n_rows, batch_size=config.batch_size,
                local_epochs=config.local_epochs, total_rounds=config.total_rounds,
            )
        return self._accountant.hook()

    def privacy_spent(self) -> PrivacySpent | None:
        """Return the privacy spent so far, or None if no DP-SGD round has run."""
        return None if self._accountant is None else self._accountant.spent()


def manifest_section(
    settings: DPSettings | None, spent: Mapping[str, PrivacySpent], *, unit: str
) -> dict[str, Any] | None:
    """Return a manifest's ``training.differential_privacy``: the budget and each site's (ε, δ).

    Parameters
    ----------
    settings : DPSettings or None
        None (no DP-SGD) gives None.
    spent : mapping of str to PrivacySpent
        Each site's privacy spent over the run.
    unit : str
        The unit of privacy (one hourly row, one image).
    """
    if settings is None:
        return None
    return {
        "mechanism": "DP-SGD (Opacus), Poisson sampling, per-row clipping, RDP accountant",
        "unit": unit,
        "target_epsilon": settings.target_epsilon,
        "delta_rule": "1/n per site (n = its training rows)" if settings.delta is None
        else f"{settings.delta:g}",
        "sites": {name: p.to_dict() for name, p in sorted(spent.items())},
    }
