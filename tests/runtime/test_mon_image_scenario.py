"""Scenario: a site switches scanners halfway; the imaging monitor names it within a day.

Six days of 48 one-image studies a day from real PneumoniaMNIST test images, stored by the
site's scanner (site-a: 8-bit, MONOCHROME2, Explicit VR LE) and scored by the shipped
package through the runtime's code (tests/runtime/img_support.py). From day 3 a new scanner
(16-bit, MONOCHROME1, RLE, another manufacturer) stores them. The monitor checks hourly; in
the stable feeds each study's label arrives a day later.
"""

from __future__ import annotations

import pandas as pd
import pytest
from mon_img_support import START, feed, shipped

from vigil.imaging.profile import ImageProfile
from vigil.runtime.monitoring.alarms import AlarmKind
from vigil.runtime.monitoring.image_records import records_frame
from vigil.runtime.monitoring.image_replay import replay_image_monitor, study_outcomes
from vigil.runtime.monitoring.images import ImageDriftMonitor

pytestmark = pytest.mark.slow

STABLE_SEEDS = range(1, 5)


@pytest.fixture(scope="module")
def package():
    return shipped()


@pytest.fixture(scope="module")
def profile(package):
    found = ImageProfile.from_manifest(package.manifest.model_dump())
    assert found is not None, "the shipped package carries its image profile"
    return found


@pytest.fixture(scope="module")
def switched(shared_pneumoniamnist, package):
    records, _ = feed(shared_pneumoniamnist, package, seed=0, switch_day=3.0)
    return records_frame(records)


def test_scanner_switch_is_named_within_one_day(switched, profile):
    switch = pd.Timestamp(START) + pd.Timedelta(days=3)
    run = replay_image_monitor(switched, ImageDriftMonitor(profile))
    headers = {a.variable: a for a in run.alarms if a.kind is AlarmKind.HEADER_DRIFT}
    assert {"BitsStored", "PhotometricInterpretation", "Manufacturer"} <= set(headers)
    for alarm in headers.values():
        seen = pd.Timestamp(alarm.first_seen, unit="s", tz="UTC")
        assert switch < seen <= switch + pd.Timedelta(days=1)
    assert "16 share 0% → 100%" in headers["BitsStored"].message
    assert "MONOCHROME1 share 0% → 100%" in headers["PhotometricInterpretation"].message
    manufacturer = headers["Manufacturer"]
    assert "site-e" in manufacturer.message and "never seen in the training sites" in \
        manufacturer.message and str(manufacturer.severity) == "critical"
    # BitsStored 16 and MONOCHROME1 exist at training sites (site-c, site-b): a site change only
    assert "never seen" not in headers["BitsStored"].message
    # nothing fires before the switch
    assert all(pd.Timestamp(a.first_seen, unit="s", tz="UTC") > switch for a in run.alarms)


@pytest.mark.parametrize("seed", STABLE_SEEDS)
def test_stable_feed_raises_nothing(shared_pneumoniamnist, package, profile, seed):
    records, studies = feed(shared_pneumoniamnist, package, seed=seed)
    known = studies["scored_at"] + pd.Timedelta(days=1)  # each label a day after its study
    labels = studies.assign(known_at=known.map(lambda t: t.isoformat()))
    run = replay_image_monitor(records_frame(records), ImageDriftMonitor(profile),
                               outcomes=study_outcomes(studies, labels))
    assert run.checks > 100 and run.alarms == []
    # the score, intensity and performance checks did run
    kinds = {(k, s) for _, k, _, s, _ in run.stats}
    assert {("score_drift", "ks_pvalue"), ("input_drift", "psi"),
            ("discrimination", "auroc")} <= kinds


def test_profile_less_package_falls_back_to_the_site_baseline(switched):
    run = replay_image_monitor(switched, ImageDriftMonitor(None))
    assert len(run.notes) == 1 and "no image profile" in run.notes[0]
    names = {a.variable for a in run.alarms}
    assert {"BitsStored", "PhotometricInterpretation", "Manufacturer"} <= names
    assert all("never seen in the training" not in a.message for a in run.alarms)
