"""API keys: where they come from, and keeping them out of everything else.

A key is read from `$CREDENTIALS_DIRECTORY/<name>` (systemd LoadCredential=),
a file only its owner can read, or an environment variable, in that order of
what the provider's config names. Every key read is registered here, and
`redact()` removes registered keys from any text: log lines, exception
messages, CLI output.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()


class SecretError(Exception):
    """A key cannot be had; the message never contains a key."""


def register_secret(value: str) -> None:
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    if not _secrets or not isinstance(text, str):
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_value(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{value.__class__.__name__}: {value}")
    return value


def _read_key_file(path: Path, where: str, *, check_mode: bool) -> str:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SecretError(f"{where}: key file {path} does not exist") from None
    except PermissionError:
        raise SecretError(f"{where}: key file {path} is not readable") from None
    if check_mode and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(
            f"{where}: key file {path} is readable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run chmod 600 {path}"
        )
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise SecretError(f"{where}: key file {path} is not readable") from None
    if not value:
        raise SecretError(f"{where}: key file {path} is empty")
    return value


def resolve_api_key(provider: str, *, api_key_env: str | None, api_key_file: str | Path | None,
                    api_key_credential: str | None) -> str:
    """The key for `provider`, from the first source its config names."""
    where = f"providers.{provider}"
    if api_key_credential:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if directory:
            path = Path(directory) / api_key_credential
            if path.exists():
                # systemd made this file for our process alone
                key = _read_key_file(path, f"{where}.api_key_credential", check_mode=False)
                register_secret(key)
                return key
        if not api_key_file and not api_key_env:
            raise SecretError(f"{where}.api_key_credential: no credential {api_key_credential!r} "
                              f"(is LoadCredential= set and $CREDENTIALS_DIRECTORY present?)")
    if api_key_file:
        key = _read_key_file(Path(api_key_file), f"{where}.api_key_file", check_mode=True)
        register_secret(key)
        return key
    if api_key_env:
        key = os.environ.get(api_key_env, "").strip()
        if not key:
            raise SecretError(f"{where}.api_key_env: ${api_key_env} is not set")
        register_secret(key)
        return key
    raise SecretError(f"{where}: no API key source (set api_key_env, api_key_file or api_key_credential)")
