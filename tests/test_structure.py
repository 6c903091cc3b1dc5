"""Package structure: layering, public API lists, no torch in the runtime."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

import vigil


def isort_key(name: str) -> tuple[int, str]:
    """isort-style order (as ruff's RUF022): CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


def all_modules():
    return [m.name for m in pkgutil.walk_packages(vigil.__path__, "vigil.")]


@pytest.mark.parametrize("name", all_modules())
def test_dunder_all_is_sorted_and_defined(name):
    if name.startswith("vigil.cli"):
        pytest.skip("command modules export typer apps, not an API")
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        pytest.skip("private or script module")
    assert list(exported) == sorted(exported, key=isort_key), f"{name}.__all__ is not sorted"
    for symbol in exported:
        assert hasattr(module, symbol), f"{name}.__all__ names missing {symbol}"


LOWER_LAYERS = [
    "vigil.core",
    "vigil.features",
    "vigil.imaging",
    "vigil.dicom_adapter",
    "vigil.data",
    "vigil.calibration",
    "vigil.fhir_adapter",
    "vigil.runtime",
]


def test_runtime_and_lower_layers_never_import_torch():
    code = (
        "import importlib, pkgutil, sys\n"
        f"for top in {LOWER_LAYERS!r}:\n"
        "    pkg = importlib.import_module(top)\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, top + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "heavy = {'torch', 'opacus', 'flwr', 'onnx'}\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in heavy)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


CORE_DEPENDENCIES = {
    "numpy",
    "pydantic",
    "pydantic_core",
    "typing_extensions",
    "annotated_types",
    "typing_inspection",
    "cryptography",
    "_cffi_backend",
    "_openssl",
}


def modules_loaded_by(statement: str) -> set[str]:
    """Names of the modules a fresh interpreter loads to run ``statement``."""
    code = (
        "import sys\nbefore = set(sys.modules)\n"
        f"{statement}\n"
        "print(','.join(sorted(set(sys.modules) - before)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.strip().split(",")) - {""}


def third_party(modules: set[str]) -> set[str]:
    tops = {m.split(".")[0] for m in modules if not m.startswith("_sysconfigdata")}
    return tops - set(sys.stdlib_module_names) - {"vigil"}


def test_core_imports_only_numpy_pydantic_and_stdlib():
    loaded = modules_loaded_by("import vigil.core, vigil.core.package, vigil.core.signing")
    assert third_party(loaded) <= CORE_DEPENDENCIES


def test_imaging_imports_only_core_and_numpy():
    """The pixel chain sits at the features layer: no DICOM library, no torch, no higher layer."""
    loaded = modules_loaded_by(
        "import vigil.imaging, vigil.imaging.chain, vigil.imaging.display, vigil.imaging.parity"
    )
    assert third_party(loaded) <= CORE_DEPENDENCIES
    vigil_packages = {".".join(m.split(".")[:2]) for m in loaded if m.startswith("vigil.")}
    assert vigil_packages <= {"vigil.core", "vigil.imaging"}


def test_dicom_adapter_stays_below_the_runtime():
    loaded = modules_loaded_by("import vigil.dicom_adapter, vigil.dicom_adapter.sites")
    vigil_packages = {".".join(m.split(".")[:2]) for m in loaded if m.startswith("vigil.")}
    allowed = {"vigil.core", "vigil.features", "vigil.imaging", "vigil.data", "vigil.dicom_adapter"}
    assert vigil_packages <= allowed
