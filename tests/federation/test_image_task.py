"""The imaging task: FedBN BatchNorm policy, the driver unchanged, image metrics, ONNX parity."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from vigil.core.errors import ConfigError, ModelArtifactError
from vigil.core.package import read_package
from vigil.core.signing import generate_keypair
from vigil.data.medmnist import load_medmnist
from vigil.dicom_adapter.sites import site_inputs
from vigil.federation.cnn import BN_POLICY, BN_TENSORS, SmallCNN, bn_entries
from vigil.federation.driver import Plan, run_federation
from vigil.federation.evaluation import SCORE_EDGES, pool_evaluations
from vigil.federation.image_export import PARITY_IMAGES, cnn_to_onnx, image_parity
from vigil.federation.image_run import export_imaging_run, federate_images
from vigil.federation.image_task import (
    CNNSpec,
    ImageSet,
    ImagingSite,
    ImagingTask,
    image_evaluation,
    predict_images,
)
from vigil.federation.messages import FitConfig
from vigil.federation.model import get_weights
from vigil.federation.strategies import make_strategy
from vigil.imaging import training_inputs

PLAN = Plan(rounds=2, batch_size=32, lr=1e-3, weight_decay=1e-4, min_sites=2)


@pytest.fixture(scope="module")
def parts():
    """Two scanner sites of the bundled sample, read back through DICOM."""
    train = load_medmnist("sample", "train")
    names = ("site-a", "site-b")
    tr = site_inputs(train.images[:240], train.labels[:240], split="train", seed=0)
    va = site_inputs(train.images[240:360], train.labels[240:360], split="val", seed=0)
    pick = lambda ps: [(p.site, p.inputs, p.labels) for p in ps if p.site in names]  # noqa: E731
    return pick(tr), pick(va)


def _sites(parts, keep):
    train, valid = parts
    return [ImagingSite(n, ImageSet(x, y.astype(np.int8)), ImageSet(vx, vy.astype(np.int8)),
                        keep_bn_local=keep)
            for (n, x, y), (_, vx, vy) in zip(train, valid, strict=True)]


def test_bn_policy_names_every_tensor_for_every_strategy():
    assert set(BN_POLICY) == {"fedavg", "fedprox", "fedbn"}
    for policy in BN_POLICY.values():
        assert set(policy) == set(BN_TENSORS)
    assert set(BN_POLICY["fedbn"].values()) == {"local"}
    assert BN_POLICY["fedavg"]["num_batches_tracked"] == "local"


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedbn"])
def test_updates_carry_exactly_the_shared_batchnorm_tensors(parts, strategy):
    chosen = make_strategy(strategy)
    site = _sites(parts, chosen.keeps_norm_local)[0]
    start = ImagingTask().initial_weights([], seed=0, keep_local=chosen.keeps_norm_local)
    config = FitConfig(round=1, total_rounds=1, seed=0, local_epochs=1, batch_size=32, lr=1e-3,
                       weight_decay=1e-4, proximal_mu=chosen.proximal_mu)
    update = site.fit(start, config)
    kinds = bn_entries(SmallCNN())
    sent = {kinds[k] for k in update.weights if k in kinds}
    expected = {t for t, rule in BN_POLICY[strategy].items() if rule == "averaged"}
    assert sent == expected
    assert list(update.weights) == list(start)  # the screening reference matches the update
    assert update.num_examples == site.train.n


def test_fedavg_averages_batchnorm_statistics_by_examples(parts):
    sites = _sites(parts, keep=False)
    start = ImagingTask().initial_weights([], seed=0, keep_local=False)
    config = FitConfig(round=1, total_rounds=1, seed=0, local_epochs=1, batch_size=32, lr=1e-3,
                       weight_decay=1e-4, proximal_mu=0.0)
    updates = [s.fit(start, config) for s in sites]
    n = np.array([u.num_examples for u in updates], dtype=np.float64)
    merged = make_strategy("fedavg").aggregate([u.weights for u in updates], list(n),
                                                is_local=ImagingTask().is_local)
    for key in ("bn1.running_mean", "bn2.running_var", "bn3.weight"):
        by_hand = sum(w * u.weights[key].astype(np.float64)
                      for w, u in zip(n, updates, strict=True)) / n.sum()
        np.testing.assert_allclose(merged[key], by_hand, rtol=1e-6)


def test_fedbn_keeps_each_sites_batchnorm_and_shares_the_rest(parts):
    sites = _sites(parts, keep=True)
    result = run_federation(sites, make_strategy("fedbn"), PLAN, task=ImagingTask())
    bn = bn_entries(SmallCNN())
    assert not any(k in bn for k in result.weights)
    a, b = (s.local_weights(result.weights, result.best_round) for s in sites)
    for key in result.weights:
        np.testing.assert_array_equal(a[key], result.weights[key])
        np.testing.assert_array_equal(b[key], result.weights[key])
    for key, kind in bn.items():
        if kind != "num_batches_tracked":
            assert not np.array_equal(a[key], b[key]), key
    assert [r.aggregated for r in result.history.rounds] == [True, True]


def test_imaging_federation_is_deterministic_for_a_seed(parts):
    runs = [run_federation(_sites(parts, keep=False), make_strategy("fedavg"), PLAN,
                           task=ImagingTask()) for _ in range(2)]
    for key, value in runs[0].weights.items():
        np.testing.assert_array_equal(value, runs[1].weights[key])


def test_image_utility_ranks_thresholds_as_accuracy():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = 1 / (1 + np.exp(-(rng.normal(size=300) + 1.5 * y)))
    pooled = pool_evaluations([image_evaluation("s", y, p)])
    best = max(np.mean((p >= t) == (y > 0)) for t in SCORE_EDGES)
    assert pooled.utility == pytest.approx((best * y.size - (y == 0).sum()) / y.sum())
    assert np.mean((p >= pooled.threshold) == (y > 0)) == pytest.approx(best)


def _random_cnn(seed: int):
    torch.manual_seed(seed)
    net = SmallCNN()
    with torch.no_grad():
        for name, module in net.named_modules():
            if name.startswith("bn"):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return get_weights(net)


def test_onnx_parity_on_1000_images_and_named_batchnorm():
    images = load_medmnist("sample", "train").images
    x = training_inputs(np.concatenate([images, images[:, ::-1], images[:, :, ::-1]]))
    x = x[:PARITY_IMAGES]
    assert len(x) == PARITY_IMAGES
    weights = _random_cnn(0)
    blob = cnn_to_onnx(weights, CNNSpec())
    assert image_parity(weights, blob, x, CNNSpec()) <= 1e-5
    graph = onnx.load_from_string(blob).graph
    assert sum(n.op_type == "BatchNormalization" for n in graph.node) == 3
    assert {"bn1.running_mean", "bn3.running_var"} <= {i.name for i in graph.initializer}


def test_parity_failure_and_missing_weights_are_refused():
    weights = _random_cnn(1)
    other = cnn_to_onnx(_random_cnn(2), CNNSpec())
    x = training_inputs(load_medmnist("sample", "test").images[:50])
    with pytest.raises(ModelArtifactError, match="ONNX parity failed"):
        image_parity(weights, other, x, CNNSpec())
    del weights["bn2.running_var"]
    with pytest.raises(ModelArtifactError, match="bn2.running_var"):
        cnn_to_onnx(weights, CNNSpec())


def test_fedbn_site_packages_are_signed_and_share_the_backbone(parts, tmp_path):
    private, public = generate_keypair()
    run = federate_images(*parts, strategy=make_strategy("fedbn"),
                          plan=Plan(rounds=1, batch_size=32, lr=1e-3, weight_decay=1e-4))
    check = np.concatenate([x for _, x, _ in parts[0]])
    packages = export_imaging_run(run, tmp_path, name="img", version="0.0.1", check_inputs=check,
                                  private_key_pem=private)
    assert [p.path.name for p in packages] == ["site-a", "site-b"]
    read = [read_package(p.path, public_key=public) for p in packages]
    manifests = [p.manifest for p in read]
    assert {m.task for m in manifests} == {"imaging"}
    arch = [m.model_extra["architecture"] for m in manifests]
    assert arch[0]["shared_sha256"] == arch[1]["shared_sha256"]
    assert manifests[0].model_sha256 != manifests[1].model_sha256
    thresholds = manifests[0].model_extra["site_thresholds"]
    assert manifests[0].threshold == pytest.approx(thresholds["site-a"])
    assert manifests[0].model_extra["export"]["parity_max_abs_diff"] <= 1e-5


def test_compare_scores_every_arm_on_the_test_images(parts):
    from vigil.federation.image_compare import (
        ARMS,
        compare_images,
        compare_markdown,
        summarize_seeds,
    )

    train, valid = parts
    result = compare_images(train, valid, valid, plan=Plan(rounds=1, batch_size=32, lr=1e-3))
    assert list(result) == list(ARMS)
    n = sum(len(y) for _, _, y in valid)
    for arm in result.values():
        assert list(arm) == ["site-a", "site-b", "pooled"]
        assert arm["pooled"]["n"] == n
        assert all(0 <= cell["accuracy"] <= 1 for cell in arm.values())
    summary = summarize_seeds([result, result])
    assert summary["fedbn"]["pooled"]["auc_mean"] == pytest.approx(result["fedbn"]["pooled"]["auc"])
    assert summary["fedbn"]["pooled"]["auc_sd"] == 0
    assert compare_markdown(summary, 2).count("\n") == len(ARMS) + 1


class _Recording:
    """A site that records each validation summary it sends (delegates the rest)."""

    def __init__(self, site, log):
        self._site, self._log, self.name = site, log, site.name

    def statistics(self):
        return self._site.statistics()

    def fit(self, weights, config):
        return self._site.fit(weights, config)

    def evaluate(self, weights):
        self._log.append(self._site.evaluate(weights))
        return self._log[-1]


@pytest.mark.parametrize("keep_by", ["pooled", "site"])
def test_the_kept_round_is_the_best_by_the_plans_rule(parts, keep_by):
    from dataclasses import replace

    from vigil.federation.evaluation import site_calibrated_utility

    log: list = []
    sites = [_Recording(s, log) for s in _sites(parts, keep=True)]
    plan = replace(PLAN, rounds=4, keep_by=keep_by)
    result = run_federation(sites, make_strategy("fedbn"), plan, task=ImagingTask())
    per_round = [log[i:i + 2] for i in range(0, len(log), 2)]
    rule = site_calibrated_utility if keep_by == "site" else (
        lambda e: pool_evaluations(e).utility)
    scores = [rule(e) for e in per_round]
    assert len(scores) == 4
    assert result.best_round == int(np.argmax(scores)) + 1
    assert result.evaluations == per_round[result.best_round - 1]


def test_plan_refuses_an_unknown_keep_rule():
    with pytest.raises(ConfigError, match="expected keep_by to be one of"):
        Plan(rounds=1, keep_by="last")


def test_validation_scores_calibrate_each_site_on_its_own_images(parts):
    from vigil.federation.image_compare import score_arm, train_arm, validation_scores

    train, valid = parts
    models, thresholds = train_arm("fedbn", train, valid, plan=Plan(rounds=1, batch_size=32,
                                                                    lr=1e-3))
    assert models["site-a"] is not models["site-b"]  # each site its own BatchNorm
    scores = validation_scores(models, valid)
    for name, x, y in valid:
        p = predict_images(models[name], x)
        best = max(np.mean((p >= t) == (y > 0)) for t in SCORE_EDGES)
        assert scores[name]["accuracy"] == pytest.approx(best)
        # the run's thresholds are the same validation choice
        assert score_arm(models, thresholds, valid)[name]["accuracy"] == pytest.approx(best)
    with pytest.raises(ConfigError, match="expected an arm among"):
        train_arm("ensemble", train, valid, plan=PLAN)
