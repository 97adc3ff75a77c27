"""API keys: where they come from, and keeping them out of everything else.

A key is read from `$CREDENTIALS_DIRECTORY/<name>` (systemd LoadCredential=),
a file only its owner can read, or an environment variable, in that order of
what the provider's config names. Every key read is registered here, and
`redact()` is the one function that removes registered keys from anything
that leaves the process: log lines (ours and the libraries'), exception
messages, texts stored in the database, CLI output, hook payloads, notify
status lines. It masks a key whole, in its escaped forms (JSON, URL, repr),
and any run of `PIECE` (6) or more of its characters: a provider that echoes
a prefix (`bad key cnry-SEKRI...`) or a prefix and the last characters
(OpenAI's `sk-abc123****wxyz`), or a key cut in half by a truncated error
text, leaks nothing either. Mask first, cut after: `clip`.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
import urllib.parse
from pathlib import Path

MASK = "***"
# any run of this many characters of a key is masked wherever it appears
PIECE = 6
_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_pieces: frozenset[str] = frozenset()
# any piece, as one pattern: most texts hold none, and say so fast
_any_piece: re.Pattern[str] | None = None


class SecretError(Exception):
    """A key cannot be had; the message never contains a key."""


def _forms(value: str) -> set[str]:
    return {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
            urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value), urllib.parse.quote(value),
            repr(value)[1:-1]}


def register_secret(value: str) -> None:
    """From now on `value` (and every piece of it) is masked by `redact`."""
    global _secrets, _pieces, _any_piece
    if not isinstance(value, str) or len(value) < 4:
        return
    with _lock:
        forms = _forms(value) - _secrets
        if not forms:
            return
        pieces = {form[i:i + PIECE] for form in forms for i in range(len(form) - PIECE + 1)}
        # readers take the sets without the lock: each is replaced whole
        _pieces = _pieces | pieces
        _any_piece = re.compile("|".join(sorted(map(re.escape, _pieces)))) if _pieces else None
        _secrets = _secrets | forms


def holds_secret(text: str) -> bool:
    """Whether `redact` would change `text`."""
    return isinstance(text, str) and redact(text) != text


def _mask(text: str) -> str:
    secrets, pieces, any_piece = _secrets, _pieces, _any_piece
    for secret in sorted((s for s in secrets if s in text), key=len, reverse=True):
        text = text.replace(secret, MASK)
    if any_piece is None or len(text) < PIECE or not any_piece.search(text):
        return text
    hits = [i for i in range(len(text) - PIECE + 1) if text[i:i + PIECE] in pieces]
    if not hits:
        return text
    out, start, end = [], 0, -1
    for i in hits:  # merge overlapping and touching runs: one mask per run
        if i > end:
            if end >= 0:
                out.append(MASK)
            out.append(text[start:i])
        end = max(end, i + PIECE)
        start = end
    out.append(MASK)
    out.append(text[end:])
    return "".join(out)


def redact(value):
    """`value` with every registered key masked: a string, bytes, or a dict,
    list, tuple, NamedTuple of them (masked inside), or an exception (as
    `Class: message`). Anything else comes back as it is."""
    if not _secrets:
        if isinstance(value, BaseException):
            return f"{value.__class__.__name__}: {value}"
        return value
    if isinstance(value, str):
        return _mask(value)
    if isinstance(value, (bytes, bytearray)):
        return _mask(value.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple (a ProviderJob, a JobView)
        return type(value)._make(redact(v) for v in value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, BaseException):
        return _mask(f"{value.__class__.__name__}: {value}")
    return value


def clip(text: str, limit: int = 300) -> str:
    """Masked, then cut to `limit` characters (never the other way round)."""
    text = redact(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _clean(value: str, where: str, source: str, noun: str = "key") -> str:
    """A key is one line of printable characters; anything else is refused
    without quoting it."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise SecretError(f"{where}: the {noun} in {source} holds control characters; "
                          f"it must be one line of printable characters")
    return value


def _read_key_file(path: Path, where: str, *, check_mode: bool, noun: str = "key") -> str:
    try:
        link = path.lstat()
        info = path.stat()
    except FileNotFoundError:
        raise SecretError(f"{where}: {noun} file {path} does not exist") from None
    except PermissionError:
        raise SecretError(f"{where}: {noun} file {path} is not readable") from None
    what = f"{noun} file {path}"
    if stat.S_ISLNK(link.st_mode):
        what = f"{noun} file {path} (a symlink to {os.path.realpath(path)})"
    if not stat.S_ISREG(info.st_mode):
        raise SecretError(f"{where}: {what} is not a regular file")
    if check_mode:
        # the file the key is read from, wherever a symlink points: owned by
        # us (or root) and readable by its owner alone
        if info.st_uid not in (os.geteuid(), 0):
            raise SecretError(f"{where}: {what} belongs to uid {info.st_uid}, not to this user "
                              f"(uid {os.geteuid()}) or root")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(f"{where}: {what} is readable by group or others "
                              f"(mode {stat.S_IMODE(info.st_mode):04o}); run chmod 600 {os.path.realpath(path)}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise SecretError(f"{where}: {what} is not readable as UTF-8 text") from None
    # the first line is the key; a trailing newline or a comment line below it is not
    lines = text.splitlines()
    value = lines[0].strip() if lines else ""
    if not value:
        raise SecretError(f"{where}: {what} is empty (the {noun} goes on its first line)")
    register_secret(value)
    return _clean(value, where, what, noun)


def resolve_secret(where: str, *, env: str | None, file: str | Path | None, credential: str | None,
                   prefix: str = "api_key", noun: str = "key") -> str:
    """A secret from the first source named: a systemd credential, a file
    only its owner can read, an environment variable. Registered for
    redaction before anything else can see it; errors name the config key
    (`{where}.{prefix}_file`) and never the secret."""
    if credential:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if directory:
            path = Path(directory) / credential
            if path.exists():
                # systemd made this file for our process alone
                value = _read_key_file(path, f"{where}.{prefix}_credential", check_mode=False, noun=noun)
                register_secret(value)
                return value
        if not file and not env:
            raise SecretError(f"{where}.{prefix}_credential: no credential {credential!r} "
                              f"(is LoadCredential= set and $CREDENTIALS_DIRECTORY present?)")
    if file:
        value = _read_key_file(Path(file), f"{where}.{prefix}_file", check_mode=True, noun=noun)
        register_secret(value)
        return value
    if env:
        value = os.environ.get(env, "").strip()
        if not value:
            raise SecretError(f"{where}.{prefix}_env: ${env} is not set")
        register_secret(value)
        return _clean(value, f"{where}.{prefix}_env", f"${env}", noun)
    raise SecretError(f"{where}: no {noun} source (set {prefix}_env, {prefix}_file or {prefix}_credential)")


def resolve_api_key(provider: str, *, api_key_env: str | None, api_key_file: str | Path | None,
                    api_key_credential: str | None) -> str:
    """The key for `provider`, from the first source its config names."""
    return resolve_secret(f"providers.{provider}", env=api_key_env, file=api_key_file,
                          credential=api_key_credential)
