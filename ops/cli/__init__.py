"""The `sluice` command line (the one top-floor module: it may import every package)."""

from ops.cli.main import app, main

__all__ = ["app", "main"]
