"""vigil: federated clinical risk models, trained across hospitals and run on premises.

Subpackages, from the bottom layer up (imports only go downwards):

- :mod:`vigil.core` -- errors, the clinical variable catalog, units, model packages.
- :mod:`vigil.features` -- hourly grid, feature builder, utility score, metrics, baselines.
- :mod:`vigil.data` -- the PhysioNet loader, the bundled sample, site partitioning.
- :mod:`vigil.federation`, :mod:`vigil.fhir_adapter`, :mod:`vigil.calibration` -- adapters.
- :mod:`vigil.runtime` -- the on-prem service (never imports torch).
- :mod:`vigil.cli` -- the ``vigil`` command.

Importing :mod:`vigil` has no side effects.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
