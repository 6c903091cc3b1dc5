"""Imaging write-back, measured: the cost per study of the DICOM SR and the FHIR resources.

Builds ``--studies`` one-image DX studies (28×28, a simulated scanner), scores each with a
fixed probability and times, per study (CPU time of this process, best of ``--repeat``
rounds over all studies): the DICOM SR (highdicom TID 1500 build + Part 10 encoding,
:func:`vigil.dicom_adapter.sr.build_sr`), and the FHIR DiagnosticReport + Observation
(:func:`vigil.fhir_adapter.imaging_report`, built and serialized with orjson). The
network (STOW-RS to the PACS, PUT to the FHIR server) is not included: that is the PACS
and FHIR server's I/O, measured by the throughput bench against Orthanc.

Usage: ``.venv/bin/python bench/imaging_writeback.py [--studies N] [--repeat R] [--json]``
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime


def main() -> None:
    import numpy as np
    import orjson

    from vigil.dicom_adapter import Scanner, build_instance
    from vigil.dicom_adapter.sr import build_sr, sr_bytes
    from vigil.fhir_adapter.imaging_report import imaging_report
    from vigil.imaging import Photometric, PresentationShape
    from vigil.runtime.study_contracts import StudyRef, StudyScore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    scanner = Scanner("bench-dx", "DX", 12, Photometric.MONOCHROME2, 1.0, 0.0, 0.0, 4095.0,
                      presentation_shape=PresentationShape.IDENTITY)
    image = (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)
    when = datetime(2026, 3, 2, 14, 15, tzinfo=UTC)
    studies = []
    for i in range(args.studies):
        ds = build_instance(image, scanner, key=f"bench/{i}")
        ref = StudyRef(str(ds.StudyInstanceUID), f"s{i}", str(ds.PatientID), ("DX",))
        p = np.array([(i % 100) / 100.0])
        score = StudyScore(ref, "imaging-federated", "1.0.0", "active", 0.5, when,
                           (str(ds.SOPInstanceUID),), p, p, True)
        studies.append((score, [ds]))
    sr_size = len(sr_bytes(build_sr(*studies[0], site="bench")))  # warm-up (imports)

    def per_study(step) -> float:  # type: ignore[no-untyped-def]
        best = float("inf")
        for _ in range(args.repeat):
            start = time.process_time()
            for score, sources in studies:
                step(score, sources)
            best = min(best, time.process_time() - start)
        return best / len(studies) * 1e3

    sr_ms = per_study(lambda s, d: sr_bytes(build_sr(s, d, site="bench")))
    fhir_ms = per_study(lambda s, d: [orjson.dumps(r) for r in imaging_report(
        s, site="bench", deployment="bench", sources=d) if r is not None])
    result = {"studies": args.studies, "sr_ms_per_study": round(sr_ms, 3),
              "fhir_ms_per_study": round(fhir_ms, 3), "sr_bytes": sr_size,
              "sr_per_second": round(1e3 / sr_ms, 1), "fhir_per_second": round(1e3 / fhir_ms, 1)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.studies} one-image studies, CPU time per study, best of {args.repeat}")
    print(f"  DICOM SR (TID 1500, build + encode)   {sr_ms:8.3f} ms  ({1e3 / sr_ms:,.0f}/s, "
          f"{sr_size:,} bytes)")
    print(f"  FHIR DiagnosticReport + Observation   {fhir_ms:8.3f} ms  ({1e3 / fhir_ms:,.0f}/s)")


if __name__ == "__main__":
    main()
