"""The recipes an unset option falls back on, and how the CLI resolves them."""

from __future__ import annotations

import pytest

from vigil.cli.federate import _boosting, _dp
from vigil.federation.boosting import BoostingPlan
from vigil.federation.recipes import DP_CLIP, DP_TREE_SHARE, NON_PRIVATE, PRIVATE, sepsis_recipe
from vigil.federation.tree_privacy import TreeDPSettings


def test_the_recipes_are_the_ones_chosen_on_validation():
    # shipped model (models/sepsis-federated) and the epsilon-8 grid's choice (docs/federation.md)
    assert (NON_PRIVATE.batch_size, NON_PRIVATE.lr, NON_PRIVATE.dropout) == (2048, 3e-4, 0.5)
    assert (NON_PRIVATE.tree_depth, NON_PRIVATE.tree_lr, NON_PRIVATE.tree_bins) == (6, 0.1, 64)
    assert (PRIVATE.batch_size, PRIVATE.lr, PRIVATE.dropout) == (4096, 1e-3, 0.0)
    assert (PRIVATE.tree_depth, PRIVATE.tree_lr, PRIVATE.tree_bins) == (4, 0.2, 32)
    assert (DP_CLIP, DP_TREE_SHARE) == (10.0, 0.3)
    assert sepsis_recipe(private=True) is PRIVATE and sepsis_recipe(private=False) is NON_PRIVATE


def test_non_private_trees_keep_the_plan_defaults_of_the_shipped_model():
    plan = BoostingPlan(n_trees=100)
    assert _boosting(100, None, None, None, NON_PRIVATE) == plan
    assert TreeDPSettings().tree_share == DP_TREE_SHARE


@pytest.mark.parametrize(("depth", "lr", "bins", "expected"), [
    (None, None, None, (4, 0.2, 32)),
    (6, None, None, (6, 0.2, 32)),
    (None, 0.05, 64, (4, 0.05, 64)),
])
def test_unset_tree_options_take_the_recipe_and_set_ones_win(depth, lr, bins, expected):
    plan = _boosting(50, depth, lr, bins, PRIVATE)
    assert (plan.n_trees, plan.max_depth, plan.learning_rate, plan.n_bins) == (50, *expected)
    assert _boosting(0, depth, lr, bins, PRIVATE) is None


def test_the_clipping_norm_defaults_by_task_and_an_explicit_one_wins():
    assert _dp(None, None, None) is None
    assert _dp(8.0, None, None).max_grad_norm == DP_CLIP
    assert _dp(8.0, None, None, imaging=True).max_grad_norm == 1.0
    assert _dp(8.0, None, 2.5, imaging=True).max_grad_norm == 2.5


def test_the_private_recipe_is_the_dp_grids_network():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "bench" / "dp_tree_grid.py"
    spec = importlib.util.spec_from_file_location("dp_tree_grid", path)
    assert spec is not None and spec.loader is not None
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    assert (grid.RECIPE["batch_size"], grid.RECIPE["lr"], grid.RECIPE["clip"]) == (
        PRIVATE.batch_size, PRIVATE.lr, DP_CLIP)
    chosen = {**grid.BASE, **grid.PLANS["lr0.2"]}
    assert (chosen["max_depth"], chosen["learning_rate"], chosen["n_bins"]) == (
        PRIVATE.tree_depth, PRIVATE.tree_lr, PRIVATE.tree_bins)


@pytest.mark.parametrize(("text", "expected"), [
    # sepsis: the shipped model's recipe; with [dp] the one chosen for DP
    ("", {"rounds": 10, "batch_size": 2048, "lr": 3e-4, "dropout": 0.5, "clip": None,
          "trees": (6, 0.1, 64)}),
    ("[dp]\ntarget_epsilon = 8.0\n",
     {"rounds": 10, "batch_size": 4096, "lr": 1e-3, "dropout": 0.0, "clip": DP_CLIP,
      "trees": (4, 0.2, 32)}),
    # what the file sets wins, section by section
    ("[plan]\nbatch_size = 512\n[model]\ndropout = 0.1\n[dp]\ntarget_epsilon = 8.0\n"
     "max_grad_norm = 2.0\n",
     {"rounds": 10, "batch_size": 512, "lr": 1e-3, "dropout": 0.1, "clip": 2.0,
      "trees": (4, 0.2, 32)}),
    # imaging: IMAGING_RECIPE; with [dp] IMAGING_DP_RECIPE, clipping norm 1
    ('task = "imaging"\n', {"rounds": 20, "batch_size": 128, "lr": 1e-3, "clip": None}),
    ('task = "imaging"\n[dp]\ntarget_epsilon = 8.0\n',
     {"rounds": 20, "batch_size": 256, "lr": 3e-3, "clip": 1.0}),
])
def test_the_retraining_job_falls_back_on_the_command_lines_recipes(
        tmp_path, text: str, expected: dict) -> None:  # type: ignore[type-arg]
    from vigil.federation.retraining import load_retrain_config

    trees = "" if 'task = "imaging"' in text else "[trees]\nn_trees = 50\n"
    (tmp_path / "r.toml").write_text('registry = "reg"\n' + text + trees)
    config = load_retrain_config(tmp_path / "r.toml")
    assert (config.plan.rounds, config.plan.batch_size, config.plan.lr) == (
        expected["rounds"], expected["batch_size"], expected["lr"])
    assert (None if config.dp is None else config.dp.max_grad_norm) == expected["clip"]
    if "trees" in expected:
        assert config.model.dropout == expected["dropout"]
        assert config.trees is not None and config.trees.n_trees == 50
        assert (config.trees.max_depth, config.trees.learning_rate,
                config.trees.n_bins) == expected["trees"]
