"""``vigil calibrate`` for an imaging model: score the labelled studies, fit, write the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vigil.calibration.methods import Method
from vigil.calibration.policies import ThresholdPolicy
from vigil.cli._common import err_console, warn
from vigil.core.errors import DataError
from vigil.core.package import ModelPackage

__all__ = ["calibrate_images"]


def calibrate_images(
    package: ModelPackage, images: Path, *, method: Method, policy: ThresholdPolicy, out: Path,
    site: str, fit_fraction: float, n_boot: int, seed: int, min_events: int | None,
) -> dict[str, Any]:
    """Score ``images`` with the runtime's code, calibrate per study, write the record.

    Parameters
    ----------
    package : ModelPackage
        A verified imaging package.
    images : Path
        A folder of DICOM files with ``labels.csv`` (``sop_instance_uid,label``).
    method, policy, out, site, fit_fraction, n_boot, seed, min_events
        As ``vigil calibrate``.

    Returns
    -------
    dict
        The summary ``vigil calibrate --json`` prints.

    Raises
    ------
    DataError
        If ``images`` is not a folder of labelled DICOM studies.
    """
    from vigil.calibration.record import ModelRef, write_record
    from vigil.calibration.site import TIE_TOLERANCE
    from vigil.calibration.studies import calibrate_studies, study_scores
    from vigil.runtime.images import ImageScorer, load_images

    if not images.is_dir():
        raise DataError(f"expected --images a folder of the site's labelled DICOM studies, found "
                        f"{'a file' if images.exists() else 'nothing'} at {images}",
                        source=str(images))
    scorer = ImageScorer(package)
    with err_console.status("reading and scoring the studies"):
        batch = load_images(images, size=scorer.size)
        probability = scorer.predict_images(batch.inputs)
    studies, uids = study_scores(batch.study_uids, batch.study_times, probability, batch.labels)
    with err_console.status("fitting and bootstrapping"):
        result = calibrate_studies(
            studies, uids, method=method, policy=policy,
            model_threshold=package.manifest.threshold, fit_fraction=fit_fraction,
            n_boot=n_boot, seed=seed, min_events=min_events, source=images.name)
    ref = ModelRef.of(package)
    record = result.to_record(site=site, model=ref)
    write_record(record, out)
    if result.overshoot > TIE_TOLERANCE:
        n_pos = int(result.fit.labels.sum())
        warn(f"{result.policy} was asked for, but on the {n_pos} positive fit studies the "
             f"nearest threshold reaching it gives {result.fit_achieved:.3f} (steps of "
             f"1/{n_pos}); more labelled studies bring it closer")
    return {
        "record": str(out), "report": None, "site": site, "unit": "study",
        "model": ref.model_dump(), "method": record.method, "policy": record.policy,
        "threshold": record.threshold, "model_threshold": result.model_threshold,
        "achieved": record.achieved, "metrics": record.metrics,
        "data_window": record.data_window, "images": int(probability.size),
        "quarantined": int(sum(batch.quarantined.values())),
    }
