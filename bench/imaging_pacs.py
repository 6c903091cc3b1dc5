"""Studies per second through the imaging runtime path against Orthanc's own WADO-RS retrieval rate.

One run, one machine, one private Orthanc (``vigil.dicom_adapter.orthanc_local``: its own
network namespace, auth on, reached through the loopback/Unix-socket forwarders both
paths share). The PneumoniaMNIST test split (624 images; ``--data sample``: the bundled
200) is written as the four scanner sites' DICOM files (one single-image CR study each;
8-bit, RLE 12-bit, JPEG-LS 16-bit and 12-bit), stored with ``POST /instances`` and
left to turn stable. Then:

(a) **PACS**: WADO-RS *Retrieve Study* of every study (raw HTTP: the request and the
    whole ``multipart/related`` body, nothing parsed): Orthanc's own retrieval rate;
(b) **runtime path**: the imaging loop ``vigil serve`` runs
    (:func:`vigil.runtime.imaging_service.build_imaging` from a ``site.toml``: Orthanc's
    change feed, WADO-RS, pydicom decode and quarantine, the pixel chain, onnxruntime
    with ``models/imaging-federated`` on one thread, the state store, and the write-back:
    a TID 1500 SR per study stored back into Orthanc and a FHIR DiagnosticReport +
    Observation to NDJSON), until every study is scored. The loop reads the PACS one
    page ahead in a worker thread (``imaging.prefetch``, default on; ``--no-prefetch``
    turns it off) and stores the SRs from another (``imaging.writeback.sr_background``;
    ``--no-sr-background``), so PACS requests overlap the runtime's own work;
(a) runs twice before (b) (after (b) every study also holds its SR, so a retrieval then
    would move twice the instances); the mean of both runs is the PACS rate.

Printed: both rates and their ratio (``runtime_over_pacs``: the loop's studies/s over
Orthanc's own WADO-RS studies/s, same run), and the runtime's share beyond PACS I/O:
``share_beyond_pacs_io`` = the fraction of the loop's wall time during which **no** PACS
request is in flight in any thread (one minus the length of the union of every
request's interval, over the loop's wall time; the issue's target ≤ 0.25). With the
prefetch the requests overlap the runtime's work, so time "inside a request" no longer
partitions the loop; the union does. ``share_beyond_fetch``: the same with WADO-RS
retrievals only (the change feed, lookups and SR store counted as the runtime's).
Under CPU contention the union overstates the PACS side: a request's interval also holds
the time its thread waits for the interpreter while another thread computes. So the
loop's reads are then **replayed** (:func:`replay_reads`: every GET again, back to back on
one connection, nothing parsed), and ``share_beyond_replayed_reads`` = 1 - replay / loop
(``share_beyond_replayed_reads_and_lookups``: the same with the loop's bulk study lookups,
``POST /tools/bulk-content``, replayed too: they are reads sent as POST, which the GET-only
replay leaves out)
is the runtime's share beyond them; with ``--no-sr`` the reads are all of the loop's PACS
I/O, so this is the share without the contention's bias (the SR stores are not replayed).
Wall-clock times (``time.perf_counter``): the work is I/O; the machine is shared. Also
``cpu_s``: this process's CPU time over the loop (every thread: the loop, the prefetch
worker and its HTTP client), which a busy machine stretches far less than wall time. The
private PACS's host-side forwarder runs in a process of its own (``--forwarder-thread``:
in a thread of this one, as before, where its work shares the loop's interpreter lock
and counts in ``cpu_s``; a PACS on another host puts no forwarder in the runtime).

``--film-size PX`` measures realistically sized films: every test image upscaled
(nearest neighbour, :func:`upscale`) to PX x PX before the scanners' writer stores it at
its bit depth and transfer syntax (synthetic upscales, documented as such; with
``--limit N`` for the first N images: 2,520-px films are 6-13 MB each).
Also printed: Orthanc requests per scored study, and the runtime's own time by stage
(read + decode + pixel chain, ONNX scoring, sinks, the store's record).

Usage: ``nice -n 10 .venv/bin/python bench/imaging_pacs.py [--data NPZ|sample] [--json]
[--no-sr] [--no-prefetch] [--no-sr-background] [--film-size PX] [--limit N]
[--profile FILE]``
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from vigil.data.medmnist import load_medmnist
from vigil.dicom_adapter.orthanc import OrthancClient, OrthancSource
from vigil.dicom_adapter.orthanc_local import LocalOrthanc
from vigil.dicom_adapter.sites import write_sites

ROOT = Path(__file__).resolve().parents[1]
SHARED_NPZ = ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"
MODEL = ROOT / "models" / "imaging-federated"
TARGET_SHARE = 0.25
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def wait_stable(source: OrthancSource, cursor: str, n: int, timeout: float = 120.0) -> list:
    studies: list = []
    deadline = time.monotonic() + timeout
    while len(studies) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(studies)} of {n} studies turned stable in {timeout} s")
        page = source.poll(cursor, limit=1000)
        studies.extend(page.studies)
        cursor = page.cursor or cursor
        if page.done and len(studies) < n:
            time.sleep(0.5)
    return studies


def pacs_rate(server: LocalOrthanc, uids: list[str]) -> dict[str, float]:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    n_bytes = 0
    with httpx.Client(base_url=server.url, auth=(server.username, server.password),
                      timeout=30) as http:
        start = time.perf_counter()
        for uid in uids:
            resp = http.get(f"/dicom-web/studies/{uid}", headers={"Accept": accept})
            resp.raise_for_status()
            n_bytes += len(resp.content)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "studies_per_s": len(uids) / seconds, "bytes": n_bytes}


def upscale(images: np.ndarray, side: int) -> np.ndarray:
    """Nearest-neighbour upscale of (n, 28, 28) uint8 images to (n, side, side): synthetic films.

    Each source pixel becomes a block of about ``side / 28`` pixels; the scanners' writer
    then stores them at their bit depth and transfer syntax like any image. Not real
    chest films: same pixel count and bytes on the wire, none of their texture (so the
    lossless codecs compress them better than real films).
    """
    rows = (np.arange(side) * images.shape[1]) // side
    cols = (np.arange(side) * images.shape[2]) // side
    return np.ascontiguousarray(images[:, rows][:, :, cols])


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (overlapping requests counted once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _spans(obj: Any, name: str, spans: list[tuple[float, float]]) -> None:
    """Wrap ``obj.name`` so each call's ``(start, end)`` is appended to ``spans`` (any thread)."""
    inner = getattr(obj, name)

    def spanned(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spans.append((t, time.perf_counter()))  # list.append is atomic

    setattr(obj, name, spanned)


def _recorded(obj: Any, name: str, calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
    """Wrap ``obj.name`` so each call's arguments are appended to ``calls`` (any thread)."""
    inner = getattr(obj, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return inner(*args, **kwargs)

    setattr(obj, name, recorded)


def replay_reads(server: LocalOrthanc, calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
                 *, lookups: bool = False) -> tuple[float, int]:
    """Issue the loop's PACS reads again, back to back on one connection; (seconds, reads).

    Every GET of the loop (change feed, lookups, WADO-RS) with the same path and headers,
    in the loop's order, each response read whole and nothing parsed: the loop's PACS
    reads without any of the runtime's own work, and without the CPU contention that
    stretches a request's interval inside the loop (its thread waiting for the
    interpreter while another computes). The SR stores are not replayed: a second store
    of the same instance is not the same work for Orthanc as the first. ``lookups``: the
    bulk study lookups (``POST /tools/bulk-content``, reads sent as POST) are replayed
    too; without it they are left out, as in the first version of this measure.
    """
    reads = [(a, k) for a, k in calls if a[0] == "GET"
             or (lookups and a[0] == "POST" and a[1] == "/tools/bulk-content")]
    with OrthancClient(server.url, username=server.username, password=server.password,
                       timeout=30) as client:
        start = time.perf_counter()
        for args, kwargs in reads:
            client._request(*args, **kwargs).read()
        return time.perf_counter() - start, len(reads)


def runtime_path(server: LocalOrthanc, work: Path, n: int, *, sr: bool = True,
                 prefetch: bool = True, sr_background: bool = True,
                 profile: Path | None = None) -> dict[str, Any]:
    """The imaging loop ``vigil serve`` runs, built from a site.toml, until ``n`` studies scored.

    Orthanc source from the feed's beginning, FHIR DiagnosticReport + Observation to NDJSON
    and a TID 1500 SR stored back into Orthanc per study. Every HTTP request to the PACS
    (change feed, study lookups, WADO-RS, SR store) is recorded as an interval; their
    union is the PACS I/O time, the rest of the loop's wall time the runtime's alone.
    """
    from vigil.runtime.imaging_service import build_imaging
    from vigil.runtime.models import install_model
    from vigil.runtime.settings import load_settings
    from vigil.runtime.store import StateStore

    secret = work / "orthanc.pw"
    secret.write_text(server.password)
    config = work / "site.toml"
    config.write_text(f"""site_id = "bench"
[data]
source = "ndjson"
ndjson_dir = "{work / 'export'}"
writeback = "ndjson"
writeback_dir = "{work / 'out'}"
[store]
url = "sqlite:///{work / 'state.db'}"
[ops]
enabled = false
[models]
dir = "{work / 'models'}"
[imaging]
enabled = true
source = "orthanc"
url = "{server.url}"
username = "{server.username}"
password_file = "{secret}"
start = "beginning"
page_limit = 50
prefetch = {"true" if prefetch else "false"}
[imaging.writeback]
fhir = true
sr = {"true" if sr else "false"}
sr_background = {"true" if sr_background else "false"}
""")
    (work / "export").mkdir()
    settings = load_settings(config, environ=False)
    with StateStore.open(settings.store.url) as store:
        install_model(store, MODEL, models_dir=work / "models")
    loop = build_imaging(settings, registry=None)
    if sr:  # highdicom's first import (about 1 s) is start-up, not per-study work
        import highdicom  # noqa: F401
    requests: list[tuple[float, float]] = []
    fetches: list[tuple[float, float]] = []
    stores: list[tuple[float, float]] = []
    client = loop.source.client
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    _spans(client, "_request", requests)
    _recorded(client, "_request", calls)
    _spans(client, "retrieve_study", fetches)
    _spans(client, "store_status", stores)
    # where the runtime's own time goes (wall time, nested in the loop's)
    from vigil.runtime import imaging_cycle
    from vigil.runtime.images import ImageScorer

    own: dict[str, list[tuple[float, float]]] = {
        "read_decode_chain": [], "score_onnx": [], "record": []}
    _spans(imaging_cycle, "read_instances", own["read_decode_chain"])
    _spans(ImageScorer, "predict_images", own["score_onnx"])
    _spans(loop.runner, "_commit", own["record"])
    for sink in loop.sinks:  # a sink's time includes its PACS requests (the SR store)
        _spans(sink, "write", own.setdefault(f"sink_{sink.name}", []))
        if hasattr(sink, "end_page"):
            _spans(sink, "end_page", own.setdefault(f"sink_{sink.name}_end_page", []))
    scored = instances = skipped = 0
    quarantined = 0
    profiler = cProfile.Profile() if profile is not None else None
    if profiler is not None:
        profiler.enable()
    from vigil.runtime import study_prefetch

    worker_cpu: list[float] = []
    worker = study_prefetch.PrefetchedPages._work

    def timed_work(self: Any) -> None:  # the prefetch worker's own CPU time
        t = time.thread_time()
        try:
            worker(self)
        finally:
            worker_cpu.append(time.thread_time() - t)

    study_prefetch.PrefetchedPages._work = timed_work  # type: ignore[method-assign]
    start = time.perf_counter()
    cpu_start = time.process_time()
    main_start = time.thread_time()
    try:
        while scored < n:
            result = loop.poll()
            if not result.ok:
                raise SystemExit(f"imaging poll failed: {result.error}")
            scored += result.scored
            instances += result.instances_scored
            skipped += result.skipped
            quarantined += sum(result.quarantine_reasons.values())
            if result.studies == 0 and time.perf_counter() - start > 300:
                raise SystemExit(f"only {scored} of {n} studies scored in 300 s")
    finally:
        seconds = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        cpu_main = time.thread_time() - main_start
        end = start + seconds
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        loop.close()
        study_prefetch.PrefetchedPages._work = worker  # type: ignore[method-assign]
        if any(t.name == "vigil-pacs-prefetch" for t in threading.enumerate()):
            raise SystemExit("the prefetch worker outlived the loop")

    def within(spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(max(a, start), min(b, end)) for a, b in spans if b > start and a < end]

    replayed, n_reads = replay_reads(server, calls)
    replayed_all, n_all = replay_reads(server, calls, lookups=True)

    return {"seconds": seconds, "cpu_s": cpu, "cpu_ms_per_study": 1e3 * cpu / max(scored, 1),
            "cpu_main_s": cpu_main, "cpu_prefetch_s": sum(worker_cpu),
            "studies": scored, "instances": instances,
            "quarantined": quarantined, "studies_per_s": scored / seconds,
            "prefetch": prefetch, "sr_background": sr_background,
            "pacs_io_s": busy_seconds(within(requests)),
            "pacs_reads_replayed_s": replayed,
            "pacs_reads": n_reads,
            "pacs_reads_and_lookups_replayed_s": replayed_all,
            "pacs_lookups": n_all - n_reads,
            "sr_stores": len(calls) - n_all,
            "pacs_request_s_summed": sum(b - a for a, b in within(requests)),
            "fetch_s": busy_seconds(within(fetches)),
            "sr_store_s": busy_seconds(within(stores)),
            "pacs_requests_per_study": len(requests) / max(scored, 1),
            "own_s": {k: round(sum(b - a for a, b in v), 3) for k, v in own.items()},
            "fhir_reports": len((work / "out" / "DiagnosticReport.ndjson").read_text()
                                .splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED_NPZ) if SHARED_NPZ.is_file() else "sample",
                    help="PneumoniaMNIST .npz, or 'sample' (default: the shared file)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-sr", action="store_true",
                    help="write back FHIR only (no DICOM SR stored to the PACS)")
    ap.add_argument("--no-prefetch", action="store_true",
                    help="imaging.prefetch = false: poll and fetch on the loop's own thread")
    ap.add_argument("--no-sr-background", action="store_true",
                    help="imaging.writeback.sr_background = false: store each SR before the "
                         "next study (with --no-prefetch: the loop without any overlap)")
    ap.add_argument("--forwarder-thread", action="store_true",
                    help="run the private PACS's host-side forwarder as a thread of this "
                         "process (sharing the loop's interpreter lock), as before; default: "
                         "a process of its own")
    ap.add_argument("--profile", type=Path, default=None, metavar="FILE",
                    help="cProfile the loop's own thread into FILE")
    ap.add_argument("--film-size", type=int, default=0, metavar="PX",
                    help="upscale each image to PX x PX (synthetic films; default: the 28-px "
                         "originals)")
    ap.add_argument("--limit", type=int, default=0, metavar="N",
                    help="the first N test images only (default: all)")
    args = ap.parse_args()
    if args.film_size < 0 or args.limit < 0:
        ap.error(f"expected --film-size and --limit >= 0, got {args.film_size} and {args.limit}")
    images = load_medmnist(args.data, "test")
    pixels, labels = images.images, images.labels
    if args.limit:
        pixels, labels = pixels[:args.limit], labels[:args.limit]
    if args.film_size:
        pixels = upscale(pixels, args.film_size)
    with tempfile.TemporaryDirectory() as tmp:
        write_sites(pixels, labels, Path(tmp) / "dicom", split="test")
        del pixels
        files = sorted((Path(tmp) / "dicom").rglob("*.dcm"))
        with LocalOrthanc(Path(tmp) / "pacs", stable_age=1,
                          forwarder="thread" if args.forwarder_thread else "process"
                          ) as server, OrthancClient(
                server.url, username=server.username, password=server.password,
                timeout=30) as client:
            source = OrthancSource(client, modalities=("CR", "DX"))
            cursor = source.latest_cursor()
            start = time.perf_counter()
            for f in files:
                client.store(f.read_bytes())
            store_s = time.perf_counter() - start
            studies = wait_stable(source, cursor, len(files))
            uids = [s.study_uid for s in studies]
            before = pacs_rate(server, uids)
            after = pacs_rate(server, uids)
            (Path(tmp) / "site").mkdir()
            runtime = runtime_path(server, Path(tmp) / "site", len(uids), sr=not args.no_sr,
                                   prefetch=not args.no_prefetch,
                                   sr_background=not args.no_sr_background,
                                   profile=args.profile)
    pacs_s = (before["seconds"] + after["seconds"]) / 2
    pacs_per_s = len(uids) / pacs_s
    total = runtime["seconds"]
    beyond_fetch = (total - runtime["fetch_s"]) / total
    beyond_io = (total - runtime["pacs_io_s"]) / total
    # without SR the loop's PACS I/O is all reads, so this is its whole share beyond PACS I/O
    beyond_replayed = max(0.0, 1.0 - runtime["pacs_reads_replayed_s"] / total)
    beyond_replayed_all = max(0.0, 1.0 - runtime["pacs_reads_and_lookups_replayed_s"] / total)
    out = {
        "data": Path(args.data).name if args.data != "sample" else "sample",
        "n_studies": len(uids), "n_instances": runtime["instances"],
        "film_px": args.film_size or int(images.images.shape[1]),
        "mean_study_bytes": before["bytes"] / len(uids),
        "store_instances_per_s": len(files) / store_s,
        "pacs_wado_rs": {"studies_per_s": pacs_per_s,
                         "instances_per_s": runtime["instances"] / pacs_s,
                         "runs_s": [before["seconds"], after["seconds"]],
                         "bytes": before["bytes"]},
        "runtime": runtime,
        "runtime_over_pacs": runtime["studies_per_s"] / pacs_per_s,
        "share_beyond_fetch": beyond_fetch,
        "share_beyond_pacs_io": beyond_io,
        "share_beyond_replayed_reads": beyond_replayed,
        "share_beyond_replayed_reads_and_lookups": beyond_replayed_all,
        "target_share": TARGET_SHARE,
        "met_beyond_fetch": beyond_fetch <= TARGET_SHARE,
        "met_beyond_pacs_io": beyond_io <= TARGET_SHARE,
        "met_beyond_replayed_reads": beyond_replayed <= TARGET_SHARE,
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "writeback": ("FHIR DiagnosticReport/Observation (NDJSON)" if args.no_sr else
                      "TID 1500 SR stored to Orthanc + FHIR DiagnosticReport/Observation (NDJSON)"),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{len(uids)} studies: PACS WADO-RS {pacs_per_s:.1f} studies/s, runtime path "
          f"{runtime['studies_per_s']:.1f} studies/s ({out['runtime_over_pacs']:.2f}x)")
    overlap = [k for k in ("prefetch", "sr_background") if runtime[k]]
    print(f"loop {total:.1f} s (overlap: {', '.join(overlap) or 'none'}); a PACS "
          f"request in flight {runtime['pacs_io_s']:.1f} s of it (requests' own times summed "
          f"{runtime['pacs_request_s_summed']:.1f} s; WADO-RS {runtime['fetch_s']:.1f} s, SR "
          f"store {runtime['sr_store_s']:.1f} s); load average {out['load_average']}")
    print(f"share beyond fetch {beyond_fetch:.1%}, beyond all PACS I/O {beyond_io:.1%} "
          f"(target <= {TARGET_SHARE:.0%})")
    print(f"the loop's {runtime['pacs_reads']} PACS reads replayed back to back: "
          f"{runtime['pacs_reads_replayed_s']:.2f} s; share beyond them {beyond_replayed:.1%} "
          f"(1 - replayed / loop{'' if args.no_sr else '; the SR stores not replayed'}); "
          f"with the {runtime['pacs_lookups']} bulk lookups too: "
          f"{runtime['pacs_reads_and_lookups_replayed_s']:.2f} s, {beyond_replayed_all:.1%}")
    per = {k: f"{1e3 * v / max(runtime['studies'], 1):.1f} ms" for k, v in runtime["own_s"].items()}
    print(f"{runtime['pacs_requests_per_study']:.2f} Orthanc requests per study; the runtime's own "
          f"time per study: {per}")


if __name__ == "__main__":
    main()
