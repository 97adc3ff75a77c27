"""Training files: streamed checks, line by line, in bounded memory.

A file is read one line at a time; what is kept per example is a few bytes
(an 8-byte digest for exact duplicates, a histogram of token counts), never
the example itself, so a file of hundreds of MB validates in a few tens of
MB of memory.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ftctl.controller.preflight.pii import DEFAULT_REGION, KINDS, PERSONAL, Detector
from ftctl.providers.registry import kind as kind_of
from ftctl.providers.tokenizers import Counter as TokenCounter
from ftctl.providers.tokenizers import ExampleRejected

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
    "extra_field": "field the provider rejects",
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
class Example:
    """One line of a training file, checked (small: no copy of the line)."""

    line: int
    problems: list[tuple[str, str]] = field(default_factory=list)  # (code, message)
    tokens: int | None = None
    found: dict[str, int] = field(default_factory=dict)  # personal data and secrets: kind -> how many
    extra_keys: tuple[str, ...] = ()
    digest: int | None = None  # of the conversation, for exact duplicates
    weight: Any = None  # cross-agent sets: the example's weight and source agent
    source_agent: Any = None

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Finding:
    count: int = 0  # occurrences (e.g. email addresses)
    line_count: int = 0  # lines they are on
    lines: list[int] = field(default_factory=list)  # the first of those lines
    first_message: str = ""

    def add(self, line: int, message: str, n: int = 1) -> None:
        self.count += n
        self.line_count += 1
        if len(self.lines) < FIRST_LINES:
            self.lines.append(line)
        if not self.first_message:
            self.first_message = message


@dataclass
class Report:
    path: str
    provider: str
    model: str | None = None
    tokenizer: str | None = None
    context: int | None = None
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
            "lines": self.lines,
            "examples": self.examples,
            "bytes": self.bytes,
            "clean": self.clean(),
            "problems": {code: {"count": f.count, "lines": f.lines, "description": DESCRIPTIONS.get(code, code),
                                "first": f.first_message} for code, f in self.problems.items()},
            "personal_data": {kind: {"count": self.pii[kind].count, "lines": self.pii[kind].lines}
                              for kind in KINDS if kind in self.pii},
            "secrets": {"count": self.secrets.count, "lines": self.secrets.lines},
            "phone_region": self.phone_region,
            "extra_fields": dict(self.extra_fields),
            "data_tokens": self.data_tokens if self.tokenizer else None,
            "tokens_per_example": self.token_stats(),
        }


def _check_messages(record: dict[str, Any], provider: str, ex: Example) -> list[dict[str, Any]] | None:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        ex.problems.append(("missing_messages", "missing or empty \"messages\""))
        return None
    roles = kind_of(provider).roles
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            ex.problems.append(("bad_message", f"messages[{i}] has no role"))
            return None
        if m["role"] not in roles:
            ex.problems.append(("unknown_role", f"messages[{i}] has unknown role {m['role']!r} "
                                                f"(allowed: {', '.join(sorted(roles))})"))
            return None
    for i, m in enumerate(messages):
        content = m.get("content")
        if m.get("tool_calls"):
            continue
        if content is None or (isinstance(content, str) and not content.strip()) or content == []:
            ex.problems.append(("empty_content", f"messages[{i}] ({m['role']}) has empty content"))
            return None
    if messages[-1]["role"] != "assistant":
        ex.problems.append(("not_assistant_last", f"the conversation ends with {messages[-1]['role']!r}, "
                                                  f"not the assistant"))
        return None
    return messages


def _texts(messages: list[dict[str, Any]]) -> Iterator[str]:
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    yield part["text"]


@lru_cache(maxsize=4)
def detector(phone_region: str = DEFAULT_REGION) -> Detector:
    return Detector(phone_region)


def check_line(number: int, raw: bytes, *, provider: str, counter: TokenCounter | None,
               context: int | None, phone_region: str = DEFAULT_REGION) -> Example:
    """Everything that can be said of one line alone (duplicates need the
    others: `digest` lets the caller find them)."""
    ex = Example(number)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        ex.problems.append(("invalid_utf8", f"not UTF-8 (byte {exc.start})"))
        return ex
    try:
        record = json.loads(text)
    except ValueError as exc:
        msg = exc.msg if hasattr(exc, "msg") else str(exc)
        col = getattr(exc, "colno", None)
        ex.problems.append(("invalid_json", f"invalid JSON: {msg}" + (f" (column {col})" if col else "")))
        return ex
    if not isinstance(record, dict):
        ex.problems.append(("not_an_object", "not a JSON object"))
        return ex
    ex.weight, ex.source_agent = record.get("weight"), record.get("source_agent")
    # top-level keys the provider accepts; anything else (weight,
    # source_agent, target_agent ...) it rejects
    allowed = kind_of(provider).example_keys
    ex.extra_keys = tuple(sorted(k for k in record if k not in allowed))
    if ex.extra_keys:
        ex.problems.append(("extra_field", f"field{'s' if len(ex.extra_keys) > 1 else ''} "
                                           f"{', '.join(ex.extra_keys)} rejected by {provider}"))
    messages = _check_messages(record, provider, ex)
    if messages is None:
        return ex
    found: Counter = Counter()
    find = detector(phone_region).count
    for t in _texts(messages):
        found.update(find(t))
    ex.found = dict(found)
    if counter is not None:
        try:
            ex.tokens = counter.count(messages)
        except ExampleRejected as exc:
            ex.problems.append(("invalid_structure", f"{counter.name}: {exc}"))
            return ex
        if context and ex.tokens > context:
            ex.problems.append(("too_long", f"{ex.tokens:,} tokens, over the model's context of {context:,}"))
    ex.digest = conversation_digest(messages)
    return ex


def conversation_digest(messages: list[dict[str, Any]]) -> int:
    """8 bytes that tell exact duplicates apart."""
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=8).digest(), "big")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            raw = raw.rstrip(b"\r\n")
            if raw.strip():
                yield number, raw


# -- checking in worker processes (token counting is the costly part) -----------

CHUNK = 2000
_worker: dict[str, Any] = {}


def _init_worker(provider: str, kind: str | None, model: str | None, context: int | None,
                 phone_region: str) -> None:
    _worker.update(provider=provider, context=context, phone_region=phone_region,
                   counter=kind_of(kind).counter(model) if kind and model else None)


def _check_chunk(chunk: list[tuple[int, bytes]]) -> list[Example]:
    w = _worker
    return [check_line(n, raw, provider=w["provider"], counter=w["counter"], context=w["context"],
                       phone_region=w["phone_region"]) for n, raw in chunk]


def _chunks(path: Path) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for item in _lines(path):
        chunk.append(item)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _checked(path: Path, provider: str, counter: TokenCounter | None, context: int | None,
             jobs: int, phone_region: str) -> Iterator[Example]:
    if jobs <= 1 or counter is None:
        for number, raw in _lines(path):
            yield check_line(number, raw, provider=provider, counter=counter, context=context,
                             phone_region=phone_region)
        return
    import multiprocessing
    from collections import deque

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(jobs, initializer=_init_worker,
                  initargs=(provider, provider, counter.model, context, phone_region)) as pool:
        pending: deque = deque()
        for chunk in _chunks(path):
            pending.append(pool.apply_async(_check_chunk, (chunk,)))
            if len(pending) >= 2 * jobs:  # bounded: never more than a few chunks in flight
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def iter_examples(path: Path, *, provider: str = "mistral", counter: TokenCounter | None = None,
                  context: int | None = None, dedupe: bool = True, jobs: int = 1,
                  phone_region: str = DEFAULT_REGION) -> Iterator[Example]:
    """Each non-blank line of `path`, checked, in order. Streams: a few
    thousand lines in memory at most, spread over `jobs` processes."""
    seen = DigestSet() if dedupe else None
    for ex in _checked(path, provider, counter, context, jobs, phone_region):
        if seen is not None and ex.digest is not None and not seen.add(ex.digest):
            ex.problems.append(("duplicate", "exact duplicate of an earlier example"))
        yield ex


def validate(path: Path, *, provider: str = "mistral", counter: TokenCounter | None = None,
             context: int | None = None, jobs: int = 1, phone_region: str = DEFAULT_REGION) -> Report:
    report = Report(str(path), provider, counter.model if counter else None,
                    counter.name if counter else None, context, phone_region=phone_region)
    report.bytes = Path(path).stat().st_size
    for ex in iter_examples(path, provider=provider, counter=counter, context=context, jobs=jobs,
                            phone_region=phone_region):
        report.lines += 1
        for code, message in ex.problems:
            report.problems.setdefault(code, Finding()).add(ex.line, message)
        for key in ex.extra_keys:
            report.extra_fields[key] += 1
        for kind in KINDS:  # in this order, so the report lists the kinds in it
            n = ex.found.get(kind)
            if n:
                finding = report.pii.setdefault(kind, Finding()) if kind in PERSONAL else report.secrets
                finding.add(ex.line, kind, n)
        if ex.tokens is not None:
            report.data_tokens += ex.tokens
            report.token_histogram[ex.tokens] += 1
        if ex.ok:
            report.examples += 1
    if report.lines == 0:
        report.problems.setdefault("missing_messages", Finding()).add(0, "the file has no examples")
    return report
