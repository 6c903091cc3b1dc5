"""The on-prem runtime: the scoring cycle, its state store, the service, replay.

See ``docs/runtime.md``. Import the submodules (``vigil.runtime.service``,
``vigil.runtime.cycle``, ...); this package imports nothing itself.
"""
