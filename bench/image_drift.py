"""False alarms and detection delay of the imaging drift monitor, measured in one run.

Builds the scenario feeds of ``tests/runtime/mon_img_support.py`` (6 days of 48 one-image
studies from real PneumoniaMNIST test images, stored by the site-a scanner, scored by the
shipped package through the runtime's code): ``--seeds`` stable feeds, and one feed whose
scanner changes at day 3. Replays the monitor hourly on each (delayed labels a day later on
the stable feeds) and prints the number of stable feeds with any alarm, the alarms they
raised, and the delay from the switch to each header alarm's first check.

Usage: ``.venv/bin/python bench/image_drift.py [--data NPZ] [--seeds 15] [--json]``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "runtime"))

from mon_img_support import START, feed, shipped  # noqa: E402

from vigil.imaging.profile import ImageProfile  # noqa: E402
from vigil.runtime.monitoring.image_records import records_frame  # noqa: E402
from vigil.runtime.monitoring.image_replay import (  # noqa: E402
    replay_image_monitor,
    study_outcomes,
)
from vigil.runtime.monitoring.images import ImageDriftMonitor  # noqa: E402


def main() -> None:
    """Run the feeds and print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "medmnist"
                                              / "pneumoniamnist.npz"))
    parser.add_argument("--seeds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    package = shipped()
    profile = ImageProfile.from_manifest(package.manifest.model_dump())
    raised: Counter[str] = Counter()
    noisy = 0
    for seed in range(1, args.seeds + 1):
        records, studies = feed(Path(args.data), package, seed=seed)
        labels = studies.assign(known_at=(studies["scored_at"] + pd.Timedelta(days=1))
                                .map(lambda t: t.isoformat()))
        run = replay_image_monitor(records_frame(records), ImageDriftMonitor(profile),
                                   outcomes=study_outcomes(studies, labels))
        noisy += bool(run.alarms)
        raised.update(f"{a.kind}/{a.variable}" for a in run.alarms)
    records, _ = feed(Path(args.data), package, seed=0, switch_day=3.0)
    switch = pd.Timestamp(START) + pd.Timedelta(days=3)
    run = replay_image_monitor(records_frame(records), ImageDriftMonitor(profile))
    delays = {a.variable: (pd.Timestamp(a.first_seen, unit="s", tz="UTC") - switch)
              / pd.Timedelta(hours=1) for a in run.alarms}
    out = {"stable_feeds": args.seeds, "stable_feeds_with_alarms": noisy,
           "stable_alarms": dict(raised), "switch_alarm_delay_hours": delays}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"stable feeds with any alarm: {noisy} of {args.seeds} {dict(raised)}")
    for name, hours in delays.items():
        print(f"scanner switch: {name} named {hours:+.1f} h after the switch")


if __name__ == "__main__":
    main()
