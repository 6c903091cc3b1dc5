"""PhysioNet 2019 data: the loader, the bundled sample, patient splits and site partitions."""

from vigil.data.loader import SAMPLE_PATH, PhysioNetTable, load_physionet, resolve_data_path
from vigil.data.sites import SiteScheme, parse_scheme, partition, site_summary
from vigil.data.splits import Split, patient_split

__all__ = [
    "SAMPLE_PATH",
    "PhysioNetTable",
    "SiteScheme",
    "Split",
    "load_physionet",
    "parse_scheme",
    "partition",
    "patient_split",
    "resolve_data_path",
    "site_summary",
]
