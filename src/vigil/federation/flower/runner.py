"""One federated training on a running SuperLink, from the coordinator's side.

:func:`run_on_flower` writes the Flower app of the run (vigil's ServerApp and
ClientApp with the run's settings, :func:`~.settings.app_pyproject`) into
``RUN_DIR/app``, submits it (``flwr run``), follows ``RUN_DIR/result/events.jsonl``
until the ServerApp reports ``done`` or ``failed``, and reads the result back
(:func:`~.results.load_result`). A run that outlives ``timeout`` is stopped
at the SuperLink.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil.core.errors import AggregationError, ConfigError, VigilError
from vigil.federation.flower.launch import Coordinator, stop_run, submit_run
from vigil.federation.flower.results import EVENTS_FILE, RunOutput, load_result
from vigil.federation.flower.settings import RunSettings, app_pyproject

if TYPE_CHECKING:
    from vigil.federation.image_run import ImagingRun
    from vigil.federation.simulation import FederatedRun

__all__ = [
    "FLOWER_METHOD",
    "federated_run",
    "imaging_run",
    "read_events",
    "run_on_flower",
    "train_on_flower",
]

log = logging.getLogger(__name__)
FLOWER_METHOD = "federated (Flower 1.42 SuperLink and SuperNodes, TLS, authenticated nodes)"


def read_events(result_dir: str | Path) -> list[dict[str, Any]]:
    """Return the ServerApp's events so far (one dict per line; a torn last line is skipped)."""
    path = Path(result_dir) / EVENTS_FILE
    events = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def run_on_flower(
    coordinator: Coordinator,
    settings: RunSettings,
    run_dir: str | Path,
    *,
    timeout: float | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> RunOutput:
    """Run one federated training on the coordinator's SuperLink and return its result.

    Parameters
    ----------
    coordinator : Coordinator
        A running SuperLink (``vigil federation coordinator``).
    settings : RunSettings
        Its ``out_dir`` is replaced by ``RUN_DIR/result``.
    run_dir : str or Path
        A new directory for this run.
    timeout : float or None, optional
        Seconds the whole run may take; default: the sites' wait plus one
        request timeout per request of the run (``2 * rounds + 1``, and with
        trees ``n_trees * (max_depth + 1) + 6`` more) plus one minute.
    on_event : callable, optional
        Called with each new event of the ServerApp (progress display).

    Returns
    -------
    RunOutput

    Raises
    ------
    AggregationError
        If the ServerApp failed (too few sites, no round aggregated, ...).
    VigilError
        If the run did not finish within ``timeout``.
    """
    run_dir = Path(run_dir).resolve()
    result_dir = run_dir / "result"
    settings = replace(settings, out_dir=str(result_dir))
    app_dir = run_dir / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(app_pyproject(settings))
    if timeout is None:
        requests = 2 * settings.plan.rounds + 1
        if settings.trees is not None:  # quantiles, edges, the levels, score sums, 2 evaluations
            requests += 5 + settings.trees.n_trees * (settings.trees.max_depth + 1) + 1
        timeout = settings.wait + requests * settings.timeout + 60.0
    proc = submit_run(coordinator, app_dir, log_path=run_dir / "flwr-run.log")
    deadline = time.monotonic() + timeout
    seen = 0
    final: dict[str, Any] | None = None
    try:
        while final is None and time.monotonic() < deadline:
            events = read_events(result_dir)
            for event in events[seen:]:
                if on_event is not None:
                    on_event(event)
                if event["event"] in ("done", "failed"):
                    final = event
            seen = len(events)
            if final is None and not proc.alive:
                time.sleep(2.0)  # `flwr run` ended: give the ServerApp's last event time to land
                if len(read_events(result_dir)) == seen:
                    break
            time.sleep(0.5)
    finally:
        ended = not proc.alive
        proc.stop(timeout=5)
    if final is None:
        run_id = next((e.get("run_id") for e in read_events(result_dir) if e["event"] == "start"),
                      None)
        if run_id is not None:
            try:
                stop_run(coordinator, int(run_id))
            except VigilError as exc:
                log.warning("could not stop run %s: %s", run_id, exc)
        why = "`flwr run` ended without a result" if ended else \
            f"the Flower run did not finish within {timeout:.0f} s"
        raise VigilError(f"{why}; see {run_dir}/flwr-run.log and the SuperLink log")
    if final["event"] == "failed":
        raise AggregationError(f"the federated run failed: {final.get('detail')}", round_=0)
    return load_result(result_dir)


def train_on_flower(
    coordinator: Coordinator,
    settings: RunSettings,
    run_dir: str | Path,
    *,
    timeout: float | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> FederatedRun | ImagingRun:
    """Run :func:`run_on_flower`; wrap the result for the exporter of the run's task.

    The sepsis task's for :func:`.simulation.export_run`, imaging's for
    :func:`~vigil.federation.image_run.export_imaging_run`.

    Raises
    ------
    ConfigError
        For FedBN: its packages carry each site's own normalization, which
        stays at the sites on Flower.
    """
    if settings.strategy.keeps_norm_local:
        raise ConfigError("a FedBN package carries one site's own normalization, which stays "
                          "at the site on Flower; use fedavg or fedprox here", key="strategy")
    out = run_on_flower(coordinator, settings, run_dir, timeout=timeout, on_event=on_event)
    return imaging_run(settings, out) if settings.task == "imaging" else \
        federated_run(settings, out)


def imaging_run(settings: RunSettings, out: RunOutput) -> ImagingRun:
    """Wrap a finished imaging run on Flower for its export (``export_imaging_run``).

    The run holds no site (their images and, under FedBN, their BatchNorm stay at the
    SuperNodes): only FedAvg / FedProx runs can be exported by the coordinator.
    """
    from vigil.federation.image_run import ImagingRun

    return ImagingRun(result=out.result, strategy=settings.strategy, plan=settings.plan,
                      spec=settings.image, data="each site's own images", sites=[],
                      dp=settings.dp, method=FLOWER_METHOD)


def federated_run(settings: RunSettings, out: RunOutput) -> FederatedRun:
    """Wrap a finished Flower run (network and trees) for :func:`.simulation.export_run`."""
    from vigil.federation.simulation import FederatedRun

    n = len(out.result.statistics)
    method = FLOWER_METHOD
    if settings.secure is not None:
        s = settings.secure
        method += (f"; secure aggregation (SecAgg+: the coordinator saw sums only; "
                   f"num_shares={s.num_shares or n}, clipping_range={s.clipping_range}, "
                   f"quantization_range={s.quantization_range}, {s.modulus_bits}-bit, "
                   f"norm_bound={s.norm_bound})")
    noises = {}
    if settings.tree_dp is not None and out.hybrid is not None:
        from vigil.federation.tree_privacy import planned_noises

        noises = planned_noises({k: s.count for k, s in out.result.statistics.items()},
                                dp=settings.dp, plan=settings.plan, trees=settings.trees,  # type: ignore[arg-type]
                                settings=settings.tree_dp)
    return FederatedRun(
        result=out.result, strategy=settings.strategy, plan=settings.plan, model=settings.model,
        dp=settings.dp, scheme=f"{n} SuperNodes", data="each site's own data", sites=[],
        method=method, hybrid=out.hybrid, tree_dp=settings.tree_dp, tree_noise=noises,
        tree_edges="public" if settings.tree_dp is not None else "quantiles",
    )
