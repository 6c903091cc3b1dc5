"""Scoring a DICOM folder with exactly the runtime's imaging code (``vigil evaluate --images``).

:func:`replay_folder` runs the imaging cycle (:class:`~vigil.runtime.imaging_cycle.
ImagingRunner`) over a :class:`~vigil.runtime.folder_studies.FolderStudySource` of the
folder, into a state store in memory, with the package as the only (active) model and
no sink; what it returns is read back from the store: the per-instance probabilities
and each study's decision threshold (the calibration record's, else the package's for
``site_id``, else the package's). Instances that are not images the runtime scores are
skipped as the service skips them; refused ones are quarantined with their reason.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.core.package import ModelPackage
from vigil.runtime.folder_studies import FolderStudySource
from vigil.runtime.images import ImageScorer
from vigil.runtime.imaging_cycle import ImagingRunner, site_threshold
from vigil.runtime.models import Calibration, LiveModel, LiveModels, task_of
from vigil.runtime.store import ModelRow, StateStore

__all__ = ["FolderReplay", "replay_folder"]


@dataclass(frozen=True, eq=False)
class FolderReplay:
    """The runtime's scores of a folder's image instances.

    Attributes
    ----------
    keys : list of str
        SOPInstanceUID of each scored instance, sorted.
    probability : ndarray of float64, shape (n,)
        Site-calibrated probability (raw without a calibration record).
    threshold : float
        The decision threshold the runtime applied.
    quarantined : dict of str to int
        Reason → instances (and unreadable files) refused.
    skipped : int
        Instances that are not images the runtime scores (not counted as quarantined).
    """

    keys: list[str]
    probability: NDArray[np.float64]
    threshold: float
    quarantined: dict[str, int]
    skipped: int


def replay_folder(
    package: ModelPackage, folder: str | Path, *, calibration: Calibration | None = None,
    site_id: str | None = None, threads: int = 1,
) -> FolderReplay:
    """Score every image instance below ``folder`` through the imaging cycle.

    Raises
    ------
    DataError
        If ``folder`` holds no ``*.dcm`` file.
    ModelArtifactError
        If ``package`` is not an imaging package.
    """
    root = Path(folder)
    if not any(root.rglob("*.dcm")):
        raise DataError(f"expected *.dcm files below {root}, found none", source=str(root))
    scorer = ImageScorer(package, threads=threads)
    m = package.manifest
    row = ModelRow(name=m.name, version=m.version, path=str(package.path),
                   model_sha256=m.model_sha256, calibration=None, role="active",
                   installed=time.time(), task=task_of(m.task))
    live = LiveModels(LiveModel(row=row, scorer=scorer, calibration=calibration), None)
    source = FolderStudySource(root, stable_seconds=0, clock=lambda: 1e11)  # every file is stable
    with StateStore.open("sqlite://", durable=False) as store:
        runner = ImagingRunner(store=store, source=source, sinks=(), models=lambda: live,
                               page_limit=500, site_id=site_id)
        result = runner.run()
        if result.error is not None:
            raise DataError(result.error, source=str(root))
        rows = store.conn.execute(
            "SELECT i.sop_instance_uid, i.probability, s.threshold FROM imaging_instances i "
            "JOIN imaging_studies s ON s.study_uid = i.study_uid AND s.model = i.model "
            "WHERE i.quarantine_reason IS NULL ORDER BY i.sop_instance_uid").fetchall()
    reasons = Counter(result.quarantine_reasons) + source.quarantined
    thresholds = {float(t) for _, _, t in rows}
    assert live.active is not None
    cut = thresholds.pop() if len(thresholds) == 1 else site_threshold(live.active, site_id)
    return FolderReplay(keys=[str(k) for k, _, _ in rows],
                        probability=np.array([p for _, p, _ in rows], dtype=np.float64),
                        threshold=cut, quarantined=dict(reasons), skipped=result.skipped)
