"""controller.toml: loading, validation (pydantic) and path resolution.

Every error is raised as ConfigError with one line that names the file and
the key, so the CLI can print it and exit non-zero.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from ftctl.controller.service.settings import (DashboardSection, EventsSection, HistorySection, HookConfig,
                                              LogsSection, RetentionSection, WebhooksSection)
from ftctl.providers.registry import KINDS
from ftctl.providers.settings import DAY, Duration, Section, bounded_duration, parse_duration

SEARCH_PATHS = (Path("controller.toml"), Path("/etc/ftctl/controller.toml"))

__all__ = ["AgentConfig", "Config", "ConfigError", "EvalConfig", "ExportSection", "TrainingFileRef", "find_config",
           "load_config", "parse_config", "parse_duration", "root_model", "upstream_closure"]


class ConfigError(Exception):
    """A one-line, user-facing configuration problem."""


class ControllerSection(Section):
    database: str = "sqlite:///ftctl.db"
    poll_interval: bounded_duration(3600.0) = Field(default=15.0, gt=0)  # type: ignore[valid-type]
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # after this many ticks in a row that raise, the systemd watchdog is no
    # longer fed (and systemd restarts the daemon)
    failed_ticks_limit: int = Field(default=5, ge=1, le=1000)
    # PostgreSQL: how long a leader's lease lasts; a standby takes over within
    # about this long (plus a poll interval) after the leader is gone
    lease: bounded_duration(600.0) = Field(default=15.0, ge=1.0)  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _database_kind(self) -> "ControllerSection":
        if not self.database.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("controller.database: expected sqlite:///PATH or postgresql://USER@HOST/DB")
        return self


class RetrySection(Section):
    max_attempts: int = Field(default=5, ge=1)
    backoff_initial: Duration = Field(default=30.0, gt=0)
    backoff_max: bounded_duration(7 * DAY) = Field(default=1800.0, gt=0)  # type: ignore[valid-type]
    # how long a concurrency limit learned from a capacity rejection holds
    # before the configured concurrency is tried again
    capacity_hold: Duration = Field(default=3600.0, gt=0)
    # after a create whose outcome is unknown (a timeout, a reset, a 5xx), how
    # long past the provider's timeout the request may still land; nothing is
    # created again before a listing read after that shows no such job
    create_margin: bounded_duration(DAY) = Field(default=30.0, ge=0)  # type: ignore[valid-type]


class MetricsSection(Section):
    # host:port for the Prometheus endpoint; off when not set
    listen: str | None = None

    @model_validator(mode="after")
    def _address(self) -> "MetricsSection":
        if self.listen is not None:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"metrics.listen: {self.listen!r} is not HOST:PORT, e.g. \"127.0.0.1:9464\"")
        return self


class BudgetSection(Section):
    per_job: float | None = Field(default=None, gt=0)  # USD: the most one job's estimate may be
    total: float | None = Field(default=None, gt=0)  # USD: spent + committed over `period`
    period: Duration = Field(default=30 * 86400.0, gt=0)


class PreflightSection(Section):
    # the country a phone number written without +CC belongs to (validate,
    # prepare --scrub-pii, submit); --phone-region overrides it
    phone_region: str = "US"

    @field_validator("phone_region")
    @classmethod
    def _region(cls, value: str) -> str:
        from ftctl.controller.preflight.pii import check_region

        return check_region(value)  # its RegionError is a ValueError: "preflight.phone_region: unknown ..."


class PriceOverride(Section):
    train_per_m: float | None = Field(default=None, ge=0)
    min_fee: float | None = Field(default=None, ge=0)
    context: int | None = Field(default=None, gt=0)
    tokens_per_step: int | None = Field(default=None, gt=0)
    chat_per_m: float | None = Field(default=None, ge=0)  # the evaluation gate's chat calls
    storage_per_month: float | None = Field(default=None, ge=0)  # keeping a fine-tuned model


from ftctl.controller.agents import (AgentConfig, EvalConfig, ExportSection, TrainingFileRef,  # noqa: E402
                                    check_agent, check_agent_name, check_cycles, root_model, upstream_closure)

# [providers.NAME]: each kind declares its own section (providers/*.py)
ProviderConfig = Annotated[Union[tuple(k.section for k in KINDS.values())], Field(discriminator="kind")]


def _no_key_to_hooks(config: "Config") -> None:
    """A hook's `env` never names a variable a key or a secret is read from."""
    keys = {getattr(p, "key_env", None): f"providers.{n}" for n, p in config.providers.items()}
    keys.update({h.secret_env: f"hooks[{i}]" for i, h in enumerate(config.hooks)})
    keys[config.webhooks.secret_env] = "webhooks"
    keys[config.dashboard.token_env] = "dashboard"
    keys.pop(None, None)
    for i, hook in enumerate(config.hooks):
        for name in hook.env:
            if name in keys:
                raise ValueError(f"hooks[{i}].env: {name} holds {keys[name]}'s secret; a hook never gets a key")


class Config(Section):
    controller: ControllerSection = ControllerSection()
    retry: RetrySection = RetrySection()
    budget: BudgetSection = BudgetSection()
    metrics: MetricsSection = MetricsSection()
    webhooks: WebhooksSection = WebhooksSection()
    dashboard: DashboardSection = DashboardSection()
    hooks: list[HookConfig] = Field(default_factory=list)
    events: EventsSection = EventsSection()
    logs: LogsSection = LogsSection()
    history: HistorySection = HistorySection()
    # None: nothing is ever deleted at a provider
    retention: RetentionSection | None = None
    preflight: PreflightSection = PreflightSection()
    prices: dict[str, PriceOverride] = Field(default_factory=dict)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    export: ExportSection | None = None
    # where the file lives; relative paths inside it are relative to this
    base_dir: Path = Field(default=Path("."), exclude=True)
    path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _references(self) -> "Config":
        for name in self.agents:
            check_agent_name(name, "agents")
        for name, agent in self.agents.items():
            if agent.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none"
                raise ValueError(
                    f"agents.{name}.provider: unknown provider {agent.provider!r} (configured: {known})"
                )
            check_agent(self, name, agent)
        check_cycles(self.agents)
        for key in self.prices:
            kind, sep, model = key.partition("/")
            if not sep or not model or kind not in KINDS:
                raise ValueError(f"prices.{key}: name a price as \"kind/model\", e.g. \"mistral/open-mistral-7b\"")
        if self.retry.backoff_max < self.retry.backoff_initial:
            raise ValueError("retry.backoff_max: must not be shorter than retry.backoff_initial")
        if self.webhooks.listen and self.metrics.listen == self.webhooks.listen:
            raise ValueError("webhooks.listen: the same address as metrics.listen")
        if self.dashboard.listen and self.dashboard.listen in (self.metrics.listen, self.webhooks.listen):
            raise ValueError("dashboard.listen: the same address as metrics.listen or webhooks.listen")
        _no_key_to_hooks(self)
        return self

    @property
    def price_overrides(self) -> dict[str, dict]:
        return {k: v.model_dump() for k, v in self.prices.items()}

    # -- paths -------------------------------------------------------------

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def database_url(self) -> str:
        # $FTCTL_DATABASE wins (the systemd unit points it at its StateDirectory)
        url = os.environ.get("FTCTL_DATABASE") or self.controller.database
        prefix = "sqlite:///"
        if url.startswith(prefix) and url != "sqlite:///:memory:":
            rest = url[len(prefix):]
            return prefix + str(self.resolve(rest).resolve())
        return url

    @property
    def sqlite_file(self) -> Path | None:
        """The database file, when the database is a SQLite file."""
        url = self.database_url
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            return Path(url[len("sqlite:///"):])
        return None

    def provider_env(self, clock: Any = None) -> Any:
        """What a provider client is built with besides its own section."""
        import time

        from ftctl.providers.kind import BuildEnv

        return BuildEnv(state_dir=self.state_dir, clock=clock or time.time)

    @property
    def state_dir(self) -> Path:
        """Where providers keep local state: beside the SQLite database, or
        beside the config file."""
        db = self.sqlite_file
        return db.parent if db is not None else self.base_dir


def find_config(explicit: str | Path | None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get("FTCTL_CONFIG")
    if env:
        return Path(env)
    for candidate in SEARCH_PATHS:
        if candidate.exists():
            return candidate
    raise ConfigError(
        "no config file: pass --config PATH, set FTCTL_CONFIG, or create ./controller.toml"
    )


def _format_validation_error(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = list(first["loc"])
    # drop the discriminator tag pydantic inserts into the location
    if len(loc) >= 3 and loc[0] == "providers" and loc[2] in KINDS:
        loc.pop(2)
    key = ""
    for part in loc:  # hooks[0].url
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    kind = first["type"]
    msg = first["msg"]
    if kind == "extra_forbidden":
        return f"{path}: {key}: unknown key"
    if kind == "missing":
        return f"{path}: {key}: required key is missing"
    if kind == "union_tag_invalid":
        tag = first.get("input", {}).get("kind") if isinstance(first.get("input"), dict) else None
        return f"{path}: {key}.kind: unknown provider kind {tag!r} (known: {', '.join(KINDS)})"
    if kind == "union_tag_not_found":
        return f"{path}: {key}.kind: required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if not key or msg.startswith((f"{key}.", f"{key}:")):  # the message names its key already
            return f"{path}: {msg}"
        if msg.startswith("."):  # a section's check names its own key: ".url: ..."
            return f"{path}: {key}{msg}"
        field, sep, rest = msg.partition(": ")
        if sep and field.isidentifier():  # a section's own field: "command: required ..."
            return f"{path}: {key}.{field}: {rest}"
    return f"{path}: {key}: {msg}" if key else f"{path}: {msg}"


def parse_config(text: str, path: Path) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    base_dir = path.resolve().parent
    for internal in ("base_dir", "path"):
        if internal in data:
            raise ConfigError(f"{path}: {internal}: unknown key")
    try:
        return Config.model_validate({**data, "base_dir": base_dir, "path": path}, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from None


def load_config(explicit: str | Path | None = None) -> Config:
    path = find_config(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.__class__.__name__}") from None
    config = parse_config(text, path)
    from ftctl.providers.lifecycle import today

    try:  # a fixed "today" ($FTCTL_TODAY) is checked where the config is: one line, exit 2
        today()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return config
