"""Scoring images with an imaging model package: onnxruntime and the pixel chain, never torch.

This is the code the runtime runs on images, and what ``vigil evaluate --images``
runs: :func:`read_instances` (the imaging cycle's and ``load_images``' one reader) reads
DICOM files or Part 10 bytes by :mod:`vigil.dicom_adapter` (an instance the chain
cannot handle is quarantined with its reason, counted, and never scored), turned
into model inputs by :func:`vigil.imaging.to_model_input`, and scored by the
package's ONNX model. A MedMNIST ``.npz`` is scored on its test split, its 8-bit
images going through :func:`vigil.imaging.training_inputs` (the same chain).

Labels: a folder's ``labels.csv`` files (``sop_instance_uid,label``, as
``vigil imaging write-sites`` writes them); an ``.npz`` carries its own.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from vigil.core.errors import ConfigError, DataError, DICOMError, ModelArtifactError, ScoringError
from vigil.core.package import ModelPackage
from vigil.dicom_adapter.headers import HeaderRecord
from vigil.runtime.scoring import Scorer

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from vigil.dicom_adapter.light_dataset import HeaderView

__all__ = [
    "UNREAD_HEADERS", "ImageBatch", "ImageScorer", "InstanceBatch", "evaluate_images",
    "load_images", "read_instances"]

UNREAD_HEADERS = HeaderRecord("", "", "", 0, "", float("nan"), "")
"""The headers recorded for an instance that could not be read as DICOM."""


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
        schema = package.manifest.feature_schema
        self.size = int(schema.get("size", 0))
        self.channels = int(schema.get("channels", 1))
        self.classes = int(schema.get("classes", 2))

    @property
    def multiclass(self) -> bool:
        """Whether the package is a softmax over more than two classes."""
        return self.classes > 2

    def predict_images(self, inputs: NDArray[np.float32], *, batch_size: int = 512
                       ) -> NDArray[np.float64]:
        """Score model inputs: (n, size, size) for 1 channel, (n, channels, size, size) else.

        Returns
        -------
        ndarray of float64
            Probability of class 1, shape (n,), for a binary package; the class
            probabilities, shape (n, classes), for a multi-class one.

        Raises
        ------
        ScoringError
            If the inputs do not have the package's shape or the model returns
            non-probabilities.
        """
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        side = (self.size, self.size)
        shape = side if self.channels == 1 else (self.channels, *side)
        if x.ndim != len(shape) + 1 or x.shape[1:] != shape:
            raise ScoringError(f"expected model inputs of shape (n, {', '.join(map(str, shape))})"
                               f", got {x.shape}")
        m = self.package.manifest
        width = self.classes if self.multiclass else 1
        out = np.empty((x.shape[0], width), dtype=np.float64)
        feed = x.reshape(x.shape[0], self.channels, *side)
        for lo in range(0, x.shape[0], batch_size):
            (res,) = self._session.run([m.output_name], {m.input_name: feed[lo:lo + batch_size]})
            out[lo:lo + batch_size] = np.asarray(res, dtype=np.float64).reshape(-1, width)
        if x.shape[0] and not (np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1):
            raise ScoringError("the model returned values outside [0, 1] or not finite")
        return out if self.multiclass else out[:, 0]


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


@dataclass(frozen=True, eq=False)
class InstanceBatch:
    """What :func:`read_instances` made of a set of instances.

    Attributes
    ----------
    inputs : ndarray of float32, shape (n_accepted, size, size) or (n_accepted, 3, size, size)
        Model inputs of the accepted instances, in order (colour: ``channels=3``).
    keys : list of str
        Key (SOPInstanceUID) of each accepted instance.
    datasets : list of pydicom.Dataset or HeaderView
        The accepted instances (the sinks reference them): a light-read instance's
        :class:`~vigil.dicom_adapter.light_dataset.HeaderView`, else pydicom's dataset.
    quarantined : list of (str, str)
        ``(key, reason)`` of each instance refused (unreadable, or by the pixel chain).
    headers : dict of str to HeaderRecord
        Watched headers of every instance read (accepted and quarantined).
    skipped : int
        Instances left out by ``skip`` (not images: the runtime's own outputs).
    """

    inputs: NDArray[np.float32]
    keys: list[str]
    datasets: list[Dataset | HeaderView]
    quarantined: list[tuple[str, str]]
    headers: dict[str, HeaderRecord]
    skipped: int = 0


def _dataset(item: bytes | Path) -> Dataset | HeaderView:
    """Read an instance: by the light reader when it is of the common case, else pydicom.

    Returns a :class:`~vigil.dicom_adapter.light_dataset.HeaderView` of the light parse
    (its pydicom dataset built only if something asks what the light header lacks), or
    pydicom's dataset.
    """
    from vigil.dicom_adapter.light import parse_light
    from vigil.dicom_adapter.light_dataset import HeaderView
    from vigil.dicom_adapter.reading import read_file

    light = parse_light(item) if isinstance(item, bytes) else None
    if light is not None:
        return HeaderView(light)
    return read_file(io.BytesIO(item) if isinstance(item, bytes) else item)  # type: ignore[arg-type]


def read_instances(
    items: Iterable[tuple[str, bytes | Path]], *, size: int, channels: int = 1,
    skip: Callable[[Dataset | HeaderView], bool] | None = None,
) -> InstanceBatch:
    """Read instances and turn the acceptable ones into model inputs (the runtime's reader).

    Parameters
    ----------
    items : iterable of (str, bytes or Path)
        A key for each instance (its SOPInstanceUID, or a file's position when
        unknown) and its DICOM Part 10 bytes or file.
    size : int
        Side of the model input (the package's).
    channels : int, optional
        The package's input channels (1 grayscale, 3 colour): an instance of the other
        kind is quarantined with its reason.
    skip : callable or None, optional
        Instances for which it returns True are neither scored nor quarantined (it is
        given the instance's header: a pydicom dataset or a ``HeaderView``, read by ``get``).

    Returns
    -------
    InstanceBatch
        An unreadable instance is quarantined under its given key; a readable one is
        keyed by its SOPInstanceUID when it has one.
    """
    from vigil.dicom_adapter.batches import prepare_batch
    from vigil.dicom_adapter.headers import header_record
    from vigil.dicom_adapter.reading import unreadable_element

    quarantined: list[tuple[str, str]] = []
    datasets, keys = [], []
    headers: dict[str, HeaderRecord] = {}
    skipped = 0
    for key, item in items:
        try:
            ds = _dataset(item)
            if skip is not None and skip(ds):
                skipped += 1
                continue
            uid = str(ds.get("SOPInstanceUID", "") or key)
            header = header_record(ds)
        except DICOMError as exc:
            quarantined.append((key, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - a damaged element pydicom cannot convert
            quarantined.append((key, unreadable_element(exc)))
            continue
        datasets.append(ds)
        keys.append(uid)
        headers[uid] = header
    batch = prepare_batch(datasets, size=size, channels=channels)
    quarantined.extend((keys[i], reason) for i, reason in batch.quarantined)
    return InstanceBatch(
        inputs=batch.inputs, keys=[keys[i] for i in batch.accepted],
        datasets=[datasets[i] for i in batch.accepted], quarantined=quarantined,
        headers=headers, skipped=skipped)


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


def load_images(source: str | Path, *, size: int, channels: int = 1) -> ImageBatch:
    """Read the images of a DICOM folder (every ``*.dcm`` below, sorted) or a MedMNIST ``.npz``.

    Parameters
    ----------
    source : str or Path
    size : int
        Side of the model input (the package's).
    channels : int, optional
        The package's input channels: an image of the other kind is quarantined
        (DICOM) or refused (an ``.npz`` of the other kind: ``DataError``).

    Returns
    -------
    ImageBatch

    Raises
    ------
    DataError
        If ``source`` is neither a folder nor an ``.npz`` file, or holds no image.
    """
    from vigil.imaging import colour_training_inputs, training_inputs

    path = Path(source)
    if path.is_file() and path.suffix == ".npz":
        from vigil.data.medmnist import load_medmnist

        test = load_medmnist(path, "test")
        if test.channels != channels:
            raise DataError(f"expected images of {channels} channel(s) for this model, got a "
                            f"MedMNIST file of {test.channels}", source=str(path))
        chain = colour_training_inputs if channels == 3 else training_inputs
        return ImageBatch(chain(test.images, size=size),
                          [str(i) for i in range(test.labels.size)],
                          test.labels.astype(np.float64), "image_index", {})
    if not path.is_dir():
        raise DataError(f"expected --images a folder of DICOM files or a MedMNIST .npz, "
                        f"found {'a file' if path.exists() else 'nothing'} at {path}",
                        source=str(path))
    files = sorted(path.rglob("*.dcm"))
    if not files:
        raise DataError(f"expected *.dcm files below {path}, found none", source=str(path))
    batch = read_instances(((str(i), f) for i, f in enumerate(files)), size=size,
                           channels=channels)
    reasons = Counter(reason for _, reason in batch.quarantined)
    known = _labels(path)
    labels = np.array([known.get(k, np.nan) for k in batch.keys], dtype=np.float64)
    return ImageBatch(batch.inputs, batch.keys, labels, "sop_instance_uid", dict(reasons),
                      [str(ds.get("StudyInstanceUID", "")) for ds in batch.datasets],
                      [f"{ds.get('StudyDate', '')}{ds.get('StudyTime', '')}"
                       for ds in batch.datasets])


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def evaluate_images(
    package: ModelPackage, source: str | Path, *, threshold: float | None = None,
    threads: int = 1, site_id: str | None = None, calibration: Any = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score every image of ``source`` and compute the metrics of the labelled ones.

    A DICOM folder goes through the runtime's imaging cycle
    (:func:`vigil.runtime.image_replay.replay_folder`: the same reader, chain, scorer,
    calibration and threshold as ``vigil serve``); a MedMNIST ``.npz`` through
    :func:`vigil.imaging.training_inputs` and the same scorer.

    Parameters
    ----------
    package : ModelPackage
        A verified imaging package.
    source : str or Path
        A DICOM folder or a MedMNIST ``.npz`` (its test split).
    threshold : float or None, optional
        Overrides the threshold the runtime would apply (binary packages only, as are
        ``site_id`` and ``calibration``: a multi-class package raises ``ConfigError``).
    threads : int, optional
    site_id : str or None, optional
        The site whose threshold of a federated package applies (DICOM folders).
    calibration : Calibration or None, optional
        A site calibration record to apply (DICOM folders).

    Returns
    -------
    summary : dict
        ``auroc``, ``accuracy``, ``sensitivity``, ``specificity``, ``threshold``,
        ``n_images`` (scored), ``n_labelled``, ``quarantined`` (count),
        ``quarantine_reasons`` (reason → count) and ``skipped`` (not images). A
        multi-class package gives ``auroc`` (macro one-vs-rest), ``accuracy`` (arg-max),
        ``classes``, ``label_counts`` and ``prediction_counts`` (per class) instead of
        the threshold metrics; its DICOM folder is read by :func:`load_images` (the same
        reader and chain), not through the imaging cycle, which scores binary packages
        only (:func:`vigil.runtime.imaging_cycle.binary_only`).
    predictions : DataFrame
        One row per scored image: the key column, ``probability``, ``prediction``;
        multi-class: ``probability`` of the predicted class, ``prediction`` the class
        index, and ``p_0`` ... ``p_{K-1}``.
    """
    from vigil.features.metrics import auroc

    path = Path(source)
    skipped = 0
    scorer = ImageScorer(package, threads=threads)
    if scorer.multiclass:
        given = [k for k, v in (("--threshold", threshold), ("--calibration", calibration),
                                ("--site-id", site_id)) if v is not None]
        if given:
            raise ConfigError(f"expected no {', '.join(given)} with a multi-class package "
                              f"(its decision is the arg-max class), got {', '.join(given)}",
                              key="threshold")
        return _evaluate_classes(package, scorer,
                                 load_images(source, size=scorer.size, channels=scorer.channels))
    if path.is_dir():
        from vigil.runtime.image_replay import replay_folder

        run = replay_folder(package, path, calibration=calibration, site_id=site_id,
                            threads=threads)
        known = _labels(path)
        batch = ImageBatch(np.zeros((0, 0, 0), dtype=np.float32), run.keys,
                           np.array([known.get(k, np.nan) for k in run.keys], dtype=np.float64),
                           "sop_instance_uid", run.quarantined)
        probability, skipped = run.probability, run.skipped
        cut = run.threshold if threshold is None else float(threshold)
    else:
        batch = load_images(source, size=scorer.size, channels=scorer.channels)
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
        "skipped": skipped,
    }
    frame = pd.DataFrame({batch.key_name: batch.keys, "probability": probability,
                          "prediction": prediction})
    if batch.key_name == "image_index":
        frame[batch.key_name] = frame[batch.key_name].astype(np.int64)
    return summary, frame


def _evaluate_classes(package: ModelPackage, scorer: ImageScorer, batch: ImageBatch
                      ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Return the multi-class summary and predictions (arg-max decision, no threshold)."""
    from vigil.features.multiclass import accuracy, class_counts, macro_ovr_auroc

    probabilities = scorer.predict_images(batch.inputs)
    prediction = np.argmax(probabilities, axis=1).astype(np.int64)
    known = ~np.isnan(batch.labels)
    y = batch.labels[known].astype(np.int64)
    p = probabilities[known]
    summary = {
        "model": f"{package.manifest.name} {package.manifest.version}",
        "auroc": macro_ovr_auroc(y, p) if y.size else float("nan"),
        "accuracy": accuracy(y, p) if y.size else float("nan"),
        "classes": scorer.classes,
        "decision": "argmax",
        "label_counts": class_counts(y, scorer.classes),
        "prediction_counts": class_counts(prediction, scorer.classes),
        "n_images": int(prediction.size),
        "n_labelled": int(known.sum()),
        "quarantined": int(sum(batch.quarantined.values())),
        "quarantine_reasons": batch.quarantined,
    }
    frame = pd.DataFrame({batch.key_name: batch.keys,
                          "probability": probabilities.max(axis=1) if prediction.size else
                          np.zeros(0), "prediction": prediction})
    for k in range(scorer.classes):
        frame[f"p_{k}"] = probabilities[:, k]
    if batch.key_name == "image_index":
        frame[batch.key_name] = frame[batch.key_name].astype(np.int64)
    return summary, frame
