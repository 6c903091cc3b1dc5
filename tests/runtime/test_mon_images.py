"""The imaging drift detectors on hand-built records: golden values and error contracts."""

from __future__ import annotations

import json
import math
import sqlite3
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from vigil.core.errors import ConfigError, DataError
from vigil.dicom_adapter.headers import HeaderRecord
from vigil.imaging.histogram import N_BINS
from vigil.imaging.profile import ImageProfile, build_image_profile
from vigil.runtime.monitoring.alarms import AlarmKind, Severity, put_stats
from vigil.runtime.monitoring.image_records import (
    HIST_COLUMNS,
    load_instance_records,
    records_frame,
)
from vigil.runtime.monitoring.image_replay import replay_image_monitor, study_outcomes
from vigil.runtime.monitoring.images import ImageDriftMonitor, categories
from vigil.runtime.study_contracts import InstanceRecord

T0 = datetime(2026, 3, 2, tzinfo=UTC)
A = HeaderRecord("CR", "Acme", "", 8, "MONOCHROME2", 0.14, "1.2.840.10008.1.2.1")
B = HeaderRecord("CR", "Other", "", 12, "MONOCHROME1", 0.2, "1.2.840.10008.1.2.5")


def hist(bins: dict[int, int]) -> np.ndarray:
    out = np.zeros(N_BINS, np.int64)
    for k, v in bins.items():
        out[k] = v
    return out


def records(n: int, *, start: datetime = T0, every: timedelta = timedelta(minutes=30),
            header: HeaderRecord = A, bins: dict[int, int] | None = None,
            scores: np.ndarray | None = None, reason: str | None = None) -> list[InstanceRecord]:
    h = hist(bins or {7: 50, 8: 50})
    p = np.full(n, 0.3) if scores is None else scores
    return [InstanceRecord(start + i * every, "img@1", header,
                           h if reason is None else hist({}),
                           float("nan") if reason else float(p[i]),
                           float("nan") if reason else float(p[i]), reason)
            for i in range(n)]


def profile(headers=(A,), *, counts=None, images=1000) -> ImageProfile:
    raw = build_image_profile(np.array([hist(counts or {7: 50, 8: 50})] * 2), list(headers),
                              np.linspace(0.05, 0.95, 20))
    raw["images"] = images
    found = ImageProfile.from_manifest({"image_profile": raw})
    assert found is not None
    return found


def test_profile_sums_histograms_and_counts_headers():
    raw = build_image_profile(np.array([hist({0: 3, 15: 1}), hist({0: 1})]), [A, A, B],
                              np.array([0.0, 0.5, 1.0]))
    assert raw["input_histogram"]["counts"][0] == 4 and raw["input_histogram"]["counts"][15] == 1
    assert raw["headers"]["bits_stored"] == {"12": 1, "8": 2}
    assert raw["headers"]["pixel_spacing_mm"] == {"0.14": 2, "0.20": 1}
    assert raw["header_images"] == 3 and sum(raw["score"]["counts"]) == 3
    assert raw["score"]["counts"][0] == 1 and raw["score"]["counts"][-1] == 1
    json.dumps(raw, allow_nan=False)  # manifest-ready


def test_profile_errors_and_old_packages():
    assert ImageProfile.from_manifest({"reference_profile": {}}) is None
    from vigil.core.errors import ModelArtifactError

    with pytest.raises(ModelArtifactError, match="vigil-image-profile/1"):
        ImageProfile.from_manifest({"image_profile": {"format": "other"}})
    with pytest.raises(ModelArtifactError, match="malformed"):
        ImageProfile.from_manifest({"image_profile": {"format": "vigil-image-profile/1"}})
    with pytest.raises(DataError, match=r"\(n, 16\)"):
        build_image_profile(np.zeros((2, 3)), [], np.zeros(0))


def test_categories_match_header_value():
    frame = records_frame(records(2) + records(1, start=T0 + timedelta(hours=1),
                                                header=HeaderRecord("", "", "", 0, "",
                                                                    float("nan"), "")))
    assert categories(frame, "pixel_spacing_mm").tolist() == ["0.14", "0.14", "absent"]
    assert categories(frame, "bits_stored").tolist() == ["8", "8", "absent"]
    assert categories(frame, "manufacturer").tolist() == ["Acme", "Acme", "absent"]


def test_input_psi_golden_against_the_profile():
    # profile shares 0.5 / 0.5 in bins 7, 8; now 0.25 / 0.75: PSI = 0.25 ln 2 + 0.25 ln 1.5
    frame = records_frame(records(400, every=timedelta(minutes=3), bins={7: 25, 8: 75}))
    mon = ImageDriftMonitor(profile(), reference="profile")
    findings, stats = mon.check(frame, now=frame["scored_at"].iloc[-1])
    value = {(k, s): v for k, _, s, v in stats}[("input_drift", "psi")]
    assert value == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5), abs=1e-9)
    drift = [f for f in findings if f.kind is AlarmKind.INPUT_DRIFT]
    assert len(drift) == 1 and drift[0].severity is Severity.CRITICAL
    assert "brighter" in drift[0].message and "PSI 0.275" in drift[0].message


def test_header_value_new_at_the_site_and_never_trained_on():
    frame = records_frame(records(96) + records(48, start=T0 + timedelta(hours=48), header=B))
    mon = ImageDriftMonitor(profile())
    findings, _ = mon.check(frame, now=T0 + timedelta(hours=59.5))  # 24 A, 24 B in the window
    by = {f.variable: f for f in findings if f.kind is AlarmKind.HEADER_DRIFT}
    assert set(by) == {"Manufacturer", "BitsStored", "PhotometricInterpretation",
                       "PixelSpacing", "TransferSyntaxUID"}
    bits = by["BitsStored"]
    assert bits.value == pytest.approx(0.5) and bits.severity is Severity.CRITICAL
    assert bits.message.startswith("BitsStored changed: 12 (50% of the last 24 h's 48 studies, "
                                   "since 2026-03-04 00:00 UTC) never seen in the training")
    assert "8 share 100% → 50%" in bits.message


def test_header_shift_within_known_values_needs_the_baseline():
    # the profile knows both; the site had only A: a site change, a warning, not critical
    frame = records_frame(records(96) + records(48, start=T0 + timedelta(hours=48), header=B))
    findings, _ = ImageDriftMonitor(profile((A, B))).check(frame,
                                                           now=T0 + timedelta(hours=59.5))
    bits = next(f for f in findings if f.variable == "BitsStored")
    assert bits.severity is Severity.WARNING
    assert bits.message == ("BitsStored changed: 12 share 0% → 50%; 8 share 100% → 50% "
                            "(against the site's first 48 h)")


def test_a_few_studies_are_not_a_change():
    frame = records_frame(records(96) + records(2, start=T0 + timedelta(hours=48), header=B)
                          + records(46, start=T0 + timedelta(hours=49)))
    findings, _ = ImageDriftMonitor(profile((A, B))).check(frame, now=T0 + timedelta(hours=72))
    assert findings == []  # 2 studies < min_count


def test_quarantine_rate_golden():
    good = records(96) + records(30, start=T0 + timedelta(hours=48))
    bad = records(10, start=T0 + timedelta(hours=64), reason="expected BitsStored <= 16, got 32")
    frame = records_frame(good + bad)
    findings, stats = ImageDriftMonitor(profile()).check(frame, now=T0 + timedelta(hours=70))
    q = [f for f in findings if f.kind is AlarmKind.QUARANTINE]
    # window (46 h, 70 h]: 3 baseline, 30 good and 10 refused instances
    assert len(q) == 1 and q[0].value == pytest.approx(10 / 43)
    assert "23.3% of the last 24 h's 43 instances" in q[0].message
    assert "expected BitsStored <= 16, got 32 (10)" in q[0].message


def test_score_drift_found_and_not_on_the_same_distribution():
    rng = np.random.default_rng(0)
    base = records(96, scores=rng.beta(2, 5, 96))
    same = records(48, start=T0 + timedelta(hours=48), scores=rng.beta(2, 5, 48))
    moved = records(48, start=T0 + timedelta(hours=48), scores=rng.beta(5, 2, 48))
    now = T0 + timedelta(hours=72)
    quiet, _ = ImageDriftMonitor(profile()).check(records_frame(base + same), now=now)
    assert quiet == []
    found, stats = ImageDriftMonitor(profile()).check(records_frame(base + moved), now=now)
    score = [f for f in found if f.kind is AlarmKind.SCORE_DRIFT]
    assert len(score) == 1 and "Kolmogorov-Smirnov" in score[0].message


def test_monitor_options_are_checked():
    with pytest.raises(ConfigError, match="'baseline' or 'profile'"):
        ImageDriftMonitor(None, reference="pooled")


def test_delayed_labels_feed_performance_only_once_known(caplog):
    # 4 days of studies; the model is right at first and wrong from day 2 on; labels
    # are known 2 days after the study
    n = 4 * 48
    y = np.tile([0, 1], n // 2)
    good = np.where(y == 1, 0.8, 0.2)
    p = np.where(np.arange(n) < 2 * 48, good, 1.0 - good)
    recs = records(n, scores=p)
    keys = [f"s{i}" for i in range(n)]
    times = [r.scored_at for r in recs]
    scores = pd.DataFrame({"study_key": keys, "scored_at": times, "probability": p})
    labels = pd.DataFrame({"study_key": keys, "label": y,
                           "known_at": [(t + timedelta(days=2)).isoformat() for t in times]})
    outcomes = study_outcomes(scores, labels)
    from vigil.runtime.monitoring.image_replay import IMAGE_WORDING
    from vigil.runtime.monitoring.performance import PerformanceMonitor

    perf = PerformanceMonitor(reference_auroc=1.0, window_hours=24.0, min_patients=5,
                              wording=IMAGE_WORDING)
    run = replay_image_monitor(records_frame(recs), ImageDriftMonitor(None), outcomes=outcomes,
                               performance=perf)
    disc = [a for a in run.alarms if a.kind is AlarmKind.DISCRIMINATION]
    assert disc and disc[0].variable == "image_score"
    first = pd.Timestamp(disc[0].first_seen, unit="s", tz="UTC")
    assert first > pd.Timestamp(T0) + pd.Timedelta(days=4)  # the bad studies' labels came late
    assert "labelled studies" in disc[0].message and "ranks studies worse" in disc[0].message
    # the first labelled window is separated (0.2 vs 0.8): said once in the log, not raised
    said = [r.getMessage() for r in caplog.records if "reference map" in r.getMessage()]
    assert len(said) == 1 and "near step" in said[0]


def test_study_outcomes_errors():
    with pytest.raises(DataError, match="missing known_at"):
        study_outcomes(pd.DataFrame(columns=["study_key", "scored_at", "probability"]),
                       pd.DataFrame(columns=["study_key", "label"]))


def test_records_load_from_a_store_table_and_parquet(tmp_path):
    frame = records_frame(records(3) + records(1, reason="no pixel data"))
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)
    rows = frame.drop(columns=list(HIST_COLUMNS)).assign(
        scored_at=frame["scored_at"].map(lambda t: t.isoformat()),
        histogram=[json.dumps(r) for r in frame[list(HIST_COLUMNS)].to_numpy().tolist()])
    rows.to_sql("image_instances", conn, index=False)
    conn.close()
    back = load_instance_records(db, table="image_instances")
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    frame.to_parquet(tmp_path / "r.parquet")
    pd.testing.assert_frame_equal(load_instance_records(tmp_path / "r.parquet"), frame,
                                  check_dtype=False)
    with pytest.raises(DataError, match="no imaging study scored yet"):
        load_instance_records(db, table="other")
    with pytest.raises(DataError, match="found nothing"):
        load_instance_records(tmp_path / "absent.db")
    with pytest.raises(DataError, match="missing model"):
        frame.drop(columns=["model"]).to_parquet(tmp_path / "bad.parquet")
        load_instance_records(tmp_path / "bad.parquet")


def test_cli_monitor_images_names_the_change(tmp_path):
    from typer.testing import CliRunner

    from vigil.cli.main import app

    runner = CliRunner()
    frame = records_frame(records(96) + records(48, start=T0 + timedelta(hours=48), header=B))
    frame.to_parquet(tmp_path / "records.parquet")
    shipped = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "models"
                  / "imaging-federated")
    result = runner.invoke(app, ["monitor", "images", "--records",
                                 str(tmp_path / "records.parquet"), "--model", shipped, "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    by = {a["variable"]: a for a in found["alarms"]}
    assert by["BitsStored"]["kind"] == "header_drift"
    assert "12 share 0% → 100%" in by["BitsStored"]["message"] and found["notes"] == []
    assert "Other (" in by["Manufacturer"]["message"]  # no training site had it
    assert by["Manufacturer"]["severity"] == "critical"
    bad = runner.invoke(app, ["monitor", "images", "--records", str(tmp_path / "none.parquet")])
    assert bad.exit_code == 2 and "found nothing" in bad.output
    half = runner.invoke(app, ["monitor", "images", "--records",
                               str(tmp_path / "records.parquet"), "--labels", "x.csv"])
    assert half.exit_code == 2 and "--studies and --labels together" in half.output


def test_cli_monitor_images_study_files_that_are_no_tables_are_a_one_line_error(tmp_path):
    """--studies / --labels naming a directory, a file that is no parquet / CSV, or a table
    without the columns: exit 2, one line saying what was expected and what came."""
    from typer.testing import CliRunner

    from vigil.cli.main import app

    runner = CliRunner()
    records_frame(records(4)).to_parquet(tmp_path / "records.parquet")
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"study_key": ["k"], "label": [1], "known_at": [T0.isoformat()]}).to_csv(
        labels, index=False)
    garbled = tmp_path / "scores.parquet"
    garbled.write_bytes(b"PAR1 not really")
    bare = tmp_path / "bare.csv"
    pd.DataFrame({"study_key": ["k"], "probability": [0.3]}).to_csv(bare, index=False)
    (tmp_path / "dir.parquet").mkdir()
    for option, studies, label_file, came in [
            ("--studies", garbled, labels, "got scores.parquet: ArrowInvalid"),
            ("--studies", bare, labels, "got bare.csv without scored_at"),
            ("--studies", tmp_path / "dir.parquet", labels, "got a directory: dir.parquet"),
            ("--labels", bare, garbled, "got scores.parquet: ArrowInvalid"),
            ("--labels", bare, tmp_path / "none.csv", "found nothing at")]:
        if option == "--labels":
            studies = tmp_path / "studies.csv"
            pd.DataFrame({"study_key": ["k"], "scored_at": [T0.isoformat()],
                          "probability": [0.3]}).to_csv(studies, index=False)
        result = runner.invoke(app, ["monitor", "images", "--records",
                                     str(tmp_path / "records.parquet"), "--studies",
                                     str(studies), "--labels", str(label_file)])
        assert result.exit_code == 2, result.output
        assert f"expected {option} to be " in result.output and came in result.output
        assert "Traceback" not in result.output


def test_monitor_report_adds_imaging_drift_when_the_store_has_records(tmp_path):
    from typer.testing import CliRunner

    from vigil.cli.main import app
    from vigil.runtime.store import StateStore

    path = tmp_path / "state.db"
    with StateStore.open(f"sqlite:///{path}"):
        pass  # the migrations: the monitor tables, no alarm yet
    plain = CliRunner(mix_stderr=False).invoke(
        app, ["monitor", "report", "--db", str(path), "--out", str(tmp_path / "r0"), "--json"])
    assert plain.exit_code == 0, plain.output
    assert "imaging" not in json.loads(plain.stdout)
    frame = records_frame(records(96) + records(48, start=T0 + timedelta(hours=48), header=B))
    conn = sqlite3.connect(path)  # the runtime's table, as the imaging cycle fills it
    frame.drop(columns=list(HIST_COLUMNS)).assign(
        study_uid=[f"1.2.3.{i}" for i in range(len(frame))], sop_instance_uid="1.2.4",
        scored_at=frame["scored_at"].map(lambda t: t.timestamp()),
        histogram=[json.dumps(r) for r in frame[list(HIST_COLUMNS)].to_numpy().tolist()],
    ).to_sql("imaging_instances", conn, index=False, if_exists="append")
    conn.close()
    result = CliRunner(mix_stderr=False).invoke(
        app, ["monitor", "report", "--db", str(path), "--out", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    imaging = json.loads(result.stdout)["imaging"]
    assert "no image profile" in imaging["notes"][0]  # no --image-model: the baseline only
    assert {a["variable"] for a in imaging["alarms"]} >= {"BitsStored", "Manufacturer"}
    # `vigil serve` monitored them (its imaging statistics are stored): its stored alarms
    # are the report's, no replay lists them a second time
    with StateStore.open(f"sqlite:///{path}") as store, store.transaction() as tx:
        put_stats(tx, T0.timestamp(), [("input_drift", "image_intensity", "psi", 0.01)])
    served = CliRunner(mix_stderr=False).invoke(
        app, ["monitor", "report", "--db", str(path), "--out", str(tmp_path / "r2"), "--json"])
    assert served.exit_code == 0, served.output
    assert "imaging" not in json.loads(served.stdout)


def test_a_quiet_site_baseline_waits_for_enough_studies():
    # 6 studies a day: the first 48 h hold 12; the baseline takes the first 20 (to 80 h)
    every = timedelta(hours=4)
    frame = records_frame(records(30, every=every)
                          + records(30, start=T0 + 30 * every, every=every, header=B))
    mon = ImageDriftMonitor(None, window_hours=96.0)
    assert mon.check(frame, now=T0 + timedelta(hours=79))[0] == []  # no baseline yet
    findings, _ = mon.check(frame, now=T0 + timedelta(hours=180))
    assert mon._baseline is not None and mon._baseline.n == 20
    assert {f.variable for f in findings} >= {"BitsStored", "PhotometricInterpretation"}
