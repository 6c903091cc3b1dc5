from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from rt_support import MemorySink, make_package, synth_source

from vigil.core.errors import FHIRTransportError
from vigil.data import patient_split
from vigil.runtime.cycle import CycleRunner
from vigil.runtime.models import install_model, load_live_models
from vigil.runtime.offline import score_table
from vigil.runtime.ops import RuntimeMetrics
from vigil.runtime.recorded import ClockedSource
from vigil.runtime.replay import replay, replay_ticks, scores_output
from vigil.runtime.settings import AlertSettings, ScoringSettings
from vigil.runtime.store import StateStore


@pytest.fixture(scope="module")
def table(sample):
    test = np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))
    length = np.diff(sample.grid.starts)[test]
    # eight stays, and two longer than the 73 hours a cycle's grid keeps
    return sample.select(np.concatenate([test[:8], test[(length > 80) & (length < 100)][:2]]))


@pytest.fixture(scope="module")
def source(table, tmp_path_factory):
    return synth_source(table, tmp_path_factory.mktemp("ndjson"))


class FlakySource(ClockedSource):
    """The FHIR server is down for the ticks listed in ``down``."""

    down: frozenset = frozenset()

    def census(self, tick):
        if tick in self.down:
            raise FHIRTransportError("connection refused (server down)", url="http://ehr/fhir")
        return super().census(tick)


def make_runner(directory, source, *, sink=None, metrics=None):
    directory.mkdir(exist_ok=True)
    store = StateStore.open(f"sqlite:///{directory / 'state.db'}", durable=False)
    make_package(directory / "pkg")
    install_model(store, directory / "pkg", models_dir=directory / "models")
    live = load_live_models(store)
    return CycleRunner(store=store, source=source, sink=sink, models=lambda: live,
                       scoring=ScoringSettings(), alerts=AlertSettings(), metrics=metrics)


@pytest.fixture(scope="module")
def full_replay(source, tmp_path_factory):
    sink = MemorySink()
    runner = make_runner(tmp_path_factory.mktemp("full"), source, sink=sink)
    result = replay(runner, replay_ticks(*source.span))
    return runner, sink, result


def test_replay_scores_equal_offline_scores(table, source, full_replay):
    runner, sink, result = full_replay
    assert result.failed == 0 and result.cycles > 4 * 30
    out = scores_output(runner.store)
    offline = score_table(runner.models().active.scorer.package, table)
    key = dict(zip(zip(table.frame["patient_id"], table.grid.hours.tolist(), strict=True),
                   offline, strict=True))
    scored = list(zip(out["patient_id"], out["iculos"], strict=True))
    # each hour up to a patient's last observation was scored at 4 ticks ...
    last_obs = table.frame.dropna(subset=["HR"]).groupby("patient_id")["ICULOS"].max()
    covered = {k for k in key if k[1] <= last_obs.get(k[0], 0)}
    assert covered <= set(scored)
    counts = out.groupby(["patient_id", "iculos"]).size()
    assert set(counts[sorted(covered)]) == {4}
    # ... with the offline probability (hours before a patient's first PhysioNet row are extra)
    both = np.array([k in key for k in scored])
    expected = np.array([key[k] for k, b in zip(scored, both, strict=True) if b])
    np.testing.assert_allclose(out["probability"].to_numpy()[both], expected, atol=1e-5, rtol=0)
    # one RiskAssessment per active score, none written twice, except for a patient with no
    # value in the 6 h before the tick (empty inputs: scored, not written back)
    rec = source.recorded
    recent = {(p, t) for p, t in zip(out["patient_id"], out["scored_at"], strict=True)
              if ((rec.patient == p) & (rec.effective > (t - pd.Timedelta(hours=6)).value // 1000)
                  & (rec.effective <= t.value // 1000)).any()}
    assert 0 < len(out) - len(recent) < 0.1 * len(out)
    assert set(sink.resources) == {f"ra-{p}-{int(t.timestamp())}" for p, t in recent}
    assert len(sink.resources) == sink.puts
    assert sum(r.counts["withheld"] for r in result.results) == len(out) - len(recent)
    assert result.degraded == 0
    assert runner.store.pending() == []


def test_patients_leaving_the_census_stop_being_scored(source, full_replay):
    runner, _, _ = full_replay
    out = scores_output(runner.store)
    last = out.groupby("patient_id")["scored_at"].max()
    first = out.groupby("patient_id")["scored_at"].min()
    for stay, discharge in source.stays:
        assert last[stay.patient] < discharge <= last[stay.patient] + timedelta(minutes=15)
        assert first[stay.patient] >= stay.icu_admission + timedelta(hours=1)


def test_server_down_for_two_cycles_then_catch_up(tmp_path, source):
    start, _ = source.span
    ticks = replay_ticks(start + timedelta(hours=8), start + timedelta(hours=12))
    reference = make_runner(tmp_path / "ref", source)
    replay(reference, ticks)

    flaky = FlakySource(source.stays, source.recorded)
    object.__setattr__(flaky, "down", frozenset(ticks[5:7]))
    metrics = RuntimeMetrics()
    runner = make_runner(tmp_path / "flaky", flaky, metrics=metrics)
    result = replay(runner, ticks)
    statuses = [c.status for c in runner.store.cycles()]
    assert statuses == ["ok"] * 5 + ["failed", "failed"] + ["ok"] * (len(ticks) - 7)
    failed = [c for c in runner.store.cycles() if c.status == "failed"]
    assert all("server down" in c.reason and "FHIRTransportError" in c.reason for c in failed)
    assert result.failed == 2
    assert metrics.fhir_errors._value.get() == 2
    # the next good cycle caught up: same observations, and the same scores at every good tick
    assert runner.store.count("observations") == reference.store.count("observations")
    ours, theirs = scores_output(runner.store), scores_output(reference.store)
    good = ~theirs["scored_at"].isin(ticks[5:7])
    assert len(ours) == good.sum() > 0
    np.testing.assert_array_equal(ours["probability"], theirs.loc[good, "probability"])


def test_write_back_failure_keeps_the_queue(tmp_path, source):
    sink = MemorySink(fail=True)
    runner = make_runner(tmp_path, source, sink=sink)
    start, _ = source.span
    first = runner.run(replay_ticks(start + timedelta(hours=5), start + timedelta(hours=5))[0])
    assert first.status == "writeback_failed" and "queued for the next cycle" in first.reason
    queued = first.counts["queued"]
    assert queued > 0 and first.counts["pending"] == queued
    sink.fail = False
    tick = replay_ticks(start + timedelta(hours=5, minutes=15), start + timedelta(hours=6))[0]
    second = runner.run(tick)
    assert second.ok and second.counts["written_back"] == queued + second.counts["queued"]
    assert len(sink.resources) == queued + second.counts["queued"]


def test_no_active_model_fails_the_cycle(tmp_path, source):
    runner = make_runner(tmp_path, source)
    runner.store.set_role("sepsis-tiny", "1.0.0", "retired")
    runner.models = lambda: load_live_models(runner.store)
    result = runner.run(replay_ticks(*source.span)[10])
    assert result.status == "failed" and "no active model" in result.reason
    assert runner.store.count("observations") == 0 and runner.store.watermark("replay") is None
