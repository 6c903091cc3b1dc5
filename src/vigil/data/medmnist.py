"""Loading MedMNIST 2-D sets (``.npz``, greyscale or RGB), and the bundled samples.

The shared data has the full files (``shared/data/medmnist/``, see its README);
a fresh clone has :data:`MEDMNIST_SAMPLE_PATH`: 400 train and 200 test images of
PneumoniaMNIST (CC BY 4.0, attribution in ``sample/README.md``), made by
:func:`make_medmnist_sample`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError

__all__ = [
    "MEDMNIST_SAMPLE_PATH",
    "RETINA_SAMPLE_PATH",
    "MedMNISTSplit",
    "load_medmnist",
    "make_medmnist_sample",
]

MEDMNIST_SAMPLE_PATH = Path(__file__).parent / "sample" / "pneumoniamnist_sample.npz"
"""The bundled PneumoniaMNIST sample (see ``sample/README.md``)."""
RETINA_SAMPLE_PATH = Path(__file__).parent / "sample" / "retinamnist_sample.npz"
"""The bundled RetinaMNIST sample, ``"retina-sample"`` (see ``sample/README.md``)."""
_SAMPLES = {"sample": MEDMNIST_SAMPLE_PATH, "retina-sample": RETINA_SAMPLE_PATH}

SAMPLE_SEED = 20261206
"""Seed of the sample's draw (:func:`make_medmnist_sample`)."""


@dataclass(frozen=True, eq=False)
class MedMNISTSplit:
    """One split of a MedMNIST set.

    Attributes
    ----------
    images : ndarray of uint8, shape (n, 28, 28) or (n, 28, 28, 3)
        The images, 0 black, 255 white (RGB channel last for colour sets).
    labels : ndarray of int64, shape (n,)
        The labels (PneumoniaMNIST: 0 normal, 1 pneumonia; RetinaMNIST: grade 0-4).
    """

    @property
    def channels(self) -> int:
        """1 for greyscale, 3 for RGB."""
        return 3 if self.images.ndim == 4 else 1

    @property
    def classes(self) -> int:
        """Number of classes, from the labels (at least 2)."""
        return max(2, int(self.labels.max()) + 1) if self.labels.size else 2

    images: NDArray[np.uint8]
    labels: NDArray[np.int64]

    def __repr__(self) -> str:
        return f"MedMNISTSplit(n={self.labels.size}, positives={int(self.labels.sum())})"


def load_medmnist(path: str | Path, split: str) -> MedMNISTSplit:
    """Read one split of a MedMNIST ``.npz`` file (greyscale or RGB).

    Parameters
    ----------
    path : str or Path
        The file, or ``"sample"`` for :data:`MEDMNIST_SAMPLE_PATH`, ``"retina-sample"``
        for :data:`RETINA_SAMPLE_PATH`.
    split : str
        ``"train"``, ``"val"`` or ``"test"``.

    Returns
    -------
    MedMNISTSplit
        Images and labels.

    Raises
    ------
    DataError
        If the file is missing, lacks the split, or is not uint8 greyscale or RGB.
    """
    file = _SAMPLES.get(str(path), Path(path))
    if not file.is_file():
        raise DataError(f"expected a MedMNIST .npz file, found nothing at {file}", source=str(file))
    with np.load(file) as data:
        keys = (f"{split}_images", f"{split}_labels")
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise DataError(
                f"expected keys {list(keys)} in the MedMNIST file, missing {missing}; "
                f"it has {sorted(data.files)}",
                source=str(file),
            )
        images, labels = data[keys[0]], data[keys[1]]
    colour = images.ndim == 4 and images.shape[3] == 3
    if not (images.ndim == 3 or colour) or images.dtype != np.uint8:
        raise DataError(
            f"expected uint8 images of shape (n, rows, columns) (greyscale) or (n, rows, "
            f"columns, 3) (RGB), got {images.dtype} {images.shape}",
            source=str(file),
        )
    labels = labels.reshape(-1).astype(np.int64)
    if labels.size != images.shape[0]:
        raise DataError(
            f"expected one label per image, got {labels.size} labels for {images.shape[0]} images",
            source=str(file),
        )
    return MedMNISTSplit(images=images, labels=labels)


def make_medmnist_sample(
    source: str | Path, out: str | Path, *, n_train: int = 400, n_test: int = 200
) -> None:
    """Write the bundled sample: a seeded draw of train and test images of ``source``.

    Parameters
    ----------
    source : str or Path
        The full ``pneumoniamnist.npz`` (or ``retinamnist.npz``).
    out : str or Path
        The ``.npz`` to write (compressed).
    n_train, n_test : int, optional
        Images drawn, without replacement, from each split (kept in file order).
    """
    rng = np.random.default_rng(SAMPLE_SEED)
    arrays: dict[str, NDArray[np.generic]] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        full = load_medmnist(source, split)
        keep = np.sort(rng.choice(full.labels.size, size=n, replace=False))
        arrays[f"{split}_images"] = full.images[keep]
        arrays[f"{split}_labels"] = full.labels[keep].astype(np.uint8).reshape(-1, 1)
    np.savez_compressed(out, **arrays)  # type: ignore[arg-type]
