"""A line appended to the NDJSON feed while vigil was stopped is read after the restart.

The NDJSON source keys a line appended since its previous read at its arrival, not at its
own (old) time; across a restart that position is the cursor the cycle stores with its
watermark (docs/runtime.md, "Cycle status and missed ticks"; issue 17, point 3).
"""

from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest
from rt_support import make_package, move_to_now, write_trusted_key

from vigil.data import patient_split
from vigil.fhir_adapter.bulk import NDJSONSource
from vigil.fhir_adapter.synth import write_synth
from vigil.runtime.cycle import CURSOR_SUFFIX
from vigil.runtime.models import install_model
from vigil.runtime.service import build_service
from vigil.runtime.settings import load_settings
from vigil.runtime.store import StateStore


@pytest.fixture()
def site(tmp_path, sample):
    table = sample.select(np.flatnonzero(patient_split(sample.grid.patient_ids, "test"))[:3])
    write_synth(table.frame, tmp_path / "export")
    now = datetime.now(UTC)
    move_to_now(tmp_path / "export", now)
    settings = load_settings(
        None, environ=False, site_id="s",
        data={"source": "ndjson", "ndjson_dir": str(tmp_path / "export"), "writeback": "none"},
        store={"url": f"sqlite:///{tmp_path / 'state.db'}"},
        models={"dir": str(tmp_path / "models"), "public_key": str(write_trusted_key(tmp_path))},
        ops={"enabled": False}, scheduler={"backfill_ticks": 0},
    )
    make_package(tmp_path / "pkg")
    with StateStore.open(settings.store.url) as store:
        install_model(store, tmp_path / "pkg", models_dir=settings.models.dir,
                      public_key=settings.models.trusted_key())
    return settings, tmp_path / "export" / "Observation.ndjson", now


def charted_late(path, now):
    """Append a copy of the last value, charted 3 h ago, with no meta (no lastUpdated)."""
    last = orjson.loads(path.read_bytes().splitlines()[-1])
    late = {k: v for k, v in last.items() if k != "meta"}
    late["id"] = "charted-late"
    late["effectiveDateTime"] = (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with path.open("ab") as fh:
        fh.write(orjson.dumps(late) + b"\n")


def stored_ids(settings):
    with StateStore.open(settings.store.url, read_only=True) as store:
        return {r for (r,) in store.conn.execute("SELECT resource_id FROM observations")}


def run_cycle(settings, tick):
    service = build_service(settings)
    try:
        return service.run_cycle(tick)
    finally:
        service.close()


@pytest.mark.parametrize("keep_cursor", [True, False])
def test_a_line_appended_while_stopped_is_read_after_the_restart(site, keep_cursor):
    settings, observations, now = site
    first = run_cycle(settings, now)
    assert first.ok, first.reason
    with StateStore.open(settings.store.url) as store:
        source = f"ndjson:{observations.parent.resolve()}"  # open_source's name
        assert store.watermark(source + CURSOR_SUFFIX) is not None
        if not keep_cursor:  # what a store without the cursor (the code before it) did
            with store.transaction() as tx:
                tx.execute("DELETE FROM watermarks WHERE source = ?", (source + CURSOR_SUFFIX,))
    assert "charted-late" not in stored_ids(settings)
    charted_late(observations, now)  # vigil is stopped: no process saw the file grow
    again = run_cycle(settings, now + timedelta(minutes=15))
    assert again.ok, again.reason
    # with the cursor the late line is read; without it, its old time lies behind the
    # watermark and it is lost (the test would fail without the stored cursor)
    assert ("charted-late" in stored_ids(settings)) is keep_cursor


def test_a_cursor_that_cannot_be_read_is_ignored_with_a_warning(tmp_path, caplog):
    (tmp_path / "Observation.ndjson").write_bytes(b"")
    source = NDJSONSource(tmp_path)
    source.resume("not json")
    assert "cannot be read" in caplog.text
    assert source.observations(None).observations.resource_id.tolist() == []
    assert orjson.loads(source.cursor()) == {
        str(tmp_path / "Observation.ndjson"): [
            (tmp_path / "Observation.ndjson").stat().st_ino, 0,
            (tmp_path / "Observation.ndjson").stat().st_mtime_ns // 1000]}
