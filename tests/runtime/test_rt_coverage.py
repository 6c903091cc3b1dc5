"""Feed coverage (issue 18.6): a feed that maps far fewer values than the profile expects."""

import shutil
from datetime import timedelta

import numpy as np
import orjson
import pytest
from rt_support import MemorySink, make_package
from typer.testing import CliRunner

from vigil.cli.main import app
from vigil.core.catalog import CATALOG, MEASURED, Kind
from vigil.core.errors import DataError
from vigil.data import patient_split
from vigil.federation.profile import reference_profile, variable_histograms
from vigil.fhir_adapter.records import ObservationBatch
from vigil.fhir_adapter.synth import write_synth
from vigil.runtime.coverage import coverage_findings, expected_rates, measure_coverage
from vigil.runtime.cycle import CycleRunner
from vigil.runtime.inputs import check_inputs
from vigil.runtime.models import install_model, load_live_models
from vigil.runtime.monitoring import Monitor
from vigil.runtime.monitoring.alarms import AlarmKind, Severity
from vigil.runtime.monitoring.reference import Histogram, Reference
from vigil.runtime.recorded import load_ndjson, require_coverage
from vigil.runtime.replay import replay, replay_ticks
from vigil.runtime.settings import AlertSettings, ScoringSettings
from vigil.runtime.store import StateStore

H = 3_600_000_000
LAB_CODES = frozenset(c for v in CATALOG if v.kind is Kind.LAB for c in v.loinc)
HR_CODES = frozenset(CATALOG[0].loinc)


def batch(rows):
    """(patient, variable name, microseconds) rows as an ObservationBatch."""
    n = len(rows)
    return ObservationBatch(
        patient=np.array([p for p, _, _ in rows], dtype=object),
        variable=np.array([MEASURED.index(v) for _, v, _ in rows], dtype=np.int8),
        effective=np.array([t for _, _, t in rows], dtype=np.int64), value=np.ones(n),
        resource_id=np.array([str(i) for i in range(n)], dtype=object),
        last_updated=np.zeros(n, np.int64), seq=np.arange(n))


# -- the pure statistics -------------------------------------------------------------------------


def test_expected_rates_are_the_profiles_measured_shares_of_measured_variables():
    h = Histogram(np.arange(3.0), np.array([10.0, 15.0]), missing=75, rows=100)
    ref = Reference("profile", {"Glucose": h, "HospAdmTime": h}, None)
    assert expected_rates(ref) == {"Glucose": 0.25}
    assert expected_rates(None) == {}


def test_coverage_counts_one_value_per_patient_variable_and_hour():
    rows = [("a", "HR", 10 * H), ("a", "HR", 10 * H + 60), ("b", "HR", 10 * H + 5),
            ("a", "HR", 11 * H), ("a", "Glucose", 11 * H + 1), ("a", "HR", 5 * H),
            ("a", "HR", 20 * H + 1)]
    cov = measure_coverage(batch(rows), patients=2, patient_hours=10, since=6 * H, until=20 * H,
                           rates={"HR": 0.9, "Glucose": 0.2, "Lactate": 0.05})
    # HR: a@10, b@10, a@11 (5 h is before the window, 20 h + 1 us after it)
    assert cov.observed == {"HR": 3, "Glucose": 1, "Lactate": 0}
    assert cov.expected == pytest.approx({"HR": 9.0, "Glucose": 2.0, "Lactate": 0.5})
    assert cov.ratio == pytest.approx(4 / 11.5)
    assert cov.absent(0.5) == ("Lactate",)
    assert cov.absent(0.6) == ()
    assert cov.absent(0.5, min_rate=0.05) == ("Lactate",)
    assert cov.absent(0.5, min_rate=0.051) == ()  # rarer than min_rate: not judged
    assert "4 hourly values where the reference profile expects 12 over 10 patient-hours " \
           "(coverage 0.35)" in cov.summary()


def test_coverage_findings_thresholds():
    rates = {"HR": 0.9, "Glucose": 0.2}
    many = batch([("a", "HR", t * H) for t in range(90)])  # 90 HR, no Glucose, 100 patient-hours
    cov = measure_coverage(many, patients=4, patient_hours=100, rates=rates)
    assert cov.ratio == pytest.approx(90 / 110)
    (absent,) = coverage_findings(cov, min_coverage=0.5, min_expected=20)
    assert (absent.kind, absent.variable, absent.severity) == (
        AlarmKind.FEED_COVERAGE, "Glucose", Severity.CRITICAL)
    assert absent.threshold == pytest.approx(20.0)
    assert "no Glucose value in 100 patient-hours" in absent.message
    assert coverage_findings(cov, min_coverage=0.5, min_expected=21) == ()
    low = coverage_findings(cov, min_coverage=0.9, min_expected=21)
    assert [(f.kind, f.variable) for f in low] == [(AlarmKind.CYCLE_INPUTS, "coverage")]
    assert low[0].value == pytest.approx(90 / 110)
    # too little expected to judge: a census just admitted
    few = measure_coverage(batch([]), patients=4, patient_hours=1, rates=rates)
    assert coverage_findings(few, min_coverage=0.5, min_expected=2) == ()
    # too few patients to judge: they differ much in how often they are charted
    assert len(coverage_findings(cov, min_coverage=0.9, min_expected=20, min_patients=4)) == 2
    assert coverage_findings(cov, min_coverage=0.9, min_expected=20, min_patients=5) == ()


def test_only_low_coverage_degrades_the_cycle():
    cov = measure_coverage(batch([("a", "HR", 0)]), patients=5, patient_hours=100,
                           rates={"HR": 0.9, "Glucose": 0.2})
    findings = coverage_findings(cov, min_coverage=0.5, min_expected=20)
    health = check_inputs(census=5, previous_census=5, read=10, mapped=10, ignored={},
                          recent=np.ones(5, bool), coverage=findings, settings=ScoringSettings())
    assert health.degraded and health.withheld().all()
    assert health.reason.startswith("far fewer values than the reference profile expects")
    assert "Glucose" not in health.reason
    absent_only = [f for f in findings if f.kind is AlarmKind.FEED_COVERAGE]
    health = check_inputs(census=5, previous_census=5, read=10, mapped=10, ignored={},
                          recent=np.ones(5, bool), coverage=absent_only,
                          settings=ScoringSettings())
    assert not health.degraded and health.reason is None
    assert [f.variable for f in health.findings] == ["Glucose"]


# -- real-shaped feeds ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def profile(sample):
    return reference_profile(*variable_histograms(sample.grid.values), rows=sample.grid.n_rows)


@pytest.fixture(scope="module")
def feeds(sample, tmp_path_factory):
    """The synth NDJSON of 12 test patients, and copies with labs local / only HR in LOINC."""
    root = tmp_path_factory.mktemp("coverage")
    table = sample.select(np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:12])
    write_synth(table.frame, root / "normal")
    lines = (root / "normal" / "Observation.ndjson").read_bytes().splitlines()
    for name, local in (("labs_local", lambda c: c in LAB_CODES),
                        ("hr_only", lambda c: c not in HR_CODES)):
        shutil.copytree(root / "normal", root / name)
        out = []
        for line in lines:
            doc = orjson.loads(line)
            code = doc["code"]["coding"][0]["code"]
            if local(code):
                doc["code"]["coding"] = [{"system": "urn:site:lab", "code": f"L{code}"}]
            out.append(orjson.dumps(doc))
        (root / name / "Observation.ndjson").write_bytes(b"\n".join(out) + b"\n")
    return root


def test_a_site_that_never_measures_a_rare_variable_is_not_alarmed(profile):
    """PhysioNet's hospital A never records EtCO2 (pooled rate 0.039): no alarm, however long."""
    rates = expected_rates(Reference.from_profile(profile))
    settings = ScoringSettings()
    cov = measure_coverage(batch([]), patients=100, patient_hours=2400, rates=rates)
    full = type(cov)(cov.patients, cov.patient_hours,
                     {n: (0 if n == "EtCO2" else round(e)) for n, e in cov.expected.items()},
                     cov.expected)
    assert full.expected["EtCO2"] > 90 and full.ratio > 0.95
    assert coverage_findings(full, min_coverage=settings.min_coverage,
                             min_expected=settings.min_expected,
                             min_patients=settings.coverage_min_patients,
                             min_rate=settings.absent_min_rate) == ()
    # judged from 0.1/patient-hour: the seven vitals and Glucose
    assert sorted(n for n, r in rates.items() if r >= settings.absent_min_rate) == sorted(
        ["HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "Glucose"])


def test_replay_source_coverage(feeds, profile):
    rates = expected_rates(Reference.from_profile(profile))
    assert sum(rates.values()) == pytest.approx(6.71, abs=0.01)  # values per patient-hour
    normal, _ = load_ndjson(feeds / "normal", stack_admissions=True)
    cov = require_coverage(normal, rates, where="normal")
    assert 0.9 < cov.ratio < 1.1 and cov.absent(ScoringSettings().min_expected) == ()
    labs, _ = load_ndjson(feeds / "labs_local", stack_admissions=True)
    with pytest.raises(DataError) as err:
        require_coverage(labs, rates, where="labs")
    msg = str(err.value)
    assert "no value of Glucose;" in msg and "(coverage 0.73)" in msg
    assert "codes ignored most often: urn:site:lab|L" in msg
    hr, _ = load_ndjson(feeds / "hr_only", stack_admissions=True)
    with pytest.raises(DataError, match=r"\(coverage 0\.1\d\); no value of MAP, O2Sat, SBP"):
        require_coverage(hr, rates, where="hr")
    assert np.isnan(require_coverage(hr, {}, where="no profile").ratio)  # no profile: no check


def test_replay_cli_exits_2_on_a_feed_far_below_the_profile(feeds, profile, tmp_path):
    make_package(tmp_path / "pkg", reference_profile=profile)
    runner = CliRunner(mix_stderr=False)
    args = ["replay", "--model", str(tmp_path / "pkg"), "--out", str(tmp_path / "s.parquet"),
            "--hours", "1", "--json", "--ndjson"]
    bad = runner.invoke(app, [*args, str(feeds / "labs_local")])
    assert bad.exit_code == 2, bad.output
    assert "far fewer values than the model's reference profile expects" in bad.stderr
    assert "no value of Glucose" in bad.stderr and "Traceback" not in bad.stderr
    good = runner.invoke(app, [*args, str(feeds / "normal")])
    assert good.exit_code == 0, good.stderr


def test_fhir_ingest_with_a_model_checks_coverage(feeds, profile, tmp_path):
    make_package(tmp_path / "pkg", reference_profile=profile)
    runner = CliRunner(mix_stderr=False)
    args = ["fhir", "ingest", "--model", str(tmp_path / "pkg"), "--json", "--ndjson"]
    bad = runner.invoke(app, [*args, str(feeds / "hr_only")])
    assert bad.exit_code == 2, bad.output
    assert "(coverage 0.1" in bad.stderr and "no value of MAP" in bad.stderr
    assert "codes ignored most often: urn:site:lab|L" in bad.stderr
    good = runner.invoke(app, [*args, str(feeds / "normal")])
    assert good.exit_code == 0, good.stderr
    assert 0.9 < orjson.loads(good.stdout)["coverage"] < 1.1
    # without --model only "maps none" is checked
    plain = runner.invoke(app, ["fhir", "ingest", "--json", "--ndjson", str(feeds / "hr_only")])
    assert plain.exit_code == 0 and "coverage" not in orjson.loads(plain.stdout)


def _cycles(tmp_path, feed, profile, hours):
    source, _ = load_ndjson(feed, stack_admissions=True)
    store = StateStore.open(f"sqlite:///{tmp_path / 'state.db'}", durable=False)
    make_package(tmp_path / "pkg", reference_profile=profile)
    install_model(store, tmp_path / "pkg", models_dir=tmp_path / "models")
    live = load_live_models(store)
    sink = MemorySink()
    monitor = Monitor()
    runner = CycleRunner(store=store, source=source, sink=sink, models=lambda: live,
                         scoring=ScoringSettings(min_expected=10, coverage_min_patients=3),
                         alerts=AlertSettings(),
                         monitor=monitor)
    start = max(stay.icu_admission for stay, _ in source.stays) + timedelta(hours=8)
    results = replay(runner, replay_ticks(start, start + timedelta(hours=hours))).results
    return results, sink, monitor


@pytest.mark.parametrize("feed", ["normal", "labs_local", "hr_only"])
def test_the_cycle_judges_coverage(feeds, profile, tmp_path, feed):
    results, sink, monitor = _cycles(tmp_path, feeds / feed, profile, hours=1)
    status = {r.status for r in results}
    alarms = {(a.kind, a.variable) for a in monitor.open_alarms()}
    if feed == "normal":
        assert status == {"ok"} and sink.resources
        assert not {a for a in alarms if a[0] in ("feed_coverage", "cycle_inputs")}
    elif feed == "labs_local":  # the vitals still score; the absent labs are a critical alarm
        assert status == {"ok"} and sink.resources
        assert ("feed_coverage", "Glucose") in alarms
        assert all(a.severity == "critical" for a in monitor.open_alarms()
                   if a.kind == "feed_coverage")
    else:  # one vital: degraded, no RiskAssessment at all
        assert status == {"degraded"} and not sink.resources
        assert all("far fewer values than the reference profile expects" in r.reason
                   for r in results)
        assert ("cycle_inputs", "coverage") in alarms and ("feed_coverage", "MAP") in alarms
