"""A site's imaging feed for the drift-monitor tests: real images, simulated scanners, real scoring.

Each study is one PneumoniaMNIST image written as a DICOM instance by a simulated scanner
(:func:`vigil.dicom_adapter.scanners.build_instance`), encoded to Part 10 bytes and read back,
then run through exactly the runtime's code: :func:`vigil.dicom_adapter.prepare_batch`
(quarantine), :func:`vigil.imaging.input_histogram`, and the package's
:class:`vigil.runtime.images.ImageScorer`. One :class:`InstanceRecord` per instance.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

from vigil.core.package import ModelPackage, read_package
from vigil.data.medmnist import load_medmnist
from vigil.dicom_adapter import header_record, prepare_batch
from vigil.dicom_adapter.scanners import Scanner, build_instance
from vigil.dicom_adapter.sites import SITES
from vigil.imaging import Photometric, input_histogram
from vigil.runtime.images import ImageScorer
from vigil.runtime.study_contracts import InstanceRecord

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "imaging-federated"
START = datetime(2026, 3, 2, tzinfo=UTC)

SITE_A = SITES[0].scanner
"""The site's scanner before the switch: 8-bit CR, MONOCHROME2, Explicit VR LE."""

NEW_SCANNER = Scanner("site-e", "CR", 16, Photometric.MONOCHROME1, 1.0, 0.0, 0.0, 60000.0,
                      syntax="rle")
"""The new scanner: 16-bit, MONOCHROME1 (inverted), RLE, another manufacturer string."""


def shipped() -> ModelPackage:
    """The shipped imaging package (integrity checked)."""
    return read_package(SHIPPED)


def feed(
    npz: Path, package: ModelPackage, *, seed: int, days: int = 6, per_day: int = 48,
    switch_day: float | None = None, new: Scanner = NEW_SCANNER,
) -> tuple[list[InstanceRecord], pd.DataFrame]:
    """A feed of ``days * per_day`` one-image studies, evenly spaced from :data:`START`.

    Parameters
    ----------
    npz : Path
        PneumoniaMNIST (its test split's images, drawn in a seeded order).
    package : ModelPackage
    seed : int
    days, per_day : int
    switch_day : float or None
        From this day on (0-based, fractional), studies come from ``new``; None: stable.
    new : Scanner

    Returns
    -------
    records : list of InstanceRecord
    studies : DataFrame
        ``study_key, scored_at, probability, label`` per scored study.
    """
    test = load_medmnist(npz, "test")
    rng = np.random.default_rng(seed)
    n = days * per_day
    order = rng.choice(test.labels.size, size=n, replace=n > test.labels.size)
    step = timedelta(days=1) / per_day
    switch = None if switch_day is None else int(round(switch_day * per_day))
    datasets, times = [], []
    for i, j in enumerate(order):
        scanner = new if switch is not None and i >= switch else SITE_A
        ds = build_instance(test.images[j], scanner, key=f"feed/{seed}/{i}",
                            rng=np.random.default_rng([seed, i]))
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        datasets.append(pydicom.dcmread(buffer))
        times.append(START + i * step)
    batch = prepare_batch(datasets)
    scorer = ImageScorer(package)
    raw = scorer.predict_images(batch.inputs)
    hist = input_histogram(batch.inputs)
    accepted = {pos: k for k, pos in enumerate(batch.accepted)}
    model = f"{package.manifest.name}@{package.manifest.version}"
    reasons = dict(batch.quarantined)
    records, rows = [], []
    for i, ds in enumerate(datasets):
        k = accepted.get(i)
        if k is None:
            records.append(InstanceRecord(times[i], model, header_record(ds),
                                          np.zeros(hist.shape[1], np.int64), float("nan"),
                                          float("nan"), reasons[i]))
            continue
        records.append(InstanceRecord(times[i], model, header_record(ds), hist[k],
                                      float(raw[k]), float(raw[k])))
        rows.append((f"s{i}", times[i], float(raw[k]), int(test.labels[order[i]])))
    studies = pd.DataFrame(rows, columns=["study_key", "scored_at", "probability", "label"])
    return records, studies
