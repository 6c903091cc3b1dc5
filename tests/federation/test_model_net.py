import numpy as np
import pytest
import torch

from vigil.core.errors import ModelArtifactError
from vigil.federation.model import (
    SepsisNet,
    feature_sums,
    fit_norm,
    get_weights,
    is_norm_key,
    norm_stats_from_sums,
    predict_proba,
    set_norm,
    set_weights,
)

torch.set_num_threads(1)


def test_state_is_ordered_norm_first_then_layers():
    net = SepsisNet(5, hidden=(7, 3), dropout=0.1)
    weights = get_weights(net)
    assert list(weights) == ["norm.mean", "norm.std", "mlp.0.weight", "mlp.0.bias",
                             "mlp.3.weight", "mlp.3.bias", "mlp.6.weight", "mlp.6.bias"]
    assert [k for k in weights if is_norm_key(k)] == ["norm.mean", "norm.std"]
    assert all(w.dtype == np.float32 for w in weights.values())
    assert weights["mlp.6.weight"].shape == (1, 3)


def test_normalization_is_not_trainable_and_there_is_no_batchnorm():
    net = SepsisNet(4, hidden=(8,))
    names = {n for n, _ in net.named_parameters()}
    assert not any(is_norm_key(n) for n in names)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_opacus_accepts_the_model_unchanged():
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(SepsisNet(4, hidden=(8, 4)), strict=False) == []


def test_get_set_round_trip_reproduces_outputs():
    x = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    a = SepsisNet(6, hidden=(5,), dropout=0.0)
    fit_norm(a, x)
    torch.manual_seed(123)
    b = SepsisNet(6, hidden=(5,), dropout=0.0)
    assert not np.allclose(predict_proba(a, x), predict_proba(b, x))
    set_weights(b, get_weights(a))
    np.testing.assert_array_equal(predict_proba(a, x), predict_proba(b, x))
    for k, v in get_weights(b).items():
        np.testing.assert_array_equal(v, get_weights(a)[k])


def test_get_weights_returns_copies():
    net = SepsisNet(3, hidden=(2,))
    w = get_weights(net)
    w["mlp.0.bias"][:] = 99.0
    assert not np.any(get_weights(net)["mlp.0.bias"] == 99.0)


def test_partial_set_keeps_local_normalization():
    site = SepsisNet(3, hidden=(2,))
    set_norm(site, np.array([1, 2, 3.0]), np.array([4, 5, 6.0]))
    glob = get_weights(SepsisNet(3, hidden=(2,)))
    set_weights(site, {k: v for k, v in glob.items() if not is_norm_key(k)}, strict=False)
    after = get_weights(site)
    np.testing.assert_array_equal(after["norm.mean"], [1, 2, 3])
    np.testing.assert_array_equal(after["mlp.0.weight"], glob["mlp.0.weight"])


def test_set_weights_error_contracts():
    net = SepsisNet(3, hidden=(2,))
    w = get_weights(net)
    with pytest.raises(ModelArtifactError, match=r"missing: \['mlp.3.bias'\]"):
        set_weights(net, {k: v for k, v in w.items() if k != "mlp.3.bias"})
    with pytest.raises(ModelArtifactError, match=r"unknown: \['extra'\]"):
        set_weights(net, {**w, "extra": np.zeros(1)})
    with pytest.raises(ModelArtifactError, match=r"expected shape \(2, 3\), got \(3, 2\)"):
        set_weights(net, {**w, "mlp.0.weight": np.zeros((3, 2))})


def test_norm_stats_from_sums_equal_numpy_on_pooled_sites():
    rng = np.random.default_rng(1)
    site_a = rng.normal(3.0, 2.0, size=(500, 4))
    site_b = rng.normal(-1.0, 0.5, size=(300, 4))
    site_b[:, 3] = 7.0
    site_a[:, 3] = 7.0  # a constant feature
    sums = [feature_sums(s) for s in (site_a, site_b)]
    count = sum(s[0] for s in sums)
    mean, std = norm_stats_from_sums(count, sums[0][1] + sums[1][1], sums[0][2] + sums[1][2])
    pooled = np.vstack([site_a, site_b])
    np.testing.assert_allclose(mean, pooled.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std[:3], pooled.std(axis=0)[:3], rtol=1e-5)
    assert std[3] == 1.0
    assert mean.dtype == std.dtype == np.float32


def test_norm_stats_reject_empty_and_mismatched():
    with pytest.raises(ValueError, match="count > 0"):
        norm_stats_from_sums(0, np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match=r"shapes \(2,\) and \(3,\)"):
        norm_stats_from_sums(5, np.zeros(2), np.zeros(3))


def test_predict_proba_is_sigmoid_of_logits_and_restores_mode():
    x = np.random.default_rng(2).normal(size=(9, 4)).astype(np.float32)
    net = SepsisNet(4, hidden=(6,), dropout=0.5)
    net.train()
    p = predict_proba(net, x, batch_size=4)
    assert net.training
    net.eval()
    with torch.no_grad():
        expected = torch.sigmoid(net(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    assert p.shape == (9,)


def test_forward_matches_a_numpy_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 30.0, size=(50, 4)).astype(np.float32)
    net = SepsisNet(4, hidden=(6, 3), dropout=0.3)
    set_norm(net, np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 2.0, 8.0, 1.0]))
    w = get_weights(net)
    h = np.arcsinh((x.astype(np.float64) - w["norm.mean"]) / w["norm.std"])
    h = np.maximum(h @ w["mlp.0.weight"].T + w["mlp.0.bias"], 0)
    h = np.maximum(h @ w["mlp.3.weight"].T + w["mlp.3.bias"], 0)
    logit = (h @ w["mlp.6.weight"].T + w["mlp.6.bias"])[:, 0]
    np.testing.assert_allclose(predict_proba(net, x), 1 / (1 + np.exp(-logit)), atol=1e-6)


def test_standardization_uses_the_buffers():
    net = SepsisNet(2, hidden=(1,))
    set_norm(net, np.array([1.0, -2.0]), np.array([2.0, 4.0]))
    out = net.norm(torch.tensor([[3.0, 2.0]]))
    np.testing.assert_allclose(out.numpy(), [[1.0, 1.0]])


def test_bad_architecture_is_refused():
    with pytest.raises(ValueError, match="dropout=1.0"):
        SepsisNet(3, dropout=1.0)
