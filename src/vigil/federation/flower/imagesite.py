"""A scanner site's prepared images beside its SuperNode, and the task-aware site loader.

The imaging twin of :mod:`vigil.federation.flower.sitedata`: ``vigil federation site
--task imaging`` reads the hospital's images once through the DICOM path and stores the
pixel chain's model inputs in ``SITE_DIR/site.npz`` (``train_x`` (n, size, size) float32,
``train_y`` (n,) int8, the same for ``valid``); every ClientApp process reads them back
with :func:`load_image_site`. ``site.json`` records ``"task": "imaging"``, the image counts
and, per split, how many files were quarantined and why (reasons name DICOM attributes,
never an identifier). The images never leave the site.

Two sources:

- a folder the site holds, as ``vigil imaging write-sites`` writes one site:
  ``DIR/train/**.dcm`` and ``DIR/val/**.dcm`` with ``labels.csv`` files
  (``sop_instance_uid,label``); read by :func:`vigil.runtime.images.load_images` (the
  runtime's reader and chain). An image without a label is quarantined ("no label");
- a MedMNIST ``.npz`` (or ``"sample"``) dealt to the scanner sites
  (:func:`vigil.dicom_adapter.sites.medmnist_sites`, the in-process ``vigil federate
  --task imaging`` data, every image written and read back as DICOM in memory): the site
  takes its own scanner site's part (demos and tests).

:func:`load_task_site` is what the ClientApp calls: the run's task decides which kind of
site it loads, and a site prepared for the other task is refused.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ConfigError, DataError
from vigil.federation.flower.sitedata import (
    SITE_FILE,
    SITE_INFO,
    load_site,
    site_name,
    store_site,
)
from vigil.federation.image_task import CNNSpec, ImageSet, ImagingSite

if TYPE_CHECKING:
    from vigil.federation.driver import FederatedSite
    from vigil.federation.flower.settings import RunSettings

__all__ = ["SPLITS", "load_image_site", "load_task_site", "prepare_image_site", "site_task"]

SPLITS = {"train": "train", "valid": "val"}
"""Site part → the split's folder (``write-sites`` layout) or MedMNIST split name."""


def _from_folder(folder: Path, size: int) -> tuple[NDArray[np.float32], NDArray[np.int8],
                                                   dict[str, int]]:
    from vigil.runtime.images import load_images

    batch = load_images(folder, size=size)
    labelled = np.isfinite(batch.labels)
    reasons = Counter(batch.quarantined)
    if (~labelled).any():
        reasons["no label in labels.csv"] += int((~labelled).sum())
    return (batch.inputs[labelled], batch.labels[labelled].astype(np.int8), dict(reasons))


def prepare_image_site(
    name: str, site_dir: str | Path, *, images: str | Path | None = None,
    data: str | Path | None = None, seed: int = 0, spec: CNNSpec | None = None,
) -> Path:
    """Read a scanner site's training and validation images and store their model inputs.

    Parameters
    ----------
    name : str
        The site's name in the federation (with ``data``: a scanner site of
        :data:`vigil.dicom_adapter.sites.SITES`).
    site_dir : str or Path
    images : str or Path or None, optional
        The site's DICOM folder with ``train/`` and ``val/`` below it.
    data : str or Path or None, optional
        A MedMNIST ``.npz`` or ``"sample"``, dealt to the scanner sites with ``seed``.
    seed : int, optional
    spec : CNNSpec or None, optional
        The input size.

    Returns
    -------
    Path
        The written ``site.npz``.

    Raises
    ------
    ConfigError
        Unless exactly one of ``images`` and ``data`` is given, or if ``name`` is not a
        scanner site of ``data``.
    DataError
        If a split has no labelled image.
    """
    from vigil.dicom_adapter.sites import SITES, medmnist_sites

    size = (spec or CNNSpec()).size
    if (images is None) == (data is None):
        raise ConfigError("expected either --images DIR (the site's DICOM train/ and val/) or "
                          "--data NPZ for an imaging site, got "
                          f"{'both' if images is not None else 'neither'}", key="images")
    parts: dict[str, tuple[NDArray[np.float32], NDArray[np.int8], dict[str, int]]] = {}
    if images is not None:
        for part, split in SPLITS.items():
            parts[part] = _from_folder(Path(images) / split, size)
    else:
        names = [s.scanner.name for s in SITES]
        if name not in names:
            raise ConfigError(f"expected --name one of the scanner sites {names}, got {name!r}",
                              key="name")
        dealt = medmnist_sites(str(data), seed=seed, splits=tuple(SPLITS.values()))
        for part, split in SPLITS.items():
            mine = next(s for s in dealt[split] if s.site == name)
            reasons = {"refused by the DICOM reader": mine.quarantined} if mine.quarantined else {}
            parts[part] = (mine.inputs, mine.labels.astype(np.int8), reasons)
    for part, (x, _, _) in parts.items():
        if len(x) == 0:
            raise DataError(f"expected labelled images for the site's {part} split, got none",
                            source=str(images or data))
    arrays: dict[str, Any] = {}
    for part, (x, y, _) in parts.items():
        arrays |= {f"{part}_x": np.asarray(x, np.float32), f"{part}_y": y}
    info = {"name": name, "task": "imaging", "prepared": time.time(),
            **{f"{part}_images": int(len(parts[part][1])) for part in parts},
            "quarantined": {part: parts[part][2] for part in parts}}
    return store_site(Path(site_dir), arrays, info)


def site_task(site_dir: str | Path) -> str:
    """Return the task a site was prepared for (``"sepsis"`` when ``site.json`` does not say)."""
    site_name(site_dir)  # a clear error when nothing was prepared
    return str(json.loads((Path(site_dir) / SITE_INFO).read_text()).get("task", "sepsis"))


def load_image_site(site_dir: str | Path, **options: Any) -> ImagingSite:
    """Read a prepared imaging site back.

    Parameters
    ----------
    site_dir : str or Path
    **options
        :class:`~vigil.federation.image_task.ImagingSite` fields ``spec``, ``keep_bn_local``,
        ``dp``.

    Raises
    ------
    DataError
        If its arrays are incomplete.
    """
    name = site_name(site_dir)
    path = Path(site_dir) / SITE_FILE
    try:
        with np.load(path) as z:
            sets = {p: ImageSet(z[f"{p}_x"], z[f"{p}_y"]) for p in SPLITS}
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"expected the arrays of a prepared imaging site: {exc}; prepare it "
                        "again", source=str(path)) from None
    return ImagingSite(name, sets["train"], sets["valid"], **options)


def load_task_site(site_dir: str | Path, settings: RunSettings) -> FederatedSite:
    """Load the site the run's task needs.

    Raises
    ------
    ConfigError
        If the site was prepared for another task.
    """
    prepared = site_task(site_dir)
    if prepared != settings.task:
        raise ConfigError(f"expected a site prepared for the {settings.task} task, got one "
                          f"prepared for {prepared}; run `vigil federation site --task "
                          f"{settings.task}`", key="task")
    if settings.task == "imaging":
        return load_image_site(site_dir, **settings.site_options())
    return load_site(site_dir, **settings.site_options())
