"""Names that moved to their own module stay importable from where callers import them."""

import importlib

import pytest

MOVED = [
    ("vigil.federation.simulation", "vigil.federation.run_export",
     ["export_run", "history_events", "package_targets", "run_summary", "training_section",
      "validation_section"]),
    ("vigil.runtime.models", "vigil.runtime.model_install",
     ["ROLES", "TASKS", "install_model", "promote_model", "task_of", "verify_package"]),
    ("vigil.federation.image_task", "vigil.federation.image_spec",
     ["TASKS", "CNNSpec", "batchnorm_names", "check_imaging_options", "check_task"]),
    ("vigil.dicom_adapter", "vigil.dicom_adapter.batches",
     ["FileCheck", "PreparedBatch", "check_files", "prepare_batch"]),
]


@pytest.mark.parametrize(("old", "new", "names"), MOVED)
def test_a_moved_name_is_the_same_object_in_both_modules(old, new, names):
    before, after = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert name in before.__all__ and name in after.__all__, name
        assert getattr(before, name) is getattr(after, name), name
