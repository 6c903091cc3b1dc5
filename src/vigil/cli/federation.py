"""``vigil federation``: the multi-site path on Flower, and the periodic retraining.

Coordinator: ``certs``, ``coordinator``, ``register``, ``nodes``, ``run``,
``schedule``, ``releases``. Hospital: ``site-key``, ``site``, ``budget``, ``pull``.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from vigil.cli._common import DATA_HELP, err_console, guarded, print_json, print_table
from vigil.cli.federate import (
    BoostBinsOption,
    BoostDepthOption,
    BoostLrOption,
    DpClipOption,
    DpDeltaOption,
    DpEpsilonOption,
    DPTreeFeaturesOption,
    DPTreeFloorOption,
    DPTreeShareOption,
    _boosting,
    _dp,
)
from vigil.federation.recipes import DP_TREE_SHARE
from vigil.federation.strategies import Robust, StrategyName

app = typer.Typer(
    help="Federated training across hospitals on Flower (TLS, authenticated sites), and "
         "scheduled retraining with a registry of released versions.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
WorkOption = Annotated[Path, typer.Option(help="Coordinator directory (state, logs, runs).")]
CertsOption = Annotated[Path, typer.Option(help="ca.crt, server.crt, server.key "
                                                "(`vigil federation certs`).")]
PortOption = Annotated[int, typer.Option(help="The SuperLink's HTTPS port.")]
HostOption = Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for remote "
                                              "sites).")]


def _coordinator(work: Path, certs: Path, host: str, port: int) -> Any:
    from vigil.federation.flower.launch import Coordinator

    return Coordinator.from_certs(work, certs, host=host, port=port)


def _until_signal(proc: Any) -> None:
    """Block while ``proc`` runs; SIGTERM/SIGINT stop it (and what it started)."""

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        proc.popen.wait()
        err_console.print(f"{proc.name} exited with code {proc.popen.returncode}; see "
                          f"{proc.log_path}")
    except KeyboardInterrupt:
        err_console.print(f"stopping {proc.name}")
    finally:
        proc.stop()


@app.command("certs")
@guarded
def certs(
    out: Annotated[Path, typer.Option(help="Directory for the CA, server and site files.")],
    site: Annotated[list[str] | None, typer.Option(
        help="Also make this site's key pair (repeat); in production each hospital makes its "
             "own with `site-key`.")] = None,
    host: Annotated[list[str] | None, typer.Option(
        help="A DNS name or IP the sites dial (repeat); default 127.0.0.1 and localhost.")] = None,
    days: Annotated[int, typer.Option(min=1, help="Validity.")] = 365,
    json_out: JsonOption = False,
) -> None:
    """Make a test CA, the SuperLink's TLS certificate and (optionally) site key pairs."""
    from vigil.federation.flower.certs import DEFAULT_HOSTS, make_test_pki

    pki = make_test_pki(out, sites=site or (), hosts=host or DEFAULT_HOSTS, days=days)
    body = {"ca_cert": str(pki.ca_cert), "server_cert": str(pki.server_cert),
            "server_key": str(pki.server_key),
            "sites": {k.name: {"private_key": str(k.private_key), "public_key": str(k.public_key)}
                      for k in pki.sites}}
    if json_out:
        print_json(body)
    else:
        err_console.print(f"wrote the CA, the SuperLink certificate and {len(pki.sites)} site "
                          f"key pair(s) to {out}")


@app.command("site-key")
@guarded
def site_key(
    name: Annotated[str, typer.Argument(help="The site's name in the federation.")],
    out: Annotated[Path, typer.Option(help="Directory for NAME.key and NAME.pub.")],
) -> None:
    """Make a site's SuperNode key pair; send only NAME.pub to the coordinator."""
    from vigil.federation.flower.certs import make_site_key

    key = make_site_key(out, name)
    err_console.print(f"wrote {key.private_key} (keep it at the site) and {key.public_key} "
                      "(send it to the coordinator)")


@app.command("coordinator")
@guarded
def coordinator(
    work: WorkOption,
    certs: CertsOption,
    host: HostOption = "127.0.0.1",
    port: PortOption = 9092,
    register: Annotated[list[Path] | None, typer.Option(
        help="Register this site public key (NAME.pub) once the SuperLink is up (repeat).")
    ] = None,
) -> None:
    """Run the coordinator's SuperLink in the foreground until SIGTERM or Ctrl-C.

    TLS with the server certificate, site authentication on, state persisted
    in WORK/superlink.db.
    """
    from vigil.federation.flower.launch import register_site, start_superlink

    coord = _coordinator(work, certs, host, port)
    proc = start_superlink(coord)
    try:
        for pub in register or []:
            node = register_site(coord, pub, name=pub.stem)
            err_console.print(f"site {pub.stem}: " + ("registered before" if node is None
                                                     else f"registered as node {node}"))
    except BaseException:
        proc.stop()
        raise
    err_console.print(f"SuperLink listening on {host}:{port} (log {proc.log_path})")
    _until_signal(proc)


@app.command("register")
@guarded
def register(
    public_key: Annotated[Path, typer.Argument(help="The site's NAME.pub.")],
    work: WorkOption,
    certs: CertsOption,
    name: Annotated[str | None, typer.Option(help="Site name (default: the file's stem).")] = None,
    port: PortOption = 9092,
) -> None:
    """Register a site's public key at the running SuperLink."""
    from vigil.federation.flower.launch import register_site

    node = register_site(_coordinator(work, certs, "127.0.0.1", port), public_key,
                         name=name or public_key.stem)
    err_console.print("registered before" if node is None else f"registered as node {node}")


@app.command("nodes")
@guarded
def nodes(work: WorkOption, certs: CertsOption, port: PortOption = 9092,
          json_out: JsonOption = False) -> None:
    """List the registered SuperNodes and whether they are online."""
    from vigil.federation.flower.launch import list_nodes

    rows = list_nodes(_coordinator(work, certs, "127.0.0.1", port))
    if json_out:
        print_json({"nodes": rows})
        return
    out = Table(title="SuperNodes")
    for col in ("node-id", "status", "online-at", "offline-at"):
        out.add_column(col)
    for r in rows:
        out.add_row(*(str(r.get(c, "")) for c in ("node-id", "status", "online-at", "offline-at")))
    print_table(out)


@app.command("site")
@guarded
def site(
    name: Annotated[str, typer.Option(help="This site's name in the federation.")],
    work: Annotated[Path, typer.Option(help="Site directory (prepared features, logs).")],
    data: Annotated[str | None, typer.Option(
        help=DATA_HELP + " Imaging: a MedMNIST .npz (or sample) dealt to the scanner sites "
             "(--name site-a ... site-d).", envvar="VIGIL_DATA")] = None,
    task: Annotated[str, typer.Option(help="sepsis (feature rows) or imaging (images).")
                    ] = "sepsis",
    images: Annotated[Path | None, typer.Option(
        help="Imaging: this site's DICOM folder with train/ and val/ below it and labels.csv "
             "files (as `vigil imaging write-sites` writes a site).")] = None,
    seed: Annotated[int, typer.Option(help="Imaging with --data: seed of the site "
                                           "assignment (the run's --seed).")] = 0,
    superlink: Annotated[str | None, typer.Option(help="The coordinator's HOST:PORT.")] = None,
    ca: Annotated[Path | None, typer.Option(help="CA certificate of the coordinator.")] = None,
    key: Annotated[Path | None, typer.Option(help="This site's private key (NAME.key).")] = None,
    port: Annotated[int, typer.Option(help="Local port of the SuperNode's runtime API.")] = 9094,
    partition: Annotated[str | None, typer.Option(
        help="Demo: use only this site's part of --data under a site scheme (e.g. random:3 "
             "with --name site1).")] = None,
    prepare_only: Annotated[bool, typer.Option(
        "--prepare-only", help="Build the site's features and exit.")] = False,
    budget_epsilon: Annotated[float | None, typer.Option(
        help="This site's lifetime privacy budget ε over all runs (with --budget-delta); "
             "runs past it are refused.")] = None,
    budget_delta: Annotated[float | None, typer.Option(
        help="This site's lifetime δ over all runs.")] = None,
    allow_non_private: Annotated[bool, typer.Option(
        "--allow-non-private", help="With a budget: still train in runs without DP.")] = False,
) -> None:
    """Prepare this hospital's site and run its SuperNode in the foreground (outbound only)."""
    from vigil.core.errors import ConfigError

    if task == "imaging":
        from vigil.federation.flower.imagesite import prepare_image_site

        path = prepare_image_site(name, work, images=images, data=data, seed=seed)
    elif task == "sepsis":
        from vigil.federation.flower.sitedata import prepare_site

        if data is None:
            raise ConfigError("expected --data (the hospital's table) for a sepsis site",
                              key="data")
        path = prepare_site(name, data, work, scheme=partition)
    else:
        raise ConfigError(f"expected --task sepsis or imaging; got {task!r}", key="task")
    err_console.print(f"prepared site {name} in {path}")
    if budget_epsilon is not None or budget_delta is not None:
        _set_budget(work, budget_epsilon, budget_delta, allow_non_private)
    if prepare_only:
        return
    if superlink is None or ca is None or key is None:
        raise ConfigError("expected --superlink HOST:PORT, --ca and --key to join the "
                          "federation (or --prepare-only)", key="superlink")
    from vigil.federation.flower.launch import SiteNode, start_supernode

    proc = start_supernode(SiteNode(work, superlink, ca, key, port=port))
    err_console.print(f"SuperNode of {name} dialing {superlink} (log {proc.log_path})")
    _until_signal(proc)


def _set_budget(site_dir: Path, epsilon: float | None, delta: float | None,
                allow_non_private: bool) -> None:
    from vigil.core.errors import ConfigError
    from vigil.federation.budget import SiteBudget, write_budget

    if epsilon is None or delta is None:
        raise ConfigError("expected both a lifetime epsilon and delta (--budget-epsilon and "
                          "--budget-delta, or --epsilon and --delta)", key="budget")
    path = write_budget(site_dir, SiteBudget(epsilon, delta, allow_non_private))
    err_console.print(f"lifetime privacy budget ε={epsilon:g}, δ={delta:g} written to {path}")


@app.command("budget")
@guarded
def budget(
    site_dir: Annotated[Path, typer.Option(help="The site's directory (`vigil federation site "
                                                "--work`, or LEDGERS/SITE in process).")],
    epsilon: Annotated[float | None, typer.Option(help="Set the lifetime ε.")] = None,
    delta: Annotated[float | None, typer.Option(help="Set the lifetime δ.")] = None,
    allow_non_private: Annotated[bool, typer.Option(
        "--allow-non-private", help="With --epsilon/--delta: still train in runs without DP.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Show (or set) this site's lifetime privacy budget and the runs its ledger charged."""
    import time
    from dataclasses import asdict

    from vigil.federation.budget import PrivacyLedger

    if epsilon is not None or delta is not None:
        _set_budget(site_dir, epsilon, delta, allow_non_private)
    ledger = PrivacyLedger(site_dir.name, site_dir)
    entries, spent = ledger.entries(), ledger.spent()
    limit = None if ledger.budget is None else asdict(ledger.budget)
    if json_out:
        print_json({"budget": limit, "spent": spent.to_dict(),
                    "runs": [asdict(e) for e in entries]})
        return
    out = Table(title=f"privacy ledger: budget {'none' if limit is None else limit}")
    for col in ("run", "task", "ε", "δ", "charged (UTC)"):
        out.add_column(col)
    for e in entries:
        out.add_row(e.run, e.task, "no DP" if e.epsilon is None else f"{e.epsilon:g}",
                    "—" if e.delta is None else f"{e.delta:.3g}",
                    time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.time)))
    out.add_row("total", "", f"{spent.epsilon:g}", f"{spent.delta:.3g}",
                f"{spent.runs} DP runs, {spent.non_private_runs} without DP")
    print_table(out)


@app.command("run")
@guarded
def run(
    work: WorkOption,
    certs: CertsOption,
    sites: Annotated[int, typer.Option(min=1, help="SuperNodes to wait for.")],
    out: Annotated[Path, typer.Option(help="Model package directory to write.")],
    port: PortOption = 9092,
    strategy: Annotated[StrategyName, typer.Option(help="Strategy.")] = StrategyName.FEDAVG,
    mu: Annotated[float | None, typer.Option(help="FedProx proximal strength.")] = None,
    robust: Annotated[Robust | None, typer.Option(help="Robust aggregation.")] = None,
    max_share: Annotated[float | None, typer.Option(help="Cap on one site's share.")] = None,
    dp_epsilon: DpEpsilonOption = None,
    dp_delta: DpDeltaOption = None,
    dp_clip: DpClipOption = None,
    rounds: Annotated[int | None, typer.Option(
        min=1, help="Federated rounds (default: sepsis 10; imaging 20, the imaging recipe).")
    ] = None,
    local_epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 1,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="Local batch size \\[sepsis 2048, under --dp-epsilon 4096; imaging 128].")
    ] = None,
    lr: Annotated[float | None, typer.Option(
        help="Local AdamW learning rate \\[sepsis 3e-4, under --dp-epsilon 1e-3; imaging 1e-3].")
    ] = None,
    min_sites: Annotated[int, typer.Option(min=1, help="Accepted updates a round needs.")] = 2,
    timeout: Annotated[float, typer.Option(help="Seconds a site has to answer a request "
                                                "before it is dropped from the round.")] = 600.0,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the sites.")] = 300.0,
    seed: Annotated[int, typer.Option(help="Seed of the model and the training.")] = 0,
    private_key: Annotated[Path | None, typer.Option(help="Ed25519 PEM key to sign with.")] = None,
    name: Annotated[str, typer.Option(help="Model package name.")] = "sepsis-federated",
    version: Annotated[str, typer.Option(help="Model package version.")] = "0.1.0",
    boost_trees: Annotated[
        int, typer.Option(min=0, help="After the rounds, grow this many boosted trees across "
                                      "the SuperNodes and ship them fused with the network.")
    ] = 0,
    boost_depth: BoostDepthOption = None,
    boost_lr: BoostLrOption = None,
    boost_bins: BoostBinsOption = None,
    dp_tree_share: DPTreeShareOption = DP_TREE_SHARE,
    dp_tree_features: DPTreeFeaturesOption = 16,
    dp_tree_floor: DPTreeFloorOption = 2.0,
    task: Annotated[str, typer.Option(
        help="sepsis or imaging (every SuperNode prepared with `site --task imaging`; "
             "defaults then: the imaging recipe, 20 rounds, --batch-size 128, --lr 1e-3; "
             "GroupNorm CNN under DP-SGD).")
    ] = "sepsis",
    secure_aggregation: Annotated[bool, typer.Option(
        "--secure-aggregation", help="The coordinator sees only sums across the sites "
                                     "(SecAgg+; docs/federation.md).")] = False,
    secagg_shares: Annotated[int | None, typer.Option(
        help="SecAgg+ neighbours per site, itself included (default: all sites).")] = None,
    secagg_threshold: Annotated[int | None, typer.Option(
        help="Shares needed to unmask (default: a majority of the neighbours).")] = None,
    secagg_clip: Annotated[float, typer.Option(
        help="Clipping range c of each summed element (after scaling).")] = 1.0,
    secagg_levels: Annotated[int, typer.Option(
        help="Quantization levels L over [-c, c].")] = 2**24,
    secagg_bits: Annotated[int, typer.Option(help="Modulus bits: 32 or 64.")] = 32,
    secagg_norm_bound: Annotated[float | None, typer.Option(
        help="L2 bound each site puts on its own network update.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Train across the connected SuperNodes and write the model package (``--out``)."""
    import time

    from vigil.federation.driver import Plan
    from vigil.federation.flower.runner import train_on_flower
    from vigil.federation.flower.settings import RunSettings
    from vigil.federation.image_run import (
        dp_spec,
        export_imaging_run,
        imaging_recipe,
        imaging_summary,
        public_check_inputs,
    )
    from vigil.federation.recipes import SEPSIS_ROUNDS, sepsis_recipe
    from vigil.federation.secure_sum import SecureSumSettings
    from vigil.federation.simulation import export_run, run_summary
    from vigil.federation.site import ModelSpec
    from vigil.federation.strategies import make_strategy
    from vigil.federation.tree_privacy import TreeDPSettings

    imaging = task == "imaging"
    dp = _dp(dp_epsilon, dp_delta, dp_clip, imaging=imaging)
    recipe = sepsis_recipe(private=dp is not None)
    images = imaging_recipe(private=dp is not None)
    trees = _boosting(boost_trees, boost_depth, boost_lr, boost_bins, recipe)
    if rounds is None:
        rounds = images["rounds"] if imaging else SEPSIS_ROUNDS
    if batch_size is None:
        batch_size = images["batch_size"] if imaging else recipe.batch_size
    if lr is None:
        lr = images["lr"] if imaging else recipe.lr
    settings = RunSettings(
        plan=Plan(rounds=rounds, local_epochs=local_epochs, batch_size=batch_size, lr=lr,
                  seed=seed, min_sites=min_sites, time_budget=timeout,
                  **({k: images[k] for k in ("weight_decay", "keep_by")}
                     if imaging else {})),
        model=ModelSpec(dropout=recipe.dropout),
        strategy=make_strategy(strategy, mu=mu, robust=robust, max_share=max_share),
        dp=dp, sites=sites, wait=wait, trees=trees, task=task, image=dp_spec(dp),
        tree_dp=None if trees is None or dp is None else TreeDPSettings(
            tree_share=dp_tree_share, features_per_tree=dp_tree_features,
            hessian_floor=dp_tree_floor, seed=seed, seeded_noise=False),
        secure=SecureSumSettings(
            num_shares=secagg_shares, reconstruction_threshold=secagg_threshold,
            clipping_range=secagg_clip, quantization_range=secagg_levels,
            norm_bound=secagg_norm_bound, modulus_bits=secagg_bits,
        ) if secure_aggregation else None,
    )
    coord = _coordinator(work, certs, "127.0.0.1", port)
    run_dir = coord.work_dir / "runs" / time.strftime("%Y%m%d-%H%M%S")

    def on_event(event: dict[str, Any]) -> None:
        detail = {k: v for k, v in event.items() if k not in ("t", "event", "settings")}
        err_console.print(f"{event['event']}: {detail}", highlight=False)

    finished = train_on_flower(coord, settings, run_dir, on_event=on_event)
    key = None if private_key is None else private_key.read_bytes()
    if imaging:
        packages = export_imaging_run(
            finished, out, name="imaging-federated" if name == "sepsis-federated" else name,
            version=version, private_key_pem=key, check_inputs=public_check_inputs(settings.image))
        summary = {**imaging_summary(finished, packages), "run_dir": str(run_dir)}
    else:
        packages = export_run(finished, out, name=name, version=version, private_key_pem=key)
        summary = {**run_summary(finished, packages), "run_dir": str(run_dir)}
    if json_out:
        print_json(summary)
    else:
        v = summary["validation"]
        err_console.print(f"kept round {summary['best_round']}: pooled validation AUROC "
                          f"{v['auroc']:.4f}, utility {v['utility']:.4f}; wrote "
                          f"{', '.join(summary['packages'])}", highlight=False)


@app.command("schedule")
@guarded
def schedule(
    config: Annotated[Path, typer.Option(help="Retraining settings (TOML).")],
    once: Annotated[bool, typer.Option("--once", help="Retrain and release now, then exit.")
                    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Retrain, sign and release a new version on a cron schedule (default every 6 months)."""
    from vigil.federation.retraining import (
        load_retrain_config,
        next_runs,
        retrain_once,
    )
    from vigil.federation.retraining import schedule as make_scheduler

    settings = load_retrain_config(config)
    if once:
        release = retrain_once(settings)
        if json_out:
            print_json(release.to_dict())
        else:
            err_console.print(f"released {release.name} {release.version} into "
                              f"{settings.registry}")
        return
    upcoming = [t.isoformat() for t in next_runs(settings)]
    if json_out:
        print_json({"cron": settings.cron, "next": upcoming})
    err_console.print(f"retraining {settings.name} on '{settings.cron}' ({settings.timezone}); "
                      f"next: {', '.join(upcoming)}")
    scheduler = make_scheduler(settings)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.shutdown(wait=False))
    try:
        scheduler.start()
    except KeyboardInterrupt:
        scheduler.shutdown(wait=False)


@app.command("releases")
@guarded
def releases(
    registry: Annotated[str, typer.Option(help="Registry directory or http(s) URL.")],
    json_out: JsonOption = False,
) -> None:
    """List the released versions with their metrics and change from the previous one."""
    from vigil.federation.registry import Release, read_index

    items = [Release(**r) for r in read_index(registry).get("releases", [])]
    if json_out:
        print_json({"releases": [r.to_dict() for r in items]})
        return
    out = Table(title="releases")
    for col in ("version", "AUROC", "utility", "threshold", "sites", "weights moved", "signed"):
        out.add_column(col)
    for r in items:
        moved = ((r.diff or {}).get("weights") or {}).get("relative_l2")
        out.add_row(r.version, _fmt(r.metrics.get("auroc")), _fmt(r.metrics.get("utility")),
                    _fmt(r.metrics.get("threshold")), str(len(r.training.get("sites", {}))),
                    "—" if moved is None else f"{moved:.1%}", "yes" if r.signed else "no")
    print_table(out)
    privacy = Table(title="privacy per site: this run, refusals, cumulative charge")
    for col in ("version", "site", "ε run", "δ run", "ε cumulative", "δ cumulative", "refused"):
        privacy.add_column(col)
    for r in items:
        p = r.training.get("privacy") or {}
        for s, total in (p.get("cumulative") or {}).items():
            run = (p.get("sites") or {}).get(s) or {}
            privacy.add_row(r.version, s, _fmt(run.get("epsilon")), _fmt(run.get("delta")),
                            _fmt(total["epsilon"]), _fmt(total["delta"]),
                            (p.get("refused") or {}).get(s, ""))
        for s, reason in (p.get("refused") or {}).items():
            if s not in (p.get("cumulative") or {}):
                privacy.add_row(r.version, s, "—", "—", "—", "—", reason)
    if privacy.row_count:
        print_table(privacy)


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.4f}"


@app.command("pull")
@guarded
def pull(
    registry: Annotated[str, typer.Option(help="Registry directory or http(s) URL.")],
    config: Annotated[Path | None, typer.Option(
        help="Site settings (TOML); VIGIL_ variables override it.", envvar="VIGIL_CONFIG")] = None,
    version: Annotated[str | None, typer.Option(help="Default: the newest release.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Fetch a released version, verify it, and install it as the site's shadow model.

    The shadow model is scored and stored beside the active one but never
    alerts; promote it (``vigil model promote``) once the site team has
    recalibrated it (``vigil calibrate``).
    """
    import tempfile

    from vigil.federation.registry import fetch_release
    from vigil.runtime.models import install_model, model_summary
    from vigil.runtime.settings import load_settings
    from vigil.runtime.store import StateStore

    settings = load_settings(config)
    with (tempfile.TemporaryDirectory() as tmp,
          StateStore.open(settings.store.url, lock="models") as store):
        release, package = fetch_release(registry, tmp, version=version,
                                         public_key=settings.models.trusted_key())
        have = {(r.name, r.version): r for r in store.models()}
        row = have.get((release.name, release.version))
        fresh = row is None
        if fresh:
            row = install_model(store, package.path, models_dir=settings.models.dir,
                                public_key=settings.models.trusted_key(), role="shadow")
    body = {"release": release.version, "installed": fresh, "model": model_summary(row)}
    if json_out:
        print_json(body)
    elif fresh:
        err_console.print(f"installed {row.key} as the shadow model; recalibrate it "
                          f"(`vigil calibrate`) and promote it (`vigil model promote "
                          f"{row.version}`)")
    else:
        err_console.print(f"{row.key} is already installed ({row.role})")
