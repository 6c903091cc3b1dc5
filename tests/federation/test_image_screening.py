"""The bad-update screening on the label-skewed imaging scanner sites.

site-a holds the opposite class mix of the three others (docs/imaging.md, the
scanner sites): an honest site that the former peer-cosine direction rule took
for an attacker. With the previous accepted step as the reference it is kept in
every round, while a sign-flipping site is still rejected.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

import numpy as np
import pytest
import torch

from vigil.data.medmnist import load_medmnist
from vigil.dicom_adapter.sites import site_inputs
from vigil.federation.driver import Plan, run_federation
from vigil.federation.history import Status
from vigil.federation.image_task import ImageSet, ImagingSite, ImagingTask
from vigil.federation.strategies import make_strategy

PLAN = Plan(rounds=6, batch_size=32, lr=1e-3, weight_decay=1e-4, seed=0)


class Flipping:
    """A site that sends its update with the sign flipped: ``w - (w' - w)``."""

    def __init__(self, site: ImagingSite) -> None:
        self.site, self.name = site, site.name

    def statistics(self):  # type: ignore[no-untyped-def]
        return self.site.statistics()

    def evaluate(self, weights):  # type: ignore[no-untyped-def]
        return self.site.evaluate(weights)

    def fit(self, weights, config):  # type: ignore[no-untyped-def]
        update = self.site.fit(weights, config)
        bad = OrderedDict((k, (2 * weights[k] - v).astype(np.float32))
                          for k, v in update.weights.items())
        return replace(update, weights=bad)


@pytest.fixture(scope="module")
def scanner_sites():
    """The four scanner sites of the bundled sample (train 400, validation 200 images)."""
    torch.set_num_threads(1)
    train, test = load_medmnist("sample", "train"), load_medmnist("sample", "test")
    tr = site_inputs(train.images, train.labels, split="train", seed=0)
    va = site_inputs(test.images, test.labels, split="val", seed=0)
    return [ImagingSite(t.site, ImageSet(t.inputs, t.labels.astype(np.int8)),
                        ImageSet(v.inputs, v.labels.astype(np.int8)))
            for t, v in zip(tr, va, strict=True)]


@pytest.mark.slow
def test_label_skewed_sites_are_all_kept_and_a_flipping_site_is_not(scanner_sites):
    shares = {s.name: float(s.train.y.mean()) for s in scanner_sites}
    assert shares["site-a"] < min(v for k, v in shares.items() if k != "site-a") - 0.1
    honest = run_federation(scanner_sites, make_strategy("fedavg"), PLAN, task=ImagingTask())
    assert honest.history.events(Status.REJECTED) == []
    attacked = [Flipping(s) if s.name == "site-c" else s for s in scanner_sites]
    result = run_federation(attacked, make_strategy("fedavg"), PLAN, task=ImagingTask())
    for record in result.history.rounds:
        by_site = {s.site: s for s in record.sites}
        assert (by_site["site-c"].status, by_site["site-c"].reason) == (
            Status.REJECTED, "direction"), record.round
        assert len(record.by_status(Status.ACCEPTED)) == 3, record.round
