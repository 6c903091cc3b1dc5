"""The ``vigil`` command line: one thin module per command group."""
