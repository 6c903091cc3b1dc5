"""Periodic retraining at the coordinator: on a cron schedule, train, export, sign and release.

Each run of the schedule (:func:`retrain_once`):

1. trains a federated model with the in-process driver
   (:func:`vigil.federation.simulation.federate`, for development and
   demos) or on the coordinator's Flower SuperLink with the hospitals'
   SuperNodes (:func:`vigil.federation.flower.runner.train_on_flower`);
2. exports it with :func:`vigil.federation.simulation.export_run` as the
   registry's next version (``1.0.0``, ``1.1.0``, ...), signed with the
   coordinator's Ed25519 key;
3. releases it into the :class:`~vigil.federation.registry.Registry`, which
   records its manifest, metrics and difference from the previous version.

Sites then pull the new version (``vigil federation pull``); their runtime
installs it as the shadow model until the site team recalibrates and
promotes it. :func:`schedule` runs :func:`retrain_once` with APScheduler on a
cron expression, by default :data:`DEFAULT_CRON` (every six months); a run
that fails is logged and the schedule goes on.

The settings are one TOML file (:func:`load_retrain_config`)::

    cron = "0 2 1 1,7 *"          # 02:00 on 1 January and 1 July
    registry = "/srv/vigil/registry"
    name = "sepsis-federated"
    private_key = "/srv/vigil/keys/release.pem"
    engine = "flower"             # or "in-process"

    [strategy]                    # make_strategy(...)
    name = "fedavg"
    [plan]                        # Plan(...): rounds, lr, time_budget, ...
    rounds = 10
    time_budget = 900
    [model]                       # ModelSpec(...)
    hidden = [128, 64]
    [dp]                          # DPSettings(...), optional
    target_epsilon = 8.0
    [trees]                       # BoostingPlan(...), optional; either engine
    n_trees = 25
    [tree_dp]                     # TreeDPSettings(...), optional, with [trees] and [dp]:
    tree_share = 0.3              # the DP trees' split of epsilon, features, hessian floor
    [secure]                      # SecureSumSettings(...), optional; engine = "flower"
    num_shares = 3                # (an empty [secure] table: the defaults)
    [flower]                      # engine = "flower"
    work = "/srv/vigil/coordinator"
    certs = "/srv/vigil/pki"
    port = 9092
    sites = 3
    [in_process]                  # engine = "in-process"
    data = "sample"
    sites = "hospital-unit"
    ledgers = "ledgers"           # optional: each simulated site's budget and ledger

A setting a section leaves unset takes the value the command line would
(:func:`_recipe_defaults`): for sepsis the shipped model's recipe (10 rounds, batch 2048,
learning rate 3e-4, dropout 0.5; trees of depth 6 from 64 bins at learning rate 0.1), and
with ``[dp]`` the recipe chosen for DP (batch 4096, learning rate 1e-3, dropout 0,
clipping norm 10; trees of depth 4 from 32 bins at learning rate 0.2), as
:mod:`vigil.federation.recipes` states them; the strategy stays what ``[strategy]`` names
(the shipped model's is ``name = "fedprox"``, ``mu = 0.01``).

The imaging task (``task = "imaging"``) retrains the imaging CNN the same way: on
Flower each SuperNode holds a scanner site prepared with ``vigil federation site --task
imaging``; in process ``[in_process] data`` is a MedMNIST ``.npz`` (or ``"sample"``)
dealt to the four scanner sites through DICOM (:func:`vigil.dicom_adapter.sites.medmnist_sites`,
site assignment seeded with ``plan.seed``). ``[plan]`` then defaults to the imaging recipe
(:data:`IMAGING_PLAN`; with ``[dp]`` batch 256 and learning rate 3e-3), ``[dp]`` trains the
GroupNorm CNN, FedBN and ``[trees]`` are refused, and the package is written by
:func:`vigil.federation.image_run.export_imaging_run` (ONNX parity checked on the bundled
public PneumoniaMNIST sample, :func:`~vigil.federation.image_run.public_check_inputs`).
"""

from __future__ import annotations

import logging
import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil.core.errors import ConfigError, VigilError
from vigil.federation.boosting import BoostingPlan
from vigil.federation.driver import Plan
from vigil.federation.hybrid import refuse_trees
from vigil.federation.image_run import IMAGING_RECIPE, dp_spec, imaging_plan
from vigil.federation.image_task import check_task
from vigil.federation.privacy import DPSettings
from vigil.federation.recipes import DP_CLIP, SEPSIS_ROUNDS, sepsis_recipe
from vigil.federation.registry import Registry, Release
from vigil.federation.secure_sum import SecureSumSettings
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import Strategy, make_strategy
from vigil.federation.tree_privacy import TreeDPSettings

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

__all__ = [
    "DEFAULT_CRON",
    "IMAGING_PLAN",
    "Engine",
    "FlowerTarget",
    "InProcessTarget",
    "RetrainConfig",
    "load_retrain_config",
    "next_runs",
    "retrain_once",
    "schedule",
]

log = logging.getLogger(__name__)

DEFAULT_CRON = "0 2 1 1,7 *"
"""02:00 on the first of January and of July: every six months."""
IMAGING_PLAN = imaging_plan()
"""``[plan]`` defaults of ``task = "imaging"``: the plan part of
:data:`~vigil.federation.image_run.IMAGING_RECIPE` (``vigil federate --task imaging``'s;
20 rounds, the round kept by validation accuracy after site calibration); with ``[dp]``,
:data:`~vigil.federation.image_run.IMAGING_DP_RECIPE`'s. The recipe's augmentation
(``max_shift``) is not a plan setting: the in-process job passes it."""


def _recipe_defaults(task: str, private: bool) -> dict[str, dict[str, Any]]:
    """Return the values each section takes where the file leaves them unset (the recipes).

    Sepsis: :func:`~vigil.federation.recipes.sepsis_recipe` (the shipped model's, or the one
    chosen for DP with ``[dp]``: batch, learning rate, dropout, clipping norm, tree plan) and
    :data:`~vigil.federation.recipes.SEPSIS_ROUNDS`; imaging:
    :func:`~vigil.federation.image_run.imaging_plan` (clipping norm 1, the
    :class:`DPSettings` default).
    """
    if task == "imaging":
        return {"plan": imaging_plan(private)}
    recipe = sepsis_recipe(private)
    return {"plan": {"rounds": SEPSIS_ROUNDS, "batch_size": recipe.batch_size, "lr": recipe.lr},
            "model": {"dropout": recipe.dropout}, "dp": {"max_grad_norm": DP_CLIP},
            "trees": {"max_depth": recipe.tree_depth, "learning_rate": recipe.tree_lr,
                      "n_bins": recipe.tree_bins}}


class Engine(StrEnum):
    """Where the federated training runs."""

    IN_PROCESS = "in-process"
    FLOWER = "flower"


@dataclass(frozen=True)
class FlowerTarget:
    """The coordinator's SuperLink and the sites it waits for.

    Parameters
    ----------
    work, certs : Path
        As ``vigil federation coordinator --work --certs``.
    sites : int
        SuperNodes to wait for.
    host : str, optional
    port : int, optional
    wait : float, optional
        Seconds to wait for the sites.
    """

    work: Path
    certs: Path
    sites: int
    host: str = "127.0.0.1"
    port: int = 9092
    wait: float = 600.0


@dataclass(frozen=True)
class InProcessTarget:
    """Data and site scheme of an in-process retraining (development, demos).

    ``ledgers``, when set, is the directory of the simulated sites' own privacy
    budgets and ledgers (``LEDGERS/NAME``, :mod:`vigil.federation.budget`).
    """

    data: str = "sample"
    sites: str = "hospital-unit"
    ledgers: str | None = None


@dataclass(frozen=True)
class RetrainConfig:
    """What every scheduled retraining does.

    Parameters
    ----------
    registry : Path
    strategy : Strategy
    plan : Plan
    model : ModelSpec, optional
    dp : DPSettings or None, optional
    engine : Engine, optional
    flower : FlowerTarget or None, optional
        Required for ``Engine.FLOWER``.
    in_process : InProcessTarget, optional
    name : str, optional
        Model name of the packages.
    private_key : Path or None, optional
        Ed25519 PEM key the packages are signed with.
    cron : str, optional
        Five-field crontab expression.
    timezone : str, optional
    trees : BoostingPlan or None, optional
        Grow boosted trees across the sites after the rounds and ship them
        fused with the network (:mod:`vigil.federation.hybrid`), on either
        engine; not with FedBN. With ``dp`` the trees are differentially private
        (:mod:`vigil.federation.tree_privacy`), each site charged the whole
        epsilon in its ledger.
    task : str, optional
        ``"sepsis"`` or ``"imaging"`` (module docstring).
    secure : SecureSumSettings or None, optional
        Secure aggregation (:mod:`vigil.federation.flower.secure`); Flower only.
    tree_dp : TreeDPSettings or None, optional
        The DP trees' settings (``[tree_dp]``); default: in process
        ``TreeDPSettings(seed=plan.seed)``, on Flower the same with each site's
        noise from its OS.
    """

    registry: Path
    strategy: Strategy
    plan: Plan
    model: ModelSpec = field(default_factory=ModelSpec)
    dp: DPSettings | None = None
    engine: Engine = Engine.IN_PROCESS
    flower: FlowerTarget | None = None
    in_process: InProcessTarget = field(default_factory=InProcessTarget)
    name: str = "sepsis-federated"
    private_key: Path | None = None
    cron: str = DEFAULT_CRON
    timezone: str = "UTC"
    trees: BoostingPlan | None = None
    task: str = "sepsis"
    secure: SecureSumSettings | None = None
    tree_dp: TreeDPSettings | None = None

    def __post_init__(self) -> None:
        if self.task == "imaging" and self.strategy.keeps_norm_local:
            raise ConfigError("a FedBN imaging model is one package per site, with each site's "
                              "BatchNorm; release fedavg or fedprox models from the schedule",
                              key="strategy")
        check_task(self.task, dp=self.dp, spec=dp_spec(self.dp), trees=self.trees is not None,
                   keeps_norm_local=self.strategy.keeps_norm_local)
        if self.secure is not None and self.engine is not Engine.FLOWER:
            raise ConfigError("secure aggregation runs on Flower only; set engine = \"flower\" "
                              "or remove [secure]", key="secure")
        if self.trees is not None:
            refuse_trees(keeps_norm_local=self.strategy.keeps_norm_local)
        if self.tree_dp is not None and (self.trees is None or self.dp is None):
            raise ConfigError("expected [tree_dp] only with [trees] and [dp]", key="tree_dp")
        if self.engine is Engine.FLOWER and self.flower is None:
            raise ConfigError("engine = \"flower\" needs a [flower] section (work, certs, sites)",
                              key="flower")
        if self.engine is Engine.FLOWER and self.strategy.keeps_norm_local:
            raise ConfigError(
                "a FedBN model carries each site's own normalization, which stays at the sites "
                "on Flower; release fedavg or fedprox models from the schedule", key="strategy",
            )
        _trigger(self.cron, self.timezone)


def _section(cls: Any, values: Any, key: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"expected a [{key}] table, got {values!r}", key=key)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"[{key}]: {exc}", key=key) from None


def load_retrain_config(path: str | Path) -> RetrainConfig:
    """Read the retraining settings from a TOML file (see the module docstring).

    Relative paths in it are taken from the file's directory.

    Raises
    ------
    ConfigError
        Naming the key or section that is missing or wrong.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"expected a readable TOML file: {exc}", key="config") from None
    known = {"cron", "timezone", "registry", "name", "private_key", "engine", "strategy", "plan",
             "model", "dp", "flower", "in_process", "trees", "task",
             "secure", "tree_dp"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown settings {unknown}; expected some of {sorted(known)}",
                          key=unknown[0])
    if "registry" not in raw:
        raise ConfigError("expected `registry = \"DIR\"`", key="registry")

    def here(p: Any) -> Path:
        return (path.parent / str(p)).resolve()

    task = str(raw.get("task", "sepsis"))
    strategy = {"name": "fedavg", **raw.get("strategy", {})}
    defaults = _recipe_defaults(task, private="dp" in raw)

    def section(key: str) -> Any:
        """Return the file's section over the recipe's defaults (a non-table as it came)."""
        given = raw.get(key, {})
        return {**defaults.get(key, {}), **given} if isinstance(given, dict) else given

    plan = section("plan")
    model = section("model")
    if not isinstance(model, dict):
        raise ConfigError(f"expected a [model] table, got {model!r}", key="model")
    if "hidden" in model:
        model["hidden"] = tuple(model["hidden"])
    flower = None
    if "flower" in raw:
        flower = _section(FlowerTarget, raw["flower"], "flower")
        flower = FlowerTarget(**{**flower.__dict__, "work": here(flower.work),
                                 "certs": here(flower.certs)})
    try:
        engine = Engine(raw.get("engine", Engine.IN_PROCESS))
    except ValueError:
        raise ConfigError(f"expected engine \"in-process\" or \"flower\", got {raw['engine']!r}",
                          key="engine") from None
    return RetrainConfig(
        registry=here(raw["registry"]),
        strategy=_section(make_strategy, strategy, "strategy"),
        plan=_section(Plan, plan, "plan"),
        model=_section(ModelSpec, model, "model"),
        dp=_section(DPSettings, section("dp"), "dp") if "dp" in raw else None,
        engine=engine, flower=flower,
        in_process=_in_process(raw.get("in_process", {}), here),
        name=str(raw.get("name", "imaging-federated" if task == "imaging" else
                         "sepsis-federated")),
        private_key=here(raw["private_key"]) if "private_key" in raw else None,
        cron=str(raw.get("cron", DEFAULT_CRON)), timezone=str(raw.get("timezone", "UTC")),
        trees=_section(BoostingPlan, section("trees"), "trees") if "trees" in raw else None,
        task=task,
        secure=_section(SecureSumSettings, raw["secure"], "secure") if "secure" in raw else None,
        tree_dp=_section(TreeDPSettings, raw["tree_dp"], "tree_dp") if "tree_dp" in raw else None,
    )


def _in_process(values: Any, here: Any) -> InProcessTarget:
    target: InProcessTarget = _section(InProcessTarget, values, "in_process")
    ledgers = None if target.ledgers is None else str(here(target.ledgers))
    if target.data == "sample":
        return InProcessTarget(data=target.data, sites=target.sites, ledgers=ledgers)
    return InProcessTarget(data=str(here(target.data)), sites=target.sites, ledgers=ledgers)


def _train(config: RetrainConfig, version: str) -> Any:
    """Run the federated training; return a :class:`~vigil.federation.simulation.FederatedRun`.

    For the imaging task an :class:`~vigil.federation.image_run.ImagingRun`.
    """
    if config.engine is Engine.FLOWER:
        from vigil.federation.flower.launch import Coordinator
        from vigil.federation.flower.runner import train_on_flower
        from vigil.federation.flower.settings import RunSettings

        target = config.flower
        assert target is not None
        coordinator = Coordinator.from_certs(target.work, target.certs, host=target.host,
                                             port=target.port)
        settings = RunSettings(plan=config.plan, strategy=config.strategy, sites=target.sites,
                               model=config.model, dp=config.dp, wait=target.wait,
                               trees=config.trees, task=config.task, image=dp_spec(config.dp),
                               secure=config.secure, tree_dp=config.tree_dp)
        return train_on_flower(coordinator, settings, target.work / "runs" / version)
    if config.task == "imaging":
        return _train_images(config, version)
    from vigil.data import load_physionet, resolve_data_path
    from vigil.federation.simulation import federate

    data = config.in_process.data
    return federate(load_physionet(data), scheme=config.in_process.sites,
                    strategy=config.strategy, plan=config.plan, model=config.model, dp=config.dp,
                    data=resolve_data_path(data).name, trees=config.trees,
                    ledgers=config.in_process.ledgers, run_id=_run_id(version),
                    tree_dp=config.tree_dp)


def _run_id(version: str) -> str:
    """Return a run's id in the simulated ledgers, unique even when a version is retried."""
    return f"{version}-{uuid.uuid4().hex[:12]}"


def _train_images(config: RetrainConfig, version: str) -> Any:
    from vigil.dicom_adapter.sites import medmnist_sites
    from vigil.federation.image_run import federate_images

    data = config.in_process.data
    parts = medmnist_sites(data, seed=config.plan.seed, splits=("train", "val"))
    train, valid = ([(s.site, s.inputs, s.labels) for s in parts[k]] for k in ("train", "val"))
    return federate_images(list(train), list(valid), strategy=config.strategy, plan=config.plan,
                           data=Path(data).name, dp=config.dp,
                           max_shift=IMAGING_RECIPE["max_shift"],
                           ledgers=config.in_process.ledgers, run_id=_run_id(version))


def _export(config: RetrainConfig, run: Any, staging: Path, version: str,
            key: bytes | None) -> None:
    if config.task == "imaging":
        from vigil.federation.image_run import export_imaging_run, public_check_inputs

        export_imaging_run(run, staging, name=config.name, version=version, private_key_pem=key,
                           check_inputs=public_check_inputs(run.spec))
        return
    from vigil.federation.simulation import export_run

    export_run(run, staging, name=config.name, version=version, private_key_pem=key)


def retrain_once(config: RetrainConfig) -> Release:
    """Train, export and sign the next version, and release it into the registry.

    Returns
    -------
    Release
        With its metrics and its difference from the previous release.

    Raises
    ------
    VigilError
        If the training, the export or the release fails (nothing is released).
    """
    from vigil.core.signing import public_key_of

    registry = Registry(config.registry)
    version = registry.next_version()
    log.info("retraining %s %s (%s)", config.name, version, config.engine.value)
    run = _train(config, version)
    key = None if config.private_key is None else config.private_key.read_bytes()
    staging = registry.staging(version)
    _export(config, run, staging, version, key)
    release = registry.add(staging, public_key=None if key is None else public_key_of(key))
    log.info("released %s %s: validation AUROC %s, utility %s", release.name, release.version,
             release.metrics.get("auroc"), release.metrics.get("utility"))
    return release


_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _weekdays(field: str) -> str:
    """Turn crontab's day of week (0 or 7 = Sunday) into names (APScheduler 3 has 0 = Monday)."""
    if field == "*":
        return field
    days: set[int] = set()
    for item in field.split(","):
        span, _, step = item.partition("/")
        if span == "*":
            lo, hi = 0, 6
        else:
            ends = [int(x) if x.isdigit() else _DAYS.index(x[:3].lower()) for x in span.split("-")]
            lo, hi = ends[0], ends[-1]
            if hi < lo and hi == 0:  # "fri-sun"
                hi = 7
        days.update(d % 7 for d in range(lo, hi + 1, int(step) if step else 1))
    return ",".join(_DAYS[d] for d in sorted(days))


def _trigger(cron: str, timezone: str) -> Any:
    """Build the APScheduler trigger of a standard five-field crontab expression."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        fields = cron.split()
        if len(fields) != 5:
            raise ValueError(f"{len(fields)} fields")
        minute, hour, day, month, weekday = fields
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_weekdays(weekday), timezone=timezone)
    except (ValueError, LookupError) as exc:
        raise ConfigError(f"expected a five-field crontab expression and a time zone, got "
                          f"{cron!r} ({timezone}): {exc}", key="cron") from None


def next_runs(config: RetrainConfig, *, count: int = 3,
              after: datetime | None = None) -> list[datetime]:
    """Return the next ``count`` times the schedule fires (after ``after``, default now)."""
    trigger = _trigger(config.cron, config.timezone)
    out: list[datetime] = []
    previous = None
    now = after or datetime.now(trigger.timezone)
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, now)
        if fire is None:
            break
        out.append(fire)
        previous, now = fire, fire
    return out


def _job(config: RetrainConfig) -> None:
    try:
        retrain_once(config)
    except VigilError as exc:
        log.error("scheduled retraining failed, nothing released: %s", exc)


def schedule(config: RetrainConfig, *, blocking: bool = True) -> BaseScheduler:
    """Create the APScheduler scheduler that runs :func:`retrain_once` on the cron schedule.

    Parameters
    ----------
    config : RetrainConfig
    blocking : bool, optional
        A ``BlockingScheduler`` (for ``vigil federation schedule``; call
        ``start()`` to run it until SIGTERM) or a ``BackgroundScheduler``.

    Returns
    -------
    BaseScheduler
        Not started. One retraining at a time; a missed run (the coordinator
        was down) is run once when it comes back, within a day.
    """
    from apscheduler.schedulers.background import BackgroundScheduler
    from apscheduler.schedulers.blocking import BlockingScheduler

    cls = BlockingScheduler if blocking else BackgroundScheduler
    scheduler = cls(timezone=config.timezone)
    scheduler.add_job(_job, _trigger(config.cron, config.timezone), args=[config], id="retrain",
                      name=f"retrain {config.name}", max_instances=1, coalesce=True,
                      misfire_grace_time=24 * 3600)
    return scheduler
