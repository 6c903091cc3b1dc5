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
