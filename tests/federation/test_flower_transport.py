"""vigil's ServerApp transport and ClientApp over real Flower messages, without processes.

A fake ``Grid`` hands each pushed message to vigil's ClientApp (as a SuperNode
would, with the node's context) and queues the reply; the driver runs over
:class:`FlowerTransport` and must give what it gives in-process.
"""

from __future__ import annotations

import tomllib
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Error, Message, RecordDict
from flwr.common.config import flatten_dict
from flwr.supercore.task_identity import TaskIdentity

from vigil.core.errors import AggregationError, ConfigError
from vigil.data import PhysioNetTable, partition
from vigil.federation.driver import Plan, run_federation
from vigil.federation.flower import clientapp
from vigil.federation.flower.settings import RunSettings, app_pyproject
from vigil.federation.flower.sitedata import SITE_DIR_KEY, load_site, prepare_site
from vigil.federation.flower.transport import FlowerTransport
from vigil.federation.flower.wire import (
    config_from_record,
    config_to_record,
    evaluation_from_content,
    evaluation_to_content,
    statistics_from_content,
    statistics_to_content,
    update_from_content,
    update_to_content,
    weights_from_record,
    weights_to_record,
    wire_bytes,
)
from vigil.federation.history import Status
from vigil.federation.messages import FitConfig, PrivacySpent, Update
from vigil.federation.privacy import DPSettings
from vigil.federation.site import ModelSpec
from vigil.federation.strategies import make_strategy


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture()
def task() -> Iterator[None]:
    """Flower builds messages only inside a task (run and node ids set)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = None


@pytest.fixture(scope="module")
def site_dirs(sample: PhysioNetTable, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    out = {}
    for name, positions in partition(sample, "random:3", seed=0).items():
        table = sample.select(positions[:150])
        table.frame.to_parquet(root / f"{name}.parquet")
        out[name] = root / name
        prepare_site(name, root / f"{name}.parquet", out[name])
    return out


def _settings(**plan: object) -> RunSettings:
    return RunSettings(plan=Plan(**{"rounds": 2, "seed": 3, "time_budget": 30.0, **plan}),
                       strategy=make_strategy("fedavg"), sites=3, model=ModelSpec(hidden=(8,)))


def _run_config(settings: RunSettings) -> dict[str, object]:
    """The run config exactly as Flower derives it from the app's pyproject.toml."""
    return flatten_dict(tomllib.loads(app_pyproject(settings))["tool"]["flwr"]["app"]["config"])


class FakeGrid:
    """Delivers each message to vigil's ClientApp in this process, like a SuperNode would.

    ``silent`` nodes never answer; ``broken`` nodes answer an error.
    """

    def __init__(self, site_dirs: dict[str, Path], settings: RunSettings, *,
                 silent: set[int] = frozenset(), broken: set[int] = frozenset()) -> None:
        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i,
                             node_config={SITE_DIR_KEY: str(path)}, state=RecordDict(),
                             run_config=_run_config(settings))
            for i, path in enumerate(site_dirs.values())
        }
        self.silent, self.broken = silent, broken
        self.replies: dict[str, Message] = {}
        self.pushed: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: list[Message]) -> list[str]:
        ids = []
        for msg in messages:
            mid = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = mid
            self.pushed.append(msg)
            node = msg.metadata.dst_node_id
            if node in self.broken:
                self.replies[mid] = Message(Error(code=0, reason="boom"), reply_to=msg)
            elif node not in self.silent:
                self.replies[mid] = clientapp.app(msg, self.contexts[node])
            ids.append(mid)
        return ids

    def pull_messages(self, ids: list[str]) -> list[Message]:
        return [self.replies.pop(i) for i in ids if i in self.replies]


def _reference(site_dirs: dict[str, Path], settings: RunSettings):  # type: ignore[no-untyped-def]
    sites = [load_site(p, **settings.site_options()) for p in site_dirs.values()]
    return run_federation(sites, settings.strategy, settings.plan, model=settings.model)


def test_driver_over_flower_messages_equals_in_process(site_dirs, task) -> None:  # type: ignore[no-untyped-def]
    settings = _settings()
    grid = FakeGrid(site_dirs, settings)
    transport = FlowerTransport(grid, timeout=settings.timeout)  # type: ignore[arg-type]
    sites = transport.connect(expected=3, min_sites=2, wait=1.0)
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model,
                            transport=transport)
    reference = _reference(site_dirs, settings)

    assert [s.name for s in sites] == sorted(site_dirs)
    assert list(result.weights) == list(reference.weights)
    for k in reference.weights:
        np.testing.assert_allclose(result.weights[k], reference.weights[k], rtol=0, atol=1e-6)
    assert result.pooled.auroc == pytest.approx(reference.pooled.auroc, abs=1e-9)
    # query + 2 x (train + evaluate) per site, counted on the wire
    assert {t.messages for t in transport.traffic.values()} == {5}
    weights_bytes = sum(v.nbytes for v in reference.weights.values())
    assert all(t.sent > 4 * weights_bytes for t in transport.traffic.values())


@pytest.mark.slow
# Opacus' own warnings on a tiny site (its accountant's alpha grid, torch's backward hook)
@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning")
@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
def test_dp_privacy_adds_up_over_rounds_in_the_node_state(site_dirs, task) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    settings = dataclasses.replace(_settings(), dp=DPSettings(8.0))
    grid = FakeGrid(site_dirs, settings)
    transport = FlowerTransport(grid, timeout=settings.timeout)  # type: ignore[arg-type]
    sites = transport.connect(expected=3, min_sites=2, wait=1.0)
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model,
                            transport=transport)
    reference = _reference(site_dirs, settings)

    for name, spent in reference.privacy.items():
        assert result.privacy[name].steps == spent.steps > 0
        assert result.privacy[name].epsilon == pytest.approx(spent.epsilon, rel=1e-9)
        assert spent.epsilon <= 8.0 + 1e-6
    for k in reference.weights:
        np.testing.assert_allclose(result.weights[k], reference.weights[k], rtol=0, atol=1e-6)


def test_a_silent_node_is_dropped_after_the_timeout(site_dirs, task) -> None:  # type: ignore[no-untyped-def]
    import time

    settings = _settings(rounds=1, time_budget=6.0)  # long enough for a loaded machine
    grid = FakeGrid(site_dirs, settings)
    transport = FlowerTransport(grid, timeout=settings.timeout)  # type: ignore[arg-type]
    sites = transport.connect(expected=3, min_sites=2, wait=1.0)
    grid.silent = {sites[2].node_id}
    t0 = time.monotonic()
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model,
                            transport=transport)
    elapsed = time.monotonic() - t0

    (record,) = result.history.rounds
    late = {s.site: s for s in record.sites}[sites[2].name]
    assert record.aggregated
    assert (late.status, late.reason, late.detail) == (Status.DROPPED, "timeout", "TimeoutError")
    assert 6.0 <= elapsed < 60
    assert [e.site for e in result.evaluations] == [s.name for s in sites[:2]]
    # the late site was not asked to evaluate: 1 query + 1 train request only
    assert transport.traffic[sites[2].name].messages == 2


def test_an_error_reply_drops_the_site(site_dirs, task) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(rounds=1)
    grid = FakeGrid(site_dirs, settings)
    transport = FlowerTransport(grid, timeout=settings.timeout)  # type: ignore[arg-type]
    sites = transport.connect(expected=3, min_sites=2, wait=1.0)
    grid.broken = {sites[0].node_id}
    result = run_federation(sites, settings.strategy, settings.plan, model=settings.model,
                            transport=transport)

    first = result.history.rounds[0].sites[0]
    assert (first.status, first.reason, first.detail) == (Status.DROPPED, "error",
                                                         "ConnectionError")


def test_too_few_nodes_fail_the_run_clearly(site_dirs, task) -> None:  # type: ignore[no-untyped-def]
    settings = _settings()
    grid = FakeGrid(dict(list(site_dirs.items())[:1]), settings)
    transport = FlowerTransport(grid, timeout=settings.timeout)  # type: ignore[arg-type]
    with pytest.raises(AggregationError, match="expected at least 2 SuperNodes, 1 connected"):
        transport.connect(expected=3, min_sites=2, wait=0.5)


def test_messages_cross_the_wire_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    weights = OrderedDict([("norm.mean", rng.normal(size=5).astype(np.float32)),
                           ("mlp.0.weight", rng.normal(size=(3, 5)).astype(np.float32))])
    update = Update(site="A", weights=weights, num_examples=17, loss=0.25,
                    privacy=PrivacySpent(1.5, 1e-5, 1.1, 1.0, 0.01, 40))
    back = update_from_content(update_to_content(update))
    assert (back.site, back.num_examples, back.loss, back.privacy) == (
        "A", 17, 0.25, update.privacy)
    assert list(back.weights) == list(weights)
    assert all(np.array_equal(back.weights[k], weights[k]) for k in weights)
    assert list(weights_from_record(weights_to_record(weights))) == list(weights)
    config = FitConfig(round=2, total_rounds=5, seed=1, local_epochs=1, batch_size=64, lr=1e-3)
    assert config_from_record(config_to_record(config)) == config
    # the serialized size is the arrays plus a small envelope
    content = update_to_content(update)
    assert 0 < wire_bytes(content) - sum(v.nbytes for v in weights.values()) < 2000


def test_statistics_and_evaluations_round_trip(site_dirs) -> None:  # type: ignore[no-untyped-def]
    import torch

    from vigil.federation.model import SepsisNet, get_weights

    site = load_site(next(iter(site_dirs.values())), model=ModelSpec(hidden=(8,)))
    stats = site.statistics()
    back = statistics_from_content(statistics_to_content(stats))
    for k, v in stats.payload().items():
        assert np.array_equal(back.payload()[k], v)
    torch.manual_seed(0)
    evaluation = site.evaluate(get_weights(SepsisNet(site.train.X.shape[1], hidden=(8,))))
    again = evaluation_from_content(evaluation_to_content(evaluation))
    for k, v in evaluation.payload().items():
        assert np.array_equal(again.payload()[k], v, equal_nan=True)


def test_a_malformed_reply_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="expected records"):
        update_from_content(RecordDict())
    content = update_to_content(Update(site="A", weights=OrderedDict(), num_examples=3, loss=0.1))
    del content.config_records["scalars"]["num_examples"]
    with pytest.raises(ValueError, match="expected an update with weights, num_examples"):
        update_from_content(content)


def test_run_settings_survive_flowers_run_config() -> None:
    settings = RunSettings(
        plan=Plan(rounds=4, lr=1e-3, time_budget=90.0, keep_best=False),
        strategy=make_strategy("fedprox", mu=0.05, robust="trimmed-mean", max_share=0.5),
        sites=4, model=ModelSpec(hidden=(64, 32), dropout=0.1), dp=DPSettings(3.0, delta=1e-6),
        wait=30.0, out_dir="/tmp/x",
    )
    assert RunSettings.from_run_config(_run_config(settings)) == settings
    plain = _settings()
    assert RunSettings.from_run_config(_run_config(plain)) == plain


def test_run_settings_refuse_what_a_flower_run_cannot_do() -> None:
    with pytest.raises(ConfigError, match="expected a time budget"):
        RunSettings(plan=Plan(rounds=1), strategy=make_strategy("fedavg"), sites=3)
    with pytest.raises(ConfigError, match="min_sites <= sites"):
        RunSettings(plan=Plan(rounds=1, min_sites=3, time_budget=5), strategy=make_strategy(
            "fedavg"), sites=2)
    with pytest.raises(ConfigError, match="plan.rounds"):
        RunSettings.from_run_config({**_run_config(_settings()), "plan.rounds": "many"})
