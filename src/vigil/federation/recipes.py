"""The sepsis recipes a run falls back on: the shipped one, and the one chosen for DP.

``vigil federate`` and ``vigil federation run`` take every training setting as
an option; an option left unset takes its value from the recipe of the run,
:data:`NON_PRIVATE` without ``--dp-epsilon`` and :data:`PRIVATE` with it. Both
were chosen on the sites' **validation** patients of the full PhysioNet 2019
data, never on test patients:

- :data:`NON_PRIVATE` is the shipped model's (``models/sepsis-federated``:
  FedProx network, then 100 trees of depth 6 from 64 quantile bins; README).
- :data:`PRIVATE` is the grid of ``bench/dp_tree_grid.py`` at epsilon 8 per
  site (docs/federation.md, "The full-data grid"): the DP network with batch
  4096, learning rate 1e-3, no dropout and clipping norm 10, then trees of
  depth 4 from 32 public bins at learning rate 0.2, the trees taking 0.3 of
  epsilon. The share 0.3 was also the choice at epsilon 1.

The number of trees is never defaulted (``--boost-trees``, 0: none); the
chosen plans grew 100 (shipped) and 50 (epsilon 8) trees.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DP_CLIP", "DP_TREE_SHARE", "NON_PRIVATE", "PRIVATE", "SEPSIS_ROUNDS", "SepsisRecipe",
           "sepsis_recipe"]


@dataclass(frozen=True)
class SepsisRecipe:
    """Defaults of a sepsis run, for the settings its command leaves unset.

    Parameters
    ----------
    batch_size : int
        Local batch size of the network.
    lr : float
        Local AdamW learning rate of the network.
    dropout : float
        Dropout after each hidden layer.
    tree_depth : int
        Depth of each boosted tree.
    tree_lr : float
        Learning rate (shrinkage) of the boosted trees.
    tree_bins : int
        Histogram bins per feature.
    """

    batch_size: int
    lr: float
    dropout: float
    tree_depth: int
    tree_lr: float
    tree_bins: int


NON_PRIVATE = SepsisRecipe(batch_size=2048, lr=3e-4, dropout=0.5, tree_depth=6, tree_lr=0.1,
                           tree_bins=64)
"""The shipped model's recipe."""

PRIVATE = SepsisRecipe(batch_size=4096, lr=1e-3, dropout=0.0, tree_depth=4, tree_lr=0.2,
                       tree_bins=32)
"""The recipe chosen on validation patients at epsilon 8 per site."""

SEPSIS_ROUNDS = 10
"""Federated rounds of a sepsis run that names none (the shipped model's; the imaging
task's are :data:`vigil.federation.image_run.IMAGING_RECIPE`'s)."""

DP_CLIP = 10.0
"""DP-SGD per-row clipping norm of :data:`PRIVATE`."""

DP_TREE_SHARE = 0.3
"""Share of epsilon the network gives up for the trees, chosen at epsilon 8 and 1."""


def sepsis_recipe(private: bool) -> SepsisRecipe:
    """Return :data:`PRIVATE` for a DP run, else :data:`NON_PRIVATE`."""
    return PRIVATE if private else NON_PRIVATE
