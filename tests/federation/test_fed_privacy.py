"""DP-SGD per site: the targeted budget is met, accounted over every round, and recorded."""

import numpy as np
import pytest
import torch

from vigil.core.errors import ConfigError
from vigil.federation.driver import Plan, run_federation
from vigil.federation.history import Status
from vigil.federation.privacy import DPSettings, SiteAccountant
from vigil.federation.simulation import build_sites
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy

SPEC = ModelSpec(hidden=(16,), dropout=0.0)


@pytest.fixture(scope="module")
def dp_run(sample):
    torch.set_num_threads(1)
    quarter = sample.select(np.arange(0, sample.grid.n_patients, 4))
    sites = build_sites(quarter, "hospital", model=SPEC, dp=DPSettings(4.0))
    plan = Plan(rounds=2, batch_size=256, lr=1e-3, keep_best=False)
    return sites, run_federation(sites, make_strategy("fedavg"), plan, model=SPEC)


def test_each_site_spends_just_under_its_budget_over_all_rounds(dp_run):
    sites, result = dp_run
    assert sorted(result.privacy) == ["A", "B"]
    for site in sites:
        spent = result.privacy[site.name]
        n = site.train.n_rows
        steps_per_epoch = -(-n // 256)
        assert spent.delta == pytest.approx(1 / n)
        assert spent.steps == 2 * steps_per_epoch
        assert spent.sample_rate == pytest.approx(1 / steps_per_epoch)
        assert 4.0 - 0.05 < spent.epsilon <= 4.0
        assert spent.noise_multiplier > 0.3 and spent.max_grad_norm == 1.0
    eps = [[s.epsilon for s in r.sites] for r in result.history.rounds]
    assert all(a < b for a, b in zip(eps[0], eps[1], strict=True))  # composed over rounds
    assert all(s.status is Status.ACCEPTED for r in result.history.rounds for s in r.sites)


def test_noise_multiplier_matches_an_independent_rdp_computation():
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    from vigil.federation.privacy import ALPHAS

    acc = SiteAccountant(DPSettings(1.0, delta=1e-5), n_rows=10_000, batch_size=100,
                         local_epochs=1, total_rounds=5)
    assert acc.sample_rate == 0.01 and acc.planned_steps == 500
    rdp = compute_rdp(q=0.01, noise_multiplier=acc.noise_multiplier, steps=500, orders=ALPHAS)
    eps, best_order = get_privacy_spent(orders=ALPHAS, rdp=rdp, delta=1e-5)
    assert 0.98 < eps <= 1.0 and best_order < ALPHAS[-1]


def test_budget_settings_are_validated():
    with pytest.raises(ConfigError, match="--dp-epsilon > 0"):
        DPSettings(0.0)
    with pytest.raises(ConfigError, match="0 < delta < 1"):
        DPSettings(1.0, delta=1.5)
    with pytest.raises(ConfigError, match="clipping norm > 0"):
        DPSettings(1.0, max_grad_norm=0.0)
