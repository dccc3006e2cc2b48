"""The ``metafit`` command."""

from metafit.cli.main import main

__all__ = ["main"]
