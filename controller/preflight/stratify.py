"""`prepare --stratify FIELD --target easy=0.30,medium=0.45,hard=0.25`: a
sample whose shares of FIELD's values are the target's.

Each value gets its share of the examples (largest remainder, so the counts
are within one example of share x total). A value with fewer examples than
its share keeps all of them and is reported short: the other values keep
their own counts, so a short stratum never inflates the rest. Without
--max-examples the sample is the largest one the shares allow.
"""

from __future__ import annotations

import json
import math
from array import array
from pathlib import Path
from typing import Any

# shares must add up to 1 within this
TOLERANCE = 1e-6


class StratifyError(ValueError):
    """A one-line problem with --stratify or --target."""


def value_key(value: Any) -> str:
    """A field's value as --target names it: text as is, a number or true/false as JSON, "-" when missing."""
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value)


def parse_target(text: str) -> dict[str, float]:
    """`easy=0.30,medium=0.45,hard=0.25` -> {value: share}; StratifyError otherwise."""
    target: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, share = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise StratifyError(f"--target: {part!r} is not VALUE=SHARE (e.g. easy=0.30,medium=0.45,hard=0.25)")
        if name in target:
            raise StratifyError(f"--target: {name} is given twice")
        try:
            target[name] = float(share)
        except ValueError:
            raise StratifyError(f"--target: {name}={share.strip()}: the share is not a number") from None
        if not 0 < target[name] <= 1 or not math.isfinite(target[name]):
            raise StratifyError(f"--target: {name}={share.strip()}: a share is above 0 and at most 1")
    total = sum(target.values())
    if abs(total - 1) > TOLERANCE:
        raise StratifyError(f"--target: the shares add up to {total:g}, not 1")
    return target


def field_values(source: Path, field: str) -> tuple[array, list[str]]:
    """Each line's value of `field` (codes into the returned values; code 0
    for a line that is not a JSON object): a streamed pass, a few bytes a line."""
    values: list[str] = ["-"]
    index: dict[str, int] = {"-": 0}
    codes = array("I", [0])  # line numbers start at 1
    with open(source, "rb") as fh:
        for raw in fh:
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            key = value_key(record.get(field)) if isinstance(record, dict) else "-"
            if key not in index:
                index[key] = len(values)
                values.append(key)
            codes.append(index[key])
    return codes, values


def counts(have: dict[str, int], target: dict[str, float], n: int | None) -> tuple[dict[str, int], dict[str, int]]:
    """(how many examples each value gets, what each short value wanted):
    each value's share of `n` by largest remainder, cut to what it has;
    `n` None: the largest total the shares allow with what there is."""
    if n is None:
        n = min(math.floor(have.get(v, 0) / s + 1e-9) for v, s in target.items())
    quotas = {v: n * s for v, s in target.items()}
    want = {v: math.floor(q) for v, q in quotas.items()}
    for v in sorted(quotas, key=lambda v: (-(quotas[v] - want[v]), v))[:n - sum(want.values())]:
        want[v] += 1
    take = {v: min(w, have.get(v, 0)) for v, w in want.items()}
    short = {v: w for v, w in want.items() if take[v] < w}
    return take, short


def shortfall_lines(field: str, take: dict[str, int], short: dict[str, int]) -> list[str]:
    """One line per short value: how far it fell short of its share."""
    return [f"{field} = {v}: {take[v]:,} examples, {wanted:,} wanted: {wanted - take[v]:,} short (all of them kept)"
            for v, wanted in sorted(short.items())]
