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


def test_core_imports_only_numpy_pydantic_and_stdlib():
    code = (
        "import sys\nbefore = set(sys.modules)\n"
        "import vigil.core, vigil.core.package, vigil.core.signing\n"
        "new = {k.split('.')[0] for k in set(sys.modules) - before}\nprint(','.join(sorted(new)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    third_party = (
        {m for m in out.stdout.strip().split(",") if m and not m.startswith("_sysconfigdata")}
        - set(sys.stdlib_module_names)
        - {"vigil"}
    )
    assert third_party <= CORE_DEPENDENCIES


def test_imaging_imports_only_core_and_numpy():
    """The pixel chain sits at the features layer: no DICOM library, no torch, no higher layer."""
    code = (
        "import sys\nbefore = set(sys.modules)\n"
        "import vigil.imaging, vigil.imaging.chain, vigil.imaging.display, vigil.imaging.parity\n"
        "new = sorted({k for k in set(sys.modules) - before})\nprint(','.join(new))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.strip().split(","))
    tops = {m.split(".")[0] for m in loaded if not m.startswith("_sysconfigdata")}
    assert tops - set(sys.stdlib_module_names) - {"vigil"} <= CORE_DEPENDENCIES
    vigil_packages = {".".join(m.split(".")[:2]) for m in loaded if m.startswith("vigil.")}
    assert vigil_packages <= {"vigil.core", "vigil.imaging"}


def test_dicom_adapter_stays_below_the_runtime():
    code = (
        "import sys\nimport vigil.dicom_adapter, vigil.dicom_adapter.sites\n"
        "print(','.join(sorted({'.'.join(k.split('.')[:2]) for k in sys.modules "
        "if k.startswith('vigil.')})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    allowed = {"vigil.core", "vigil.features", "vigil.imaging", "vigil.data", "vigil.dicom_adapter"}
    assert set(out.stdout.strip().split(",")) <= allowed
