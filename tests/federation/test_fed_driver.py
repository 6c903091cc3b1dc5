"""The in-process driver on the sample: determinism, dropouts, bad updates, what sites send."""

import time
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import torch

from vigil.core.errors import AggregationError
from vigil.federation.driver import InProcess, Plan, run_federation
from vigil.federation.history import Status
from vigil.federation.profile import FINE_BINS
from vigil.federation.simulation import build_sites
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy

SPEC = ModelSpec(hidden=(32,), dropout=0.0)
PLAN = Plan(rounds=3, batch_size=512, lr=3e-4, keep_best=False)


@pytest.fixture(scope="module")
def sites(sample):
    torch.set_num_threads(1)
    half = sample.select(np.arange(0, sample.grid.n_patients, 2))
    return build_sites(half, "hospital-unit", model=SPEC)


def run(sites, strategy="fedavg", plan=PLAN, **kw):
    return run_federation(sites, make_strategy(strategy, **kw), plan, model=SPEC)


class Wrapped:
    """A site whose answers a test can tamper with."""

    def __init__(self, site, *, fit=None):
        self.site, self.name, self._fit = site, site.name, fit

    def statistics(self):
        return self.site.statistics()

    def evaluate(self, weights):
        return self.site.evaluate(weights)

    def fit(self, weights, config):
        update = self.site.fit(weights, config)
        return update if self._fit is None else self._fit(weights, config, update)


def test_same_seed_same_model_and_site_order_does_not_matter(sites):
    plan = replace(PLAN, rounds=2)
    a = run(sites, plan=plan)
    b = run(list(reversed(sites)), plan=plan)
    assert list(a.weights) == list(b.weights)
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert [r.valid_auroc for r in a.history.rounds] == [r.valid_auroc for r in b.history.rounds]
    c = run(sites, plan=replace(plan, seed=1, rounds=1))
    assert not np.array_equal(a.weights["mlp.0.weight"], c.weights["mlp.0.weight"])


def test_fedprox_with_mu_zero_is_fedavg(sites):
    plan = replace(PLAN, rounds=2)
    avg = run(sites, plan=plan)
    with pytest.warns(UserWarning, match="mu=0 is FedAvg"):
        prox = run(sites, "fedprox", plan=plan, mu=0.0)
    for k in avg.weights:
        np.testing.assert_allclose(prox.weights[k], avg.weights[k], rtol=0, atol=1e-7)
    pulled = run(sites, "fedprox", plan=plan, mu=10.0)
    assert not np.allclose(pulled.weights["mlp.0.weight"], avg.weights["mlp.0.weight"], atol=1e-6)


def test_fedbn_keeps_each_sites_normalization(sites):
    result = run(sites, "fedbn", plan=replace(PLAN, rounds=1))
    assert not any(k.startswith("norm.") for k in result.weights)
    mine = sites[0].local_weights(result.weights)
    expected = sites[0].train.X.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(mine["norm.mean"], expected, rtol=1e-5, atol=1e-5)
    other = sites[1].local_weights(result.weights)
    assert not np.allclose(mine["norm.mean"], other["norm.mean"])
    assert np.array_equal(mine["mlp.0.weight"], other["mlp.0.weight"])


def test_a_site_failing_mid_run_is_dropped_and_training_goes_on(sites):
    def fail_in_round_2(weights, config, update):
        if config.round == 2:
            raise RuntimeError("disk full")
        return update

    flaky = [Wrapped(s, fit=fail_in_round_2) if s.name == "A-SICU" else s for s in sites]
    result = run(flaky)
    r1, r2, r3 = result.history.rounds
    assert all(r.aggregated for r in (r1, r2, r3))
    site = {s.site: s for s in r2.sites}["A-SICU"]
    assert (site.status, site.reason, site.detail) == (Status.DROPPED, "error", "RuntimeError")
    assert [s.status for s in r3.sites] == [Status.ACCEPTED] * 4
    assert result.history.events(Status.DROPPED) == [(2, site)]


def test_a_site_over_its_time_budget_is_dropped(sites):
    class Late(InProcess):
        def fit(self, sites, weights, config):
            out = super().fit(sites, weights, config)
            update, _ = out["B-SICU"]
            out["B-SICU"] = (update, 99.0)  # as if it answered after 99 s
            return out

    plan = replace(PLAN, rounds=1, time_budget=60.0)
    result = run_federation(sites, make_strategy("fedavg"), plan, model=SPEC, transport=Late())
    late = {s.site: s for s in result.history.rounds[0].sites}["B-SICU"]
    assert (late.status, late.reason) == (Status.DROPPED, "timeout")
    assert "99.0 s > budget 60.0 s" in late.detail


def test_in_process_transport_times_each_site():
    class Sleepy:
        name = "z"

        def fit(self, weights, config):
            time.sleep(0.05)
            raise ValueError("nope")

    (outcome, seconds), = InProcess().fit([Sleepy()], {}, None).values()
    assert isinstance(outcome, ValueError) and seconds >= 0.05


def test_min_sites_leaves_the_model_unchanged_and_no_round_is_an_error(sites):
    def broken(weights, config, update):
        raise RuntimeError("down")

    down = [Wrapped(s, fit=broken) if s.name != "A-MICU" else s for s in sites]
    with pytest.raises(AggregationError, match="no round had 2 acceptable updates"):
        run(down, plan=replace(PLAN, rounds=1))


@pytest.fixture(scope="module")
def all_sites(sample):
    """Sites of the whole sample: enough rows that honest updates agree in direction."""
    torch.set_num_threads(1)
    return build_sites(sample, "hospital-unit", model=SPEC)


@pytest.fixture(scope="module")
def clean(all_sites):
    return run(all_sites)


@pytest.mark.slow
@pytest.mark.parametrize("attack, reason", [("scale", "norm"), ("flip", "direction"),
                                            ("nan", "non-finite")])
def test_one_bad_site_of_four_is_excluded_and_the_model_holds(all_sites, clean, attack, reason):

    def tamper(weights, config, update):
        bad = OrderedDict()
        for k, v in update.weights.items():
            step = v - weights[k]
            bad[k] = {"scale": weights[k] + 50 * step, "flip": weights[k] - step,
                      "nan": np.full_like(v, np.nan)}[attack].astype(np.float32)
        return replace(update, weights=bad)

    result = run([Wrapped(s, fit=tamper) if s.name == "B-MICU" else s for s in all_sites])
    for record in result.history.rounds:
        bad = {s.site: s for s in record.sites}["B-MICU"]
        assert (bad.status, bad.reason) == (Status.REJECTED, reason), record.round
        assert record.aggregated and len(record.by_status(Status.ACCEPTED)) == 3
    assert abs(result.pooled.auroc - clean.pooled.auroc) < 0.01


def test_a_site_sends_only_weights_counts_and_aggregates(sites):
    """Every message a site sends: arrays shaped like a parameter or a histogram, and scalars."""
    sent = []

    class Recording(Wrapped):
        def statistics(self):
            sent.append(out := super().statistics())
            return out

        def fit(self, weights, config):
            sent.append(out := super().fit(weights, config))
            return out

        def evaluate(self, weights):
            sent.append(out := super().evaluate(weights))
            return out

    result = run([Recording(s) for s in sites], plan=replace(PLAN, rounds=1))
    n_features = sites[0].train.X.shape[1]
    n_vars = sites[0].histograms.shape[0]
    allowed = {v.shape for v in result.weights.values()} | {
        (n_features,), (n_vars, FINE_BINS), (n_vars,), sent[-1].utility_gain.shape}
    rows = {n for s in sites for n in (s.train.n_rows, s.valid.n_rows)}
    assert len(sent) == 3 * len(sites)
    for message in sent:
        for key, value in message.payload().items():
            if isinstance(value, np.ndarray):
                assert value.shape in allowed, (type(message).__name__, key, value.shape)
                assert value.dtype.kind in "fi" and not set(value.shape) & rows
            else:
                assert isinstance(value, int | float | np.integer | np.floating), (key, value)
