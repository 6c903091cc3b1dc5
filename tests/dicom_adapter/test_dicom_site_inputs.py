"""Site inputs in memory are exactly what reading the files of write_sites gives."""

from __future__ import annotations

import csv

import numpy as np

from vigil.data.medmnist import load_medmnist
from vigil.dicom_adapter import prepare_batch, read_file
from vigil.dicom_adapter.sites import VALID_FRACTION, medmnist_sites, site_inputs, write_sites


def test_site_inputs_equal_reading_the_written_files(tmp_path):
    test = load_medmnist("sample", "test")
    images, labels = test.images[:40], test.labels[:40]
    written = write_sites(images, labels, tmp_path, split="test", seed=3)
    in_memory = site_inputs(images, labels, split="test", seed=3)
    for files, inputs in zip(written, in_memory, strict=True):
        with (files.folder / "labels.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        batch = prepare_batch(read_file(files.folder / f"{r['sop_instance_uid']}.dcm")
                              for r in rows)
        assert inputs.site == files.site and inputs.quarantined == 0
        np.testing.assert_array_equal(inputs.inputs, batch.inputs)
        np.testing.assert_array_equal(inputs.labels, [int(r["label"]) for r in rows])
        np.testing.assert_array_equal(labels[inputs.index], inputs.labels)


def test_a_file_without_val_gets_a_stratified_held_out_part():
    parts = medmnist_sites("sample", seed=0, splits=("train", "val"))
    n_train = sum(p.labels.size for p in parts["train"])
    n_val = sum(p.labels.size for p in parts["val"])
    assert n_train + n_val == 400  # the sample's train split
    assert abs(n_val - VALID_FRACTION * 400) <= 1
    positives = load_medmnist("sample", "train").labels.mean()
    assert abs(np.mean(np.concatenate([p.labels for p in parts["val"]])) - positives) < 0.02
