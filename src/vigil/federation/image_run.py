"""Federated training of the imaging CNN on scanner sites, and its signed package(s).

:func:`federate_images` builds one :class:`~vigil.federation.image_task.ImagingSite`
per scanner site and runs the same driver as sepsis
(:func:`~vigil.federation.driver.run_federation` with
:class:`~vigil.federation.image_task.ImagingTask`): same round history, bad-update
screening, dropout, ``min_sites`` and time budget. :func:`export_imaging_run`
writes FedAvg / FedProx as one package and FedBN as one package per site (each
carrying that site's BatchNorm), like the sepsis FedBN packages.

Site calibration: each site's decision threshold is the score-bin edge that
maximizes its own validation accuracy (its :class:`SiteEvaluation` histograms);
the package's ``threshold`` is the site's (FedBN) or the pooled one, and
``site_thresholds`` lists every site's.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from vigil.core.errors import ConfigError
from vigil.core.package import ModelPackage, write_package
from vigil.federation.budget import budgeted
from vigil.federation.driver import FederationResult, Plan, run_federation
from vigil.federation.evaluation import pool_evaluations
from vigil.federation.history import RoundRecord, Status
from vigil.federation.image_task import (
    CNNSpec,
    ImageSet,
    ImagingSite,
    ImagingTask,
    check_imaging_options,
)
from vigil.federation.privacy import DPSettings, manifest_section
from vigil.federation.strategies import Strategy

if TYPE_CHECKING:
    from vigil.dicom_adapter.headers import HeaderRecord

__all__ = [
    "IMAGING_DP_RECIPE",
    "IMAGING_PLAN_KEYS",
    "IMAGING_RECIPE",
    "THRESHOLD_RULE",
    "ImagingRun",
    "ProfileData",
    "SiteArrays",
    "dp_spec",
    "export_imaging_run",
    "federate_images",
    "imaging_plan",
    "imaging_recipe",
    "imaging_summary",
    "public_check_inputs",
    "spec_for",
]

THRESHOLD_RULE = (
    "score-bin edge maximizing the validation accuracy of the site's images (site calibration); "
    "pooled over the sites' histograms for the pooled threshold"
)

MULTICLASS_DECISION = (
    "the arg-max class of the softmax probabilities (no site calibration: no threshold nor "
    "temperature is fitted; the round is kept by pooled validation accuracy)"
)

IMAGING_RECIPE: dict[str, Any] = {"rounds": 20, "local_epochs": 1, "batch_size": 128,
                                   "lr": 1e-3, "weight_decay": 1e-4, "max_shift": 0,
                                   "keep_by": "site"}
"""The imaging training recipe of the measurement and the shipped model (``docs/imaging.md``):
local AdamW settings, rounds, the training augmentation (``max_shift`` pixels) and the
round-keeping rule (:attr:`Plan.keep_by <vigil.federation.driver.Plan>`: the round with
the best validation accuracy after site calibration). Rounds and ``max_shift`` are the
federated arms' choice on training seed 0's validation split (``bench/imaging_federated.py
--choose``: 20 rounds over 10, no augmentation over 2 pixels); the rest is the grid's fixed
setting. Every command that trains images defaults to it (``vigil federate --task imaging``,
``vigil federation run --task imaging``, the retraining job's ``[plan]``, the bench)."""

IMAGING_DP_RECIPE: dict[str, Any] = {**IMAGING_RECIPE, "batch_size": 256, "lr": 3e-3}
"""The recipe a DP-SGD imaging run falls back on (``--dp-epsilon``, a ``[dp]`` section):
batch 256 and learning rate 3e-3 over :data:`IMAGING_RECIPE`'s 20 rounds, chosen at
epsilon 8 per site on training seed 0's validation split (``bench/imaging_dp.py``;
docs/imaging.md, "A DP recipe chosen on validation"), the test split read after the choice.
With the GroupNorm CNN and clipping norm 1."""


IMAGING_PLAN_KEYS = ("rounds", "local_epochs", "batch_size", "lr", "weight_decay", "keep_by")
"""The recipe's :class:`~vigil.federation.driver.Plan` settings (``max_shift`` is not one)."""


def imaging_recipe(private: bool) -> dict[str, Any]:
    """Return :data:`IMAGING_DP_RECIPE` for a DP-SGD run, else :data:`IMAGING_RECIPE`."""
    return IMAGING_DP_RECIPE if private else IMAGING_RECIPE


def imaging_plan(private: bool = False) -> dict[str, Any]:
    """Return the :class:`~vigil.federation.driver.Plan` settings of :func:`imaging_recipe`."""
    recipe = imaging_recipe(private)
    return {k: recipe[k] for k in IMAGING_PLAN_KEYS}


SiteArrays = tuple[str, NDArray[np.float32], NDArray[np.integer]]
"""``(site name, model inputs (n, size, size), labels (n,))``."""

ProfileData = tuple[NDArray[np.float32], Sequence["HeaderRecord"]]
"""``(validation model inputs (n, size, size), training instances' headers)`` of the profile."""


@dataclass(frozen=True, eq=False)
class ImagingRun:
    """A finished imaging federation and what it was made with.

    Attributes
    ----------
    result : FederationResult
    strategy : Strategy
    plan : Plan
    spec : CNNSpec
    data : str
        Name of the data file (for the manifest).
    sites : list of ImagingSite
        Kept so that a FedBN package can carry one site's BatchNorm (empty for a run on
        Flower, whose sites stay at the SuperNodes).
    dp : DPSettings or None
        Every site's DP-SGD budget.
    method : str
        How it ran (the manifest's ``training.method``).
    """

    result: FederationResult
    strategy: Strategy
    plan: Plan
    spec: CNNSpec
    data: str
    sites: list[ImagingSite]
    dp: DPSettings | None = None
    method: str = "federated (in-process simulation)"

    def site_weights(self, name: str | None) -> OrderedDict[str, NDArray[np.float32]]:
        """Return the complete weights a site runs (its BatchNorm under FedBN)."""
        if not self.strategy.keeps_norm_local:
            return OrderedDict(self.result.weights)  # complete: BatchNorm is averaged
        site = next((s for s in self.sites if s.name == name), None)
        if site is None:
            raise ConfigError(f"expected --export-site among {[s.name for s in self.sites]}, "
                              f"got {name!r}", key="export_site")
        return site.local_weights(self.result.weights, self.result.best_round)

    def thresholds(self) -> dict[str, float]:
        """Each site's validation-accuracy threshold (site calibration); none when multi-class."""
        if self.spec.multiclass:
            return {}
        return {e.site: pool_evaluations([e]).threshold for e in self.result.evaluations}


def federate_images(
    train: Sequence[SiteArrays],
    valid: Sequence[SiteArrays],
    *,
    strategy: Strategy,
    plan: Plan,
    spec: CNNSpec | None = None,
    data: str = "",
    threads: int = 1,
    on_round: Callable[[RoundRecord], None] | None = None,
    dp: DPSettings | None = None,
    max_shift: int = 0,
    ledgers: str | Path | None = None,
    run_id: str | None = None,
) -> ImagingRun:
    """Train the imaging CNN across sites in this process.

    Parameters
    ----------
    train, valid : sequence of SiteArrays
        Each site's training and validation model inputs (same site names).
    strategy : Strategy
    plan : Plan
    spec : CNNSpec or None, optional
        Default :func:`spec_for` the training data (channels and classes).
    data : str, optional
    threads : int, optional
        torch threads (1 is bit-reproducible).
    on_round : callable, optional
    dp : DPSettings or None, optional
        DP-SGD at every site (one image is the unit of privacy); needs the GroupNorm CNN,
        which is the default ``spec`` under DP.
    max_shift : int, optional
        Training augmentation: random translations of up to this many pixels
        (:attr:`ImagingSite.max_shift <vigil.federation.image_task.ImagingSite>`).
    ledgers : str or Path or None, optional
        The simulated sites' own privacy budgets and ledgers, ``LEDGERS/NAME``
        (:mod:`vigil.federation.budget`).
    run_id : str or None, optional
        The run's id in the ledgers (default: a fresh random one).

    Returns
    -------
    ImagingRun

    Raises
    ------
    ConfigError
        If the site names of ``train`` and ``valid`` differ, or DP-SGD is asked with FedBN
        or a BatchNorm CNN (:func:`~vigil.federation.image_task.check_imaging_options`).
    """
    import torch

    spec = spec or spec_for(train, norm=dp_spec(dp).norm)
    check_imaging_options(dp=dp, spec=spec, keeps_norm_local=strategy.keeps_norm_local)
    held = {name: (x, y) for name, x, y in valid}
    if sorted(held) != sorted(name for name, _, _ in train):
        raise ConfigError(f"expected the same sites in train and valid, got "
                          f"{sorted(n for n, _, _ in train)} and {sorted(held)}", key="sites")
    sites = [
        ImagingSite(name, ImageSet(np.asarray(x, np.float32), np.asarray(y).astype(np.int8)),
                    ImageSet(np.asarray(held[name][0], np.float32),
                             np.asarray(held[name][1]).astype(np.int8)),
                    spec=spec, keep_bn_local=strategy.keeps_norm_local, dp=dp,
                    max_shift=max_shift)
        for name, x, y in train
    ]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        taking_part = budgeted(sites, ledgers, run=run_id or uuid.uuid4().hex, task="imaging")
        result = run_federation(taking_part, strategy, plan, task=ImagingTask(spec),
                                on_round=on_round)
    finally:
        torch.set_num_threads(previous)
    return ImagingRun(result=result, strategy=strategy, plan=plan, spec=spec, data=data,
                      sites=sorted(sites, key=lambda s: s.name), dp=dp)


def public_check_inputs(spec: CNNSpec) -> NDArray[np.float32]:
    """Model inputs for the ONNX parity check where no site's images are at hand (Flower).

    The coordinator of a Flower run holds no image; the parity check scores the bundled,
    public PneumoniaMNIST sample instead (600 images, train then test,
    :func:`vigil.imaging.training_inputs`), shape (600, size, size).
    """
    from vigil.data.medmnist import load_medmnist
    from vigil.imaging import training_inputs

    images = np.concatenate([load_medmnist("sample", split).images for split in ("train", "test")])
    return training_inputs(images, size=spec.size)


def dp_spec(dp: DPSettings | None) -> CNNSpec:
    """Return the default CNN: GroupNorm under DP-SGD (per-image gradients), BatchNorm otherwise."""
    return CNNSpec(norm="group") if dp is not None else CNNSpec()


def _training(run: ImagingRun) -> dict[str, Any]:
    r = run.result
    evaluations = {e.site: e for e in r.evaluations}
    return {
        "method": run.method,
        "task": "imaging",
        "strategy": {**run.strategy.describe(),
                     "normalization": "GroupNorm (no running statistics), averaged" if
                     run.spec.norm == "group" else "BatchNorm site-local (FedBN)" if
                     run.strategy.keeps_norm_local else "BatchNorm averaged"},
        "rounds": run.plan.rounds,
        "rounds_aggregated": sum(rec.aggregated for rec in r.history.rounds),
        "best_round": r.best_round,
        "best_round_rule": ("validation accuracy with each site at its own best threshold" if
                            run.plan.keep_by == "site" else
                            "pooled validation accuracy at its best threshold"),
        "plan": {k: v for k, v in asdict(run.plan).items() if k != "rule"},
        "update_screening": asdict(run.plan.rule),
        "augmentation": {"random_shift_pixels": run.sites[0].max_shift if run.sites else 0},
        "data": run.data,
        "sites": {name: {"train_images": s.count, "train_positives": s.positives,
                         "valid_images": evaluations[name].n_rows if name in evaluations
                         else None} for name, s in r.statistics.items()},
        "rejections": len(r.history.events(Status.REJECTED)),
        "dropouts": len(r.history.events(Status.DROPPED)),
        "differential_privacy": manifest_section(run.dp, r.privacy,
                                                 unit="one image of a site's training data"),
        "threshold_rule": THRESHOLD_RULE,
    }


def spec_for(train: Sequence[SiteArrays], norm: str = "batch") -> CNNSpec:
    """Return the CNN for the sites' data: input channels from the inputs, classes from the labels.

    Inputs (n, size, size) are greyscale, (n, 3, size, size) colour; labels beyond 0/1
    make a multi-class (softmax) model with ``max label + 1`` classes. ``norm`` is the
    CNN's normalization (``"group"`` under DP-SGD, :func:`dp_spec`).
    """
    x = np.asarray(train[0][1]) if train else np.zeros((0, 28, 28))
    top = max((int(np.max(y)) for _, _, y in train if len(y)), default=1)
    return CNNSpec(size=int(x.shape[-1]), channels=1 if x.ndim == 3 else int(x.shape[1]),
                   classes=max(2, top + 1), norm=norm)


def _card(name: str, version: str, site: str | None, threshold: float,
          training: dict[str, Any], validation: dict[str, Any], architecture: dict[str, Any]
          ) -> str:
    import json

    scope = (f"the BatchNorm statistics and affine parameters of **{site}** (FedBN: one "
             "package per site)" if site else "BatchNorm averaged across the sites")
    group = architecture.get("norm") == "group"
    norm, node = ("GroupNorm", "GroupNorm") if group else ("BatchNorm", "BatchNormalization")
    if group:
        scope = "GroupNorm affine parameters averaged across the sites"
    dp = training.get("differential_privacy")
    privacy = ("- No DP-SGD: BatchNorm mixes the images of a batch (the GroupNorm CNN does "
               "not; `--dp-epsilon`)." if dp is None else
               f"- DP-SGD at every site, target ε = {dp['target_epsilon']:g} per site (one image "
               "is the unit of privacy; (ε, δ) per site above). The site statistics before "
               "round 1 (image counts, pixel sums) and the validation histograms are not "
               "privatized.")
    return f"""# {name} {version}

## Intended use

Research and integration testing of vigil's imaging path: probability that a
28×28 chest X-ray (PneumoniaMNIST-like) shows pneumonia. Not a medical device,
not validated on full-resolution clinical images; a decision *support* signal at
most. Each site must check it on its own images and pick its own threshold.

## Model

SmallCNN (3 × conv3×3-{norm}-ReLU, widths {architecture["widths"]}, max-pool after
the first two, global average pool, linear; {architecture["parameters"]:,} parameters),
federated with {training["strategy"]["name"]}; this package carries {scope}.
Input: the pixel chain's model input (`vigil.imaging.to_model_input`: modality LUT,
VOI window, presentation, resize to {architecture["size"]}×{architecture["size"]},
`(x - 0.5) / 0.5`), exported to ONNX with named {node} nodes.
Shared (non-BatchNorm) tensors: sha256 `{architecture["shared_sha256"][:16]}`.

## Training data

MedMNIST v2 PneumoniaMNIST (Yang et al., Sci Data 10:41, 2023; CC BY 4.0), dealt
to four simulated scanner sites with label skew and acquisition shift, each
site's images written and read back as DICOM.

```json
{json.dumps(training, indent=2, default=str)}
```

## Metrics (validation images)

```json
{json.dumps(validation, indent=2, default=str)}
```

## Threshold

An image is flagged when the probability is at least **{threshold:.4f}**
({THRESHOLD_RULE}).

## Limitations

- 28×28 images: far below clinical resolution; a stand-in for the real task.
- Sites are simulated from one public data set; real scanner shift is larger.
- A hospital that did not train has no BatchNorm statistics of its own under
  FedBN: use the FedAvg package or recompute BatchNorm statistics locally.
{privacy}
"""


def _multiclass_fields(spec: CNNSpec, schema: dict[str, Any]) -> dict[str, Any]:
    """Manifest fields of a colour and/or multi-class model (the binary manifest is unchanged)."""
    out: dict[str, Any] = {
        "output_name": schema.get("output_name", "probability"),
        "preprocessing": {"size": spec.size, "channels": spec.channels, "mean": 0.5, "std": 0.5,
                          "chain": schema["chain"]}}
    if spec.multiclass:
        out |= {"classes": spec.classes, "threshold": 0.5, "site_thresholds": {},
                "decision": MULTICLASS_DECISION}
    return out


def _multiclass_card(card: str) -> str:
    """Adapt the binary model card's wording to a multi-class colour model.

    The card's last line, its privacy limitation (no DP-SGD, or the DP-SGD budget), is kept.
    """
    privacy = card.rstrip("\n").rsplit("\n", 1)[-1]
    return (card.replace("probability that a\n28×28 chest X-ray (PneumoniaMNIST-like) shows "
                         "pneumonia", "softmax probabilities of the five diabetic-retinopathy "
                         "grades\nof a 28×28 colour fundus photograph (RetinaMNIST-like)")
            .replace("MedMNIST v2 PneumoniaMNIST", "MedMNIST v2 RetinaMNIST (DeepDRiD)")
            .replace("scanner sites with label skew", "fundus-camera sites with label skew")
            .split("## Threshold")[0]
            + f"## Decision\n\n{MULTICLASS_DECISION}; `threshold` is not used.\n\n"
            "## Limitations\n\n- 28×28 images: far below clinical resolution.\n"
            "- Sites are simulated from one public data set.\n"
            f"{privacy}\n")


def export_imaging_run(
    run: ImagingRun,
    out: str | Path,
    *,
    name: str,
    version: str,
    check_inputs: NDArray[np.float32],
    private_key_pem: bytes | None = None,
    export_site: str | None = None,
    profile_data: ProfileData | None = None,
) -> list[ModelPackage]:
    """Write the run as signed model package(s), after checking ONNX parity.

    Parameters
    ----------
    run : ImagingRun
    out : str or Path
        FedAvg / FedProx: the package directory; FedBN: ``out/<site>`` per site, or
        ``out`` for ``export_site`` alone.
    name, version : str
    check_inputs : ndarray of float32, shape (n, size, size)
        Model inputs for the parity check (:data:`~vigil.federation.image_export.PARITY_IMAGES`).
    private_key_pem : bytes or None, optional
    export_site : str or None, optional
        FedBN only.
    profile_data : ProfileData or None, optional
        The sites' validation inputs and training headers: each package then carries
        ``image_profile`` (:func:`vigil.imaging.profile.build_image_profile`, its own
        probabilities of the validation inputs); None: no profile. A multi-class model gets
        none (the profile and the monitor are of the binary probability).

    Returns
    -------
    list of ModelPackage

    Raises
    ------
    ConfigError
        For ``export_site`` without FedBN, or FedBN without the sites (a run on Flower).
    ModelArtifactError
        If parity fails (nothing is written).
    """
    from vigil.federation.cnn import SmallCNN
    from vigil.federation.export import OPSET
    from vigil.federation.image_export import (
        IMAGE_INPUT,
        IMAGE_OUTPUT,
        cnn_to_onnx,
        image_parity,
        input_schema,
        onnx_probabilities,
        shared_sha256,
    )
    from vigil.federation.image_task import batchnorm_names
    from vigil.federation.simulation import package_targets

    if run.strategy.keeps_norm_local and not run.sites:
        raise ConfigError("a FedBN package carries one site's own BatchNorm, which stays at "
                          "the site on Flower; use fedavg or fedprox here", key="strategy")
    targets, extra = package_targets(run.strategy, [s.name for s in run.sites], out,
                                     export_site=export_site, history=run.result.history,
                                     private_key_pem=private_key_pem)
    thresholds = run.thresholds()
    training = _training(run)
    validation = {"pooled": run.result.pooled.to_dict(),
                  "sites": {e.site: {"images": e.n_rows, "auroc": e.auroc, "loss": e.loss}
                            for e in run.result.evaluations}}
    packages = []
    for site, path in targets:
        weights = run.site_weights(site)
        onnx_bytes = cnn_to_onnx(weights, run.spec)
        diff = image_parity(weights, onnx_bytes, check_inputs, run.spec)
        architecture = {"type": "SmallCNN", **SmallCNN(run.spec).config(),
                        "shared_sha256": shared_sha256(weights, batchnorm_names(run.spec)),
                        "batchnorm": "site" if site else "averaged"}
        threshold = thresholds.get(site, run.result.pooled.threshold) if site else \
            run.result.pooled.threshold
        full = f"{name}-{site}" if site else name
        schema = input_schema(run.spec)
        manifest = {
            "name": full, "version": version, "task": "imaging",
            "feature_schema": schema, "input_name": IMAGE_INPUT,
            "output_name": IMAGE_OUTPUT, "threshold": float(threshold),
            "site_thresholds": thresholds, "training": {**training, "export_site": site},
            "validation": validation, "reference_profile": {}, "architecture": architecture,
            "preprocessing": {"size": run.spec.size, "channels": 1, "mean": 0.5, "std": 0.5,
                              "chain": "vigil.imaging.to_model_input"},
            "export": {"opset": OPSET, "parity_max_abs_diff": diff,
                       "parity_images": int(len(check_inputs))},
        }
        if run.spec.multiclass or run.spec.channels != 1:
            manifest |= _multiclass_fields(run.spec, schema)
        if profile_data is not None and not run.spec.multiclass:
            # the drift/calibration profile is of the binary probability (docs/imaging.md)
            from vigil.imaging import input_histogram
            from vigil.imaging.profile import build_image_profile

            inputs, headers = profile_data
            manifest["image_profile"] = build_image_profile(
                input_histogram(inputs), headers,
                onnx_probabilities(onnx_bytes, inputs, run.spec))
        card = _card(full, version, site, float(threshold), training, validation, architecture)
        if run.spec.multiclass:
            card = _multiclass_card(card)
        packages.append(write_package(path, onnx_model=onnx_bytes, manifest=manifest,
                                      model_card=card, private_key_pem=private_key_pem,
                                      extra_files=extra))
    return packages


def imaging_summary(run: ImagingRun, packages: Sequence[ModelPackage]) -> dict[str, Any]:
    """Summarize a run for the command line."""
    from vigil.federation.simulation import history_events

    history = run.result.history
    validation = run.result.pooled.to_dict()
    if run.spec.multiclass:  # the pooled utility is the accuracy; AUC: any grade > 0 vs 0
        validation = {"n_rows": validation["n_rows"], "loss": validation["loss"],
                      "accuracy": validation["utility"], "auroc_any_vs_none": validation["auroc"],
                      "decision": "argmax"}
    return {
        "task": "imaging",
        "packages": [str(p.path) for p in packages],
        "signed": all(p.signed for p in packages),
        "best_round": run.result.best_round,
        "validation": validation,
        "site_thresholds": run.thresholds(),
        "sites": {e.site: {"images": e.n_rows, "auroc": e.auroc}
                  for e in run.result.evaluations},
        "privacy": {k: v.to_dict() for k, v in sorted(run.result.privacy.items())},
        **history_events(history),
    }
