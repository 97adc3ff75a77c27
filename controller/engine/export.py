"""Delivery: each agent's newest promoted model id, in a file the agents read.

`[export] path = "agents/models.toml"` (the format by its suffix, .toml,
.json or .env, or by `format`). The file holds promoted models and nothing
else, and is rewritten whenever that set changes: whole, through a
temporary file in the same folder that is flushed to disk and renamed over
it, so a reader never sees a torn file, even if the writer is killed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ftctl.controller.ledger.files import atomic_output

# a temporary file this old is left over from a writer that was killed
STALE_TEMP = 600.0


def render(models: dict[str, str], fmt: str, *, header: bool = False) -> str:
    """`models` (agent -> model id) as json, toml or env text."""
    note = "each agent's newest promoted model, written by ftctl (do not edit: it is rewritten)"
    if fmt == "json":
        return json.dumps(models, indent=2) + ("\n" if header else "")
    if fmt == "toml":
        lines = [f"# {note}"] if header else []
        lines.append("[models]")
        for agent, model in models.items():
            key = agent if agent.replace("_", "").replace("-", "").isalnum() else json.dumps(agent)
            lines.append(f"{key} = {json.dumps(model)}")
        return "\n".join(lines) + ("\n" if header else "")
    if fmt == "env":
        lines = [f"# {note}"] if header else []
        for agent, model in models.items():
            key = "FTCTL_MODEL_" + "".join(c if c.isalnum() else "_" for c in agent.upper())
            lines.append(f"{key}={model}")
        return "\n".join(lines) + ("\n" if header else "")
    raise ValueError(fmt)


def sync(path: Path, fmt: str, models: dict[str, str]) -> bool:
    """Write `models` to `path` unless it holds them already; True if written."""
    path = Path(path)
    text = render(models, fmt, header=True)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(path)
    with atomic_output(path) as fh:
        fh.write(text)
    return True


def _clear_stale(path: Path) -> None:
    """Temporary files a killed writer left beside the export file."""
    cutoff = time.time() - STALE_TEMP
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except OSError:
            pass
