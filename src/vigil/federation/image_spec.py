"""What the imaging federation trains: the CNN's architecture and the options it refuses.

:class:`CNNSpec` describes :class:`~vigil.federation.cnn.SmallCNN` (input side and
channels, widths, BatchNorm or GroupNorm, classes); :func:`check_task` and
:func:`check_imaging_options` refuse the combinations a federation cannot honour
(DP-SGD needs per-image gradients, so GroupNorm and no FedBN; no boosted trees on
images). Kept apart from the sites (:mod:`vigil.federation.image_task`, which
re-exports these names) so that settings can be checked without building one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from vigil.core.errors import ConfigError

__all__ = [
    "GROUP_NORM_GROUPS",
    "NORMS",
    "TASKS",
    "CNNSpec",
    "batchnorm_names",
    "check_imaging_options",
    "check_task",
]

NORMS = ("batch", "group")
"""The CNN's normalization layers (:class:`CNNSpec`)."""
GROUP_NORM_GROUPS = 8
"""Groups of each GroupNorm layer (Wu & He 2018 use 32 at ImageNet widths; 8 keeps 4 to 16
channels per group at widths 32/64/128)."""


@dataclass(frozen=True)
class CNNSpec:
    """Architecture of :class:`~vigil.federation.cnn.SmallCNN`.

    Parameters
    ----------
    size : int, optional
        Side of the square input.
    widths : tuple of int, optional
        Channels of the three conv blocks.
    norm : str, optional
        ``"batch"`` (BatchNorm, the default) or ``"group"`` (GroupNorm of
        :data:`GROUP_NORM_GROUPS` groups, Wu & He, ECCV 2018): normalizes each image on
        its own, so per-image gradients, and hence DP-SGD, are well-defined.
    channels : int, optional
        Input channels: 1 (greyscale) or 3 (RGB).
    classes : int, optional
        2: one logit, sigmoid (the binary model, unchanged); more: one logit per class, softmax.

    Every combination works: the norm acts on the conv blocks' outputs, the channels on
    the first convolution's input and the classes on the last linear layer.
    """

    size: int = 28
    widths: tuple[int, int, int] = (32, 64, 128)
    norm: str = "batch"
    channels: int = 1
    classes: int = 2

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"expected the CNN's norm to be one of {NORMS}, got {self.norm!r}",
                              key="norm")
        if self.norm == "group" and any(w % GROUP_NORM_GROUPS for w in self.widths):
            raise ConfigError(f"expected widths divisible by {GROUP_NORM_GROUPS} for GroupNorm, "
                              f"got {self.widths}", key="widths")
        if self.channels not in (1, 3) or self.classes < 2:
            raise ConfigError(f"expected 1 or 3 input channels and at least 2 classes, got "
                              f"{self.channels} and {self.classes}", key="spec")

    @property
    def outputs(self) -> int:
        """Logits of the network: 1 for a binary model, else one per class."""
        return 1 if self.classes == 2 else self.classes

    @property
    def multiclass(self) -> bool:
        """Whether the model is a softmax over more than two classes."""
        return self.classes > 2


@lru_cache(maxsize=8)
def batchnorm_names(spec: CNNSpec) -> frozenset[str]:
    """Names of every BatchNorm state entry of the CNN of ``spec``."""
    from vigil.federation.cnn import SmallCNN, bn_entries

    return frozenset(bn_entries(SmallCNN(spec)))


def check_imaging_options(
    *, dp: object | None, spec: CNNSpec | None = None, keeps_norm_local: bool = False
) -> None:
    """Refuse the imaging options that do not go together.

    DP-SGD needs per-image gradients: BatchNorm mixes the images of a batch, GroupNorm
    does not. FedBN is refused under DP-SGD: it keeps BatchNorm at the sites, and the
    GroupNorm CNN has no BatchNorm (its affine parameters are averaged as any weight).

    Parameters
    ----------
    dp : DPSettings or None
    spec : CNNSpec or None, optional
        The CNN; None checks only what does not depend on it.
    keeps_norm_local : bool, optional
        FedBN.

    Raises
    ------
    ConfigError
        For DP-SGD with FedBN or with a BatchNorm CNN.
    """
    if dp is None:
        return
    if keeps_norm_local:
        raise ConfigError(
            "expected --strategy fedavg or fedprox with --dp-epsilon for --task imaging: the "
            "DP-SGD CNN uses GroupNorm, which has no BatchNorm for FedBN to keep; got fedbn",
            key="strategy",
        )
    if spec is not None and spec.norm != "group":
        raise ConfigError(
            "expected the GroupNorm CNN with --dp-epsilon for --task imaging: DP-SGD needs "
            f"per-image gradients and BatchNorm mixes the images of a batch; got norm "
            f"{spec.norm!r}", key="dp_epsilon",
        )


TASKS = ("sepsis", "imaging")
"""What a federation trains: the sepsis network on feature rows, or the imaging CNN on images."""


def check_task(task: str, *, dp: object | None, spec: CNNSpec, keeps_norm_local: bool,
               trees: bool) -> None:
    """Refuse an unknown task, and for imaging the options it cannot honour.

    Raises
    ------
    ConfigError
        For a task not in :data:`TASKS`; for imaging, boosted trees (they are for feature
        rows) and what :func:`check_imaging_options` refuses.
    """
    if task not in TASKS:
        raise ConfigError(f"expected task {' or '.join(TASKS)}, got {task!r}", key="task")
    if task == "imaging":
        if trees:
            raise ConfigError("expected no boosted trees with the imaging task (trees are for "
                              "feature rows)", key="trees")
        check_imaging_options(dp=dp, spec=spec, keeps_norm_local=keeps_norm_local)
