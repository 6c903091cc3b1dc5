"""The imaging cycle's own throughput on a drop folder (no PACS): studies per second.

Writes ``--studies`` PneumoniaMNIST test images as DICOM studies (one instance each, the
four scanner sites), installs the shipped imaging package in a temporary state store and
runs :class:`vigil.runtime.imaging_cycle.ImagingRunner` over a
:class:`vigil.runtime.folder_studies.FolderStudySource` (durable store, ``page_limit`` 50,
one onnxruntime thread, no sink). Reports, in one run: studies per second of the whole
cycle, of the read alone (folder fetch + ``read_instances``: DICOM decode and pixel
chain, the part a PACS source replaces by WADO-RS), and the runtime's share beyond it
(scoring, calibration, records, commits). The PACS comparison (Orthanc's own WADO-RS
rate) is the Orthanc bench's (issue 16 point 6).

Usage: ``nice -n 10 .venv/bin/python bench/imaging_cycle.py [--studies 600] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from vigil.data.medmnist import load_medmnist
    from vigil.dicom_adapter.sites import write_sites
    from vigil.runtime.folder_studies import FolderStudySource
    from vigil.runtime.images import read_instances
    from vigil.runtime.imaging_cycle import ImagingRunner, skip_instance
    from vigil.runtime.models import install_model, load_live_models
    from vigil.runtime.store import StateStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=600)
    parser.add_argument("--data", default=str(SHARED) if SHARED.is_file() else "sample")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    package = ROOT / "models" / "imaging-federated"
    test = load_medmnist(args.data, "test")
    n = min(args.studies, test.labels.size)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_sites(test.images[:n], test.labels[:n], t / "in", split="test", seed=0)
        with StateStore.open(f"sqlite:///{t / 'state.db'}") as store:
            install_model(store, package, models_dir=t / "models",
                          public_key=package / "public_key.pem")
            live = load_live_models(store, public_key=package / "public_key.pem",
                                    task="imaging")
            source = FolderStudySource(t / "in", stable_seconds=0, clock=lambda: 1e11)
            page = source.poll(None, limit=n)
            start = time.perf_counter()
            for ref in page.studies:  # the read alone: fetch + decode + pixel chain
                read_instances(((i.sop_instance_uid, i.data) for i in source.fetch(ref)),
                               size=28, skip=skip_instance)
            read_s = time.perf_counter() - start
            runner = ImagingRunner(store=store, source=source, sinks=(), page_limit=50,
                                   models=lambda: live, site_id="site-a")
            start = time.perf_counter()
            result = runner.run()
            cycle_s = time.perf_counter() - start
    out = {
        "studies": result.scored, "cycle_s": round(cycle_s, 3),
        "studies_per_s": round(result.scored / cycle_s, 1),
        "read_only_studies_per_s": round(n / read_s, 1),
        "share_beyond_read": round(1 - read_s / cycle_s, 3),
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
