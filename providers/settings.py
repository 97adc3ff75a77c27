"""What every config section shares: strict, frozen pydantic models and
durations with an upper bound.

This module sits below both `providers` and `controller`: a provider's own
config section is declared beside its code, and controller.toml is
assembled from those sections.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationInfo

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DAY = 86400.0
# no duration in ftctl means anything past a year; larger values only
# overflow datetime arithmetic later, in the middle of a tick
MAX_DURATION = 366 * DAY


def duration_text(seconds: float) -> str:
    """The shortest readable form of a duration: 90 -> '1m30s'."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    out, rest = [], seconds
    for unit, size in (("d", DAY), ("h", 3600.0), ("m", 60.0)):
        if rest >= size:
            n = int(rest // size)
            out.append(f"{n}{unit}")
            rest -= n * size
    if rest or not out:
        out.append(f"{rest:g}s")
    return "".join(out)


def parse_duration(value: Any, *, max_seconds: float = MAX_DURATION) -> float:
    """'15s', '30m', '1h30m', '500ms' or a number of seconds -> seconds,
    finite and at most `max_seconds`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '15s', '30m' or '1h'")
    if isinstance(value, (int, float)):
        seconds = float(value)
        if math.isnan(seconds):
            raise ValueError("expected a duration like '15s', '30m' or '1h', not nan")
    elif isinstance(value, str):
        text = value.strip().lower()
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"{value!r} is not a duration like '15s', '30m' or '1h30m'")
    else:
        raise ValueError("expected a duration like '15s', '30m' or '1h'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not math.isfinite(seconds) or seconds > max_seconds:
        raise ValueError(f"{value!r} is too long: at most {duration_text(max_seconds)}")
    return seconds


def bounded_duration(max_seconds: float) -> Any:
    """A duration type with its own upper bound."""
    return Annotated[float, BeforeValidator(lambda v: parse_duration(v, max_seconds=max_seconds))]


Duration = bounded_duration(MAX_DURATION)


class Section(BaseModel):
    """A config section: unknown keys are errors, values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(value: str | None, info: ValidationInfo) -> str | None:
    """A path from the config file, made absolute against the file's folder
    (passed as the validation context's `base_dir`)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return str(path)
