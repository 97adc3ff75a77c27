"""The config sections of the event features: `[webhooks]` (provider
webhooks in), `[[hooks]]` (events out), `[events]` (how long the hooks'
settled events are kept), `[logs]` (training logs) and `[history]` (how
long finished jobs' training logs are kept whole).

A secret (the webhook secret, a URL hook's signing secret) comes from
`secret_env`, `secret_file` or `secret_credential`, read like an API key
(providers.keys): registered for masking first, never logged or shown. The
file is only named here; it is read when the daemon starts or reloads, and
a secret that cannot be had refuses that start or reload in one line.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ftctl.controller.ledger.states import EVENTS
from ftctl.providers.settings import DAY, Duration, Section, bounded_duration, resolve_path

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _host_port(value: str | None, example: str) -> str | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT, e.g. \"{example}\"")
    return value


class SecretSource(Section):
    secret_env: str | None = None
    secret_file: str | None = None
    secret_credential: str | None = None

    @field_validator("secret_file")
    @classmethod
    def _secret_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return resolve_path(value, info)

    @field_validator("secret_env", "secret_credential")
    @classmethod
    def _a_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_env or self.secret_file or self.secret_credential)

    def secret_source(self) -> str:
        """Where the secret is read from, in words (never the secret)."""
        if self.secret_credential:
            return f"credential {self.secret_credential}"
        if self.secret_file:
            return f"file {self.secret_file}"
        return f"${self.secret_env}" if self.secret_env else "none"

    def secret(self, where: str) -> str:
        """The secret (SecretError, one line naming `where`, when it cannot be had)."""
        from ftctl.providers.keys import resolve_secret

        return resolve_secret(where, env=self.secret_env, file=self.secret_file, credential=self.secret_credential,
                              prefix="secret", noun="secret")


class WebhooksSection(SecretSource):
    """`listen = "127.0.0.1:9465"`: serve POST /webhooks/<provider name>."""

    listen: str | None = None
    # the largest body accepted (a provider's event is a few hundred bytes)
    max_body: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return _host_port(value, "127.0.0.1:9465")

    @model_validator(mode="after")
    def _needs_a_secret(self) -> "WebhooksSection":
        if self.listen and not self.has_secret:
            raise ValueError(".secret_env: webhooks are verified with a secret: set secret_env, secret_file or "
                             "secret_credential")
        return self


class HookConfig(SecretSource):
    """One `[[hooks]]`: which events, and a command or a URL to tell."""

    on: list[str] = Field(min_length=1)
    command: list[str] | None = None
    url: str | None = None
    name: str | None = None  # in logs and `doctor`; default: the command's program or the URL's host
    timeout: bounded_duration(600.0) = Field(default=30.0, gt=0)  # type: ignore[valid-type]
    backoff_initial: Duration = Field(default=5.0, gt=0)
    backoff_max: bounded_duration(DAY) = Field(default=600.0, gt=0)  # type: ignore[valid-type]
    # an event still undelivered this long after it happened is given up (and shown)
    give_up_after: Duration = Field(default=3 * DAY, gt=0)
    # a command's environment is PATH, HOME, LANG, LC_ALL and its event; these
    # names of the daemon's variables are passed too (never a key's)
    env: list[str] = Field(default_factory=list)

    @field_validator("on")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        for name in value:
            if name != "*" and name not in EVENTS:
                raise ValueError(f"unknown event {name!r} (known: {', '.join(EVENTS)}, or \"*\" for all)")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0].strip()):
            raise ValueError("a command is a list: the program, then its arguments, e.g. [\"deploy.sh\", \"--agent\"]")
        if value is not None and any("\0" in part for part in value):
            raise ValueError("a command cannot hold a NUL character")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _VARIABLE.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable's name ([A-Za-z_][A-Za-z0-9_]*)")
            if name == "CREDENTIALS_DIRECTORY" or name.startswith("FTCTL_"):
                raise ValueError(f"{name} is never passed to a hook (the keys' folder, or ftctl's own)")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("not an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> "HookConfig":
        if (self.command is None) == (self.url is None):
            raise ValueError(".command: a hook has either command = [...] or url = \"...\" (one of them)")
        if self.env and self.command is None:
            raise ValueError(".env: only a command hook has an environment; a url hook gets the event as JSON")
        if self.command is not None and self.has_secret:
            raise ValueError(".secret_env: only a url hook signs what it sends; a command hook takes no secret")
        if self.backoff_max < self.backoff_initial:
            raise ValueError(".backoff_max: must not be shorter than backoff_initial")
        return self

    def wants(self, event: str) -> bool:
        return "*" in self.on or event in self.on

    @property
    def key(self) -> str:
        """Stable while the hook's target stays the same (its events, timeout
        or name may change): which deliveries it has is kept under this."""
        target: Any = ["command", self.command] if self.command is not None else ["url", self.url]
        return hashlib.sha256(json.dumps(target).encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """How logs and `doctor` name it: never the whole URL (a Slack
        incoming-webhook URL is itself a secret)."""
        if self.name:
            return self.name
        if self.command is not None:
            return self.command[0].rsplit("/", 1)[-1]
        return urlsplit(self.url).hostname or "url"


class EventsSection(Section):
    """`[events] keep`: an event the hooks have (or were given up on) is
    forgotten from the outbox this long after; the job's history keeps it."""

    keep: Duration = Field(default=7 * DAY, gt=0)


class HistorySection(Section):
    """`[history]`: a finished job's training log is kept whole for
    `keep_logs_for`, then thinned to its events, its checkpoints and
    `keep_points` metric points (0: the whole log is dropped). The job row
    and its transitions are kept for ever."""

    keep_logs_for: Duration = Field(default=30 * DAY, ge=DAY)
    keep_points: int = Field(default=20, ge=0, le=100_000)


class RetentionSection(Section):
    """`[retention]`: what the daemon deletes at the providers, and when.
    Without the section nothing is ever deleted; a rule left out deletes
    nothing of its kind. Never deleted: an agent's exported model, a model a
    pipeline stage that is not done needs as its base, a file a job that may
    still run or retry needs."""

    rejected_after: Duration | None = Field(default=None, ge=0)  # rejected models, after their rejection
    superseded_after: Duration | None = Field(default=None, ge=0)  # promoted models a newer promotion replaced
    files_after: Duration | None = Field(default=None, ge=0)  # uploaded files, after their last job ended
    # "best": of a self-hosted job's checkpoints, keep only what its model is
    checkpoints: Literal["all", "best"] = "all"
    # how often the daemon applies the rules (a bounded batch a pass)
    interval: bounded_duration(DAY) = Field(default=600.0, gt=0)  # type: ignore[valid-type]


class LogsSection(Section):
    """Training logs (events, metrics, checkpoints) read from the providers
    for running jobs, and stored so `ftctl logs` answers from the database."""

    enabled: bool = True
    # how often one running job's log is read
    interval: bounded_duration(DAY) = Field(default=30.0, gt=0)  # type: ignore[valid-type]
    # the most jobs read in one pass (a pass every `interval`): a bounded rate
    batch: int = Field(default=10, ge=1, le=1000)


def is_loopback(host: str) -> bool:
    """127.0.0.1, ::1, localhost: only this machine can reach the address."""
    import ipaddress

    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DashboardSection(Section):
    """`[dashboard] listen = "127.0.0.1:9466"`: read-only pages served by the
    daemon. Another address than loopback needs a bearer token, read like an
    API key (`token_env`, `token_file`, `token_credential`)."""

    listen: str | None = None
    token_env: str | None = None
    token_file: str | None = None
    token_credential: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        # port 0: any free port (the daemon logs the one it got)
        if value is not None and value.rpartition(":")[2] == "0":
            _host_port(value.rpartition(":")[0] + ":1", "127.0.0.1:9466")
            return value
        return _host_port(value, "127.0.0.1:9466")

    @field_validator("token_file")
    @classmethod
    def _token_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return resolve_path(value, info)

    @property
    def has_token(self) -> bool:
        return bool(self.token_env or self.token_file or self.token_credential)

    @property
    def loopback(self) -> bool:
        return self.listen is None or is_loopback(self.listen.rpartition(":")[0])

    @model_validator(mode="after")
    def _a_token_off_loopback(self) -> "DashboardSection":
        if not self.loopback and not self.has_token:
            raise ValueError(f".token_env: listen {self.listen} is not a loopback address: set token_env, "
                             "token_file or token_credential (the bearer token a browser logs in with)")
        return self

    def token(self) -> str | None:
        """The bearer token (None when none is configured); SecretError, one
        line naming the key, when it cannot be had."""
        if not self.has_token:
            return None
        from ftctl.providers.keys import resolve_secret

        return resolve_secret("dashboard", env=self.token_env, file=self.token_file, credential=self.token_credential,
                              prefix="token", noun="token")
