"""DP-SGD for the imaging task: the GroupNorm CNN, per-image clipping, (ε, δ) per site, ONNX.

The clipping bound is checked against per-image gradients computed independently (one
image at a time, plain autograd): with the noise switched off, the gradient DP-SGD sums
must be ``Σ_i min(1, C / ‖g_i‖) g_i`` (Abadi et al., CCS 2016, algorithm 1), so no image
contributes more than ``C``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.core.errors import ConfigError
from vigil.core.package import read_package
from vigil.federation.cnn import SmallCNN
from vigil.federation.driver import Plan
from vigil.federation.image_export import cnn_to_onnx, image_parity
from vigil.federation.image_run import dp_spec, export_imaging_run, federate_images
from vigil.federation.image_task import CNNSpec, ImageSet, ImagingSite
from vigil.federation.model import get_weights
from vigil.federation.privacy import ALPHAS, DPSettings, SiteAccountant, quiet_hooks
from vigil.federation.strategies import make_strategy
from vigil.federation.training import WeightedBCE, make_loader, make_optimizer

GROUP = CNNSpec(widths=(8, 16, 32), norm="group")
runner = CliRunner(mix_stderr=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16), log_clip=st.floats(-3.0, 2.0), scale=st.floats(0.1, 5.0))
def test_dp_sgd_sums_each_images_gradient_clipped_to_the_bound(seed, log_clip, scale) -> None:
    clip = 10.0 ** log_clip
    rng = np.random.default_rng(seed)
    n = 4
    x = (rng.normal(size=(n, 28 * 28)) * scale).astype(np.float32)
    y = rng.integers(0, 2, n).astype(np.float32)
    torch.manual_seed(seed)
    net = SmallCNN(GROUP)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    per_image = []
    for i in range(n):  # the independent reference: one image at a time
        net.zero_grad()
        WeightedBCE()(net(torch.tensor(x[i:i + 1])), torch.tensor(y[i:i + 1]),
                      torch.ones(1)).backward()
        per_image.append(_flat_grad(net).clone())
    g = torch.stack(per_image).double()
    norms = g.norm(dim=1)
    expected = (g * torch.clamp(clip / norms, max=1.0)[:, None]).sum(0)

    net.load_state_dict(start)
    accountant = SiteAccountant(DPSettings(8.0, max_grad_norm=clip), n_rows=n, batch_size=n,
                                local_epochs=1, total_rounds=1)
    accountant.noise_multiplier = 0.0  # the clipping alone (sample rate 1: every image drawn)
    with quiet_hooks():
        model, _, loader, criterion = accountant.hook()(
            net, make_optimizer(net, lr=1e-3), make_loader(x, y, batch_size=n, seed=seed),
            WeightedBCE())
        xb, yb, wb = next(iter(loader))
        assert xb.shape[0] == n
        criterion(model(xb), yb, wb).backward()
    got = _flat_grad(model).double()
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6 * max(clip, 1e-3))
    assert got.norm() <= n * clip * (1 + 1e-5)  # no image adds more than the bound


def test_batchnorm_is_refused_under_dp_and_groupnorm_has_no_running_statistics() -> None:
    images = ImageSet(np.zeros((4, 28, 28), np.float32), np.array([0, 1, 0, 1], np.int8))
    with pytest.raises(ConfigError, match="GroupNorm CNN with --dp-epsilon"):
        ImagingSite("s", images, images, spec=CNNSpec(), dp=DPSettings(1.0))
    with pytest.raises(ConfigError, match="fedavg or fedprox with --dp-epsilon"):
        ImagingSite("s", images, images, spec=GROUP, keep_bn_local=True, dp=DPSettings(1.0))
    with pytest.raises(ConfigError, match="divisible by 8"):
        CNNSpec(widths=(4, 8, 16), norm="group")
    with pytest.raises(ConfigError, match="norm to be one of"):
        CNNSpec(norm="layer")
    assert dp_spec(DPSettings(1.0)).norm == "group" and dp_spec(None) == CNNSpec()
    names = set(get_weights(SmallCNN(CNNSpec(norm="group"))))
    assert {"gn1.weight", "gn1.bias"} <= names and not any("running" in k for k in names)


@pytest.mark.slow
def test_groupnorm_onnx_parity_on_1000_images() -> None:
    torch.manual_seed(3)
    net = SmallCNN(CNNSpec(norm="group"))
    with torch.no_grad():  # affine tensors away from their 1 / 0 start
        for name, p in net.named_parameters():
            if name.startswith("gn"):
                p.add_(torch.randn_like(p) * 0.5)
    weights = get_weights(net)
    x = np.random.default_rng(0).normal(size=(1000, 28, 28)).astype(np.float32)
    assert image_parity(weights, cnn_to_onnx(weights, CNNSpec(norm="group")), x,
                        CNNSpec(norm="group")) <= 1e-5


@pytest.fixture(scope="module")
def dp_run():
    rng = np.random.default_rng(0)
    parts = []
    for name, n in (("a", 60), ("b", 80)):
        y = rng.integers(0, 2, n)
        x = (rng.normal(size=(n, 28, 28)) * 0.3 + y[:, None, None] * 0.5).astype(np.float32)
        parts.append((name, x, y))
    plan = Plan(rounds=2, batch_size=20, lr=1e-3, seed=1, weight_decay=1e-4)
    run = federate_images(parts, parts, strategy=make_strategy("fedavg"), plan=plan, spec=GROUP,
                          dp=DPSettings(4.0))
    return parts, run


@pytest.mark.slow
def test_each_image_site_spends_its_budget_and_an_independent_rdp_agrees(dp_run) -> None:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    parts, run = dp_run
    for name, x, _ in parts:
        spent = run.result.privacy[name]
        steps_per_epoch = -(-len(x) // 20)
        assert spent.delta == pytest.approx(1 / len(x))
        assert spent.steps == 2 * steps_per_epoch  # both rounds composed
        assert 4.0 - 0.05 < spent.epsilon <= 4.0
        rdp = compute_rdp(q=spent.sample_rate, noise_multiplier=spent.noise_multiplier,
                          steps=spent.steps, orders=ALPHAS)
        eps, _ = get_privacy_spent(orders=ALPHAS, rdp=rdp, delta=spent.delta)
        assert spent.epsilon == pytest.approx(eps, rel=1e-9)


@pytest.mark.slow
def test_a_dp_imaging_package_states_epsilon_per_site_and_passes_parity(dp_run, tmp_path) -> None:
    parts, run = dp_run
    (pkg,) = export_imaging_run(run, tmp_path / "dp", name="m", version="1",
                                check_inputs=np.concatenate([x for _, x, _ in parts]))
    training = pkg.manifest.training
    dp = training["differential_privacy"]
    assert dp["target_epsilon"] == 4.0 and dp["unit"] == "one image of a site's training data"
    assert dp["sites"] == {k: v.to_dict() for k, v in sorted(run.result.privacy.items())}
    assert training["strategy"]["normalization"].startswith("GroupNorm")
    assert pkg.manifest.model_extra["architecture"]["norm"] == "group"
    assert pkg.manifest.model_extra["export"]["parity_max_abs_diff"] <= 1e-5
    card = (pkg.path / "MODEL_CARD.md").read_text()
    assert "GroupNorm" in card and "target ε = 4" in card


@pytest.mark.parametrize(("args", "message"), [
    (["--strategy", "fedbn", "--dp-epsilon", "1"],
     "expected --strategy fedavg or fedprox with --dp-epsilon for --task imaging"),
    (["--dp-epsilon", "0"], "expected --dp-epsilon > 0, got 0.0"),
    (["--dp-epsilon", "1", "--dp-clip", "0"], "expected a clipping norm > 0, got 0.0"),
])
def test_dp_refusals_for_imaging_are_one_line_exit_2(tmp_path, args, message) -> None:
    result = runner.invoke(app, ["federate", "--task", "imaging", *args,
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_federate_imaging_with_dp_is_accepted_and_signed(tmp_path) -> None:
    keys = [str(tmp_path / "k.pem"), str(tmp_path / "k.pub")]
    assert runner.invoke(app, ["package", "keygen", "--private-key", keys[0],
                               "--public-key", keys[1]]).exit_code == 0
    out = tmp_path / "pkg"
    result = runner.invoke(app, ["federate", "--task", "imaging", "--data", "sample",
                                 "--rounds", "1", "--dp-epsilon", "8", "--private-key", keys[0],
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sorted(summary["privacy"]) == ["site-a", "site-b", "site-c", "site-d"]
    assert all(0 < p["epsilon"] <= 8.0 for p in summary["privacy"].values())
    manifest = read_package(out, public_key=keys[1]).manifest
    assert manifest.training["differential_privacy"]["sites"] == summary["privacy"]
