"""Fixtures of the FHIR adapter tests (helpers in ``fhir_support.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fhir_support import running_server


@pytest.fixture(scope="module")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sekmet FHIR server without auth, for one test module."""
    with running_server(tmp_path_factory.mktemp("sekmet")) as base:
        yield base
