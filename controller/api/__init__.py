"""ftctl: LLM fine-tuning jobs on hosted providers as persistent state machines.

The Python API the `ftctl` command line is built on:

    import ftctl

    with ftctl.open("controller.toml") as ft:   # a config, and its database
        ft.submit(["qa", "legal"])              # -> [Result(job_id, created, note, ...)]
        ft.status(active=True)                  # -> [{"job_id", "agent", "state", "reason", ...}]
        ft.show(3)                              # -> the job with its events and attempts
        ft.cancel(3); ft.retry(3)
        ft.wait([3, 4], timeout=7200)           # -> the jobs, once all are finished (and evaluated)
        ft.models()                             # -> promoted: {"qa": "ft:open-mistral-7b:...", ...}
        ft.all_models()                         # -> every succeeded job's model and its promotion
        ft.promote(3); ft.reject(4)             # override the evaluation gate (in the history)
        ft.events(job_id=3)                     # -> [{"id": "evt_...", "event": "succeeded", ...}]
        ft.logs(3)                              # -> {"points": [{"step", "metrics": {"train_loss"...}}], ...}

Errors are ftctl.FtctlError subclasses (BadInput, NotFound, Refused,
DatabaseUnavailable, TimedOut), each carrying the CLI's exit code.
The rooms behind it: ftctl.controller (engine, preflight, cli, service),
ftctl.models (tables, store, reads, leadership, migrations), ftctl.providers.
"""

from __future__ import annotations

from typing import Any

try:  # the installed distribution's own version: one number, in pyproject.toml
    from importlib.metadata import version as _version

    __version__ = _version("ftctl")
except Exception:  # noqa: BLE001 - run from a tree that was never installed
    __version__ = "0.0.0"

_API = ("open", "Ftctl", "FtctlError", "BadInput", "NotFound", "Refused", "DatabaseUnavailable", "TimedOut",
        "Cancelled")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    # loaded on first use: `import ftctl` (and every CLI start) stays cheap
    if name in _API:
        from ftctl import core

        return getattr(core, name)
    raise AttributeError(f"module 'ftctl' has no attribute {name!r}")
