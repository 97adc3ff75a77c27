"""controller.toml: loading, validation (pydantic) and path resolution.

Every error is raised as ConfigError with one line that names the file and
the key, so the CLI can print it and exit non-zero.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

SEARCH_PATHS = (Path("controller.toml"), Path("/etc/ftctl/controller.toml"))

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(Exception):
    """A one-line, user-facing configuration problem."""


def parse_duration(value: Any) -> float:
    """'15s', '30m', '1h30m', '500ms' or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '15s', '30m' or '1h'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration like '15s', '30m' or '1h'")
    text = value.strip().lower()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration like '15s', '30m' or '1h30m'")
    return total


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ControllerSection(_Section):
    database: str = "sqlite:///ftctl.db"
    poll_interval: Duration = Field(default=15.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _database_kind(self) -> "ControllerSection":
        if not self.database.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("controller.database: expected sqlite:///PATH or postgresql://USER@HOST/DB")
        return self


class RetrySection(_Section):
    max_attempts: int = Field(default=5, ge=1)
    backoff_initial: Duration = Field(default=30.0, gt=0)
    backoff_max: Duration = Field(default=1800.0, gt=0)
    # how long a concurrency limit learned from a capacity rejection holds
    # before the configured concurrency is tried again
    capacity_hold: Duration = Field(default=3600.0, gt=0)


class MetricsSection(_Section):
    # host:port for the Prometheus endpoint; off when not set
    listen: str | None = None

    @model_validator(mode="after")
    def _address(self) -> "MetricsSection":
        if self.listen is not None:
            host, sep, port = self.listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"metrics.listen: {self.listen!r} is not HOST:PORT, e.g. \"127.0.0.1:9464\"")
        return self


class BudgetSection(_Section):
    per_job: float | None = Field(default=None, gt=0)  # USD: the most one job's estimate may be
    total: float | None = Field(default=None, gt=0)  # USD: spent + committed over `period`
    period: Duration = Field(default=30 * 86400.0, gt=0)


class PriceOverride(_Section):
    train_per_m: float | None = Field(default=None, ge=0)
    min_fee: float | None = Field(default=None, ge=0)
    context: int | None = Field(default=None, gt=0)
    tokens_per_step: int | None = Field(default=None, gt=0)


class SimulatedProviderConfig(_Section):
    kind: Literal["simulated"]
    concurrency: int = Field(default=2, ge=1)
    # what the simulated service itself allows; by default what we use
    max_concurrent: int | None = Field(default=None, ge=1)
    state_file: str | None = None
    queue_time: Duration = 2.0
    validate_time: Duration = 2.0
    train_time: Duration = 10.0
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int = 0

    @property
    def service_limit(self) -> int:
        return self.max_concurrent or self.concurrency


class _RemoteProviderConfig(_Section):
    concurrency: int = Field(default=2, ge=1)
    base_url: str | None = None
    # where the key comes from, tried in this order: a systemd credential,
    # a file only its owner can read, an environment variable
    api_key_credential: str | None = None
    api_key_file: str | None = None
    api_key_env: str | None = None
    timeout: Duration = Field(default=30.0, gt=0)

    @property
    def key_env(self) -> str | None:
        if self.api_key_env:
            return self.api_key_env
        if self.api_key_file or self.api_key_credential:
            return None
        return self.default_key_env

    default_key_env: ClassVar[str] = ""


class MistralProviderConfig(_RemoteProviderConfig):
    kind: Literal["mistral"]
    default_key_env: ClassVar[str] = "MISTRAL_API_KEY"


class OpenAIProviderConfig(_RemoteProviderConfig):
    kind: Literal["openai"]
    default_key_env: ClassVar[str] = "OPENAI_API_KEY"


PROVIDER_KINDS = ("simulated", "mistral", "openai")
ProviderConfig = Annotated[
    Union[SimulatedProviderConfig, MistralProviderConfig, OpenAIProviderConfig], Field(discriminator="kind")
]


class AgentConfig(_Section):
    provider: str
    model: str = Field(min_length=1)
    training_file: str = Field(min_length=1)
    hyperparameters: dict[str, float | int] = Field(default_factory=dict)


class Config(_Section):
    controller: ControllerSection = ControllerSection()
    retry: RetrySection = RetrySection()
    budget: BudgetSection = BudgetSection()
    metrics: MetricsSection = MetricsSection()
    prices: dict[str, PriceOverride] = Field(default_factory=dict)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    # where the file lives; relative paths inside it are relative to this
    base_dir: Path = Field(default=Path("."), exclude=True)
    path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _references(self) -> "Config":
        for name, agent in self.agents.items():
            if agent.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none"
                raise ValueError(
                    f"agents.{name}.provider: unknown provider {agent.provider!r} (configured: {known})"
                )
        for key in self.prices:
            kind, sep, model = key.partition("/")
            if not sep or not model or kind not in PROVIDER_KINDS:
                raise ValueError(f"prices.{key}: name a price as \"kind/model\", e.g. \"mistral/open-mistral-7b\"")
        if self.retry.backoff_max < self.retry.backoff_initial:
            raise ValueError("retry.backoff_max: must not be shorter than retry.backoff_initial")
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

    def provider_state_file(self, name: str) -> Path:
        conf = self.providers[name]
        if getattr(conf, "state_file", None):
            return self.resolve(conf.state_file)
        db = self.sqlite_file
        return (db.parent if db is not None else self.base_dir) / f"sim-{name}.db"


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
    loc = [str(part) for part in first["loc"]]
    # drop the discriminator tag pydantic inserts into the location
    if len(loc) >= 3 and loc[0] == "providers" and loc[2] in {"simulated", "mistral", "openai"}:
        loc.pop(2)
    key = ".".join(loc)
    kind = first["type"]
    msg = first["msg"]
    if kind == "extra_forbidden":
        return f"{path}: {key}: unknown key"
    if kind == "missing":
        return f"{path}: {key}: required key is missing"
    if kind == "union_tag_invalid":
        tag = first.get("input", {}).get("kind") if isinstance(first.get("input"), dict) else None
        return f"{path}: {key}.kind: unknown provider kind {tag!r} (known: {', '.join(PROVIDER_KINDS)})"
    if kind == "union_tag_not_found":
        return f"{path}: {key}.kind: required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if not key or msg.startswith((f"{key}.", f"{key}:")):  # the message names its key already
            return f"{path}: {msg}"
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
        return Config.model_validate({**data, "base_dir": base_dir, "path": path})
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
    return parse_config(text, path)
