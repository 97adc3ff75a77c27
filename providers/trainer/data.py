"""Training files -> the rows TRL trains on.

SFT lines ({"messages": [...]}) become conversational prompt/completion
rows: the prompt is every message before the last assistant message, the
completion that message, so the loss falls on the answer only. DPO lines
(the `validate --method dpo` shape: input.messages, preferred_output,
non_preferred_output) become prompt/chosen/rejected rows.

Weights are honoured by sampling: a file of weight w contributes each of its
examples floor(w) times, and a fixed (seeded) fraction w - floor(w) of them
once more, so 1.0 is every example once, 2.0 twice, 0.5 half of them.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any


class BadData(Exception):
    """One line naming the file, the line and the problem."""


def _finite(value: str) -> Any:
    raise ValueError(f"{value} is not JSON")


def read_rows(path: Path, method: str, where: str | None = None) -> list[dict[str, Any]]:
    where = where or str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BadData(f"{where}: cannot be read ({exc.__class__.__name__})") from None
    rows = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line, parse_constant=_finite)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadData(f"{where} line {number}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(record, dict):
            raise BadData(f"{where} line {number}: not a JSON object")
        rows.append(_dpo_row(record, where, number) if method == "dpo" else _sft_row(record, where, number))
    if not rows:
        raise BadData(f"{where}: no examples")
    return rows


def _messages(value: Any, where: str, number: int, name: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise BadData(f"{where} line {number}: missing or empty \"{name}\"")
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadData(f"{where} line {number}: a message in \"{name}\" has no role or no text content")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _sft_row(record: dict[str, Any], where: str, number: int) -> dict[str, Any]:
    messages = _messages(record.get("messages"), where, number, "messages")
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise BadData(f"{where} line {number}: the conversation must end with the assistant's answer")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def _dpo_row(record: dict[str, Any], where: str, number: int) -> dict[str, Any]:
    source = record.get("input")
    prompt = _messages(source.get("messages") if isinstance(source, dict) else None, where, number, "input.messages")
    chosen = _messages(record.get("preferred_output"), where, number, "preferred_output")
    rejected = _messages(record.get("non_preferred_output"), where, number, "non_preferred_output")
    return {"prompt": prompt, "chosen": chosen[-1:], "rejected": rejected[-1:]}


def weighted(rows: list[dict[str, Any]], weight: float, seed: int) -> list[dict[str, Any]]:
    if not math.isfinite(weight) or weight <= 0:
        raise BadData(f"weight {weight} must be a positive number")
    whole, part = int(math.floor(weight)), weight - math.floor(weight)
    out = [r for r in rows for _ in range(whole)]
    if part > 1e-9:
        extra = random.Random(seed).sample(range(len(rows)), max(1, round(part * len(rows))))
        out.extend(rows[i] for i in sorted(extra))
    return out


def load(files: list[tuple[Path, float]], method: str, seed: int = 0) -> list[dict[str, Any]]:
    """Every file's rows, weighted, in a fixed order (shuffling is the trainer's)."""
    out: list[dict[str, Any]] = []
    for i, (path, weight) in enumerate(files):
        out.extend(weighted(read_rows(path, method), weight, seed + i))
    return out
