"""The imaging network: a small CNN with BatchNorm, and which of its tensors FedBN keeps local.

:class:`SmallCNN` is research note ``imaging.md`` §1.3's model: three blocks of
conv 3×3 → BatchNorm → ReLU (max-pool after the first two), widths 32/64/128,
global average pooling and one linear logit; about 93k parameters at 28×28.
It takes the pixel chain's model inputs (:func:`vigil.imaging.training_inputs`,
:func:`vigil.imaging.to_model_input`; colour: :func:`vigil.imaging.colour_training_inputs`),
flat ``(n, channels*size*size)`` rows as the shared training loop
(:func:`vigil.federation.training.train_local`) feeds them, or images
``(n, channels, size, size)`` as the runtime does. ``CNNSpec.channels`` (1 or 3)
sets the first convolution's input; ``CNNSpec.classes`` > 2 gives one logit per
class (softmax) instead of the binary model's single logit (sigmoid).

BatchNorm tensors under each strategy (:data:`BN_POLICY`, checked by a test)
------------------------------------------------------------------------------
====================  ===========================  ===========================
tensor                FedAvg, FedProx              FedBN
====================  ===========================  ===========================
weight, bias          averaged (example-weighted)  local, never sent
running_mean, _var    averaged (example-weighted)  local, never sent
num_batches_tracked   local, never sent            local, never sent
====================  ===========================  ===========================

``num_batches_tracked`` only counts steps (it is unused with a fixed
momentum), so it never travels: averaging a step counter means nothing.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from vigil.federation.image_spec import GROUP_NORM_GROUPS, CNNSpec
from vigil.federation.model import get_weights

__all__ = [
    "BN_POLICY",
    "BN_TENSORS",
    "SmallCNN",
    "bn_entries",
    "norm_name",
    "shared_weights",
]

BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
"""The state entries of a BatchNorm layer."""

BN_POLICY: dict[str, dict[str, str]] = {
    "fedavg": {"weight": "averaged", "bias": "averaged", "running_mean": "averaged",
               "running_var": "averaged", "num_batches_tracked": "local"},
    "fedprox": {"weight": "averaged", "bias": "averaged", "running_mean": "averaged",
                "running_var": "averaged", "num_batches_tracked": "local"},
    "fedbn": dict.fromkeys(BN_TENSORS, "local"),
}
"""For each strategy, what happens to each BatchNorm tensor (module docstring table)."""


class SmallCNN(nn.Module):
    """Conv-BN-ReLU ×3 (max-pool after blocks 1 and 2), global average pool, linear logit.

    With ``spec.norm == "group"`` each BatchNorm ``bn{i}`` is a GroupNorm ``gn{i}``
    (:data:`~vigil.federation.image_spec.GROUP_NORM_GROUPS` groups, affine): no running
    statistics, each image normalized on its own, so DP-SGD's per-image gradients are
    defined (:mod:`vigil.federation.privacy`).

    Parameters
    ----------
    spec : CNNSpec, optional
    """

    def __init__(self, spec: CNNSpec | None = None) -> None:
        super().__init__()
        self.spec = spec or CNNSpec()
        channels = (self.spec.channels, *self.spec.widths)
        self.norms = tuple(norm_name(self.spec, i + 1) for i in range(3))
        for i in range(3):
            self.add_module(f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], 3, padding=1))
            self.add_module(self.norms[i], nn.GroupNorm(GROUP_NORM_GROUPS, channels[i + 1])
                            if self.spec.norm == "group" else nn.BatchNorm2d(channels[i + 1]))
        self.fc = nn.Linear(channels[-1], self.spec.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of inputs (N, channels*size*size) or (N, channels, size, size).

        Shape (N,) for a binary model, (N, classes) for a multi-class one.
        """
        side = self.spec.size
        h = x.reshape(x.shape[0], self.spec.channels, side, side)
        for i in range(3):
            conv: nn.Module = getattr(self, f"conv{i + 1}")
            bn: nn.Module = getattr(self, self.norms[i])
            h = torch.relu(bn(conv(h)))
            if i < 2:
                h = torch.nn.functional.max_pool2d(h, 2)
        logits = self.fc(h.mean(dim=(2, 3)))
        return logits.squeeze(-1) if self.spec.outputs == 1 else logits

    def config(self) -> dict[str, object]:
        """Architecture for a manifest.

        ``norm``, ``channels`` and ``classes`` appear only when not ``"batch"``, 1 and 2:
        binary grayscale BatchNorm packages keep their manifest as it was.
        """
        out: dict[str, object] = {"size": self.spec.size, "widths": list(self.spec.widths),
                                  "parameters": sum(p.numel() for p in self.parameters())}
        if self.spec.norm != "batch":
            out["norm"] = self.spec.norm
        if self.spec.channels != 1:
            out["channels"] = self.spec.channels
        if self.spec.multiclass:
            out["classes"] = self.spec.classes
        return out


def norm_name(spec: CNNSpec, block: int) -> str:
    """Name of block ``block``'s (1-based) normalization layer: ``bn{block}`` or ``gn{block}``."""
    return f"{'gn' if spec.norm == 'group' else 'bn'}{block}"


def bn_entries(model: nn.Module) -> dict[str, str]:
    """Map every BatchNorm state entry of ``model`` to its tensor kind (:data:`BN_TENSORS`).

    Found from the modules, not from names: ``{"bn1.running_mean": "running_mean", ...}``.
    """
    out: dict[str, str] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for kind in module.state_dict():
                out[f"{prefix}.{kind}"] = kind
    return out


def shared_weights(
    model: nn.Module, *, keep_bn_local: bool
) -> OrderedDict[str, NDArray[np.float32]]:
    """Return the entries a site sends: all but the local BatchNorm tensors of :data:`BN_POLICY`.

    Parameters
    ----------
    model : nn.Module
    keep_bn_local : bool
        FedBN: no BatchNorm tensor is sent.

    Returns
    -------
    OrderedDict of str to ndarray (float32)
    """
    policy = BN_POLICY["fedbn" if keep_bn_local else "fedavg"]
    bn = bn_entries(model)
    return OrderedDict((k, v) for k, v in get_weights(model).items()
                       if k not in bn or policy[bn[k]] == "averaged")
