"""``vigil federate``: federated training in-process, its round history, and comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vigil.cli._common import DATA_HELP, err_console, guarded, print_json, print_table
from vigil.core.errors import ConfigError
from vigil.federation.recipes import DP_TREE_SHARE, NON_PRIVATE, SEPSIS_ROUNDS, sepsis_recipe
from vigil.federation.strategies import Robust, StrategyName

app = typer.Typer(
    help="Train a model across simulated hospitals; no patient row leaves a site.",
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
HiddenOption = Annotated[
    str, typer.Option(help="Hidden layer widths of the network, comma-separated.")
]
DropoutOption = Annotated[float | None, typer.Option(
    help="Dropout after each hidden layer [0.5; under --dp-epsilon 0].")]
ThreadsOption = Annotated[int, typer.Option(min=1, help="torch threads (1: reproducible).")]
BoostDepthOption = Annotated[int | None, typer.Option(
    min=1, help="Depth of each boosted tree [6; under --dp-epsilon 4].")]
BoostLrOption = Annotated[float | None, typer.Option(
    help="Learning rate of the boosted trees [0.1; under --dp-epsilon 0.2].")]
DpEpsilonOption = Annotated[
    float | None, typer.Option(help="DP-SGD budget epsilon per site (record level).")
]
DpDeltaOption = Annotated[
    float | None, typer.Option(help="DP delta (default 1/n, n = a site's training rows).")
]
DpClipOption = Annotated[float | None, typer.Option(
    help="DP-SGD per-row clipping norm \\[sepsis 10, imaging 1].")]
BoostBinsOption = Annotated[int | None, typer.Option(
    min=2, max=256, help="Bins per feature [64; under --dp-epsilon 32].")]
DPTreeShareOption = Annotated[float, typer.Option(
    help="With --dp-epsilon and --boost-trees: share of epsilon the network gives up for the "
         "trees.")]
DPTreeFeaturesOption = Annotated[int, typer.Option(
    min=1, help="With --dp-epsilon and --boost-trees: features each tree draws (publicly) and "
                "the sites send noisy.")]
DPTreeFloorOption = Annotated[float, typer.Option(
    help="With --dp-epsilon and --boost-trees: a child's hessian floor, in noise standard "
         "deviations of a feature's summed hessians.")]


def _spec(hidden: str, dropout: float) -> Any:
    from vigil.federation.site import ModelSpec

    try:
        widths = tuple(int(h) for h in hidden.split(","))
    except ValueError:
        raise ConfigError(f"expected --hidden like 256,128; got {hidden!r}", key="hidden") from None
    return ModelSpec(hidden=widths, dropout=dropout)


def _boosting(n_trees: int, depth: int | None, lr: float | None, bins: int | None,
              recipe: Any) -> Any:
    """Build the trees' plan (None: no trees); unset options take the recipe's values."""
    from vigil.federation.boosting import BoostingPlan

    if n_trees == 0:
        return None
    return BoostingPlan(n_trees=n_trees,
                        max_depth=recipe.tree_depth if depth is None else depth,
                        learning_rate=recipe.tree_lr if lr is None else lr,
                        n_bins=recipe.tree_bins if bins is None else bins)


def _dp(epsilon: float | None, delta: float | None, clip: float | None, *,
        imaging: bool = False) -> Any:
    """Build the run's DP-SGD settings from ``--dp-epsilon/--dp-delta/--dp-clip`` (None: no DP).

    An unset clipping norm is the task's: 1 for imaging, the chosen sepsis
    recipe's (:data:`vigil.federation.recipes.DP_CLIP`) for sepsis.
    """
    from vigil.federation.privacy import DPSettings
    from vigil.federation.recipes import DP_CLIP

    if clip is None:
        clip = 1.0 if imaging else DP_CLIP
    return None if epsilon is None else DPSettings(epsilon, delta=delta, max_grad_norm=clip)


def _strategy(strategy: Any, mu: float | None, robust: Any, max_share: float | None) -> Any:
    from vigil.federation.strategies import make_strategy

    return make_strategy(strategy, mu=mu, robust=robust, max_share=max_share)


def _plan(rounds: int, local_epochs: int, batch_size: int, lr: float, seed: int, min_sites: int,
          time_budget: float | None, **options: Any) -> Any:
    from vigil.federation.driver import Plan

    return Plan(rounds=rounds, local_epochs=local_epochs, batch_size=batch_size, lr=lr,
                seed=seed, min_sites=min_sites, time_budget=time_budget, **options)


def _federate_images(*, data: str, strategy: Any, plan: Any, threads: int, out: Path,
                     export_site: str | None, private_key: Path | None, name: str, version: str,
                     json_out: bool, dp: Any = None) -> None:
    import numpy as np

    from vigil.dicom_adapter.sites import medmnist_sites
    from vigil.federation.image_export import PARITY_IMAGES
    from vigil.federation.image_run import (
        IMAGING_RECIPE,
        export_imaging_run,
        federate_images,
        imaging_summary,
    )

    parts = medmnist_sites(data, seed=plan.seed, splits=("train", "val"))
    train, valid = ([(s.site, s.inputs, s.labels) for s in parts[k]] for k in ("train", "val"))
    train, valid = list(train), list(valid)

    def on_round(record: Any) -> None:
        err_console.print(f"round {record.round}: pooled validation AUROC "
                          f"{_fmt(record.valid_auroc)}", highlight=False)

    run = federate_images(train, valid, strategy=strategy, plan=plan, data=Path(data).name,
                          threads=threads, on_round=on_round, dp=dp,
                          max_shift=IMAGING_RECIPE["max_shift"])
    check = np.concatenate([x for _, x, _ in train + valid])[:PARITY_IMAGES]
    key = None if private_key is None else private_key.read_bytes()
    profile = (np.concatenate([s.inputs for s in parts["val"]]),
               [h for s in parts["train"] for h in s.headers])
    packages = export_imaging_run(run, out, name=name, version=version, check_inputs=check,
                                  private_key_pem=key, export_site=export_site,
                                  profile_data=profile)
    summary = imaging_summary(run, packages)
    if json_out:
        print_json(summary)
        return
    _show_history(run.result.history)
    _show_privacy(summary["privacy"])
    v = summary["validation"]
    kept = (f"accuracy {v['accuracy']:.4f}" if "accuracy" in v else f"AUROC {v['auroc']:.4f}")
    err_console.print(f"kept round {summary['best_round']}: pooled validation {kept}",
                      highlight=False)
    for path in summary["packages"]:
        err_console.print(f"wrote {path}", highlight=False)


def _show_privacy(privacy: dict[str, Any]) -> None:
    for site_name, p in privacy.items():
        err_console.print(
            f"DP-SGD {site_name}: epsilon {p['epsilon']:.3f} at delta {p['delta']:.2e} "
            f"(noise multiplier {p['noise_multiplier']:.3f}, {p['steps']} steps)", highlight=False
        )


def _fmt(v: Any, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


@app.callback(invoke_without_command=True)
@guarded
def federate(
    ctx: typer.Context,
    task: Annotated[
        str, typer.Option(help="sepsis (PhysioNet rows) or imaging (MedMNIST .npz on the four "
                               "scanner sites, read through DICOM).")
    ] = "sepsis",
    data: Annotated[str, typer.Option(help=DATA_HELP, envvar="VIGIL_DATA")] = "sample",
    sites: Annotated[
        str, typer.Option(help="hospital, hospital-unit, random:N or dirichlet:N:ALPHA")
    ] = "hospital-unit",
    strategy: Annotated[StrategyName, typer.Option(help="Strategy.")] = StrategyName.FEDAVG,
    mu: Annotated[float | None, typer.Option(help="FedProx proximal strength.")] = None,
    robust: Annotated[Robust | None, typer.Option(help="Robust aggregation.")] = None,
    max_share: Annotated[
        float | None, typer.Option(help="Cap on any one site's share of the average.")
    ] = None,
    dp_epsilon: DpEpsilonOption = None,
    dp_delta: DpDeltaOption = None,
    dp_clip: DpClipOption = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Federated rounds (default: sepsis 10; imaging "
                                             "20, the imaging recipe).")
    ] = None,
    local_epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 1,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Local batch size \\[sepsis 2048, under "
                                             "--dp-epsilon 4096; imaging 128].")
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Local AdamW learning rate \\[sepsis 3e-4, under "
                                        "--dp-epsilon 1e-3; imaging 1e-3].")
    ] = None,
    hidden: HiddenOption = "256,128",
    dropout: DropoutOption = None,
    threads: ThreadsOption = 1,
    min_sites: Annotated[int, typer.Option(min=1, help="Accepted updates a round needs.")] = 2,
    time_budget: Annotated[
        float | None, typer.Option(help="Seconds a site may take per round before it is dropped.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the model, the training and partitions.")] = 0,
    boost_trees: Annotated[
        int, typer.Option(min=0, help="After the rounds, grow this many boosted trees across "
                                      "the sites and ship them fused with the network (0: none).")
    ] = 0,
    boost_depth: BoostDepthOption = None,
    boost_lr: BoostLrOption = None,
    boost_bins: BoostBinsOption = None,
    boost_edges: Annotated[
        str, typer.Option(help="Bin edges: 'quantiles' (the sites' averaged quantiles) or "
                               "'public' (catalog ranges, no site data; always under DP).")
    ] = "quantiles",
    dp_tree_share: DPTreeShareOption = DP_TREE_SHARE,
    dp_tree_features: DPTreeFeaturesOption = 16,
    dp_tree_floor: DPTreeFloorOption = 2.0,
    out: Annotated[Path | None, typer.Option(help="Model package directory to write.")] = None,
    export_site: Annotated[
        str | None, typer.Option(help="FedBN: write only this site's package (with its "
                                      "normalization); default one package per site.")
    ] = None,
    private_key: Annotated[
        Path | None, typer.Option(help="PEM Ed25519 private key to sign the package with.")
    ] = None,
    name: Annotated[str, typer.Option(help="Model package name.")] = "sepsis-federated",
    version: Annotated[str, typer.Option(help="Model package version.")] = "0.1.0",
    ledgers: Annotated[Path | None, typer.Option(
        help="Sepsis: the simulated sites' own privacy budgets and ledgers, LEDGERS/SITE "
             "(`vigil federation budget`); a site refuses the run past its budget.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Train across sites in one process and write the model package (``--out``).

    Sites train on their train patients and report on their validation
    patients; test patients are never used. Deterministic for a seed.
    """
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise ConfigError("expected --out DIR for the model package", key="out")
    if task not in ("sepsis", "imaging"):
        raise ConfigError(f"expected --task sepsis or imaging; got {task!r}", key="task")
    chosen = _strategy(strategy, mu, robust, max_share)
    dp = _dp(dp_epsilon, dp_delta, dp_clip, imaging=task == "imaging")
    if task == "imaging":
        from vigil.federation.image_run import imaging_recipe
        from vigil.federation.image_task import check_imaging_options

        check_imaging_options(dp=dp, keeps_norm_local=chosen.keeps_norm_local)
        if boost_trees:
            raise ConfigError("expected --boost-trees 0 with --task imaging (trees are for "
                              f"feature rows); got {boost_trees}", key="boost_trees")
        recipe_images = imaging_recipe(private=dp is not None)
        _federate_images(data=data, strategy=chosen, dp=dp,
                         plan=_plan(rounds or recipe_images["rounds"], local_epochs,
                                    batch_size or recipe_images["batch_size"],
                                    lr or recipe_images["lr"], seed, min_sites, time_budget,
                                    weight_decay=recipe_images["weight_decay"],
                                    keep_by=recipe_images["keep_by"]),
                         threads=threads, out=out, export_site=export_site,
                         private_key=private_key,
                         name="imaging-federated" if name == "sepsis-federated" else name,
                         version=version, json_out=json_out)
        return
    recipe = sepsis_recipe(private=dp is not None)
    rounds = SEPSIS_ROUNDS if rounds is None else rounds
    batch_size = recipe.batch_size if batch_size is None else batch_size
    lr = recipe.lr if lr is None else lr
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vigil.data import load_physionet, resolve_data_path
    from vigil.federation.simulation import export_run, run_summary
    from vigil.federation.simulation import federate as run_federated

    plan = _plan(rounds, local_epochs, batch_size, lr, seed, min_sites, time_budget)
    trees = _boosting(boost_trees, boost_depth, boost_lr, boost_bins, recipe)
    from vigil.federation.tree_privacy import TreeDPSettings

    tree_dp = TreeDPSettings(tree_share=dp_tree_share, features_per_tree=dp_tree_features,
                             hessian_floor=dp_tree_floor, seed=seed)
    table = load_physionet(data)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        task = bar.add_task(f"{chosen.name.value} on {sites}", total=rounds,
                            status="building sites")

        def on_round(record: Any) -> None:
            bar.update(task, advance=1, status=f"validation AUROC {_fmt(record.valid_auroc)}, "
                                               f"utility {_fmt(record.valid_utility)}")

        tree_task = None if trees is None else bar.add_task(
            "trees across the sites", total=trees.n_trees, status="after the rounds")

        def on_tree(n: int) -> None:
            assert tree_task is not None
            bar.update(tree_task, completed=n, status="")

        finished = run_federated(table, scheme=sites, strategy=chosen, plan=plan, dp=dp,
                                 model=_spec(hidden, recipe.dropout if dropout is None
                                             else dropout), threads=threads,
                                 data=resolve_data_path(data).name, on_round=on_round,
                                 trees=trees, on_tree=on_tree, ledgers=ledgers, tree_dp=tree_dp,
                                 tree_edges=boost_edges)
    key = None if private_key is None else private_key.read_bytes()
    packages = export_run(finished, out, name=name, version=version, private_key_pem=key,
                          export_site=export_site)
    summary = run_summary(finished, packages)
    if json_out:
        print_json(summary)
        return
    _show_history(finished.result.history)
    _show_privacy(summary["privacy"])
    v, n = summary["validation"], summary["network_validation"]
    err_console.print(f"kept round {summary['best_round']}: pooled validation AUROC "
                      f"{n['auroc']:.4f}, utility {n['utility']:.4f} at threshold "
                      f"{n['threshold']:.4f}", highlight=False)
    if summary["boosting"] is not None:
        b = summary["boosting"]
        err_console.print(f"with {b['n_trees']} trees ({b['seconds']:.0f} s, "
                          f"{len(b['exclusions'])} sites left out): pooled validation AUROC "
                          f"{v['auroc']:.4f}, utility {v['utility']:.4f} at threshold "
                          f"{v['threshold']:.4f}", highlight=False)
    for path in summary["packages"]:
        err_console.print(f"wrote {path}", highlight=False)


def _show_history(history: Any) -> None:
    out = Table(title="round history")
    for col in ("round", "site", "status", "reason", "examples", "train loss", "valid AUROC",
                "epsilon", "seconds"):
        out.add_column(col, justify="left" if col in ("site", "status", "reason") else "right")
    for r in history.rounds:
        for s in r.sites:
            out.add_row(str(r.round), s.site, s.status.value, s.reason or "",
                        _fmt(s.num_examples, ","), _fmt(s.train_loss), _fmt(s.valid_auroc),
                        _fmt(s.epsilon, ".3f"), _fmt(s.seconds, ".1f"))
        out.add_row(str(r.round), "pooled", "aggregated" if r.aggregated else "NOT aggregated", "",
                    "", "", _fmt(r.valid_auroc), "", "", end_section=True)
    print_table(out)


@app.command("history")
@guarded
def history(
    package: Annotated[Path, typer.Argument(help="A federated model package directory.")],
    json_out: JsonOption = False,
) -> None:
    """Print the round history saved in a package (loss, AUROC, rejections, dropouts)."""
    from vigil.core.package import read_package
    from vigil.federation.history import HISTORY_FILE, History

    pkg = read_package(package)
    if HISTORY_FILE not in pkg.manifest.files:
        raise ConfigError(f"expected a federated package with {HISTORY_FILE}; {package} has none",
                          key="package")
    record = History.from_json((pkg.path / HISTORY_FILE).read_bytes())
    if json_out:
        print_json(record.to_dict())
    else:
        _show_history(record)


@app.command("compare")
@guarded
def compare_cmd(
    data: Annotated[str, typer.Option(help=DATA_HELP, envvar="VIGIL_DATA")] = "sample",
    sites: Annotated[str, typer.Option(help="Site partition.")] = "hospital-unit",
    rounds: Annotated[int, typer.Option(min=1, help="Rounds (epochs for single-site models).")] = 5,
    local_epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Local batch size.")] = 2048,
    lr: Annotated[float, typer.Option(help="Local AdamW learning rate.")] = 3e-4,
    mu: Annotated[float | None, typer.Option(help="FedProx proximal strength.")] = None,
    hidden: HiddenOption = "256,128",
    dropout: Annotated[float, typer.Option(help="Dropout after each hidden layer.")] = 0.5,
    threads: ThreadsOption = 1,
    dp_epsilon: Annotated[
        list[float] | None, typer.Option(help="Also FedAvg with DP-SGD at this epsilon "
                                              "(repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    bootstrap: Annotated[
        int, typer.Option(min=0, help="Patient resamples of the paired intervals.")
    ] = 1000,
    boost_trees: Annotated[
        int, typer.Option(min=0, help="Also each model (but FedBN, DP) with this many boosted "
                                      "trees grown across its sites (0: none).")
    ] = 0,
    boost_depth: BoostDepthOption = None,
    boost_lr: BoostLrOption = None,
    markdown: Annotated[Path | None, typer.Option(help="Write the tables here.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Compare FedAvg, FedProx, FedBN, centralized and each site alone on every test site."""
    from vigil.data import load_physionet
    from vigil.federation.compare import compare, comparison_markdown
    from vigil.federation.driver import Plan

    plan = Plan(rounds=rounds, local_epochs=local_epochs, batch_size=batch_size, lr=lr, seed=seed)
    result = compare(load_physionet(data), scheme=sites, plan=plan, mu=mu,
                     model=_spec(hidden, dropout), threads=threads,
                     dp_epsilons=tuple(dp_epsilon or ()), n_boot=bootstrap,
                     trees=_boosting(boost_trees, boost_depth, boost_lr, None, NON_PRIVATE),
                     progress=lambda line: err_console.print(line, highlight=False))
    text = comparison_markdown(result)
    if markdown is not None:
        markdown.write_text(text)
    if json_out:
        print_json(result)
    else:
        typer.echo(text)
