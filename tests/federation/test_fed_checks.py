"""Bad-update control: each rule, on synthetic updates around a global model."""

import logging
from collections import OrderedDict

import numpy as np
import pytest

from vigil.federation.checks import Reason, ScreenRule, screen_updates
from vigil.federation.messages import Update

SHAPES = {"mlp.0.weight": (8, 5), "mlp.0.bias": (8,), "mlp.2.weight": (1, 8)}


def make_round(seed=0, n_sites=4, spread=(1.0, 1.0, 1.0, 1.0)):
    """Global weights and honest updates: a common direction plus site noise, sizes vary."""
    rng = np.random.default_rng(seed)
    glob = OrderedDict((k, rng.normal(size=s).astype(np.float32)) for k, s in SHAPES.items())
    common = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    updates = []
    for i in range(n_sites):
        w = OrderedDict()
        for k, s in SHAPES.items():
            step = spread[i] * 0.1 * (common[k] + 0.8 * rng.normal(size=s))
            w[k] = (glob[k] + step).astype(np.float32)
        updates.append(Update(site=f"s{i}", weights=w, num_examples=100 * (i + 1), loss=0.3))
    return glob, updates


def with_weights(u, weights, **kw):
    n = kw.get("n", u.num_examples)
    return Update(site=u.site, weights=OrderedDict(weights), num_examples=n, loss=u.loss)


def test_honest_sites_of_different_sizes_all_pass():
    glob, ups = make_round(spread=(0.4, 1.0, 2.0, 3.0))
    accepted, rejections = screen_updates(ups, glob)
    assert [u.site for u in accepted] == ["s0", "s1", "s2", "s3"] and rejections == []


@pytest.mark.parametrize("attack, reason", [
    ("scale50", Reason.NORM), ("flip", Reason.DIRECTION), ("nan", Reason.NON_FINITE),
    ("inf", Reason.NON_FINITE),
])
def test_one_bad_site_of_four_is_rejected_with_its_reason(attack, reason, caplog):
    glob, ups = make_round(seed=1)
    bad = ups[2]
    if attack == "scale50":
        w = {k: glob[k] + 50 * (v - glob[k]) for k, v in bad.weights.items()}
    elif attack == "flip":
        w = {k: glob[k] - (v - glob[k]) for k, v in bad.weights.items()}
    else:
        w = {k: v.copy() for k, v in bad.weights.items()}
        w["mlp.0.bias"][3] = np.nan if attack == "nan" else np.inf
    ups[2] = with_weights(bad, w)
    with caplog.at_level(logging.WARNING, logger="vigil.federation.checks"):
        accepted, rejections = screen_updates(ups, glob)
    assert [u.site for u in accepted] == ["s0", "s1", "s3"]
    assert [(r.site, r.reason) for r in rejections] == [("s2", reason)]
    assert f"update of site s2 rejected ({reason.value})" in caplog.text


def test_schema_and_example_count_are_checked():
    glob, ups = make_round(seed=2)
    missing = {k: v for k, v in ups[0].weights.items() if k != "mlp.0.bias"}
    reshaped = {**ups[1].weights, "mlp.0.bias": np.zeros(9, np.float32)}
    ints = {**ups[2].weights, "mlp.0.bias": np.zeros(8, np.int64)}
    ups[0], ups[1], ups[2] = with_weights(ups[0], missing), with_weights(ups[1], reshaped), \
        with_weights(ups[2], ints)
    ups[3] = with_weights(ups[3], ups[3].weights, n=10**9)
    accepted, rejections = screen_updates(ups, glob, declared_rows={"s3": 400})
    assert accepted == []
    got = {r.site: (r.reason, r.detail) for r in rejections}
    assert got["s0"][0] is Reason.SCHEMA and "missing ['mlp.0.bias']" in got["s0"][1]
    assert got["s1"][0] is Reason.SCHEMA and "expected float (8,), got float32 (9,)" in got["s1"][1]
    assert got["s2"][0] is Reason.SCHEMA and "int64" in got["s2"][1]
    assert got["s3"][0] is Reason.EXAMPLES and "<= 400" in got["s3"][1]


def test_statistical_rules_need_three_updates():
    glob, ups = make_round(seed=3, n_sites=2)
    flipped = with_weights(ups[1], {k: glob[k] - (v - glob[k]) for k, v in ups[1].weights.items()})
    accepted, rejections = screen_updates([ups[0], flipped], glob)
    assert len(accepted) == 2 and rejections == []


def test_norm_rule_needs_both_a_robust_outlier_and_the_ratio_floor():
    glob, ups = make_round(seed=4)
    five = {k: glob[k] + 5 * (v - glob[k]) for k, v in ups[3].weights.items()}
    ups[3] = with_weights(ups[3], five)
    accepted, rejections = screen_updates(ups, glob)
    assert len(accepted) == 4 and rejections == []  # 5x the median norm is below the 10x floor
    _, rejections = screen_updates(ups, glob, rule=ScreenRule(max_ratio=2.0))
    assert [(r.site, r.reason) for r in rejections] == [("s3", Reason.NORM)]


def test_near_orthogonal_honest_updates_are_kept():
    """Late in training honest updates barely agree; none is rejected for direction.

    Independent directions in a network-sized space (5,000 weights) have cosines near 0.
    """
    rng = np.random.default_rng(5)
    glob = OrderedDict(w=rng.normal(size=(100, 50)).astype(np.float32))
    for trial in range(20):
        ups = []
        for i in range(5):
            w = OrderedDict(w=(glob["w"] + 0.1 * rng.normal(size=(100, 50))).astype(np.float32))
            ups.append(Update(site=f"s{i}", weights=w, num_examples=100, loss=0.1))
        _, rejections = screen_updates(ups, glob)
        assert rejections == [], trial


def label_skew_round(seed, flip=None):
    """Late-training updates with label skew: site s0 has the opposite class mix.

    Every site follows the federation's common descent ``c`` (the previous step
    points along it); s0's class mix adds a component ``+k`` the three others
    answer with ``-k / 3``, larger than ``c``, so s0 opposes each peer while
    still following ``c``: the situation of PneumoniaMNIST site-a
    (``docs/imaging.md``).
    """
    rng = np.random.default_rng(seed)
    glob = OrderedDict(w=rng.normal(size=(60, 50)).astype(np.float32))
    c = rng.normal(size=(60, 50))
    k = rng.normal(size=(60, 50))
    k -= (k * c).sum() / (c * c).sum() * c  # the skew is orthogonal to the common direction
    k *= 4.0 * np.linalg.norm(c) / np.linalg.norm(k)
    previous = OrderedDict(w=(0.1 * (c + 0.3 * rng.normal(size=c.shape))).astype(np.float32))
    ups = []
    for i in range(4):
        step = c + (k if i == 0 else -k / 3) + 0.8 * rng.normal(size=c.shape)
        step = -step if flip == i else step
        ups.append(Update(site=f"s{i}", weights=OrderedDict(w=(glob["w"] + 0.1 * step).astype(
            np.float32)), num_examples=100, loss=0.3))
    return glob, ups, previous


def test_label_skewed_honest_site_follows_the_previous_step_and_is_kept():
    for seed in range(20):
        glob, ups, previous = label_skew_round(seed)
        # the peers' rule (no previous step) calls the skewed site an attacker ...
        _, by_peers = screen_updates(ups, glob)
        assert [(r.site, r.reason) for r in by_peers] == [("s0", Reason.DIRECTION)], seed
        # ... the previous accepted step does not
        accepted, rejections = screen_updates(ups, glob, previous_step=previous)
        assert rejections == [] and len(accepted) == 4, seed


@pytest.mark.parametrize("flipped", [1, 2, 3])
def test_a_sign_flipped_site_is_rejected_against_the_previous_step(flipped):
    for seed in range(20):
        glob, ups, previous = label_skew_round(seed, flip=flipped)
        accepted, rejections = screen_updates(ups, glob, previous_step=previous)
        assert [(r.site, r.reason) for r in rejections] == [(f"s{flipped}", Reason.DIRECTION)]
        assert "cosine with the previous accepted step" in rejections[0].detail


def test_a_zero_previous_step_falls_back_to_the_peers():
    glob, ups = make_round(seed=1)
    ups[2] = with_weights(ups[2], {k: glob[k] - (v - glob[k]) for k, v in ups[2].weights.items()})
    zero = OrderedDict((k, np.zeros_like(v)) for k, v in glob.items())
    _, rejections = screen_updates(ups, glob, previous_step=zero)
    assert [(r.site, r.reason) for r in rejections] == [("s2", Reason.DIRECTION)]
    assert "median cosine with the other updates" in rejections[0].detail
