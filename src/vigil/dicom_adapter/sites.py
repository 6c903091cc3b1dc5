"""The scanner-site scheme: MedMNIST images → one folder of real DICOM files per "scanner" site.

Four sites, each a different acquisition (see ``docs/imaging.md`` for the table):

- ``site-a``: 8-bit CR, MONOCHROME2, identity rescale, full window; Explicit VR LE;
- ``site-b``: 12-bit CR, MONOCHROME1 without Presentation LUT Shape, rescale 0.5 / -1024,
  LINEAR_EXACT window, gamma 0.8; RLE Lossless;
- ``site-c``: 16-bit CR, MONOCHROME2, negative slope (-2 / 70000), VOI LUT Sequence,
  contrast 1.2; JPEG-LS Lossless;
- ``site-d``: 12-bit CR, MONOCHROME2, SIGMOID window, gamma 1.25, contrast 0.9, Gaussian
  noise (sd 0.02); JPEG-LS Lossless.

Label skew: each class is dealt to the sites in fixed shares (:attr:`ScannerSite.shares`),
so site-a sees about half pneumonia and site-d about 85 %. Everything is seeded: the same
inputs and seed give the same files, UIDs and assignment.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from vigil.core.errors import ConfigError, DataError
from vigil.data.medmnist import load_medmnist
from vigil.dicom_adapter.batches import prepare_batch
from vigil.dicom_adapter.fundus import FundusCamera, build_fundus_instance
from vigil.dicom_adapter.headers import HeaderRecord, header_record
from vigil.dicom_adapter.scanners import Scanner, build_instance
from vigil.imaging import Photometric

__all__ = [
    "FUNDUS_SITES",
    "SITES",
    "VALID_FRACTION",
    "ScannerSite",
    "SiteFiles",
    "SiteInputs",
    "assign_sites",
    "medmnist_sites",
    "site_inputs",
    "write_sites",
]


VALID_FRACTION = 0.2
"""Share of the train split held out for validation when a file has no ``val`` split."""


@dataclass(frozen=True)
class ScannerSite:
    """One site of the scheme.

    Parameters
    ----------
    scanner : Scanner or FundusCamera
        How the site's images are acquired and stored (its name is the site's name).
    shares : tuple of float
        Share of each class's images dealt to this site (class 0, class 1, ...).
    """

    scanner: Scanner | FundusCamera
    shares: tuple[float, ...]

    @property
    def channels(self) -> int:
        """Channels of the model input its images give: 3 for a fundus camera, else 1."""
        return 3 if isinstance(self.scanner, FundusCamera) else 1


SITES: tuple[ScannerSite, ...] = (
    ScannerSite(
        Scanner("site-a", "CR", 8, Photometric.MONOCHROME2, 1.0, 0.0, 0.0, 255.0),
        shares=(0.40, 0.15),
    ),
    ScannerSite(
        Scanner(
            "site-b", "CR", 12, Photometric.MONOCHROME1, 0.5, -1024.0, -1000.0, 1000.0,
            syntax="rle", gamma=0.8,
        ),
        shares=(0.25, 0.25),
    ),
    ScannerSite(
        Scanner(
            "site-c", "CR", 16, Photometric.MONOCHROME2, -2.0, 70000.0, 1000.0, 5000.0,
            voi="voi_lut", syntax="jpeg-ls", contrast=1.2,
        ),
        shares=(0.20, 0.30),
    ),
    ScannerSite(
        Scanner(
            "site-d", "CR", 12, Photometric.MONOCHROME2, 1.0, 0.0, 48.0, 4048.0,
            voi="sigmoid", syntax="jpeg-ls", gamma=1.25, contrast=0.9, noise=0.02,
        ),
        shares=(0.15, 0.30),
    ),
)  # fmt: skip
"""The four scanner sites."""

FUNDUS_SITES: tuple[ScannerSite, ...] = (
    ScannerSite(FundusCamera("camera-a", "rgb"), shares=(0.50, 0.30, 0.25, 0.20, 0.20)),
    ScannerSite(
        FundusCamera("camera-b", "jpeg-baseline", gain=(1.10, 1.0, 0.85), gamma=0.85),
        shares=(0.30, 0.40, 0.35, 0.30, 0.30),
    ),
    ScannerSite(
        FundusCamera("camera-c", "rgb-planar", gain=(0.85, 0.95, 1.10), gamma=1.2, noise=0.02),
        shares=(0.20, 0.30, 0.40, 0.50, 0.50),
    ),
)  # fmt: skip
"""The three fundus-camera sites of RetinaMNIST (``docs/imaging.md``): label skew over the
five grades (camera-a mostly grade 0, camera-c mostly grades 2-4) and camera shift."""


def sites_for(images: NDArray[np.uint8]) -> tuple[ScannerSite, ...]:
    """Return the site scheme of images: :data:`FUNDUS_SITES` if colour, else :data:`SITES`."""
    return FUNDUS_SITES if np.ndim(images) == 4 else SITES


@dataclass(frozen=True)
class SiteFiles:
    """What :func:`write_sites` wrote for one site.

    Attributes
    ----------
    site : str
        Site name.
    folder : Path
        ``out / site / split``: the ``.dcm`` files and ``labels.csv``.
    n : int
        Number of instances.
    positives : int
        Number of images with a label above 0 (pneumonia; any retinopathy).
    """

    site: str
    folder: Path
    n: int
    positives: int


@dataclass(frozen=True, eq=False)
class SiteInputs:
    """What :func:`site_inputs` read back for one site.

    Attributes
    ----------
    site : str
    inputs : ndarray of float32, shape (n, size, size)
        Pixel-chain model inputs.
    labels : ndarray of int64, shape (n,)
    index : ndarray of int64, shape (n,)
        Each input's image index in the source array.
    quarantined : int
        Instances the reader refused (not in ``inputs``).
    headers : tuple of HeaderRecord
        The watched acquisition headers of each input's instance, shape (n,)
        (:func:`~vigil.dicom_adapter.header_record`; the imaging reference profile).
    """

    site: str
    inputs: NDArray[np.float32]
    labels: NDArray[np.int64]
    index: NDArray[np.int64]
    quarantined: int
    headers: tuple[HeaderRecord, ...] = ()


def assign_sites(
    labels: NDArray[np.integer], *, seed: int, sites: tuple[ScannerSite, ...] = SITES
) -> NDArray[np.int64]:
    """Deal each class's images to the sites in the sites' shares (seeded).

    Parameters
    ----------
    labels : ndarray of int, shape (n,)
        Class labels, 0 to ``len(shares) - 1`` (binary for :data:`SITES`).
    seed : int
        Seed of the shuffle within each class.
    sites : tuple of ScannerSite, optional
        The scheme; each class's shares must sum to 1.

    Returns
    -------
    ndarray of int64, shape (n,)
        Index of each image's site.
    """
    y = np.asarray(labels).reshape(-1)
    shares = np.array([s.shares for s in sites], dtype=np.float64)
    classes = tuple(range(shares.shape[1]))
    if y.size and not np.isin(y, classes).all():
        raise DataError(f"expected labels in {list(classes)} (one share per class), got values "
                        f"{sorted(set(y.tolist()))[:6]}")
    if not np.allclose(shares.sum(axis=0), 1.0):
        raise ConfigError(f"expected each class's site shares to sum to 1, got {shares.sum(0)}")
    rng = np.random.default_rng(seed)
    site = np.empty(y.size, dtype=np.int64)
    for cls in classes:
        members = rng.permutation(np.flatnonzero(y == cls))
        cuts = np.rint(np.cumsum(shares[:, cls]) * members.size).astype(np.int64)
        for index, part in enumerate(np.split(members, cuts[:-1])):
            site[part] = index
    return site


def _check_images(images: NDArray[np.uint8], labels: NDArray[np.integer]) -> NDArray[np.uint8]:
    """Check uint8 greyscale (n, rows, columns) or RGB (n, rows, columns, 3) images, n labels."""
    arr = np.asarray(images)
    shape_ok = arr.ndim == 3 or (arr.ndim == 4 and arr.shape[3] == 3)
    if not shape_ok or arr.dtype != np.uint8 or arr.shape[0] != np.size(labels):
        raise DataError(
            f"expected uint8 images (n, rows, columns) or (n, rows, columns, 3) and n labels, "
            f"got {arr.dtype} {arr.shape} and {np.size(labels)} labels"
        )
    return arr


def _deal(
    images: NDArray[np.uint8],
    labels: NDArray[np.integer],
    *,
    seed: int,
    sites: tuple[ScannerSite, ...] | None,
) -> tuple[NDArray[np.uint8], NDArray[np.integer], tuple[ScannerSite, ...], NDArray[np.int64]]:
    """Check the images and deal them to the sites: images, labels, scheme, site index of each.

    The scheme defaults to :func:`sites_for` the images; the deal is :func:`assign_sites`'s.
    """
    images = _check_images(images, labels)
    y = np.asarray(labels).reshape(-1)
    sites = sites or sites_for(images)
    return images, y, sites, assign_sites(y, seed=seed, sites=sites)


def _instances(
    images: NDArray[np.uint8],
    site_of: NDArray[np.int64],
    index: int,
    site: ScannerSite,
    *,
    split: str,
    seed: int,
) -> Iterator[tuple[int, Dataset]]:
    """Yield ``(image index, DICOM instance)`` of every image dealt to site ``index``."""
    for i in np.flatnonzero(site_of == index):
        rng = np.random.default_rng([seed, index, int(i)])
        if isinstance(site.scanner, FundusCamera):
            yield int(i), build_fundus_instance(images[i], site.scanner, key=f"{split}/{i}",
                                                rng=rng)
        else:
            yield int(i), build_instance(images[i], site.scanner, key=f"{split}/{i}", rng=rng)


def site_inputs(
    images: NDArray[np.uint8],
    labels: NDArray[np.integer],
    *,
    split: str,
    seed: int = 0,
    sites: tuple[ScannerSite, ...] | None = None,
) -> list[SiteInputs]:
    """Model inputs of each site's images as its scanner stores them, read back through DICOM.

    The in-memory twin of :func:`write_sites` followed by reading the files: the same
    assignment, instances and noise (same seed and keys), each encoded as a Part 10
    file in memory, decoded with pydicom, checked by :func:`~vigil.dicom_adapter.read_image`
    and run through :func:`~vigil.imaging.to_model_input`. An instance the reader
    quarantines is dropped and counted.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, rows, columns) or (n, rows, columns, 3)
    labels : ndarray of int, shape (n,)
    split : str
        Name of the split (part of the UIDs, as in :func:`write_sites`).
    seed : int, optional
    sites : tuple of ScannerSite or None, optional
        The scheme; default :func:`sites_for` the images (colour: :data:`FUNDUS_SITES`).

    Returns
    -------
    list of SiteInputs
        One per site, in scheme order.
    """
    images, y, sites, site_of = _deal(images, labels, seed=seed, sites=sites)
    out = []
    for index, site in enumerate(sites):
        indices, datasets = [], []
        for i, ds in _instances(images, site_of, index, site, split=split, seed=seed):
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            buffer.seek(0)
            indices.append(i)
            datasets.append(pydicom.dcmread(buffer))
        batch = prepare_batch(datasets, channels=site.channels)
        kept = np.asarray(indices, dtype=np.int64)[list(batch.accepted)]
        headers = tuple(header_record(datasets[i]) for i in batch.accepted)
        out.append(SiteInputs(site.scanner.name, batch.inputs, y[kept].astype(np.int64), kept,
                              len(batch.quarantined), headers))
    return out


def write_sites(
    images: NDArray[np.uint8],
    labels: NDArray[np.integer],
    out: str | Path,
    *,
    split: str,
    seed: int = 0,
    sites: tuple[ScannerSite, ...] | None = None,
) -> list[SiteFiles]:
    """Write each site's images as DICOM files, with a ``labels.csv`` per site.

    Parameters
    ----------
    images : ndarray of uint8, shape (n, rows, columns) or (n, rows, columns, 3)
        Greyscale images (PneumoniaMNIST).
    labels : ndarray of int, shape (n,)
        Their labels.
    out : str or Path
        Root folder; files go to ``out/<site>/<split>/<SOPInstanceUID>.dcm``.
    split : str
        Name of the split (part of the folder and of the UIDs).
    seed : int, optional
        Seed of the site assignment and of the noise.
    sites : tuple of ScannerSite or None, optional
        The scheme; default :func:`sites_for` the images (colour: :data:`FUNDUS_SITES`).

    Returns
    -------
    list of SiteFiles
        One per site, in scheme order.
    """
    images, y, sites, site_of = _deal(images, labels, seed=seed, sites=sites)
    written = []
    for index, site in enumerate(sites):
        name = site.scanner.name
        folder = Path(out) / name / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, ds in _instances(images, site_of, index, site, split=split, seed=seed):
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            rows.append((str(ds.SOPInstanceUID), int(y[i])))
        with (folder / "labels.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sop_instance_uid", "label"])
            writer.writerows(rows)
        written.append(SiteFiles(name, folder, len(rows), sum(label > 0 for _, label in rows)))
    return written


def medmnist_sites(
    path: str | Path, *, seed: int = 0, sites: tuple[ScannerSite, ...] | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
) -> dict[str, list[SiteInputs]]:
    """Return each site's model inputs of each split of a MedMNIST file, read through DICOM.

    Parameters
    ----------
    path : str or Path
        A greyscale MedMNIST ``.npz``, or ``"sample"``.
    seed : int, optional
        Seed of the site assignment and noise (the same for every split).
    sites : tuple of ScannerSite or None, optional
        The scheme; default :func:`sites_for` the images (colour: :data:`FUNDUS_SITES`).
    splits : tuple of str, optional
        Splits to read. A file without ``val`` (the bundled sample) gets one from
        its train split: a seeded, class-stratified :data:`VALID_FRACTION` held out.

    Returns
    -------
    dict of str to list of SiteInputs
        Split name → one entry per site.
    """
    train = load_medmnist(path, "train")
    sites = sites or sites_for(train.images)
    parts = {"train": (train.images, train.labels)}
    try:
        val = load_medmnist(path, "val")
        parts["val"] = (val.images, val.labels)
    except DataError:
        rng = np.random.default_rng([seed, 7])
        held = np.zeros(train.labels.size, dtype=bool)
        for cls in range(len(sites[0].shares)):
            members = rng.permutation(np.flatnonzero(train.labels == cls))
            held[members[: int(round(VALID_FRACTION * members.size))]] = True
        parts = {"train": (train.images[~held], train.labels[~held]),
                 "val": (train.images[held], train.labels[held])}
    if "test" in splits:
        test = load_medmnist(path, "test")
        parts["test"] = (test.images, test.labels)
    return {split: site_inputs(*parts[split], split=split, seed=seed, sites=sites)
            for split in splits}
