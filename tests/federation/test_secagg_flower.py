"""Secure aggregation of the training rounds over real Flower messages (fake grid, no processes)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_flower_transport import FakeGrid, _reference, _settings, site_dirs, task  # noqa: F401

from vigil.federation.driver import run_federation
from vigil.federation.flower.secure import SecureTransport
from vigil.federation.flower.transport import FlowerTransport
from vigil.federation.secure_sum import SecureSumSettings

SECURE = SecureSumSettings(clipping_range=1.0)


def test_secure_rounds_equal_the_plain_driver_within_the_quantization_error(site_dirs, task) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(_settings(), secure=SECURE)
    grid = FakeGrid(site_dirs, settings)
    plain = FlowerTransport(grid, timeout=settings.timeout)  # type: ignore[arg-type]
    sites = plain.connect(expected=3, min_sites=2, wait=1.0)
    transport = SecureTransport(plain, SECURE)
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model,
                            transport=transport)
    reference = _reference(site_dirs, settings)
    diff = max(float(np.abs(result.weights[k] - reference.weights[k]).max())
               for k in reference.weights)
    print("max weight diff", diff)
    print(result.history)
    print({n: t for n, t in plain.traffic.items()})


from flwr.app import Context, RecordDict  # noqa: E402
from test_flower_trees import TREES, Grid, _in_process  # noqa: E402

from vigil.federation.flower import serverapp  # noqa: E402
from vigil.federation.flower.results import load_result  # noqa: E402
from vigil.federation.flower.runner import federated_run  # noqa: E402
from vigil.federation.flower.settings import RunSettings  # noqa: E402
from vigil.federation.driver import Plan  # noqa: E402
from vigil.federation.site import ModelSpec  # noqa: E402
from vigil.federation.strategies import make_strategy  # noqa: E402
from test_flower_transport import _run_config  # noqa: E402


def test_trees_over_secure_sums(site_dirs, task, tmp_path) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    plain = RunSettings(plan=Plan(rounds=1, seed=3, time_budget=30.0),
                        strategy=make_strategy("fedavg"), sites=3, model=ModelSpec(hidden=(8,)),
                        trees=TREES, out_dir=str(tmp_path / "result"), wait=1.0)
    settings = dataclasses.replace(plain, secure=SECURE)
    grid = Grid(site_dirs, settings)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config=_run_config(settings))
    serverapp.main(grid, context)  # type: ignore[arg-type]
    out = load_result(tmp_path / "result")
    flower = federated_run(settings, out)
    reference = _in_process(site_dirs, plain)
    for x, y in zip(flower.hybrid.part.trees, reference.hybrid.part.trees):
        print(x.feature, y.feature)
        print(np.abs(x.value - y.value).max() if x.value.shape == y.value.shape else "shape")
    print(flower.hybrid.part.standardization, reference.hybrid.part.standardization)
    print(out.info["traffic"], out.info["network_traffic"])
