"""The imaging task: a site with model inputs of its images, trained as any other site.

An :class:`ImagingSite` answers the same ``statistics`` / ``fit`` / ``evaluate``
calls as the sepsis :class:`~vigil.federation.site.Site`, so
:func:`~vigil.federation.driver.run_federation` (with :class:`ImagingTask`), the
strategies, the bad-update checks and dropout handling run unchanged. Its rows
are model inputs of the pixel chain (:mod:`vigil.imaging`), flattened; the local
loop is the shared :func:`~vigil.federation.training.train_local`.

Validation metrics travel as a :class:`~vigil.federation.messages.SiteEvaluation`
(:func:`image_evaluation`); the CNN's architecture and the option checks are
:mod:`vigil.federation.image_spec`'s (re-exported here). The "utility" of an image
decision is 1 if it is right and 0 if wrong, so the pooled normalized utility at a threshold is
``(correct - n_negative) / n_positive``: it ranks thresholds and rounds exactly as
the pooled accuracy does, and the driver keeps the round with the best pooled
validation accuracy (at its best threshold).

Under FedBN (``keep_bn_local``) a site keeps every BatchNorm tensor
(:data:`vigil.federation.cnn.BN_POLICY`) between rounds and never sends them.

Under DP-SGD (``dp``) a site trains the GroupNorm CNN (``CNNSpec(norm="group")``) with the
sepsis sites' mechanism and accountant (:class:`vigil.federation.privacy.PrivateSite`); one
image is the unit of privacy. :func:`check_imaging_options` refuses DP-SGD with BatchNorm
or FedBN.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import DataError
from vigil.federation.evaluation import SCORE_EDGES, evaluate_scores, score_bins
from vigil.federation.image_spec import (
    TASKS,
    CNNSpec,
    batchnorm_names,
    check_imaging_options,
    check_task,
)
from vigil.federation.messages import FitConfig, SiteEvaluation, SiteStatistics, Update
from vigil.federation.privacy import DPSettings, PrivateSite, SiteAccountant, quiet_hooks
from vigil.federation.site import site_seed
from vigil.federation.strategies import Weights

__all__ = [
    "PREDICT_BATCH",
    "TASKS",
    "CNNSpec",
    "ImageSet",
    "ImagingSite",
    "ImagingTask",
    "batchnorm_names",
    "check_imaging_options",
    "check_task",
    "image_evaluation",
    "predict_images",
]

PREDICT_BATCH = 512
"""Images per forward pass when scoring (bounds the activations' memory)."""
@dataclass(frozen=True, eq=False)
class ImageSet:
    """Model inputs of a set of images and their binary labels.

    Attributes
    ----------
    x : ndarray of float32, shape (n, size, size) or (n, channels, size, size)
        Pixel-chain model inputs.
    y : ndarray of int8, shape (n,)
        Class labels (0/1 for a binary model).
    """

    x: NDArray[np.float32]
    y: NDArray[np.int8]

    def __post_init__(self) -> None:
        if (self.x.ndim not in (3, 4) or self.x.shape[-1] != self.x.shape[-2]
                or self.x.shape[0] != self.y.size):
            raise DataError(
                f"expected model inputs (n, size, size) or (n, channels, size, size) and n "
                f"labels, got {self.x.shape} and {self.y.shape}"
            )

    @property
    def n(self) -> int:
        """Number of images."""
        return int(self.y.size)

    @property
    def rows(self) -> NDArray[np.float32]:
        """The inputs as flat rows (n, size*size), as the training loop takes them."""
        return self.x.reshape(self.n, -1)

    def __repr__(self) -> str:
        return f"ImageSet(n={self.n}, positives={int((self.y > 0).sum())})"


def predict_images(model: object, x: NDArray[np.float32]) -> NDArray[np.float64]:
    """Score model inputs with a torch model, :data:`PREDICT_BATCH` at a time.

    Returns the probability of class 1, shape (n,), for a binary model and the softmax
    probabilities, shape (n, classes), for a multi-class one.
    """
    from vigil.federation.model import predict_proba

    spec = getattr(model, "spec", None)
    if isinstance(spec, CNNSpec) and spec.multiclass:
        from vigil.federation.multiclass import predict_classes

        return predict_classes(model, x, batch_size=PREDICT_BATCH)
    return predict_proba(model, np.asarray(x).reshape(len(x), -1),  # type: ignore[arg-type]
                         batch_size=PREDICT_BATCH)


def image_evaluation(
    site: str, labels: NDArray[np.integer], probability: NDArray[np.floating]
) -> SiteEvaluation:
    """Summarize a site's validation predictions; utility = correct decisions (module docstring).

    Parameters
    ----------
    site : str
    labels : ndarray of shape (n,)
    probability : ndarray of shape (n,), or (n, classes) for a multi-class model
        (then :func:`vigil.federation.multiclass.multiclass_evaluation`).

    Returns
    -------
    SiteEvaluation
        Counts, sums and scalars only.
    """
    if np.ndim(probability) == 2:
        from vigil.federation.multiclass import multiclass_evaluation

        return multiclass_evaluation(site, labels, probability)
    y = np.asarray(labels).astype(np.int8)
    # one "patient" per image; its utility fields are replaced below
    base = evaluate_scores(site, y, probability, np.arange(y.size + 1, dtype=np.int64))
    gain = np.bincount(score_bins(probability), weights=np.where(y > 0, 1.0, -1.0),
                       minlength=SCORE_EDGES.size + 1)
    return SiteEvaluation(
        site=site, n_rows=base.n_rows, n_positive=base.n_positive, loss=base.loss,
        auroc=base.auroc, positive_hist=base.positive_hist, negative_hist=base.negative_hist,
        utility_gain=gain, utility_best=float(y.size), utility_inaction=float((y == 0).sum()),
    )


@dataclass(frozen=True)
class ImagingTask:
    """The imaging CNN (:class:`~vigil.federation.cnn.SmallCNN`) as a federation task.

    Parameters
    ----------
    spec : CNNSpec, optional
    """

    spec: CNNSpec = field(default_factory=CNNSpec)

    def initial_weights(
        self, statistics: Sequence[SiteStatistics], *, seed: int, keep_local: bool
    ) -> OrderedDict[str, NDArray[np.float32]]:
        """Build a seeded CNN's shared entries (:func:`~vigil.federation.cnn.shared_weights`)."""
        import torch

        from vigil.federation.cnn import SmallCNN, shared_weights

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return shared_weights(SmallCNN(self.spec), keep_bn_local=keep_local)

    def is_local(self, name: str) -> bool:
        """Every BatchNorm tensor (FedBN keeps them all at the site)."""
        return name in batchnorm_names(self.spec)

    def is_fixed(self, name: str) -> bool:
        """Nothing: every shared entry is trained (BatchNorm statistics included)."""
        return False


@dataclass(eq=False)
class ImagingSite(PrivateSite):
    """A scanner site of the imaging federation.

    Parameters
    ----------
    name : str
    train, valid : ImageSet
        Model inputs of its training and validation images (never its test images).
    spec : CNNSpec, optional
    keep_bn_local : bool, optional
        FedBN: keep every BatchNorm tensor here (:data:`~vigil.federation.cnn.BN_POLICY`).
    dp : DPSettings or None, optional
        Train with DP-SGD within this budget (the unit of privacy is one image); needs
        ``spec.norm == "group"`` (:func:`check_imaging_options`).
    max_shift : int, optional
        Augmentation: each round, the training images are translated by random offsets of
        up to this many pixels (:func:`~vigil.federation.augment.random_shifts`, drawn
        with the round's site seed); 0 trains on the images as they are.
    """

    name: str
    train: ImageSet
    valid: ImageSet
    spec: CNNSpec = field(default_factory=CNNSpec)
    keep_bn_local: bool = False
    dp: DPSettings | None = None
    max_shift: int = 0
    _local: dict[int, OrderedDict[str, NDArray[np.float32]]] = field(
        default_factory=dict, init=False, repr=False)
    _accountant: SiteAccountant | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        check_imaging_options(dp=self.dp, spec=self.spec, keeps_norm_local=self.keep_bn_local)
        shape = ((self.spec.size, self.spec.size) if self.spec.channels == 1 else
                 (self.spec.channels, self.spec.size, self.spec.size))
        for part in (self.train, self.valid):
            if part.x.shape[1:] != shape:
                raise DataError(f"site {self.name}: expected model inputs of shape {shape}, "
                                f"got {part.x.shape[1:]}")

    def __repr__(self) -> str:
        return f"ImagingSite({self.name!r}, train={self.train!r}, valid={self.valid!r})"

    def statistics(self) -> SiteStatistics:
        """Image and positive counts, and the sum and sum of squares of the model inputs."""
        x = self.train.x.astype(np.float64)
        return SiteStatistics(
            site=self.name, count=self.train.n, positives=int((self.train.y > 0).sum()),
            total=np.array([x.sum()]), total_sq=np.array([np.square(x).sum()]),
            histograms=np.zeros((0, 0), dtype=np.int64), missing=np.zeros(0, dtype=np.int64),
        )

    def _network(self, weights: Weights, round_: int | None = None):  # type: ignore[no-untyped-def]
        from vigil.federation.cnn import SmallCNN
        from vigil.federation.model import set_weights

        net = SmallCNN(self.spec)
        kept = [r for r in self._local if round_ is None or r <= round_]
        if self.keep_bn_local and kept:
            set_weights(net, self._local[max(kept)], strict=False)
        set_weights(net, weights, strict=False)
        return net

    def kept_batchnorm(self) -> dict[int, OrderedDict[str, NDArray[np.float32]]]:
        """FedBN: this site's BatchNorm after each round's training (round → tensors)."""
        return dict(self._local)

    def resume_batchnorm(self, kept: dict[int, OrderedDict[str, NDArray[np.float32]]]) -> None:
        """Go on from the BatchNorm kept after earlier rounds (a site rebuilt per message)."""
        self._local = dict(kept)

    def local_weights(
        self, global_weights: Weights, round_: int | None = None
    ) -> OrderedDict[str, NDArray[np.float32]]:
        """Return the complete model this site runs: the global weights with its BatchNorm.

        Parameters
        ----------
        global_weights : Weights
        round_ : int or None, optional
            FedBN: use the BatchNorm this site had after that round's training (the
            round the driver kept); default the latest.
        """
        from vigil.federation.model import get_weights

        return get_weights(self._network(global_weights, round_))

    def fit(self, global_weights: Weights, config: FitConfig) -> Update:
        """Train the global model on the site's images for ``config.local_epochs``.

        Parameters
        ----------
        global_weights : Weights
            The coordinator's weights (under FedBN without BatchNorm entries).
        config : FitConfig

        Returns
        -------
        Update
            The shared entries (:func:`~vigil.federation.cnn.shared_weights`), the image count
            and the loss.
        """
        from vigil.federation.cnn import bn_entries, shared_weights
        from vigil.federation.model import get_weights
        from vigil.federation.training import train_local

        net = self._network(global_weights)
        seed = site_seed(config.seed, config.round, self.name)
        rows = self.train.rows
        if self.max_shift:
            from vigil.federation.augment import random_shifts

            rng = np.random.default_rng([seed, 1])
            rows = random_shifts(self.train.x, rng, self.max_shift).reshape(self.train.n, -1)
        hook = self.privacy_hook(self.train.n, config)
        if self.spec.multiclass:
            from vigil.federation.multiclass import cross_entropy_hook

            hook = cross_entropy_hook(self.spec.classes, then=hook)
        # FedProx pulls towards the start of the round: the global entries and,
        # under FedBN, the site's own BatchNorm (train_local's default anchor)
        with quiet_hooks():
            result = train_local(
                net, rows, self.train.y.astype(np.float32),
                epochs=config.local_epochs, batch_size=config.batch_size, lr=config.lr,
                seed=seed, weight_decay=config.weight_decay, proximal_mu=config.proximal_mu,
                optimizer_hook=hook,
            )
        if self.keep_bn_local:
            bn = bn_entries(net)
            self._local[config.round] = OrderedDict(
                (k, v) for k, v in get_weights(net).items() if k in bn)
        return Update(site=self.name, weights=shared_weights(net, keep_bn_local=self.keep_bn_local),
                      num_examples=self.train.n, loss=float(result.loss),
                      privacy=self.privacy_spent())

    def evaluate(self, global_weights: Weights) -> SiteEvaluation:
        """Score the site's validation images with the model and summarize them."""
        probability = predict_images(self._network(global_weights), self.valid.x)
        return image_evaluation(self.name, self.valid.y, probability)
