import numpy as np
import pytest
import torch

from vigil.core.errors import DataError
from vigil.federation.model import SepsisNet, fit_norm, get_weights, is_norm_key, set_weights
from vigil.federation.training import make_loader, proximal_term, train_local

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=0.5, size=600) > 1.0).astype(np.float32)
    return x, y


def fresh(x, seed=0):
    torch.manual_seed(seed)
    net = SepsisNet(x.shape[1], hidden=(16, 8), dropout=0.2)
    fit_norm(net, x)
    return net


def test_same_seed_same_weights_different_seed_different(data):
    x, y = data
    runs = []
    for seed in (5, 5, 6):
        net = fresh(x)
        train_local(net, x, y, epochs=2, batch_size=64, lr=1e-2, seed=seed)
        runs.append(get_weights(net))
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k])
    assert not np.allclose(runs[0]["mlp.0.weight"], runs[2]["mlp.0.weight"])


def test_training_leaves_the_global_rng_alone(data):
    x, y = data
    net = fresh(x)
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    train_local(net, x, y, epochs=1, batch_size=128, lr=1e-2, seed=1)
    assert torch.equal(torch.rand(3), expected)


def test_result_counts_steps_and_examples_and_loss_falls(data):
    x, y = data
    net = fresh(x)
    first = train_local(net, x, y, epochs=1, batch_size=100, lr=1e-2, seed=0)
    later = train_local(net, x, y, epochs=5, batch_size=100, lr=1e-2, seed=0)
    assert (first.n_examples, first.steps) == (600, 6)
    assert later.steps == 30
    assert later.loss < first.loss
    assert not net.training


def test_fedprox_mu_zero_equals_plain_training(data):
    x, y = data
    plain, prox = fresh(x), fresh(x)
    anchor = get_weights(SepsisNet(x.shape[1], hidden=(16, 8)))
    train_local(plain, x, y, epochs=2, batch_size=64, lr=1e-2, seed=3)
    train_local(prox, x, y, epochs=2, batch_size=64, lr=1e-2, seed=3, proximal_mu=0.0,
                global_weights=anchor)
    for k, v in get_weights(plain).items():
        np.testing.assert_array_equal(v, get_weights(prox)[k])


def test_fedprox_pulls_towards_the_global_weights(data):
    x, y = data

    def distance(mu):
        net = fresh(x)
        start = get_weights(net)
        train_local(net, x, y, epochs=3, batch_size=64, lr=1e-2, seed=0, proximal_mu=mu,
                    global_weights=start)
        end = get_weights(net)
        return sum(float(np.sum((end[k] - start[k]) ** 2)) for k in end if not is_norm_key(k))

    assert distance(10.0) < 0.5 * distance(0.0)


def test_proximal_term_matches_hand_computation():
    net = SepsisNet(2, hidden=(1,), dropout=0.0)
    w = get_weights(net)
    shifted = {k: v + (1.0 if not is_norm_key(k) else 0.0) for k, v in w.items()}
    set_weights(net, shifted)
    anchor = {k: torch.from_numpy(v) for k, v in w.items()}
    n_params = sum(v.size for k, v in w.items() if not is_norm_key(k))  # 2+1+1+1 = 5
    assert n_params == 5
    assert proximal_term(net, anchor, 0.4).item() == pytest.approx(0.5 * 0.4 * n_params)


def test_sample_weight_zero_rows_do_not_matter(data):
    x, y = data
    w = np.ones(600, dtype=np.float32)
    w[300:] = 0.0
    noisy = x.copy()
    noisy[300:] = 100.0
    a, b = fresh(x), fresh(x)
    train_local(a, x, y, epochs=1, batch_size=600, lr=1e-2, seed=0, sample_weight=w)
    train_local(b, noisy, y, epochs=1, batch_size=600, lr=1e-2, seed=0, sample_weight=w)
    np.testing.assert_allclose(get_weights(a)["mlp.0.weight"], get_weights(b)["mlp.0.weight"],
                               atol=1e-6)


def test_on_epoch_can_stop_early(data):
    x, y = data
    seen = []
    result = train_local(fresh(x), x, y, epochs=10, batch_size=300, lr=1e-2, seed=0,
                         on_epoch=lambda e, loss: seen.append(e) or e == 1)
    assert seen == [0, 1]
    assert result.steps == 4


def test_optimizer_hook_receives_and_replaces_the_pieces(data):
    x, y = data
    calls = []

    def hook(model, optimizer, loader, criterion):
        calls.append((len(loader), criterion.reduction))
        return model, torch.optim.SGD(model.parameters(), lr=0.0), loader, criterion

    net = fresh(x)
    before = get_weights(net)
    train_local(net, x, y, epochs=1, batch_size=200, lr=1.0, seed=0, optimizer_hook=hook)
    assert calls == [(3, "mean")]
    for k, v in get_weights(net).items():
        np.testing.assert_array_equal(v, before[k])


def test_loader_fetches_whole_batches_reproducibly(data):
    x, y = data
    first = [yb.sum().item() for _, yb, _ in make_loader(x, y, batch_size=256, seed=9)]
    again = [yb.sum().item() for _, yb, _ in make_loader(x, y, batch_size=256, seed=9)]
    xb, yb, wb = next(iter(make_loader(x, y, batch_size=256, seed=9)))
    assert first == again and len(first) == 3
    assert xb.shape == (256, 8) and yb.shape == wb.shape == (256,)


def test_error_contracts(data):
    x, y = data
    with pytest.raises(DataError, match=r"got \(600, 8\) and \(5,\)"):
        train_local(fresh(x), x, y[:5], epochs=1, batch_size=8, lr=1e-2, seed=0)
    with pytest.raises(DataError, match="non-negative sample weights"):
        train_local(fresh(x), x, y, epochs=1, batch_size=8, lr=1e-2, seed=0,
                    sample_weight=-np.ones(600))
    with pytest.raises(ValueError, match="epochs=0"):
        train_local(fresh(x), x, y, epochs=0, batch_size=8, lr=1e-2, seed=0)
