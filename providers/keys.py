"""API keys: where they come from, and keeping them out of everything else.

A key is read from `$CREDENTIALS_DIRECTORY/<name>` (systemd LoadCredential=),
a file only its owner can read, or an environment variable, in that order of
what the provider's config names. Every key read is registered here, and
`redact()` removes registered keys from any text: log lines, exception
messages, CLI output. It masks a key whole, in its escaped forms (JSON,
URL), and any piece of it 12 characters or longer, so a key cut in half by
a truncated error text leaks nothing either. Mask first, cut after: `clip`.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import urllib.parse
from pathlib import Path

MASK = "***"
# a piece of a key this long is masked wherever it appears
PIECE = 12
_lock = threading.Lock()
_secrets: set[str] = set()
_pieces: set[str] = set()


class SecretError(Exception):
    """A key cannot be had; the message never contains a key."""


def _forms(value: str) -> set[str]:
    return {value, json.dumps(value)[1:-1], urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value),
            repr(value)[1:-1]}


def register_secret(value: str) -> None:
    if not value or len(value) < 4:
        return
    with _lock:
        for form in _forms(value):
            _secrets.add(form)
            _pieces.update(form[i:i + PIECE] for i in range(len(form) - PIECE + 1))


def redact(text: str) -> str:
    if not _secrets or not isinstance(text, str):
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    if _pieces and len(text) >= PIECE:
        masked = bytearray(len(text))
        for i in range(len(text) - PIECE + 1):
            if text[i:i + PIECE] in _pieces:
                masked[i:i + PIECE] = b"\x01" * PIECE
        if any(masked):
            out, i = [], 0
            while i < len(text):
                if masked[i]:
                    while i < len(text) and masked[i]:
                        i += 1
                    out.append(MASK)
                else:
                    out.append(text[i])
                    i += 1
            text = "".join(out)
    return text


def clip(text: str, limit: int = 300) -> str:
    """Masked, then cut to `limit` characters (never the other way round)."""
    text = redact(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def redact_value(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple (a ProviderJob, a JobView)
        return type(value)._make(redact_value(v) for v in value)
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{value.__class__.__name__}: {value}")
    return value


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
