"""The `ftctl` command line: one typer app (`app`) that the command modules
register on. Importing this package registers every command."""

from __future__ import annotations

import sys

from ftctl.controller.cli import jobs as _jobs  # noqa: F401  (registers its commands)
from ftctl.controller.cli import preflight as _preflight  # noqa: F401
from ftctl.controller.cli import service as _service  # noqa: F401
from ftctl.controller.cli.app import app


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
