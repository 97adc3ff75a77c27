"""Training files: streamed checks, line by line, in bounded memory.

A file is read one line at a time; what is kept per example is a few bytes
(an 8-byte digest for exact duplicates, a histogram of token counts), never
the example itself, so a file of hundreds of MB validates in a few tens of
MB of memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from ftctl.controller.preflight.pii import DEFAULT_REGION, KINDS, PERSONAL, Detector
from ftctl.controller.preflight.report import DigestSet, Finding, Report
from ftctl.providers.formats import ExampleFormat
from ftctl.providers.registry import kind as kind_of
from ftctl.providers.tokenizers import Counter as TokenCounter
from ftctl.providers.tokenizers import ExampleRejected

@dataclass
class Example:
    """One line of a training file, checked (small: no copy of the line)."""

    line: int
    problems: list[tuple[str, str]] = field(default_factory=list)  # (code, message)
    tokens: int | None = None
    found: dict[str, int] = field(default_factory=dict)  # personal data and secrets: kind -> how many
    extra_keys: tuple[str, ...] = ()
    digest: int | None = None  # of the conversation, for exact duplicates
    weight: Any = None  # cross-agent sets: the example's weight, source and target agents
    source_agent: Any = None
    target_agent: Any = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_messages(messages: list[dict[str, Any]], where: str, roles: frozenset[str], ex: Example) -> bool:
    """One conversation: known roles, no empty content, ends with the assistant."""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            ex.problems.append(("bad_message", f"{where}[{i}] has no role"))
            return False
        if m["role"] not in roles:
            ex.problems.append(("unknown_role", f"{where}[{i}] has unknown role {m['role']!r} "
                                                f"(allowed: {', '.join(sorted(roles))})"))
            return False
    for i, m in enumerate(messages):
        content = m.get("content")
        if m.get("tool_calls"):
            continue
        if content is None or (isinstance(content, str) and not content.strip()) or content == []:
            ex.problems.append(("empty_content", f"{where}[{i}] ({m['role']}) has empty content"))
            return False
    if messages[-1]["role"] != "assistant":
        ex.problems.append(("not_assistant_last", f"the conversation ends with {messages[-1]['role']!r}, "
                                                  f"not the assistant"))
        return False
    return True


@lru_cache(maxsize=32)
def _format(provider: str, method: str | None) -> tuple[ExampleFormat, frozenset[str]]:
    descriptor = kind_of(provider)
    return descriptor.example_format(method), descriptor.roles


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


class NotJSON(ValueError):
    """NaN, Infinity or -Infinity: Python's json reads them, JSON has none."""


def _not_json(name: str) -> Any:
    raise NotJSON(name)


def check_line(number: int, raw: bytes, *, provider: str, counter: TokenCounter | None,
               context: int | None, method: str | None = None, phone_region: str = DEFAULT_REGION) -> Example:
    """Everything that can be said of one line alone (duplicates need the
    others: `digest` lets the caller find them)."""
    ex = Example(number)
    if isinstance(raw, Oversized):
        limit = line_limit(context)
        ex.problems.append(("too_long", f"{raw.size:,} bytes on one line, over the {limit:,} bytes any example "
                                        f"{'this model takes' if context else 'a provider takes'} can need"))
        return ex
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        ex.problems.append(("invalid_utf8", f"not UTF-8 (byte {exc.start})"))
        return ex
    try:
        record = json.loads(text, parse_constant=_not_json)
    except NotJSON as exc:
        ex.problems.append(("invalid_json", f"invalid JSON: {exc} is not a JSON number (no provider takes it)"))
        return ex
    except ValueError as exc:
        msg = exc.msg if hasattr(exc, "msg") else str(exc)
        col = getattr(exc, "colno", None)
        ex.problems.append(("invalid_json", f"invalid JSON: {msg}" + (f" (column {col})" if col else "")))
        return ex
    if not isinstance(record, dict):
        ex.problems.append(("not_an_object", "not a JSON object"))
        return ex
    ex.weight, ex.source_agent, ex.target_agent = record.get("weight"), record.get("source_agent"), \
        record.get("target_agent")
    # the format (by the provider and the training method) says which top-level
    # keys an example may hold; anything else (weight, source_agent, ...) the
    # provider rejects
    fmt, roles = _format(provider, method)
    ex.extra_keys = tuple(sorted(k for k in record if k not in fmt.keys))
    if ex.extra_keys:
        ex.problems.append(("extra_field", f"field{'s' if len(ex.extra_keys) > 1 else ''} "
                                           f"{', '.join(ex.extra_keys)} rejected by {provider}"))
    split = fmt.split(record)
    ex.problems.extend(split.problems)
    if split.problems or not all(_check_messages(m, where, roles, ex) for where, m in split.conversations):
        return ex
    conversations = [m for _, m in split.conversations]
    seen: set[int] = set()  # a preference pair shares its prompt: its personal data counts once
    unique = [m for c in conversations for m in c if id(m) not in seen and not seen.add(id(m))]
    find = detector(phone_region).find
    for t in _texts(unique):
        for m in find(t):  # most texts hold nothing: no Counter built for them
            ex.found[m.kind] = ex.found.get(m.kind, 0) + 1
    if counter is not None:
        try:
            counts = [counter.count(c) for c in conversations]
        except ExampleRejected as exc:
            ex.problems.append(("invalid_structure", f"{counter.name}: {exc}"))
            return ex
        ex.tokens = sum(counts)
        if context and max(counts) > context:
            ex.problems.append(("too_long", f"{max(counts):,} tokens, over the model's context of {context:,}"))
    ex.digest = conversation_digest(conversations[0] if len(conversations) == 1 else conversations, ex.target_agent)
    return ex


def conversation_digest(messages: list[Any], target_agent: Any = None) -> int:
    """8 bytes that tell exact duplicates apart. In cross-agent data the same
    conversation sent to several target agents is meant: with a target
    agent, it is part of what makes an example the same."""
    if target_agent is not None:
        messages = [{"target_agent": target_agent}, messages]
    try:  # orjson: a fifth of the standard library's time, the same bytes for the same conversation
        canonical = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # what orjson refuses (an int over 64 bits ...)
        canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "big")


# No provider takes an example anywhere near this long; a longer line is
# refused unread (a 60 MB one-line file must not hang validate). With a
# model, the bound is its context times the most bytes a token can hold.
MAX_LINE_BYTES = 4 * 2**20
BYTES_PER_TOKEN_MAX = 32


def line_limit(context: int | None) -> int:
    return min(MAX_LINE_BYTES, context * BYTES_PER_TOKEN_MAX) if context else MAX_LINE_BYTES


class Oversized(bytes):
    """A line refused for its length: only its first bytes are kept."""

    size: int = 0


# how often (in lines) a reader tells `progress` how far into the file it is
PROGRESS_EVERY = 2000


def _lines(path: Path, limit: int = MAX_LINE_BYTES,
           progress: Callable[[int], Any] | None = None) -> Iterator[tuple[int, bytes]]:
    """Each non-blank line; one longer than `limit` bytes comes back as an
    Oversized stub, read past in bounded memory. `progress(bytes read)` is
    called every PROGRESS_EVERY lines and at the end."""
    with open(path, "rb") as fh:
        number = 0
        while True:
            raw = fh.readline(limit + 1)
            if not raw:
                if progress is not None:
                    progress(fh.tell())
                return
            number += 1
            if progress is not None and number % PROGRESS_EVERY == 0:
                progress(fh.tell())
            if len(raw) > limit and not raw.endswith(b"\n"):
                size = len(raw)
                while True:  # skip the rest of this line without holding it
                    rest = fh.readline(1 << 20)
                    size += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
                stub = Oversized(raw[:64])
                stub.size = size
                yield number, stub
                continue
            raw = raw.rstrip(b"\r\n")
            if raw.strip():
                yield number, raw


# -- checking in worker processes (token counting is the costly part) -----------

CHUNK = 2000
_worker: dict[str, Any] = {}


def _die_with_parent() -> None:
    """A worker must not outlive a killed `validate` (Linux: PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker(provider: str, kind: str | None, model: str | None, context: int | None,
                 method: str | None = None, phone_region: str = DEFAULT_REGION) -> None:
    _die_with_parent()
    _worker.update(provider=provider, context=context, method=method, phone_region=phone_region,
                   counter=kind_of(kind).counter(model) if kind and model else None)


def _check_chunk(chunk: list[tuple[int, bytes]]) -> list[Example]:
    w = _worker
    return [check_line(n, raw, provider=w["provider"], counter=w["counter"], context=w["context"],
                       method=w["method"], phone_region=w["phone_region"]) for n, raw in chunk]


def _chunks(path: Path, limit: int,
            progress: Callable[[int], Any] | None = None) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for item in _lines(path, limit, progress):
        chunk.append(item)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _checked(path: Path, provider: str, counter: TokenCounter | None, context: int | None,
             jobs: int, method: str | None = None, phone_region: str = DEFAULT_REGION,
             progress: Callable[[int], Any] | None = None) -> Iterator[Example]:
    if jobs <= 1 or counter is None:
        for number, raw in _lines(path, line_limit(context), progress):
            yield check_line(number, raw, provider=provider, counter=counter, context=context, method=method,
                             phone_region=phone_region)
        return
    import multiprocessing
    from collections import deque

    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    initargs = (provider, provider, counter.model, context, method, phone_region)
    with ctx.Pool(jobs, initializer=_init_worker, initargs=initargs) as pool:
        pending: deque = deque()
        for chunk in _chunks(path, line_limit(context), progress):
            pending.append(pool.apply_async(_check_chunk, (chunk,)))
            if len(pending) >= 2 * jobs:  # bounded: never more than a few chunks in flight
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def iter_examples(path: Path, *, provider: str, counter: TokenCounter | None = None,
                  context: int | None = None, dedupe: bool = True, jobs: int = 1,
                  method: str | None = None, phone_region: str = DEFAULT_REGION,
                  progress: Callable[[int], Any] | None = None) -> Iterator[Example]:
    """Each non-blank line of `path`, checked, in order. Streams: a few
    thousand lines in memory at most, spread over `jobs` processes.
    `progress(bytes read)` hears how far into the file the reading is."""
    seen = DigestSet() if dedupe else None
    for ex in _checked(path, provider, counter, context, jobs, method, phone_region, progress):
        if seen is not None and ex.digest is not None and not seen.add(ex.digest):
            if ex.target_agent is None:
                ex.problems.append(("duplicate", "exact duplicate of an earlier example"))
            else:
                ex.problems.append(("duplicate_for_target", "exact duplicate of an earlier example for the same "
                                                            "target agent"))
        yield ex


def validate(path: Path, *, provider: str, counter: TokenCounter | None = None,
             context: int | None = None, jobs: int = 1, method: str | None = None,
             phone_region: str = DEFAULT_REGION, progress: Callable[[int], Any] | None = None) -> Report:
    """`method`: the training method whose data format the file must have
    (default: the provider's first, conversational SFT); `phone_region`:
    where phone numbers without a country code are from."""
    report = Report(str(path), provider, counter.model if counter else None,
                    counter.name if counter else None, context, method=_format(provider, method)[0].name,
                    phone_region=phone_region)
    report.bytes = Path(path).stat().st_size
    for ex in iter_examples(path, provider=provider, counter=counter, context=context, jobs=jobs, method=method,
                            phone_region=phone_region, progress=progress):
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
