"""The imaging cycle overlapping PACS I/O: same results, same errors, nothing left running.

Reads run one page ahead (``imaging.prefetch``), SR stores behind the page
(``imaging.writeback.sr_background``).

A mock Orthanc (``httpx.MockTransport``: change feed, bulk lookups, WADO-RS) serves the
sample studies to the real :class:`OrthancSource`, so the client's retries and backoff
run as in service; gated sources pin down when the worker reads.
"""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import pydicom
import pytest
from img_support import FAR_FUTURE, SHIPPED, SHIPPED_KEY, RecordingSink, write_studies

from vigil.core.errors import PACSError
from vigil.dicom_adapter.orthanc import OrthancClient, OrthancSource
from vigil.runtime.folder_studies import FolderStudySource
from vigil.runtime.imaging_cycle import ImagingRunner
from vigil.runtime.models import install_model, load_live_models
from vigil.runtime.store import StateStore
from vigil.runtime.study_prefetch import PrefetchedPages, SequentialPages, open_pages
from vigil.runtime.write_behind import WriteBehind

BOUNDARY = "vigil-test-boundary"


class MockOrthanc:
    """Orthanc's change feed, bulk lookups and WADO-RS over DICOM files (one study each)."""

    def __init__(self, files: list[Path]) -> None:
        self.studies: list[tuple[str, pydicom.Dataset, bytes]] = []
        for f in files:
            data = f.read_bytes()
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            self.studies.append((f"orthanc-{len(self.studies)}", ds, data))
        self.by_id = {sid: (ds, data) for sid, ds, data in self.studies}
        self.by_uid = {str(ds.StudyInstanceUID): data for _, ds, data in self.studies}
        self.failing: set[str] = set()  # StudyInstanceUIDs whose WADO-RS answers 503
        self.fail_changes_after: int | None = None  # /changes since >= this answers 503
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        with self.lock:
            self.requests.append(f"{request.method} {path.split('/')[1]}")
        if path == "/changes":
            since = int(request.url.params["since"])
            if self.fail_changes_after is not None and since >= self.fail_changes_after:
                return httpx.Response(503)
            limit = int(request.url.params["limit"])
            rows = [{"Seq": i + 1, "ChangeType": "NewStudy", "ResourceType": "Study", "ID": sid}
                    for i, (sid, _, _) in enumerate(self.studies)][since:since + limit]
            last = rows[-1]["Seq"] if rows else len(self.studies)
            return httpx.Response(200, json={"Changes": rows, "Last": last,
                                             "Done": since + limit >= len(self.studies)})
        if path == "/tools/bulk-content":
            body = json.loads(request.content)
            out = []
            for sid in body["Resources"]:
                ds, _ = self.by_id[sid]
                if body["Level"] == "Study":
                    out.append({"ID": sid, "Type": "Study", "IsStable": True,
                                "MainDicomTags": {"StudyInstanceUID": str(ds.StudyInstanceUID)},
                                "PatientMainDicomTags": {"PatientID": str(ds.PatientID)}})
                else:
                    out.append({"ID": f"{sid}-series", "ParentStudy": sid,
                                "MainDicomTags": {"Modality": str(ds.Modality)}})
            return httpx.Response(200, json=out)
        if path.startswith("/dicom-web/studies/"):
            uid = path.rsplit("/", 1)[1]
            if uid in self.failing:
                return httpx.Response(503)
            body = (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + self.by_uid[uid] + f"\r\n--{BOUNDARY}--\r\n".encode())
            return httpx.Response(200, content=body, headers={
                "Content-Type": f'multipart/related; type="application/dicom"; '
                                f'boundary={BOUNDARY}'})
        return httpx.Response(404)


@pytest.fixture()
def pacs(tmp_path):
    files = write_studies(tmp_path / "in", 12)
    return tmp_path, MockOrthanc(files)


def run_once(tmp_path: Path, pacs: MockOrthanc, *, prefetch: bool, name: str, **kw):
    """A fresh store and runner over the mock Orthanc; one run; what it left."""
    url = f"sqlite:///{tmp_path / f'{name}.db'}"
    slept: list[float] = []
    client = OrthancClient("http://pacs.test:8042", username="u", password="p",
                           transport=httpx.MockTransport(pacs), sleep=slept.append)
    sink = RecordingSink()
    with StateStore.open(url) as store:
        install_model(store, SHIPPED, models_dir=tmp_path / f"{name}-models",
                      public_key=SHIPPED_KEY)
        run = ImagingRunner(store=store, source=OrthancSource(client, modalities=("CR", "DX")),
                            sinks=[sink], page_limit=5, prefetch=prefetch,
                            models=lambda: load_live_models(store, public_key=None,
                                                            task="imaging"))
        result = run.run(**kw)
        rows = store.conn.execute("SELECT study_uid, status FROM imaging_studies "
                                  "ORDER BY study_uid").fetchall()
        cursor = run.cursor
    client.close()
    out = result.to_dict()
    out.pop("duration_s")
    return out, cursor, rows, slept, sink


def no_prefetch_thread() -> bool:
    return not any(t.name == "vigil-pacs-prefetch" for t in threading.enumerate())


def test_prefetch_changes_no_result(pacs):
    tmp_path, orthanc = pacs
    on = run_once(tmp_path, orthanc, prefetch=True, name="on")
    off = run_once(tmp_path, orthanc, prefetch=False, name="off")
    assert on[0] == off[0] and on[0]["scored"] == 12 and on[0]["pages"] == 3
    assert on[1] == off[1] == "12" and on[2] == off[2] and len(on[2]) == 12
    assert on[4].written == off[4].written and on[4].writes == 12  # each study written once
    assert no_prefetch_thread()


def test_an_orthanc_error_in_the_prefetch_surfaces_as_without_it(pacs):
    """A WADO-RS 503 on the second page: same retries, backoff, counters, cursor, message."""
    tmp_path, orthanc = pacs
    orthanc.failing = {str(orthanc.studies[6][1].StudyInstanceUID)}  # page 2, study 2
    on = run_once(tmp_path, orthanc, prefetch=True, name="on")
    off = run_once(tmp_path, orthanc, prefetch=False, name="off")
    assert on[0] == off[0]
    assert on[0]["error"].startswith("the imaging source 'orthanc' failed: PACSError: Orthanc "
                                     "answered HTTP 503 to a WADO-RS retrieve")
    assert on[0]["scored"] == 5 and on[0]["pages"] == 1  # page 1 committed, page 2 not
    assert on[1] == off[1] == "5" and on[2] == off[2] and len(on[2]) == 5
    assert on[3] == off[3] == [0.5, 1.0, 2.0]  # the client's retries and backoff, once
    assert on[4].writes == off[4].writes == 5  # nothing of the failed page was written
    orthanc.failing = set()
    url = f"sqlite:///{tmp_path / 'on.db'}"
    client = OrthancClient("http://pacs.test:8042", transport=httpx.MockTransport(orthanc))
    sink = RecordingSink()
    with StateStore.open(url) as store:  # the next run scores the rest, once
        again = ImagingRunner(store=store, source=OrthancSource(client, modalities=("CR",)),
                              sinks=[sink], page_limit=5,
                              models=lambda: load_live_models(store, public_key=None,
                                                              task="imaging")).run()
        n = store.conn.execute("SELECT COUNT(*) FROM imaging_studies").fetchone()[0]
    assert again.ok and again.scored == 7 and sink.writes == 7 and n == 12
    assert not set(sink.written) & set(on[4].written)


def test_a_failing_feed_in_the_prefetch_surfaces_after_the_page_before_it(pacs):
    tmp_path, orthanc = pacs
    orthanc.fail_changes_after = 5  # the poll of page 2 fails
    on = run_once(tmp_path, orthanc, prefetch=True, name="on")
    off = run_once(tmp_path, orthanc, prefetch=False, name="off")
    assert on[0] == off[0] and "HTTP 503 to the change feed" in on[0]["error"]
    assert on[0]["scored"] == 5 and on[1] == off[1] == "5" and on[3] == off[3]


def test_the_next_page_is_fetched_while_the_current_one_is_written(pacs):
    """The sink of page 1 sees page 2's WADO-RS requests arrive (and never without prefetch)."""
    tmp_path, orthanc = pacs

    class Watching(RecordingSink):
        def __init__(self) -> None:
            super().__init__()
            self.seen_ahead: list[int] = []

        def write(self, score, sources) -> None:
            super().write(score, sources)
            if self.writes == 5:  # the last study of page 1: give the worker a moment
                deadline = time.monotonic() + (5 if prefetch else 0.3)
                while time.monotonic() < deadline and wado() < 10:
                    time.sleep(0.01)
                self.seen_ahead.append(wado())

    def wado() -> int:
        with orthanc.lock:
            return sum(r == "GET dicom-web" for r in orthanc.requests)

    for prefetch in (True, False):
        orthanc.requests.clear()
        client = OrthancClient("http://pacs.test:8042", transport=httpx.MockTransport(orthanc))
        sink = Watching()
        with StateStore.open(f"sqlite:///{tmp_path / f'{prefetch}.db'}") as store:
            install_model(store, SHIPPED, models_dir=tmp_path / f"m{prefetch}",
                          public_key=SHIPPED_KEY)
            ImagingRunner(store=store, source=OrthancSource(client, modalities=("CR",)),
                          sinks=[sink], page_limit=5, prefetch=prefetch,
                          models=lambda s=store: load_live_models(s, public_key=None,
                                                                  task="imaging")).run()
        # while page 1 is written: its 5 studies and, with prefetch, page 2's 5 are fetched
        assert sink.seen_ahead == ([10] if prefetch else [5])


class GatedFolder(FolderStudySource):
    """A folder source whose fetches of the second page wait (at most ``hold`` s) for a gate."""

    def __init__(self, folder: Path, *, hold: float) -> None:
        super().__init__(folder, stable_seconds=0, clock=lambda: FAR_FUTURE)
        self.gate = threading.Event()
        self.hold = hold
        self.polls = 0
        self.fetches = 0
        self.in_flight = threading.Event()

    def poll(self, cursor, *, limit):
        self.polls += 1
        return super().poll(cursor, limit=limit)

    def fetch(self, study):
        self.fetches += 1
        if self.fetches > 5:  # a study of page 2: in flight until the gate opens
            self.in_flight.set()
            self.gate.wait(self.hold)
        return super().fetch(study)


def _folder_runner(store, source, sink):
    return ImagingRunner(store=store, source=source, sinks=[sink], page_limit=5,
                         models=lambda: load_live_models(store, public_key=None, task="imaging"))


@pytest.fixture()
def folder_site(tmp_path):
    write_studies(tmp_path / "in", 12)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with StateStore.open(url) as store:
        install_model(store, SHIPPED, models_dir=tmp_path / "models", public_key=SHIPPED_KEY)
    return tmp_path, url


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_a_stop_or_crash_with_the_prefetch_in_flight_discards_it(folder_site, how):
    tmp_path, url = folder_site
    source = GatedFolder(tmp_path / "in", hold=0.5)
    stopping = threading.Event()

    class Stopper(RecordingSink):
        def write(self, score, sources) -> None:
            super().write(score, sources)
            if self.writes == 5:  # page 1's last write, with page 2's fetch in flight
                assert source.in_flight.wait(5)
                stopping.set()
                if how == "crash":
                    raise KeyboardInterrupt("killed with the prefetch in flight")

    with StateStore.open(url) as store:
        run = _folder_runner(store, source, Stopper())
        if how == "crash":
            with pytest.raises(KeyboardInterrupt):
                run.run(stop=stopping.is_set)
            assert store.conn.execute("SELECT COUNT(*) FROM imaging_studies").fetchone()[0] == 0
        else:
            result = run.run(stop=stopping.is_set)
            assert result.ok and result.scored == 5 and result.pages == 1
        assert no_prefetch_thread()  # the worker was waited for: no request outlives the run
        sink = RecordingSink()
        after = _folder_runner(store, FolderStudySource(tmp_path / "in", stable_seconds=0,
                                                        clock=lambda: FAR_FUTURE), sink).run()
        n = store.conn.execute("SELECT COUNT(*) FROM imaging_studies").fetchone()[0]
    assert after.ok and n == 12  # nothing skipped ...
    assert after.scored == (12 if how == "crash" else 7)  # ... nothing scored twice
    assert no_prefetch_thread()


class CountingSource:
    """Three pages of ``n`` one-instance studies of ``size`` bytes each; counts calls."""

    name = "counting"

    def __init__(self, n: int = 3, size: int = 100) -> None:
        from vigil.runtime.study_contracts import StudyInstance, StudyPage, StudyRef

        self.pages = [StudyPage(tuple(StudyRef(str(uuid.uuid4()), f"{p}-{i}", "k")
                                      for i in range(n)), str(p + 1), done=p == 2)
                      for p in range(3)]
        self.instance = StudyInstance("1.2", "1.3", b"x" * size)
        self.polls = 0
        self.fetches = 0

    def poll(self, cursor, *, limit):
        self.polls += 1
        return self.pages[int(cursor or 0)]

    def fetch(self, study):
        self.fetches += 1
        return [self.instance]


def settle(predicate, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # and give the worker the chance to overshoot


def test_the_worker_reads_one_page_ahead_and_holds_at_most_its_byte_budget():
    source = CountingSource(n=3, size=100)
    with PrefetchedPages(source, None, limit=3, max_bytes=150) as pages:
        first = pages.next_page(more=False)
        settle(lambda: source.fetches >= 2)
        assert source.polls == 1 and source.fetches == 2  # 200 bytes held: no third fetch
        for ref in first.studies:
            assert pages.fetch(ref) == [source.instance]
        settle(lambda: False, 0.05)
        assert source.polls == 1  # more=False: the page after is never polled
    source = CountingSource(n=3, size=100)
    with PrefetchedPages(source, None, limit=3) as pages:
        pages.next_page(more=True)
        settle(lambda: source.polls >= 2 and source.fetches >= 6)
        assert source.polls == 2 and source.fetches == 6  # page 2 read; page 3 not yet
    assert no_prefetch_thread()
    huge = CountingSource(n=2, size=10_000)
    with PrefetchedPages(huge, None, limit=2, max_bytes=1) as pages:
        page = pages.next_page(more=False)
        settle(lambda: huge.fetches >= 1)
        assert huge.fetches == 1  # one study over the budget is still fetched, not two
        assert [pages.fetch(r) for r in page.studies] == [[huge.instance]] * 2


def test_errors_are_raised_where_the_sequential_reader_raises_them():
    class Failing(CountingSource):
        def fetch(self, study):
            if self.fetches == 1:
                self.fetches += 1
                raise PACSError("Orthanc answered HTTP 503 to a WADO-RS retrieve")
            return super().fetch(study)

    for reader in (PrefetchedPages, SequentialPages):
        source = Failing()
        with reader(source, None, limit=3) as pages:
            page = pages.next_page(more=True)
            assert pages.fetch(page.studies[0]) == [source.instance]  # the first is fine
            with pytest.raises(PACSError, match="HTTP 503"):
                pages.fetch(page.studies[1])
    assert isinstance(open_pages(Failing(), None, limit=1, prefetch=False), SequentialPages)
    assert no_prefetch_thread()


# --- the SR stores run behind the page (imaging.writeback.sr_background) ----------------------


def test_write_behind_keeps_order_reports_failures_by_key_and_leaves_no_thread():
    written: list[bytes] = []

    def write(data: bytes) -> None:
        time.sleep(0.002)
        if data == b"bad":
            raise PACSError("Orthanc answered HTTP 500 to storing an instance")
        written.append(data)

    behind = WriteBehind(write, name="vigil-test-writes")
    for i in range(20):
        behind.submit(f"k{i}", b"bad" if i in (3, 7) else b"%d" % i)
    failures = behind.drain()
    assert written == [b"%d" % i for i in range(20) if i not in (3, 7)]  # all done, in order
    assert sorted(failures) == ["k3", "k7"] and isinstance(failures["k3"], PACSError)
    assert behind.drain() == {}  # reported once
    behind.submit("k", b"late")
    behind.close()  # finishes what is queued
    assert written[-1] == b"late"
    assert not any(t.name == "vigil-test-writes" for t in threading.enumerate())


@pytest.mark.slow  # four runs with SR building: about 9 s under load
def test_background_sr_stores_fail_per_study_exactly_as_synchronous_ones(folder_site):
    """One SR store fails: that study only is marked retry, and the next run writes it once."""
    from vigil.dicom_adapter.sr import SRStudySink

    tmp_path, _ = folder_site
    target = str(pydicom.dcmread(sorted((tmp_path / "in").rglob("*.dcm"))[6],
                                 stop_before_pixels=True).StudyInstanceUID)
    outcomes = {}
    for background in (True, False):
        url = f"sqlite:///{tmp_path / f'sr-{background}.db'}"
        with StateStore.open(url) as store:
            install_model(store, SHIPPED, models_dir=tmp_path / f"sr-m-{background}",
                          public_key=SHIPPED_KEY)
            stored: list[bytes] = []
            failing = [True]

            def store_sr(data: bytes, stored=stored, failing=failing) -> None:
                if failing[0] and target.encode() in data:
                    raise PACSError("Orthanc answered HTTP 503 to storing an instance")
                stored.append(data)

            sink = SRStudySink(store_sr, site="s", background=background)
            source = FolderStudySource(tmp_path / "in", stable_seconds=0,
                                       clock=lambda: FAR_FUTURE)
            first = _folder_runner(store, source, sink).run()
            rows = store.conn.execute("SELECT study_uid, status FROM imaging_studies "
                                      "WHERE status != 'done'").fetchall()
            failing[0] = False
            second = _folder_runner(store, source, sink).run()
            sink.close()
            done = store.conn.execute("SELECT COUNT(*) FROM imaging_studies "
                                      "WHERE status = 'done'").fetchone()[0]
        sops = sorted(str(pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True)
                          .SOPInstanceUID) for b in stored)
        outcomes[background] = (first.to_dict(), rows, second.retried, second.scored,
                                len(stored), done, sops)
        outcomes[background][0].pop("duration_s")
    on, off = outcomes[True], outcomes[False]
    assert on[:6] == off[:6]
    assert on[0]["sink_failures"] == 1 and on[1] == [(target, "retry")]
    assert (on[2], on[3], on[4], on[5]) == (1, 1, 12, 12)  # the one study retried, once
    assert on[6] == off[6] and len(set(on[6])) == 12  # the same SRs stored, each once
    assert not any(t.name == "vigil-sr-store" for t in threading.enumerate())


@pytest.mark.slow  # SR building for two runs: about 6 s under load
def test_a_crash_with_sr_stores_in_flight_replays_the_page_and_stores_each_sr_once(folder_site):
    """Killed after page 1's writes, its SR stores still queued: close finishes them, the
    restart replays the page, and the PACS (keeping the first copy of a UID) holds each once."""
    from vigil.dicom_adapter.sr import SRStudySink

    tmp_path, url = folder_site
    pacs: dict[str, bytes] = {}  # SOPInstanceUID -> first bytes stored, as Orthanc keeps them
    gate = threading.Event()

    def store_sr(data: bytes) -> None:
        gate.wait(5)  # stores stay in flight until the crash has happened
        uid = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        pacs.setdefault(uid, data)

    class Killer(RecordingSink):
        def write(self, score, sources) -> None:
            super().write(score, sources)
            if self.writes == 3:
                raise KeyboardInterrupt("killed with SR stores in flight")

    sr = SRStudySink(store_sr, site="s", background=True)
    with StateStore.open(url) as store:
        source = FolderStudySource(tmp_path / "in", stable_seconds=0, clock=lambda: FAR_FUTURE)
        with pytest.raises(KeyboardInterrupt):
            ImagingRunner(store=store, source=source, sinks=[sr, Killer()], page_limit=5,
                          models=lambda: load_live_models(store, public_key=None,
                                                          task="imaging")).run()
        assert store.conn.execute("SELECT COUNT(*) FROM imaging_studies").fetchone()[0] == 0
        gate.set()
        sr.close()  # the loop's close: the queued stores finish, the worker stops
        assert len(pacs) == 3 and not any(t.name == "vigil-sr-store"
                                          for t in threading.enumerate())
        again = SRStudySink(store_sr, site="s", background=True)
        result = _folder_runner(store, source, again).run()
        again.close()
        n = store.conn.execute("SELECT COUNT(*) FROM imaging_studies WHERE status = 'done'"
                               ).fetchone()[0]
    assert result.ok and result.scored == 12 and n == 12 and result.sink_failures == 0
    assert len(pacs) == 12  # each study's SR once (the crashed page's 3 kept their first copy)
    assert no_prefetch_thread()
