"""The settings of one federated run on Flower, as they travel in the run config.

The coordinator writes them into the Flower app's ``pyproject.toml``
(``[tool.flwr.app.config]``, :func:`app_pyproject`); Flower hands them to the
ServerApp and to every ClientApp as ``context.run_config``
(:meth:`RunSettings.from_run_config`). From them each side builds the same
objects the in-process driver uses: :class:`~vigil.federation.driver.Plan`,
:class:`~vigil.federation.strategies.Strategy`,
:class:`~vigil.federation.site.ModelSpec` and
:class:`~vigil.federation.privacy.DPSettings`. TOML has no null, so an unset
option travels as an empty string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from vigil.core.errors import ConfigError
from vigil.federation.driver import Plan
from vigil.federation.privacy import DPSettings
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import DEFAULT_TRIM, Strategy, StrategyName, make_strategy

__all__ = ["APP_NAME", "RunSettings", "app_pyproject"]

APP_NAME = "vigil-federation"
SERVERAPP = "vigil.federation.flower.serverapp:app"
CLIENTAPP = "vigil.federation.flower.clientapp:app"


@dataclass(frozen=True)
class RunSettings:
    """One federated training on Flower.

    Parameters
    ----------
    out_dir : str
        Where the ServerApp writes the result (on the coordinator's disk).
    sites : int
        SuperNodes to wait for before round 1.
    wait : float, optional
        Seconds to wait for them; the run starts with those connected by then
        if they are at least ``min_sites``.
    timeout : float, optional
        Seconds a site has to answer a round's request (the driver's time
        budget); a site that has not answered is dropped for the round.
    rounds, local_epochs, batch_size, lr, seed, min_sites
        As :class:`~vigil.federation.driver.Plan`.
    strategy, mu, robust, max_share, trim_beta
        As :func:`~vigil.federation.strategies.make_strategy`.
    hidden : tuple of int, optional
    dropout : float, optional
    dp_epsilon, dp_delta : float or None, optional
        Record-level DP-SGD budget of every site (None: no DP).
    dp_clip : float, optional
    threads : int, optional
        torch threads of the ServerApp and of each ClientApp.
    """

    out_dir: str
    sites: int
    rounds: int
    wait: float = 300.0
    timeout: float = 600.0
    local_epochs: int = 1
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0
    min_sites: int = 2
    strategy: str = "fedavg"
    mu: float | None = None
    robust: str | None = None
    max_share: float | None = None
    trim_beta: float = DEFAULT_TRIM
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.2
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_clip: float = 1.0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.sites < 1 or self.min_sites > self.sites:
            raise ConfigError(
                f"expected 1 <= min_sites <= sites, got min_sites={self.min_sites}, "
                f"sites={self.sites}", key="sites",
            )
        for key in ("wait", "timeout"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"expected {key} > 0 s, got {getattr(self, key)}", key=key)
        self.plan()
        self.make_strategy()
        self.dp()

    def plan(self) -> Plan:
        """Return the driver's plan; ``timeout`` is the time budget of a site's answer."""
        return Plan(rounds=self.rounds, local_epochs=self.local_epochs, batch_size=self.batch_size,
                    lr=self.lr, seed=self.seed, min_sites=self.min_sites,
                    time_budget=self.timeout)

    def make_strategy(self) -> Strategy:
        """Return the strategy (validated by :func:`make_strategy`)."""
        return make_strategy(self.strategy, mu=self.mu, robust=self.robust,
                             max_share=self.max_share, trim_beta=self.trim_beta)

    def model(self) -> ModelSpec:
        """Return the network every site trains."""
        return ModelSpec(hidden=tuple(self.hidden), dropout=self.dropout)

    def dp(self) -> DPSettings | None:
        """Every site's DP-SGD budget, or None."""
        if self.dp_epsilon is None:
            return None
        return DPSettings(self.dp_epsilon, delta=self.dp_delta, max_grad_norm=self.dp_clip)

    def site_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~vigil.federation.site.Site` for every site."""
        return {"model": self.model(),
                "keep_norm_local": StrategyName(self.strategy) is StrategyName.FEDBN,
                "dp": self.dp()}

    def to_run_config(self) -> dict[str, str | int | float]:
        """Flat TOML-ready values (None as ``""``, ``hidden`` as ``"128,64"``)."""
        out: dict[str, str | int | float] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "hidden":
                value = ",".join(str(h) for h in value)
            out[f.name.replace("_", "-")] = "" if value is None else value
        return out

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Parse the run config Flower hands an app.

        Raises
        ------
        ConfigError
            Naming the key, if one is missing or has the wrong type.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in config:
                continue
            raw = config[key]
            try:
                if f.name == "hidden":
                    values[f.name] = tuple(int(h) for h in str(raw).split(",") if h.strip())
                elif raw == "":
                    values[f.name] = None
                elif f.type in ("int",):
                    values[f.name] = int(raw)
                elif "float" in str(f.type):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise ConfigError(f"run config {key!r}: expected {f.type}, got {raw!r}",
                                  key=key) from None
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"incomplete run config: {exc}", key="run_config") from None


def app_pyproject(settings: RunSettings) -> str:
    """Return the ``pyproject.toml`` of the Flower app for one run.

    The components are vigil's own ServerApp and ClientApp, imported from
    the installed ``vigil`` package: the app bundle carries no code, and with
    runtime dependency installation switched off nothing is installed.
    """
    lines = [
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
        "[tool.flwr.app.config]",
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.to_run_config().items()]
    return "\n".join(lines) + "\n"
