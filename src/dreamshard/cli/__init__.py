"""The ``dreamshard`` command line (a thin layer: parse, call the library, print)."""

from dreamshard.cli.app import app

__all__ = ["app"]
