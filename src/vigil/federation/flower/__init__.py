"""Federation on Flower: vigil's ServerApp and ClientApp, certificates, and the processes.

The ServerApp (:mod:`.serverapp`) runs the in-process driver's rounds with
Flower messages as the transport (:mod:`.transport`, :mod:`.wire`); the
ClientApp (:mod:`.clientapp`) answers them with a hospital's own
:class:`~vigil.federation.site.Site`. Both import ``flwr`` and are loaded by
Flower only; what is re-exported here does not import it.
"""

from vigil.federation.flower.certs import Pki, SiteKey, make_site_key, make_test_pki
from vigil.federation.flower.launch import (
    Coordinator,
    Process,
    SiteNode,
    register_site,
    start_superlink,
    start_supernode,
)
from vigil.federation.flower.results import RunOutput, load_result
from vigil.federation.flower.runner import run_on_flower, train_on_flower
from vigil.federation.flower.settings import RunSettings
from vigil.federation.flower.sitedata import load_site, prepare_site

__all__ = [
    "Coordinator",
    "Pki",
    "Process",
    "RunOutput",
    "RunSettings",
    "SiteKey",
    "SiteNode",
    "load_result",
    "load_site",
    "make_site_key",
    "make_test_pki",
    "prepare_site",
    "register_site",
    "run_on_flower",
    "start_superlink",
    "start_supernode",
    "train_on_flower",
]
