"""Data: PhysioNet 2019 (loader, bundled sample, splits, sites) and MedMNIST images."""

from vigil.data.loader import SAMPLE_PATH, PhysioNetTable, load_physionet, resolve_data_path
from vigil.data.medmnist import MEDMNIST_SAMPLE_PATH, MedMNISTSplit, load_medmnist
from vigil.data.sites import SiteScheme, parse_scheme, partition, site_summary
from vigil.data.splits import Split, patient_split

__all__ = [
    "MEDMNIST_SAMPLE_PATH",
    "SAMPLE_PATH",
    "MedMNISTSplit",
    "PhysioNetTable",
    "SiteScheme",
    "Split",
    "load_medmnist",
    "load_physionet",
    "parse_scheme",
    "partition",
    "patient_split",
    "resolve_data_path",
    "site_summary",
]
