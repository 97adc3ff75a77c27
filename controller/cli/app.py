"""The `ftctl` command line.

Read commands (status, show, models) open only the database: no provider
module is imported and nothing goes over the network.

Exit codes (one cause, one code, whatever the command; README "Exit codes"):
0 ok; 1 a job did not succeed (`wait`-like outcomes) or the daemon failed;
2 bad input (config, arguments, unknown job or agent, missing file); 3
refused (a transition not allowed, a daemon already running); 4 the database
cannot be used (cannot be opened, corrupt, full, read-only); 5 `wait` timed
out; 6 the daemon lost its lock; 70 an internal error (a bug); 130 Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from typing import Annotated, Any, NoReturn, Optional

import typer

from ftctl.controller.config import Config, ConfigError, load_config

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_REFUSED, EXIT_DATABASE, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5
EXIT_INTERNAL = 70  # a bug in ftctl (sysexits' EX_SOFTWARE): never an outcome a script should act on
PHONE_REGION_HELP = ("the country of phone numbers written without +CC, e.g. US, GB, DE "
                     "(default: [preflight] phone_region, else US)")

app = typer.Typer(
    name="ftctl",
    help="Run LLM fine-tuning jobs on hosted providers as persistent state machines.",
    no_args_is_help=True,
    # `ftctl --install-completion` (bash, zsh, fish, PowerShell), or --show-completion
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


_console: Any = None


def console() -> Any:
    """rich's Console for stdout, made on first use: a command that prints
    plain text (a listing off a terminal) never imports rich."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(highlight=False, soft_wrap=False)
        if not _console.is_terminal:
            # piped or logged: never squeeze a reason or a model id into "…"
            _console = Console(highlight=False, soft_wrap=False, width=240)
    return _console


class _Console:
    """`out.print(...)`: console()'s methods, the console made on first use
    (pass console() itself where a Console object is needed)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(console(), name)


out: Any = _Console()


def note(message: str) -> None:
    """A line about the output rather than of it (stderr: pipes stay clean)."""
    print(message, file=sys.stderr)


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# a file at least this big gets a progress bar on stderr (when stderr is a terminal)
PROGRESS_MIN_BYTES = 8 * 2**20


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Any]:
    """`update(bytes done)` for a bar on stderr while a big file is read, or
    None: a small file, or stderr not a terminal (a pipe, a log) shows none."""
    if total < PROGRESS_MIN_BYTES or not stderr_is_terminal():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=Console(file=sys.stderr, force_terminal=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda done: bar.update(task, completed=min(done, total))


def duration(minimum: float = 0.0, maximum: float = 7 * 86400.0) -> Any:
    """A time option's parser: `3s`, `500ms`, `2m`, `1h30m`, or plain seconds
    (`0.5`), within [minimum, maximum]; a bad one is click's one-line usage error."""

    def parse(value: Any) -> float:
        from ftctl.providers.settings import duration_text, parse_duration

        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            text = str(value).strip()
            try:
                seconds = float(text) if re.fullmatch(r"\d+(\.\d+)?", text) else parse_duration(text)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
        if not minimum <= seconds <= maximum:
            raise typer.BadParameter(f"{value!r} is not between {duration_text(minimum)} and "
                                     f"{duration_text(maximum)}")
        return seconds

    return parse


# what a time option's help shows for its value
DURATION = "DURATION"


class State:
    config_path: Optional[str] = None
    log_level: Optional[str] = None


state = State()


def die(message: str, code: int = EXIT_INPUT) -> NoReturn:
    from ftctl.providers.keys import redact

    text = redact(str(message)).strip()
    first_line = text.splitlines()[0] if text else "error"
    print(f"ftctl: error: {first_line}", file=sys.stderr)
    raise typer.Exit(code)


@contextlib.contextmanager
def api() -> Iterator[Any]:
    """The Python API (ftctl.Ftctl) on this command line's config; an
    FtctlError anywhere inside becomes its one line and its exit code."""
    import ftctl

    try:
        with ftctl.open(state.config_path) as ft:
            yield ft
    except ftctl.FtctlError as exc:
        die(str(exc), exc.exit_code)


def get_config() -> Config:
    try:
        return load_config(state.config_path)
    except ConfigError as exc:
        die(str(exc))


def open_store(config: Config, *, create: bool = True):
    from ftctl.models import Store, StoreError

    try:
        return Store(config.database_url, create=create)
    except StoreError as exc:
        die(str(exc), EXIT_DATABASE)


def read_store(config: Config):
    """The database for a read command (models.reads: no ORM), or None when
    no database exists yet."""
    from ftctl.models import StoreError
    from ftctl.models.reads import open_reads

    try:
        return open_reads(config.database_url)
    except StoreError as exc:
        die(str(exc), EXIT_DATABASE)


def setup_logging(config: Config | None) -> None:
    from ftctl.controller.service.logs import configure

    level = state.log_level or (config.controller.log_level if config else "info")
    configure(level)


def emit_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _version(value: bool) -> None:
    if value:
        from ftctl import __version__

        print(f"ftctl {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def main_options(
    config: Annotated[Optional[str], typer.Option("--config", "-c", help="controller.toml to use "
                      "(default: $FTCTL_CONFIG, ./controller.toml, /etc/ftctl/controller.toml)")] = None,
    log_level: Annotated[Optional[str], typer.Option("--log-level", help="debug, info, warning or error")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    state.config_path = config
    if log_level is not None and log_level not in ("debug", "info", "warning", "error"):
        die(f"--log-level: {log_level!r} is not one of debug, info, warning, error")
    state.log_level = log_level


# job ids are 64-bit integers in both databases
MAX_JOB_ID = 2**63 - 1


def _job_id(value: str) -> int:
    """A job id as `status` shows it: 3, or job/3 (what `-o name` prints)."""
    try:
        job_id = int(value[4:] if value.startswith("job/") else value)
    except ValueError:
        die(f"job {value!r}: a job id is a number (see `ftctl status`)")
    if not 1 <= job_id <= MAX_JOB_ID:
        die(f"job {value}: no such job (job ids run from 1 to {MAX_JOB_ID}; see `ftctl status`)")
    return job_id
