"""The imaging cycle on a drop folder: once per study, restarts, shadow, quarantine, retries."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
from img_support import (
    FAR_FUTURE,
    SHIPPED,
    SHIPPED_KEY,
    SHIPPED_MODEL,
    RecordingSink,
    add_instance,
    shadow_package,
    write_studies,
)

from vigil.core.errors import DataError
from vigil.core.package import read_package
from vigil.runtime.folder_studies import FolderStudySource, parse_cursor
from vigil.runtime.images import ImageScorer, load_images
from vigil.runtime.imaging_cycle import ImagingRunner, site_threshold
from vigil.runtime.imaging_store import cursor_key, instance_records, studies_rows, study_rows
from vigil.runtime.models import install_model, load_live_models
from vigil.runtime.store import StateStore


@pytest.fixture()
def site(tmp_path):
    files = write_studies(tmp_path / "in", 12)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with StateStore.open(url) as store:
        install_model(store, SHIPPED, models_dir=tmp_path / "models", public_key=SHIPPED_KEY)
    return tmp_path, url, files


def runner(store, folder, sink, **kw):
    source = FolderStudySource(folder, stable_seconds=0, clock=lambda: FAR_FUTURE)
    return ImagingRunner(
        store=store, source=source, sinks=[sink], page_limit=5, site_id="site-b",
        models=lambda: load_live_models(store, public_key=None, task="imaging"), **kw)


def studies(store):
    return store.conn.execute(
        "SELECT study_uid, model, role, probability, positive, n_scored, n_quarantined, status, "
        "attempts FROM imaging_studies ORDER BY study_uid, role").fetchall()


def test_each_study_scored_once_with_the_evaluate_code(site):
    tmp_path, url, files = site
    sink = RecordingSink()
    with StateStore.open(url) as store:
        first = runner(store, tmp_path / "in", sink).run()
        assert first.ok and first.scored == len(files) == sink.writes == 12
        assert first.pages == 3  # page_limit 5: 5 + 5 + 2, one transaction each
        again = runner(store, tmp_path / "in", sink).run()
        assert again.scored == 0 and sink.writes == 12
        # the PACS re-announces every study (cursor lost): fetched, found unchanged, not scored
        with store.transaction() as tx:
            tx.execute("DELETE FROM watermarks WHERE source = ?", (cursor_key("folder"),))
        replay = runner(store, tmp_path / "in", sink).run()
        assert (replay.scored, replay.unchanged, sink.writes) == (0, 12, 12)
        rows = studies(store)
        # a page's recorded scores in one query: the same rows as one query per study
        uids = sorted({r[0] for r in rows}) + ["2.25.0"]
        many = studies_rows(store.conn, uids)
        assert set(many) == set(uids) and many["2.25.0"] == {}
        for uid in uids:
            assert {k: repr(v) for k, v in many[uid].items()} == {
                k: repr(v) for k, v in study_rows(store.conn, uid).items()}
            assert all(v.study.study_uid == uid for v in many[uid].values())
    assert len(rows) == 12 and {r[7] for r in rows} == {"done"}
    # the numbers of the plain reader + scorer (`load_images`, ImageScorer) on the same files
    package = read_package(SHIPPED)
    scorer = ImageScorer(package)
    batch = load_images(tmp_path / "in", size=scorer.size)
    got = {w["instances"][0]: w["probability"][0] for w in sink.written.values()}
    expected = dict(zip(batch.keys, scorer.predict_images(batch.inputs), strict=True))
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-12)
    # the decision uses the package's threshold for this site (federated site_thresholds)
    cut = package.manifest.model_extra["site_thresholds"]["site-b"]
    assert cut != package.manifest.threshold
    assert all(w["threshold"] == cut and w["positive"] == (w["study_probability"] >= cut)
               for w in sink.written.values())


def test_a_study_with_new_images_is_scored_again(site):
    tmp_path, url, files = site
    sink = RecordingSink()
    with StateStore.open(url) as store:
        runner(store, tmp_path / "in", sink).run()
        uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        add_instance(files[0], tmp_path / "in" / "late" / "x.dcm", sop_uid="1.2.826.0.1.99")
        later = runner(store, tmp_path / "in", sink).run()
        assert (later.scored, later.studies) == (1, 1)
        (row,) = [r for r in studies(store) if r[0] == uid]
    assert row[5] == 2 and row[8] == 2  # two instances now; the row replaced, not added
    written = sink.written[(uid, SHIPPED_MODEL)]
    assert sorted(written["instances"]) == sorted(written["sources"])
    assert len(written["instances"]) == 2 and sink.writes == 13


def test_active_and_shadow_both_scored_only_active_written(site):
    tmp_path, url, files = site
    sink = RecordingSink()
    with StateStore.open(url) as store:
        install_model(store, shadow_package(tmp_path / "shadow"), models_dir=tmp_path / "models",
                      role="shadow")
        models = load_live_models(store, public_key=None, task="imaging")
        assert models.shadow is not None and models.shadow.threshold == 0.5
        assert load_live_models(store, public_key=None).active is None  # no sepsis model touched
        runner(store, tmp_path / "in", sink).run()
        rows = studies(store)
        records = instance_records(store.conn)
    assert sorted({(r[1], r[2]) for r in rows}) == [
        (SHIPPED_MODEL, "active"), ("imaging-federated@shadow-1", "shadow")]
    assert len(rows) == 24 and sink.writes == 12
    assert {k[1] for k in sink.written} == {SHIPPED_MODEL}
    by_model = {}
    for r in rows:
        by_model.setdefault(r[0], {})[r[2]] = r[3]
    assert all(v["active"] == pytest.approx(v["shadow"]) for v in by_model.values())  # same onnx
    assert len(records) == 24 and all(r.histogram.sum() == 28 * 28 for r in records)


def test_quarantine_and_skips_are_counted_with_reasons(site):
    tmp_path, url, files = site
    ds = pydicom.dcmread(files[0])
    add_instance(files[0], tmp_path / "in" / "bad" / "rgb.dcm", sop_uid="1.2.826.0.1.1",
                 PhotometricInterpretation="PALETTE COLOR")
    add_instance(files[0], tmp_path / "in" / "bad" / "sr.dcm", sop_uid="1.2.826.0.1.2",
                 Modality="SR")
    (tmp_path / "in" / "bad" / "junk.dcm").write_bytes(b"not dicom at all")
    sink = RecordingSink()
    with StateStore.open(url) as store:
        run = runner(store, tmp_path / "in", sink)
        result = run.run()
        (row,) = [r for r in studies(store) if r[0] == str(ds.StudyInstanceUID)]
        records = [r for r in instance_records(store.conn) if r.quarantine_reason]
    assert result.skipped == 1 and sum(result.quarantine_reasons.values()) == 1
    (reason,) = result.quarantine_reasons
    assert "PALETTE COLOR" in reason
    assert row[5:7] == (1, 1)  # one scored, one quarantined (the SR is neither)
    assert [r.quarantine_reason for r in records] == [reason]
    assert records[0].headers.photometric == "PALETTE COLOR" and np.isnan(records[0].probability)
    assert sum(run.source.quarantined.values()) == 1  # the unreadable file, left in place
    assert (tmp_path / "in" / "bad" / "junk.dcm").exists()


def test_restart_after_a_kill_between_sink_and_record(site):
    tmp_path, url, files = site
    crashing = RecordingSink(crash_after=7)  # dies in the second page, after its 2nd write
    with StateStore.open(url) as store, pytest.raises(KeyboardInterrupt):
        runner(store, tmp_path / "in", crashing).run()
    with StateStore.open(url) as store:
        assert len(studies(store)) == 5  # the first page only
        sink = RecordingSink()
        result = runner(store, tmp_path / "in", sink).run()
        rows = studies(store)
    assert result.scored == 7 and len(rows) == 12  # nothing skipped, nothing scored twice
    rewritten = set(crashing.written) & set(sink.written)
    assert len(rewritten) == 2  # the crashed page's two writes were made again ...
    assert all(crashing.written[k] == sink.written[k] for k in rewritten)  # ... identically


def test_a_failed_sink_is_retried_not_lost_not_double_counted(site):
    tmp_path, url, _ = site
    with StateStore.open(url) as store:
        failed = runner(store, tmp_path / "in", RecordingSink(fail=True)).run()
        assert failed.ok and failed.sink_failures == 12
        assert {r[7] for r in studies(store)} == {"retry"}
        sink = RecordingSink()
        retried = runner(store, tmp_path / "in", sink).run()
        rows = studies(store)
    assert retried.retried == 12 and sink.writes == 12
    assert len(rows) == 12 and {(r[7], r[8]) for r in rows} == {("done", 2)}


def test_a_source_that_is_down_leaves_the_cursor(site):
    tmp_path, url, _ = site
    with StateStore.open(url) as store:
        run = runner(store, tmp_path / "in", RecordingSink())
        run.run(max_pages=1)
        cursor = run.cursor
        shutil.rmtree(tmp_path / "in")
        down = run.run()
        assert not down.ok and "DataError" in down.error and run.cursor == cursor
        assert "/" not in down.error.split("DataError")[1]  # no path in the message


def test_stable_seconds_and_cursor_contract(tmp_path):
    write_studies(tmp_path / "in", 3)
    now = [0.0]
    source = FolderStudySource(tmp_path / "in", stable_seconds=60, clock=lambda: now[0])
    assert source.poll(None, limit=10).studies == ()  # every file is younger than 60 s: wait
    now[0] = FAR_FUTURE
    page = source.poll(None, limit=2)
    assert len(page.studies) == 2 and not page.done
    rest = source.poll(page.cursor, limit=2)
    assert len(rest.studies) == 1 and rest.done and parse_cursor(rest.cursor) > parse_cursor(
        page.cursor)
    with pytest.raises(DataError, match="expected a folder cursor"):
        parse_cursor("garbage")
    with pytest.raises(DataError, match="expected imaging.folder to be a directory"):
        FolderStudySource(tmp_path / "nope")


def test_site_threshold_falls_back_to_the_package_threshold(site):
    tmp_path, url, _ = site
    with StateStore.open(url) as store:
        model = load_live_models(store, public_key=None, task="imaging").active
    assert site_threshold(model, "unknown-site") == model.scorer.package.manifest.threshold
    assert site_threshold(model, None) == model.scorer.package.manifest.threshold


@pytest.mark.slow  # three CLI runs: about 9 s under load
def test_cli_model_install_keys_roles_by_task_and_evaluate_runs_the_cycle(tmp_path):
    from rt_support import make_package
    from typer.testing import CliRunner

    from vigil.cli.main import app

    cli = CliRunner()
    config = tmp_path / "site.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path / "s.db"}"\n'
                      f'[models]\ndir = "{tmp_path / "models"}"\nallow_unsigned = true\n')
    for package in (make_package(tmp_path / "sepsis").path, SHIPPED):
        done = cli.invoke(app, ["model", "install", str(package), "--config", str(config)])
        assert done.exit_code == 0, done.output
    listed = cli.invoke(app, ["model", "list", "--config", str(config), "--json"])
    roles = {(m["task"], m["name"]): m["role"] for m in json.loads(listed.stdout)["models"]}
    assert roles == {("sepsis", "sepsis-tiny"): "active",
                     ("imaging", "imaging-federated"): "active"}
    write_studies(tmp_path / "dcm", 8)
    out = tmp_path / "p.parquet"
    done = cli.invoke(app, ["evaluate", "--model", str(SHIPPED), "--images", str(tmp_path / "dcm"),
                            "--site-id", "site-c", "--json", "--out-predictions", str(out)])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    manifest = read_package(SHIPPED).manifest
    assert summary["threshold"] == manifest.model_extra["site_thresholds"]["site-c"]
    assert summary["n_images"] == summary["n_labelled"] == 8
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["sop_instance_uid", "probability", "prediction"]
    assert frame["prediction"].tolist() == (
        frame["probability"] >= summary["threshold"]).astype(int).tolist()


def test_a_library_error_message_is_not_logged(site, caplog):
    tmp_path, url, _ = site

    class Down(FolderStudySource):
        def poll(self, cursor, *, limit):
            raise OSError("GET http://pacs/dicom-web/studies/1.2.840.99.1 failed")

    with StateStore.open(url) as store:
        run = runner(store, tmp_path / "in", RecordingSink())
        run.source = Down(tmp_path / "in")
        result = run.run()
    assert result.error == "the imaging source 'folder' failed: OSError"
    assert "1.2.840.99.1" not in caplog.text


def test_instance_records_follow_the_store_retention(site):
    from datetime import UTC, datetime, timedelta

    tmp_path, url, _ = site
    old = datetime.now(UTC) - timedelta(hours=200)
    with StateStore.open(url) as store:
        runner(store, tmp_path / "in", RecordingSink(), clock=lambda: old).run(max_pages=1)
        assert len(instance_records(store.conn)) == 5  # scored 200 h ago, no retention yet
        runner(store, tmp_path / "in", RecordingSink(), retention_hours=168).run()
        assert len(instance_records(store.conn)) == 7  # the 5 old ones are gone, studies stay
        assert len(studies(store)) == 12


def test_no_imaging_model_is_a_clear_error(tmp_path):
    write_studies(tmp_path / "in", 2)
    with StateStore.open(f"sqlite:///{tmp_path / 's.db'}") as store:
        result = runner(store, tmp_path / "in", RecordingSink()).run()
        assert result.error == ("no active imaging model; install one with "
                                "`vigil model install`") and result.cursor is None


def test_promoting_an_imaging_model_leaves_the_sepsis_roles(site):
    from rt_support import make_package

    from vigil.runtime.models import promote_model

    tmp_path, url, _ = site
    with StateStore.open(url) as store:
        install_model(store, make_package(tmp_path / "sepsis").path,
                      models_dir=tmp_path / "models")
        install_model(store, shadow_package(tmp_path / "next", version="2.0.0"),
                      models_dir=tmp_path / "models")
        promote_model(store, "2.0.0")
        roles = {(r.task, r.key): r.role for r in store.models()}
    assert roles == {("sepsis", "sepsis-tiny@1.0.0"): "active",
                     ("imaging", SHIPPED_MODEL): "retired",
                     ("imaging", "imaging-federated@2.0.0"): "active"}


def _ndjson_ids(out):
    return {kind: [json.loads(line)["id"] for line in
                   (out / f"{kind}.ndjson").read_text().splitlines()]
            for kind in ("Observation", "DiagnosticReport")}


def test_a_page_of_fhir_ndjson_is_one_durable_append_per_file(site, monkeypatch):
    from vigil.fhir_adapter import writers
    from vigil.fhir_adapter.imaging_report import FhirStudySink

    tmp_path, url, _ = site
    appends = []
    real = writers.append_durably
    monkeypatch.setattr(writers, "append_durably",
                        lambda path, data: (appends.append(path.name), real(path, data))[1])
    sink = FhirStudySink(tmp_path / "out", site="site-b", deployment="d")
    with StateStore.open(url) as store:
        result = runner(store, tmp_path / "in", sink).run()
    assert result.scored == 12 and result.pages == 3  # pages of 5, 5, 2
    assert appends == ["Observation.ndjson", "DiagnosticReport.ndjson"] * 3
    ids = _ndjson_ids(tmp_path / "out")
    assert len(ids["Observation"]) == len(set(ids["Observation"])) == 12
    assert len(ids["DiagnosticReport"]) == len(set(ids["DiagnosticReport"])) == 12


def test_a_kill_after_the_page_is_durable_but_before_its_record_replays_it_once(site,
                                                                               monkeypatch):
    from vigil.fhir_adapter.imaging_report import FhirStudySink

    tmp_path, url, _ = site
    out = tmp_path / "out"
    real_commit = ImagingRunner._commit
    commits = []

    def dying_commit(self, done, cursor, result):
        commits.append(cursor)
        if len(commits) == 2:  # the second page's lines are on disk, its record is not
            raise KeyboardInterrupt("killed between the sink's append and the record")
        return real_commit(self, done, cursor, result)

    monkeypatch.setattr(ImagingRunner, "_commit", dying_commit)
    with StateStore.open(url) as store, pytest.raises(KeyboardInterrupt):
        runner(store, tmp_path / "in", FhirStudySink(out, site="site-b", deployment="d")).run()
    crashed = _ndjson_ids(out)
    assert len(crashed["DiagnosticReport"]) == 10  # two pages written, one recorded
    monkeypatch.setattr(ImagingRunner, "_commit", real_commit)
    with StateStore.open(url) as store:
        assert len(studies(store)) == 5
        result = runner(store, tmp_path / "in",
                        FhirStudySink(out, site="site-b", deployment="d")).run()
        rows = studies(store)
    assert result.scored == 7 and len(rows) == 12
    ids = _ndjson_ids(out)  # the replayed page replaced its lines: no id twice
    for kind in ("Observation", "DiagnosticReport"):
        assert len(ids[kind]) == len(set(ids[kind])) == 12
        assert set(crashed[kind]) <= set(ids[kind])


def test_a_page_whose_durable_append_fails_is_retried_whole(site, monkeypatch):
    from vigil.fhir_adapter import writers
    from vigil.fhir_adapter.imaging_report import FhirStudySink

    tmp_path, url, _ = site
    real = writers.append_durably
    calls = []

    def full_disk(path, data):
        calls.append(path.name)
        if len(calls) == 3:  # the second page's Observations
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(writers, "append_durably", full_disk)
    with StateStore.open(url) as store:
        first = runner(store, tmp_path / "in",
                       FhirStudySink(tmp_path / "out", site="site-b", deployment="d")).run()
        assert first.ok and first.scored == 12 and first.sink_failures == 5
        assert [r[7] for r in studies(store)].count("retry") == 5
        second = runner(store, tmp_path / "in",
                        FhirStudySink(tmp_path / "out", site="site-b", deployment="d")).run()
        assert second.retried == 5 and {r[7] for r in studies(store)} == {"done"}
    ids = _ndjson_ids(tmp_path / "out")
    assert len(ids["DiagnosticReport"]) == len(set(ids["DiagnosticReport"])) == 12


def test_a_page_is_scored_in_one_onnx_call_per_model_and_the_pixels_are_let_go(site,
                                                                               monkeypatch):
    tmp_path, url, _ = site
    calls = []
    real = ImageScorer.predict_images

    def counted(self, inputs, **kw):
        calls.append(len(inputs))
        return real(self, inputs, **kw)

    monkeypatch.setattr(ImageScorer, "predict_images", counted)
    sink = RecordingSink()
    seen = []
    sink_write = sink.write
    sink.write = lambda score, sources: (seen.extend(sources), sink_write(score, sources))[1]
    with StateStore.open(url) as store:
        result = runner(store, tmp_path / "in", sink).run()
        rows = studies(store)
    # loading checks the package on a (2, 1, 28, 28) batch; then pages of 5, 5, 2: one call each
    assert result.scored == 12 and calls == [2, 5, 5, 2]
    assert len(seen) == 12 and not any("PixelData" in ds for ds in seen)  # headers only
    assert len(rows) == 12 and {r[7] for r in rows} == {"done"}


def test_page_histograms_equal_a_count_per_study():
    """One ``input_histogram`` per page and size gives each study the counts of its own call."""
    from vigil.imaging.histogram import N_BINS, input_histogram
    from vigil.runtime.images import InstanceBatch
    from vigil.runtime.imaging_cycle import _histograms, _Pending

    rng = np.random.default_rng(3)
    pending = []
    for n in (2, 0, 3, 1):  # a study with every instance quarantined reads no input
        reads = {28: InstanceBatch(rng.uniform(-1, 1, (n, 28, 28)).astype(np.float32),
                                   [f"k{i}" for i in range(n)], [], [], {})}
        if n == 3:
            reads[64] = InstanceBatch(rng.uniform(-1, 1, (3, 64, 64)).astype(np.float32),
                                      ["a", "b", "c"], [], [], {})
        pending.append(_Pending(None, reads, "digest", []))  # type: ignore[arg-type]
    _histograms(pending)
    for p in pending:
        assert set(p.histograms) == set(p.reads)
        for size, batch in p.reads.items():
            expected = (input_histogram(batch.inputs) if batch.keys
                        else np.zeros((0, N_BINS), dtype=np.int64))
            np.testing.assert_array_equal(p.histograms[size], expected)
            assert p.histograms[size].shape == (len(batch.keys), N_BINS)
