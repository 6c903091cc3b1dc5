"""Secure aggregation (SecAgg, SecAgg+) in process: sums, dropouts, refusals, what is seen.

The sites are :class:`SecAggClient` objects called directly by an ``exchange``
that also records every message both ways: everything the coordinator (and a
SuperLink relaying the messages) gets to see.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from vigil.core.errors import AggregationError, ConfigError
from vigil.federation.checks import ScreenRule
from vigil.federation.secagg import SecAggClient, SecureAggregator, neighbours
from vigil.federation.secure_screening import aggregate_outlier, bound_norm, influence_bound
from vigil.federation.secure_sum import (
    SecureSumSettings,
    dequantize_sum,
    mask_stream,
    quantization_error,
    quantize,
)
from vigil.federation.view_audit import InProcessSites

SETTINGS = SecureSumSettings()


class Sites(InProcessSites):
    """``n`` sites behind an exchange; ``vectors[i]`` is what site ``i`` sums.

    ``silent_at[stage]``: sites that do not answer that stage (dropped out);
    ``seen`` records every message (:class:`InProcessSites`).
    """

    def __init__(self, vectors: np.ndarray, settings: SecureSumSettings = SETTINGS) -> None:
        super().__init__(vectors, settings)
        self.silent_at: dict[str, set[int]] = {}

    def answer(self, stage: str, site: int, message: dict[str, Any]) -> Any:
        if site in self.silent_at.get(stage, set()):
            raise TimeoutError("no answer")
        return super().answer(stage, site, message)


def _vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.9, 0.9, (n, d))


@pytest.mark.parametrize(("n", "k", "shape"), [
    (3, None, (32369,)),          # the sepsis network's parameters, every site a neighbour
    (5, 3, (2, 184, 16, 2)),      # a tree level's histograms, SecAgg+ with 3 neighbours
])
def test_the_secure_sum_is_the_plain_sum_within_the_documented_quantization_error(
    n: int, k: int | None, shape: tuple[int, ...]
) -> None:
    d = int(np.prod(shape))
    x = _vectors(n, d)
    sites = Sites(x)
    agg = SecureAggregator(n, SecureSumSettings(num_shares=k), sites)
    agg.setup()
    total, alive = agg.sum({i: {} for i in range(n)}, d)
    error = np.abs(total - x.sum(axis=0))
    assert alive == list(range(n))
    assert error.max() <= quantization_error(n, SETTINGS) + 1e-12
    assert error.max() > 0  # quantized, not the floats
    # a second sum with the same keys: fresh masks, still right
    total, _ = agg.sum({i: {} for i in range(n)}, d)
    assert np.abs(total - x.sum(axis=0)).max() <= quantization_error(n, SETTINGS) + 1e-12


def test_split_ties_at_the_quantizations_scale_resolve_to_the_first_feature() -> None:
    from vigil.federation.boosting import best_splits
    from vigil.federation.treegrowth import SECURE_TIE_RTOL

    rng = np.random.default_rng(3)
    hist = np.zeros((1, 3, 8, 2))
    hist[0, :, :, 0] = rng.normal(0, 5, 8)  # three features cutting the rows alike
    hist[0, :, :, 1] = rng.uniform(1, 3, 8)
    noisy = hist + rng.normal(0, 1e-9, hist.shape)  # a secure sum's rounding
    assert best_splits(hist, l2=1.0, min_child_weight=1.0)[1][0] == 0
    features = {int(best_splits(noisy + rng.normal(0, 1e-9, hist.shape), l2=1.0,
                                min_child_weight=1.0, tie_rtol=SECURE_TIE_RTOL)[1][0])
                for _ in range(20)}
    assert features == {0}


def test_wide_sums_use_the_finest_levels_a_float64_sum_holds() -> None:
    assert SETTINGS.widened(3).quantization_range == 2**51
    assert SETTINGS.widened(4).quantization_range == 2**50
    for n in (3, 7, 100):
        assert SETTINGS.widened(n).resolve(n)  # no overflow of 2**53
    x = _vectors(3, 500)
    sites = Sites(x)
    agg = SecureAggregator(3, SETTINGS, sites)
    agg.setup()
    total, _ = agg.sum({i: {} for i in range(3)}, 500, wide=True)
    assert np.abs(total - x.sum(axis=0)).max() <= quantization_error(3, SETTINGS.widened(3))


def test_sixty_four_bit_sums_are_a_million_times_finer() -> None:
    settings = SecureSumSettings(modulus_bits=64, quantization_range=2**40)
    x = _vectors(3, 1000)
    sites = Sites(x, settings)
    agg = SecureAggregator(3, settings, sites)
    agg.setup()
    total, _ = agg.sum({i: {} for i in range(3)}, 1000)
    assert np.abs(total - x.sum(axis=0)).max() <= quantization_error(3, settings) < 3e-12
    assert sites.seen[-1][3]["seeds"]  # the unmask answers came
    assert all(m[3]["masked"].dtype == np.uint64 for m in sites.seen
               if m[0] == "mask" and m[2] == "answer")


def test_a_site_dropping_out_mid_round_leaves_the_sum_of_the_others() -> None:
    n, d = 5, 4000
    x = _vectors(n, d, seed=1)
    sites = Sites(x)
    agg = SecureAggregator(n, SecureSumSettings(num_shares=3), sites)
    agg.setup()
    sites.silent_at["mask"] = {2}  # gone after the set-up, before sending its vector
    total, alive = agg.sum({i: {} for i in range(n)}, d)
    assert alive == [0, 1, 3, 4]
    assert np.abs(total - x[alive].sum(axis=0)).max() <= quantization_error(4, SETTINGS) + 1e-12
    assert agg.group == [0, 1, 3, 4]  # its mask key was rebuilt: out for the rest of the run
    # a site that sent its vector and then went silent is still in the sum (its seed is rebuilt)
    sites = Sites(x)
    agg = SecureAggregator(n, SecureSumSettings(num_shares=3), sites)
    agg.setup()
    sites.silent_at = {"unmask": {4}}
    total, alive = agg.sum({i: {} for i in range(n)}, d)
    assert alive == [0, 1, 2, 3, 4]
    assert np.abs(total - x.sum(axis=0)).max() <= quantization_error(5, SETTINGS) + 1e-12


def test_below_the_reconstruction_threshold_the_sum_is_refused_naming_it() -> None:
    x = _vectors(3, 100)
    sites = Sites(x)
    agg = SecureAggregator(3, SETTINGS, sites)  # threshold 2 of 3
    agg.setup()
    sites.silent_at["mask"] = {2}
    with pytest.raises(AggregationError, match=r"at least 3 sites \(the reconstruction threshold "
                       r"2, never fewer than 3\); 2 of 3 sent a masked"):
        agg.sum({i: {} for i in range(3)}, 100)
    sites2 = Sites(x)
    agg2 = SecureAggregator(3, SETTINGS, sites2)
    agg2.setup()
    sites2.silent_at["unmask"] = {0, 1}
    with pytest.raises(AggregationError, match=r"at least 2 sites .*; 1 of 3 survivors answered"):
        agg2.sum({i: {} for i in range(3)}, 100)


def test_a_site_never_reveals_both_secrets_of_another_site() -> None:
    x = _vectors(3, 50)
    sites = Sites(x)
    agg = SecureAggregator(3, SETTINGS, sites)
    agg.setup()
    agg.sum({i: {} for i in range(3)}, 50)
    _, _, _, request = next(m for m in reversed(sites.seen)
                            if m[0] == "unmask" and m[2] == "request")
    client = SecAggClient(sites.states[0])
    # the same sum again, now claiming site 1 dropped (its mask key would unmask its vector)
    with pytest.raises(ValueError, match="one unmask request after masking sum 1"):
        client.unmask(1, [0, 2], [1], request["seed_shares"], {})
    client.mask(2, [0, 1, 2], x[0], SETTINGS)
    with pytest.raises(ValueError, match="split the sum's sites"):
        client.unmask(2, [0, 1, 2], [1], {}, {})
    with pytest.raises(ValueError, match="refusing to mask it twice"):
        client.mask(2, [0, 1, 2], x[0], SETTINGS)


def test_a_site_whose_mask_key_was_rebuilt_is_never_unmasked_again() -> None:
    x = _vectors(4, 30)
    sites = Sites(x, SETTINGS)
    agg = SecureAggregator(4, SETTINGS, sites)  # threshold 3 of 4
    agg.setup()
    sites.silent_at["mask"] = {3}
    agg.sum({i: {} for i in range(4)}, 30)
    with pytest.raises(ValueError, match="none whose mask key was revealed"):
        SecAggClient(sites.states[0]).mask(5, [0, 1, 2, 3], x[0], SETTINGS)


def test_what_the_coordinator_sees_holds_no_site_vector() -> None:
    n, d = 3, 20000
    x = _vectors(n, d, seed=2)
    sites = Sites(x)
    agg = SecureAggregator(n, SETTINGS, sites)
    agg.setup()
    agg.sum({i: {} for i in range(n)}, d)
    masked = {i: a["masked"] for s, i, way, a in sites.seen if s == "mask" and way == "answer"}
    limit = 5 / np.sqrt(d)  # |correlation| of independent vectors: about 1/sqrt(d)
    for y in masked.values():
        u = y.astype(np.float64) / 2**32
        # uniform on [0, 1): mean 1/2, variance 1/12, each decile a tenth
        assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / d)
        assert abs(u.var() - 1 / 12) < 0.01
        assert np.abs(np.histogram(u, bins=10, range=(0, 1))[0] / d - 0.1).max() < 0.01
        for j in range(n):  # uncorrelated with every site's vector
            assert abs(np.corrcoef(u, x[j])[0, 1]) < limit
    # the other messages: keys, and ciphertexts of shares (no site's numbers)
    for stage, _, way, m in sites.seen:
        if isinstance(m, dict):
            arrays = [v for v in m.values() if isinstance(v, np.ndarray)]
            assert all(a.dtype == np.uint32 for a in arrays), stage
            assert stage == "mask" and way == "answer" or not arrays


def test_a_coordinator_lying_about_the_group_is_refused() -> None:
    x = _vectors(3, 10)
    sites = Sites(x)
    agg = SecureAggregator(3, SETTINGS, sites)
    agg.setup()
    with pytest.raises(ValueError, match="at least 3 active sites including me"):
        SecAggClient(sites.states[0]).mask(1, [0], x[0], SETTINGS)


def test_settings_refuse_unsafe_or_impossible_values_naming_them() -> None:
    with pytest.raises(ConfigError, match="above half of num_shares") as err:
        SecureSumSettings(reconstruction_threshold=2).resolve(5)
    assert err.value.key == "reconstruction_threshold"
    with pytest.raises(ConfigError, match="at least 3 sites"):
        SETTINGS.resolve(2)
    with pytest.raises(ConfigError, match="num_shares odd"):
        SecureSumSettings(num_shares=4).resolve(7)
    with pytest.raises(ConfigError, match="sites x quantization_range"):
        SecureSumSettings(quantization_range=2**30).resolve(5)
    with pytest.raises(ConfigError, match="modulus_bits 32 or 64"):
        SecureSumSettings(modulus_bits=16).resolve(3)
    with pytest.raises(ConfigError, match="norm_bound > 0"):
        SecureSumSettings(norm_bound=0.0).resolve(3)
    assert SETTINGS.resolve(5) == (5, 3)
    assert SecureSumSettings(num_shares=3).resolve(9) == (3, 2)
    assert neighbours(0, 9, 3) == [0, 1, 8] and neighbours(4, 5, 5) == [0, 1, 2, 3, 4]


def test_quantization_rounds_to_the_nearest_level_and_clips() -> None:
    s = SecureSumSettings(clipping_range=2.0, quantization_range=8)  # levels every 0.5
    q = quantize(np.array([-3.0, -2.0, -0.74, 0.0, 0.26, 2.0, 9.0]), s)
    assert q.tolist() == [0, 0, 3, 4, 5, 8, 8]
    assert dequantize_sum(q, 1, s).tolist() == [-2.0, -2.0, -0.5, 0.0, 0.5, 2.0, 2.0]
    with pytest.raises(ValueError, match="finite"):
        quantize(np.array([np.nan]), s)


def test_masks_are_chacha20_streams_fresh_per_sum() -> None:
    seed = bytes(range(32))
    a, b = mask_stream(seed, 1, 4096), mask_stream(seed, 2, 4096)
    assert np.array_equal(a, mask_stream(seed, 1, 4096)) and not np.array_equal(a, b)
    # the streams of two sums share no 64-byte block (the index is the nonce, not the counter)
    blocks_a = {a[i:i + 16].tobytes() for i in range(0, 4096, 16)}
    assert not blocks_a & {b[i:i + 16].tobytes() for i in range(0, 4096, 16)}
    assert mask_stream(seed, 1, 10, np.uint64).dtype == np.uint64
    with pytest.raises(ValueError, match="32-byte"):
        mask_stream(b"short", 1, 10)


# -- bad updates under secure aggregation -------------------------------------------------

def test_an_attackers_influence_on_the_secure_mean_is_bounded() -> None:
    """Three honest sites and one that sends -50 times the common direction (flipped, scaled)."""
    rng = np.random.default_rng(5)
    d, bound = 5000, 0.5
    common = rng.normal(0, 0.01, d)
    honest = [common + rng.normal(0, 0.004, d) for _ in range(3)]
    shares = np.array([0.3, 0.3, 0.2, 0.2])
    attacker = -50 * common
    # c about one honest site's elements (0.0017 on average): the documented choice
    settings = SecureSumSettings(clipping_range=0.003, norm_bound=bound)
    c = settings.clipping_range
    terms = [s * bound_norm(h, bound) for s, h in zip(shares, honest, strict=False)]
    honest_sum = sum(np.clip(t, -c, c) for t in terms)  # what the honest sites contribute
    direction = sum(terms)
    for runs_vigils_code in (True, False):
        sent = shares[3] * bound_norm(attacker, bound if runs_vigils_code else None)
        sites = Sites(np.stack([*terms, sent]), settings)
        agg = SecureAggregator(4, settings, sites)
        agg.setup()
        total, _ = agg.sum({i: {} for i in range(4)}, d)
        shift = (total - honest_sum) / shares.sum()  # the attacker's effect on the mean
        per_element, l2 = influence_bound(shares[3], shares.sum(), clipping_range=c,
                                          norm_bound=bound if runs_vigils_code else None, size=d)
        slack = quantization_error(4, settings) / shares.sum()
        assert np.abs(shift).max() <= per_element + slack
        assert np.linalg.norm(shift) <= l2 + np.sqrt(d) * slack
        cosine = total @ direction / np.linalg.norm(total) / np.linalg.norm(direction)
        assert cosine > 0.8  # the model still moves the honest sites' way
    # unbounded (plain weighted mean, no screening): the attacker reverses the update
    plain = shares[:3] @ np.stack(honest) + shares[3] * attacker
    assert plain @ direction < 0


def test_a_site_sending_integers_beyond_the_quantization_range_is_caught() -> None:
    x = _vectors(3, 100)
    sites = Sites(x)
    agg = SecureAggregator(3, SETTINGS, sites)
    agg.setup()
    original = SecAggClient.mask

    def tampered(self, index, active, vector, settings):  # type: ignore[no-untyped-def]
        answer = original(self, index, active, vector, settings)
        if self._get("group")["me"] == 1:  # adds 2**31 to every element after quantizing
            answer["masked"] = answer["masked"] + np.uint32(2**31)
        return answer

    SecAggClient.mask = tampered  # type: ignore[method-assign]
    try:
        with pytest.raises(AggregationError, match="outside the quantization range"):
            agg.sum({i: {} for i in range(3)}, 100)
    finally:
        SecAggClient.mask = original  # type: ignore[method-assign]


def test_the_aggregate_history_screen_refuses_a_blown_up_round() -> None:
    history = [1.0, 0.7, 0.5, 0.45]
    assert aggregate_outlier(0.4, history) is None
    assert aggregate_outlier(3.0, history) is None  # 5x the median: within max_ratio 10
    problem = aggregate_outlier(30.0, history)
    assert problem is not None and "previous rounds" in problem
    assert aggregate_outlier(30.0, history[:2]) is None  # too little history to judge
    assert aggregate_outlier(float("nan"), history) is not None
    assert aggregate_outlier(30.0, history, ScreenRule(max_ratio=100.0)) is None


def test_bound_norm_scales_to_the_bound_only_above_it() -> None:
    v = np.array([3.0, 4.0])
    assert bound_norm(v, 10.0).tolist() == [3.0, 4.0]
    np.testing.assert_allclose(bound_norm(v, 1.0), [0.6, 0.8])
    assert bound_norm(v, None).tolist() == [3.0, 4.0]


# -- settings: the run's, the schedule's --------------------------------------------------

def test_run_settings_carry_secure_aggregation_and_refuse_what_it_cannot_do(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import tomllib

    from flwr.common.config import flatten_dict

    from vigil.federation.driver import Plan
    from vigil.federation.flower.settings import RunSettings, app_pyproject
    from vigil.federation.privacy import DPSettings
    from vigil.federation.retraining import load_retrain_config
    from vigil.federation.strategies import make_strategy

    secure = SecureSumSettings(num_shares=5, reconstruction_threshold=4, clipping_range=0.5,
                               norm_bound=2.0, modulus_bits=64, quantization_range=2**40)
    settings = RunSettings(plan=Plan(rounds=2, time_budget=60.0),
                           strategy=make_strategy("fedprox", mu=0.1), sites=7, secure=secure)
    flat = flatten_dict(tomllib.loads(app_pyproject(settings))["tool"]["flwr"]["app"]["config"])
    assert RunSettings.from_run_config(flat) == settings
    with pytest.raises(ConfigError, match="without a robust aggregator"):
        RunSettings(plan=Plan(rounds=1, time_budget=5.0), sites=3, secure=SETTINGS,
                    strategy=make_strategy("fedavg", robust="median"))
    with pytest.raises(ConfigError, match="no DP-SGD under secure aggregation"):
        RunSettings(plan=Plan(rounds=1, time_budget=5.0), sites=3, secure=SETTINGS,
                    strategy=make_strategy("fedavg"), dp=DPSettings(8.0))
    with pytest.raises(ConfigError, match="above half of num_shares"):
        RunSettings(plan=Plan(rounds=1, time_budget=5.0), sites=5, strategy=make_strategy(
            "fedavg"), secure=SecureSumSettings(reconstruction_threshold=2))
    (tmp_path / "r.toml").write_text(
        'registry = "reg"\nengine = "flower"\n[flower]\nwork = "w"\ncerts = "c"\nsites = 3\n'
        "[secure]\nnum_shares = 3\n")
    assert load_retrain_config(tmp_path / "r.toml").secure == SecureSumSettings(num_shares=3)
    (tmp_path / "s.toml").write_text('registry = "reg"\n[secure]\n')
    with pytest.raises(ConfigError, match="secure aggregation runs on Flower only"):
        load_retrain_config(tmp_path / "s.toml")


def test_settings_that_no_longer_fit_the_sites_left_refuse_the_sum() -> None:
    from types import SimpleNamespace

    from vigil.federation.flower.secure import open_secure

    four = [SimpleNamespace(name=f"site{i}") for i in range(4)]  # one of five is gone
    with pytest.raises(AggregationError, match="cannot go on with 4 sites: expected num_shares"):
        open_secure(None, four, SecureSumSettings(num_shares=5))  # type: ignore[arg-type]
