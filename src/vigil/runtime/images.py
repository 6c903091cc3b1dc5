"""Scoring images with an imaging model package: onnxruntime and the pixel chain, never torch.

This is the code the runtime runs on images, and what ``vigil evaluate --images``
runs: DICOM files are read by :mod:`vigil.dicom_adapter` (an instance the chain
cannot handle is quarantined with its reason, counted, and never scored), turned
into model inputs by :func:`vigil.imaging.to_model_input`, and scored by the
package's ONNX model. A MedMNIST ``.npz`` is scored on its test split, its 8-bit
images going through :func:`vigil.imaging.training_inputs` (the same chain).

Labels: a folder's ``labels.csv`` files (``sop_instance_uid,label``, as
``vigil imaging write-sites`` writes them); an ``.npz`` carries its own.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.core.errors import DataError, DICOMError, ModelArtifactError, ScoringError
from vigil.core.package import ModelPackage
from vigil.runtime.scoring import Scorer

__all__ = ["ImageBatch", "ImageScorer", "evaluate_images", "load_images"]


class ImageScorer(Scorer):
    """Scores pixel-chain model inputs with an imaging package (manifest task ``imaging``).

    Parameters
    ----------
    package : ModelPackage
    threads : int, optional
    """

    def __init__(self, package: ModelPackage, *, threads: int = 1) -> None:
        task = package.manifest.task
        if task != "imaging":
            raise ModelArtifactError(f"expected an imaging model package (task 'imaging'), "
                                     f"got task {task!r}", path=str(package.path))
        super().__init__(package, threads=threads)
        self.size = int(package.manifest.feature_schema.get("size", 0))

    def predict_images(self, inputs: NDArray[np.float32], *, batch_size: int = 512
                       ) -> NDArray[np.float64]:
        """Probability of class 1 for each model input of shape (n, size, size).

        Raises
        ------
        ScoringError
            If the inputs are not (n, size, size) or the model returns non-probabilities.
        """
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        if x.ndim != 3 or x.shape[1:] != (self.size, self.size):
            raise ScoringError(f"expected model inputs of shape (n, {self.size}, {self.size}), "
                               f"got {x.shape}")
        m = self.package.manifest
        out = np.empty(x.shape[0], dtype=np.float64)
        for lo in range(0, x.shape[0], batch_size):
            (res,) = self._session.run([m.output_name], {m.input_name: x[lo:lo + batch_size, None]})
            out[lo:lo + batch_size] = np.asarray(res, dtype=np.float64).reshape(-1)
        if x.shape[0] and not (np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1):
            raise ScoringError("the model returned values outside [0, 1] or not finite")
        return out


@dataclass(frozen=True, eq=False)
class ImageBatch:
    """Model inputs of the images to score, and what was refused.

    Attributes
    ----------
    inputs : ndarray of float32, shape (n, size, size)
    keys : list of str
        ``sop_instance_uid`` of each DICOM image, or the image index in an ``.npz``.
    labels : ndarray of float64, shape (n,)
        0/1, NaN where unknown.
    key_name : str
        ``"sop_instance_uid"`` or ``"image_index"``.
    quarantined : dict of str to int
        Reason → number of files refused (never scored).
    study_uids, study_times : list of str
        Per image (DICOM only; empty for an ``.npz``): its StudyInstanceUID and
        StudyDate + StudyTime (``""`` when absent), to group images into studies.
    """

    inputs: NDArray[np.float32]
    keys: list[str]
    labels: NDArray[np.float64]
    key_name: str
    quarantined: dict[str, int]
    study_uids: list[str] = field(default_factory=list)
    study_times: list[str] = field(default_factory=list)


def _labels(folder: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for file in sorted(folder.rglob("labels.csv")):
        with file.open(newline="") as handle:
            for row in csv.DictReader(handle):
                try:
                    out[row["sop_instance_uid"]] = int(row["label"])
                except (KeyError, ValueError):
                    raise DataError(f"expected labels.csv columns sop_instance_uid,label with 0/1 "
                                    f"labels; got a row with {sorted(row)}",
                                    source=str(file)) from None
    return out


def load_images(source: str | Path, *, size: int) -> ImageBatch:
    """Read the images of a DICOM folder (every ``*.dcm`` below, sorted) or a MedMNIST ``.npz``.

    Parameters
    ----------
    source : str or Path
    size : int
        Side of the model input (the package's).

    Returns
    -------
    ImageBatch

    Raises
    ------
    DataError
        If ``source`` is neither a folder nor an ``.npz`` file, or holds no image.
    """
    from vigil.dicom_adapter.reading import prepare_batch, read_file
    from vigil.imaging import training_inputs

    path = Path(source)
    if path.is_file() and path.suffix == ".npz":
        from vigil.data.medmnist import load_medmnist

        test = load_medmnist(path, "test")
        return ImageBatch(training_inputs(test.images, size=size),
                          [str(i) for i in range(test.labels.size)],
                          test.labels.astype(np.float64), "image_index", {})
    if not path.is_dir():
        raise DataError(f"expected --images a folder of DICOM files or a MedMNIST .npz, "
                        f"found {'a file' if path.exists() else 'nothing'} at {path}",
                        source=str(path))
    files = sorted(path.rglob("*.dcm"))
    if not files:
        raise DataError(f"expected *.dcm files below {path}, found none", source=str(path))
    reasons: Counter[str] = Counter()
    datasets, keys = [], []
    for file in files:
        try:
            ds = read_file(file)
        except DICOMError as exc:
            reasons[str(exc)] += 1
            continue
        datasets.append(ds)
        keys.append(str(getattr(ds, "SOPInstanceUID", "")))
    batch = prepare_batch(datasets, size=size)
    reasons.update(reason for _, reason in batch.quarantined)
    known = _labels(path)
    kept = [keys[i] for i in batch.accepted]
    labels = np.array([known.get(k, np.nan) for k in kept], dtype=np.float64)
    studies = [datasets[i] for i in batch.accepted]
    return ImageBatch(batch.inputs, kept, labels, "sop_instance_uid", dict(reasons),
                      [str(ds.get("StudyInstanceUID", "")) for ds in studies],
                      [f"{ds.get('StudyDate', '')}{ds.get('StudyTime', '')}" for ds in studies])


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def evaluate_images(
    package: ModelPackage, source: str | Path, *, threshold: float | None = None,
    threads: int = 1,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score every image of ``source`` and compute the metrics of the labelled ones.

    Parameters
    ----------
    package : ModelPackage
        A verified imaging package.
    source : str or Path
        A DICOM folder or a MedMNIST ``.npz`` (its test split).
    threshold : float or None, optional
        Default the package's.
    threads : int, optional

    Returns
    -------
    summary : dict
        ``auroc``, ``accuracy``, ``sensitivity``, ``specificity``, ``threshold``,
        ``n_images`` (scored), ``n_labelled``, ``quarantined`` (count) and
        ``quarantine_reasons`` (reason → count).
    predictions : DataFrame
        One row per scored image: the key column, ``probability``, ``prediction``.
    """
    from vigil.features.metrics import auroc

    scorer = ImageScorer(package, threads=threads)
    batch = load_images(source, size=scorer.size)
    cut = package.manifest.threshold if threshold is None else float(threshold)
    probability = scorer.predict_images(batch.inputs)
    prediction = (probability >= cut).astype(np.int8)
    known = ~np.isnan(batch.labels)
    y, p = batch.labels[known] > 0, prediction[known] > 0
    tp, tn = int((y & p).sum()), int((~y & ~p).sum())
    both = 0 < int(y.sum()) < int(y.size)
    summary = {
        "model": f"{package.manifest.name} {package.manifest.version}",
        "auroc": auroc(y, probability[known]) if both else float("nan"),
        "accuracy": _ratio(tp + tn, int(y.size)),
        "sensitivity": _ratio(tp, int(y.sum())),
        "specificity": _ratio(tn, int((~y).sum())),
        "threshold": cut,
        "n_images": int(probability.size),
        "n_labelled": int(known.sum()),
        "quarantined": int(sum(batch.quarantined.values())),
        "quarantine_reasons": batch.quarantined,
    }
    frame = pd.DataFrame({batch.key_name: batch.keys, "probability": probability,
                          "prediction": prediction})
    if batch.key_name == "image_index":
        frame[batch.key_name] = frame[batch.key_name].astype(np.int64)
    return summary, frame
