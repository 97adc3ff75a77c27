"""What a check of a training file finds: findings with their first line
numbers, the report `validate` prints, and a compact set of digests for
exact duplicates."""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ftctl.controller.preflight.pii import DEFAULT_REGION, KINDS
from ftctl.providers.formats import DESCRIPTIONS as FORMAT_DESCRIPTIONS

FIRST_LINES = 10

DESCRIPTIONS = {
    "invalid_json": "invalid JSON",
    "invalid_utf8": "not UTF-8",
    "not_an_object": "not a JSON object",
    "missing_messages": "missing or empty messages",
    "bad_message": "malformed message",
    "unknown_role": "unknown role",
    "not_assistant_last": "does not end with the assistant",
    "empty_content": "empty content",
    "invalid_structure": "rejected by the provider's tokenizer",
    "too_long": "longer than the model's context",
    "duplicate": "exact duplicate of an earlier example",
    "duplicate_for_target": "exact duplicate of an earlier example for the same target agent",
    "extra_field": "field the provider rejects",
    **FORMAT_DESCRIPTIONS,
}


class DigestSet:
    """A set of 64-bit digests in one flat array (open addressing): 8 to 16
    bytes an example, where a Python set of ints takes about 80."""

    def __init__(self, capacity: int = 1 << 16):
        self._table = array("Q", bytes(8 * capacity))
        self._mask = capacity - 1
        self._count = 0

    def add(self, digest: int) -> bool:
        """Adds `digest`; False if it was there already."""
        digest = digest or 1  # 0 marks an empty slot
        table, mask = self._table, self._mask
        i = digest & mask
        while True:
            slot = table[i]
            if slot == 0:
                break
            if slot == digest:
                return False
            i = (i + 1) & mask
        table[i] = digest
        self._count += 1
        if self._count * 2 > len(table):
            self._grow()
        return True

    def _grow(self) -> None:
        old = self._table
        self._table = array("Q", bytes(16 * len(old)))
        self._mask = len(self._table) - 1
        self._count = 0
        for digest in old:
            if digest:
                self.add(digest)

    def __len__(self) -> int:
        return self._count


@dataclass
class Finding:
    count: int = 0  # occurrences (e.g. email addresses)
    line_count: int = 0  # lines they are on
    lines: list[int] = field(default_factory=list)  # the first of those lines (what a person reads)
    first_message: str = ""
    # every one of those lines, 4 bytes each (what `validate --json` lists)
    all_lines: array = field(default_factory=lambda: array("I"))

    def add(self, line: int, message: str, n: int = 1) -> None:
        self.count += n
        self.line_count += 1
        if len(self.lines) < FIRST_LINES:
            self.lines.append(line)
        self.all_lines.append(line)
        if not self.first_message:
            self.first_message = message


@dataclass
class Report:
    path: str
    provider: str
    model: str | None = None
    tokenizer: str | None = None
    context: int | None = None
    method: str | None = None  # the training method whose format was checked
    lines: int = 0
    examples: int = 0  # examples that passed every check
    bytes: int = 0
    problems: dict[str, Finding] = field(default_factory=dict)
    pii: dict[str, Finding] = field(default_factory=dict)  # personal data by kind: email, phone, card, iban
    secrets: Finding = field(default_factory=Finding)  # API keys, tokens, private keys: never allowed
    phone_region: str = DEFAULT_REGION
    extra_fields: Counter = field(default_factory=Counter)
    data_tokens: int = 0
    token_histogram: Counter = field(default_factory=Counter)

    @property
    def problem_count(self) -> int:
        return sum(f.count for f in self.problems.values())

    @property
    def pii_count(self) -> int:
        return sum(f.count for f in self.pii.values())

    @property
    def secret_count(self) -> int:
        return self.secrets.count

    def clean(self, allow_pii: bool = False) -> bool:
        """No problem and no secret; no personal data unless allowed."""
        return (self.problem_count == 0 and self.secret_count == 0 and (allow_pii or self.pii_count == 0)
                and self.examples > 0)

    def token_stats(self) -> dict[str, int] | None:
        if not self.token_histogram:
            return None
        values = sorted(self.token_histogram.items())
        total = sum(n for _, n in values)
        mid, seen, median = (total + 1) // 2, 0, values[0][0]
        for value, n in values:
            seen += n
            if seen >= mid:
                median = value
                break
        return {"min": values[0][0], "median": median, "max": values[-1][0]}

    def first_problem(self) -> str | None:
        first = None
        for code, finding in self.problems.items():
            if finding.lines and (first is None or finding.lines[0] < first[0]):
                first = (finding.lines[0], code, finding.first_message)
        if first is None:
            return None
        return f"line {first[0]}: {first[2]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "provider": self.provider,
            "model": self.model,
            "tokenizer": self.tokenizer,
            "context": self.context,
            "training_method": self.method,
            "lines": self.lines,
            "examples": self.examples,
            "bytes": self.bytes,
            "clean": self.clean(),
            "problems": {code: {"count": f.count, "lines": f.all_lines.tolist(),
                                "description": DESCRIPTIONS.get(code, code), "first": f.first_message}
                         for code, f in self.problems.items()},
            "personal_data": {kind: {"count": self.pii[kind].count, "lines": self.pii[kind].all_lines.tolist()}
                              for kind in KINDS if kind in self.pii},
            "secrets": {"count": self.secrets.count, "lines": self.secrets.all_lines.tolist()},
            "phone_region": self.phone_region,
            "extra_fields": dict(self.extra_fields),
            "data_tokens": self.data_tokens if self.tokenizer else None,
            "tokens_per_example": self.token_stats(),
        }


__all__ = ["DESCRIPTIONS", "DigestSet", "Finding", "Report"]
