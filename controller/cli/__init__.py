"""The `ftctl` command line: one typer app (`app`) that the command modules
register on. Importing this package registers every command."""

from __future__ import annotations

import sys

from ftctl.controller.cli import jobs as _jobs  # noqa: F401  (registers its commands)
from ftctl.controller.cli import observe as _observe  # noqa: F401
from ftctl.controller.cli import gc as _gc  # noqa: F401
from ftctl.controller.cli import preflight as _preflight  # noqa: F401
from ftctl.controller.cli import rehome as _rehome  # noqa: F401
from ftctl.controller.cli import service as _service  # noqa: F401
from ftctl.controller.cli.app import EXIT_INTERNAL, app
from ftctl.controller.cli.examples import add_examples

add_examples(app)


def main() -> None:
    """The console script: every error the command line itself finds (an
    unknown option, a missing argument) is one line too, exit 2."""
    import typer

    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # click's UsageError and kin, as typer ships them
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # `ftctl` alone: the help
            sys.exit(0)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        message = " ".join(str(exc.format_message()).split())
        print(f"ftctl: error: {message}{hint}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    except Exception as exc:  # a bug: one line (the traceback with FTCTL_DEBUG=1), never a key
        import os

        if os.environ.get("FTCTL_DEBUG"):
            raise
        from ftctl.providers.keys import redact

        print(redact(f"ftctl: internal error: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                     f" (run with FTCTL_DEBUG=1 for the traceback)"), file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
