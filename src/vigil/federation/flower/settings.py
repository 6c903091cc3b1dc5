"""The settings of one federated run on Flower, as they travel in the run config.

A run is the in-process driver's own objects,
:class:`~vigil.federation.driver.Plan`,
:class:`~vigil.federation.strategies.Strategy`,
:class:`~vigil.federation.site.ModelSpec` and, under DP-SGD,
:class:`~vigil.federation.privacy.DPSettings`, plus where to write the result
and how many sites to wait for. The coordinator writes them into the Flower
app's ``pyproject.toml`` (``[tool.flwr.app.config]``, :func:`app_pyproject`),
one TOML table per object; Flower flattens them into ``context.run_config``
(``plan.rounds``, ``strategy.name``, ...) for the ServerApp and every
ClientApp, which rebuild the objects (:meth:`RunSettings.from_run_config`).
The fields are read off the dataclasses, so a new option of the driver
travels without a change here. TOML has no null and Flower's run config
no list: None travels as ``""`` and a tuple as ``"128,64"``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vigil.core.errors import ConfigError
from vigil.federation.boosting import BoostingPlan
from vigil.federation.driver import Plan
from vigil.federation.hybrid import refuse_trees
from vigil.federation.image_task import TASKS, CNNSpec, ImagingTask, check_task
from vigil.federation.privacy import DPSettings
from vigil.federation.secure_sum import SecureSumSettings
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import Strategy
from vigil.federation.tree_privacy import TreeDPSettings, network_dp

__all__ = ["APP_NAME", "TASKS", "RunSettings", "app_pyproject"]

APP_NAME = "vigil-federation"
SERVERAPP = "vigil.federation.flower.serverapp:app"
CLIENTAPP = "vigil.federation.flower.clientapp:app"
_NONE = ""


@dataclass(frozen=True)
class RunSettings:
    """One federated training on Flower.

    Parameters
    ----------
    plan : Plan
        Its ``time_budget`` is the seconds each site has to answer a request
        (a site that has not answered is dropped from that round); required.
    strategy : Strategy
    model : ModelSpec
    dp : DPSettings or None
        Every site's record-level DP-SGD budget.
    sites : int
        SuperNodes to wait for before round 1.
    wait : float, optional
        Seconds to wait for them; the run then starts with those connected if
        they are at least ``plan.min_sites``.
    out_dir : str, optional
        Where the ServerApp writes the result (on the coordinator's disk).
    threads : int, optional
        torch threads of the ServerApp and of each ClientApp.
    trees : BoostingPlan or None, optional
        After the rounds, grow these boosted trees across the same sites and
        fuse them with the kept network (:mod:`vigil.federation.flower.treewire`).
        Not with FedBN. With ``dp`` the trees are differentially private
        (:mod:`vigil.federation.tree_privacy`): public bin edges, each site
        noises its own histograms, one composed epsilon per site.
    task : str, optional
        ``"sepsis"`` (default) or ``"imaging"``: every SuperNode must hold a site
        prepared for it (:mod:`vigil.federation.flower.imagesite`).
    image : CNNSpec, optional
        The imaging CNN (GroupNorm under DP-SGD); unused for sepsis.
    secure : SecureSumSettings or None, optional
        Secure aggregation of the training rounds
        (:mod:`vigil.federation.flower.secure`): FedAvg or FedProx without a
        robust aggregator, no DP-SGD, at least 3 sites.
    tree_dp : TreeDPSettings or None, optional
        With ``trees`` and ``dp``: the epsilon split, features per tree and
        hessian floor of the DP trees; default ``TreeDPSettings(seed=plan.seed,
        seeded_noise=False)`` (each site draws its noise from its OS).
    """

    plan: Plan
    strategy: Strategy
    sites: int
    model: ModelSpec = field(default_factory=ModelSpec)
    dp: DPSettings | None = None
    wait: float = 300.0
    out_dir: str = ""
    threads: int = 1
    trees: BoostingPlan | None = None
    task: str = "sepsis"
    image: CNNSpec = field(default_factory=CNNSpec)
    secure: SecureSumSettings | None = None
    tree_dp: TreeDPSettings | None = None

    def __post_init__(self) -> None:
        check_task(self.task, dp=self.dp, spec=self.image, trees=self.trees is not None,
                   keeps_norm_local=self.strategy.keeps_norm_local)
        if self.secure is not None:
            self.secure.resolve(self.sites)
            if self.strategy.robust is not None or self.strategy.keeps_norm_local:
                raise ConfigError("expected FedAvg or FedProx without a robust aggregator under "
                                  "secure aggregation (the coordinator sees only the sum), got "
                                  f"{self.strategy.name.value} robust={self.strategy.robust}",
                                  key="secure")
            if self.dp is not None:
                raise ConfigError("expected no DP-SGD under secure aggregation (not supported "
                                  "yet: each site's accountant), got dp", key="secure")
        if self.trees is not None:
            refuse_trees(keeps_norm_local=self.strategy.keeps_norm_local)
        if self.trees is not None and self.dp is not None and self.tree_dp is None:
            object.__setattr__(self, "tree_dp", TreeDPSettings(seed=self.plan.seed,
                                                               seeded_noise=False))
        if self.tree_dp is not None and (self.trees is None or self.dp is None):
            raise ConfigError("expected DP tree settings only with trees and DP-SGD, got "
                              f"trees={self.trees is not None}, dp={self.dp is not None}",
                              key="tree_dp")
        if self.plan.time_budget is None:
            raise ConfigError("expected a time budget (seconds a site has to answer) for a "
                              "Flower run, got none", key="timeout")
        if not 1 <= self.plan.min_sites <= self.sites:
            raise ConfigError(f"expected 1 <= min_sites <= sites, got min_sites="
                              f"{self.plan.min_sites}, sites={self.sites}", key="sites")
        if not self.wait > 0:
            raise ConfigError(f"expected wait > 0 s, got {self.wait}", key="wait")

    @property
    def timeout(self) -> float:
        """Seconds each site has to answer a request."""
        return float(self.plan.time_budget)  # type: ignore[arg-type]

    def site_options(self) -> dict[str, Any]:
        """Return the keyword arguments of every site of the run's task.

        :class:`~vigil.federation.site.Site`'s, or
        :class:`~vigil.federation.image_task.ImagingSite`'s for the imaging task.
        """
        if self.task == "imaging":
            return {"spec": self.image, "keep_bn_local": self.strategy.keeps_norm_local,
                    "dp": self.dp}
        return {"model": self.model, "keep_norm_local": self.strategy.keeps_norm_local,
                "dp": self.network_dp}

    @property
    def network_dp(self) -> DPSettings | None:
        """The network's DP-SGD: ``dp``, or its ``1 - tree_share`` part under DP trees."""
        if self.dp is None or self.tree_dp is None:
            return self.dp
        return network_dp(self.dp, self.tree_dp)  # type: ignore[no-any-return]

    def driver_task(self) -> ImagingTask | None:
        """Return the driver's ``task``: the imaging CNN, or None (the sepsis network)."""
        return ImagingTask(self.image) if self.task == "imaging" else None

    def to_run_config(self) -> dict[str, Any]:
        """Nested TOML-ready values (``{"plan": {"rounds": 2, ...}, "sites": 3, ...}``)."""
        return _dump(self)

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Rebuild the settings from Flower's flat run config (``"plan.rounds": 2``, ...).

        Raises
        ------
        ConfigError
            Naming the key, if one is missing or has the wrong type.
        """
        nested: dict[str, Any] = {}
        for key, value in config.items():
            node = nested
            *path, leaf = key.split(".")
            for part in path:
                node = node.setdefault(part, {})
            node[leaf] = value
        return _load(cls, nested, "")


def _dump(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.name.startswith("_")}
    if obj is None:
        return _NONE
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, tuple):  # Flower's run config holds scalars only
        return ",".join(str(_dump(v)) for v in obj)
    return obj


def _load(cls: type[Any], values: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values or not f.init:
            continue
        kwargs[f.name] = _value(hints[f.name], values[f.name], f"{where}{f.name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"run config {where.rstrip('.') or 'root'}: {exc}",
                          key=where.rstrip(".") or "run_config") from None


def _value(hint: Any, raw: Any, key: str) -> Any:
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()
    if options and type(None) in options:
        if raw == _NONE:
            return None
        hint = next(o for o in options if o is not type(None))
    try:
        if dataclasses.is_dataclass(hint):
            return _load(hint, raw, key + ".")  # type: ignore[arg-type]
        if typing.get_origin(hint) is tuple:
            (item, *_) = typing.get_args(hint)
            return tuple(item(v) for v in str(raw).split(",") if v.strip())
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return hint(raw)
        if hint is bool:
            if not isinstance(raw, bool):
                raise ValueError(raw)
            return raw
        if hint in (int, float, str):
            return hint(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"run config {key!r}: expected {hint}, got {raw!r}", key=key) from None
    raise ConfigError(f"run config {key!r}: unsupported type {hint}", key=key)


def _toml(table: Mapping[str, Any], prefix: str) -> list[str]:
    lines = [f"[{prefix}]"]
    tables = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in tables:
        lines += ["", *_toml(value, f"{prefix}.{key}")]
    return lines


def app_pyproject(settings: RunSettings) -> str:
    """Return the ``pyproject.toml`` of the Flower app for one run.

    The components are vigil's own ServerApp and ClientApp, imported from
    the installed ``vigil`` package: the app bundle carries no code, and with
    runtime dependency installation switched off nothing is installed.
    """
    head = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        f'name = "{APP_NAME}"',
        'version = "1.0.0"',
        'description = "vigil federated sepsis model training"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "vigil"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{SERVERAPP}"',
        f'clientapp = "{CLIENTAPP}"',
        "",
    ]
    return "\n".join(head + _toml(settings.to_run_config(), "tool.flwr.app.config")) + "\n"
