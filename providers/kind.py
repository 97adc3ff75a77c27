"""A provider kind's descriptor: everything ftctl knows about one provider.

Each provider module declares one `ProviderKind` (its config section, client
factory, hyperparameters, tokenizer, price-table key, dataset format and
model-name rules), and `providers.registry` lists them. Nothing outside
`providers/` knows a provider by name: adding one is a module plus a
registry line.

A descriptor is cheap to import: SDKs and tokenizers load only when a client
or a counter is asked for.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ftctl.providers.base import ProviderUnavailable
from ftctl.providers.lifecycle import Lifecycle
from ftctl.providers.settings import Section, bounded_duration, resolve_path

if TYPE_CHECKING:  # pragma: no cover
    from ftctl.providers.base import Provider, WebhookEvent
    from ftctl.providers.formats import ExampleFormat
    from ftctl.providers.tokenizers import Counter


@dataclass(frozen=True)
class BuildEnv:
    """What a client may need beyond its own section."""

    # where a provider keeps local state (the simulated service's file)
    state_dir: Path = field(default_factory=Path.cwd)
    clock: Callable[[], float] = time.time


class ProviderSection(Section):
    kind: str
    concurrency: int = Field(default=2, ge=1)
    # the last day this provider takes new fine-tuning jobs, over the date
    # its descriptor ships (providers.lifecycle)
    accepts_jobs_until: date | None = None


class RemoteSection(ProviderSection):
    """A provider reached over HTTP with a key."""

    base_url: str | None = None
    # where the key comes from, tried in this order: a systemd credential,
    # a file only its owner can read, an environment variable
    api_key_credential: str | None = None
    api_key_file: str | None = None
    api_key_env: str | None = None
    timeout: bounded_duration(600.0) = Field(default=30.0, gt=0)  # type: ignore[valid-type]

    default_key_env: ClassVar[str] = ""

    @field_validator("api_key_file")
    @classmethod
    def _key_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return resolve_path(value, info)

    @model_validator(mode="after")
    def _base_url(self) -> "RemoteSection":
        if self.base_url is not None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: {self.base_url!r} is not an http:// or https:// URL")
        return self

    @property
    def key_env(self) -> str | None:
        if self.api_key_env:
            return self.api_key_env
        if self.api_key_file or self.api_key_credential:
            return None
        return self.default_key_env

    def key_source(self) -> str:
        """Where the key is read from, in words (never the key)."""
        if self.api_key_credential:
            return f"credential {self.api_key_credential}"
        if self.api_key_file:
            return f"file {self.api_key_file}"
        return f"${self.key_env}"

    def api_key(self, name: str) -> str:
        from ftctl.providers.keys import SecretError, resolve_api_key

        try:
            return resolve_api_key(name, api_key_env=self.key_env, api_key_file=self.api_key_file,
                                   api_key_credential=self.api_key_credential)
        except SecretError as exc:
            raise ProviderUnavailable(str(exc)) from None


# what a hyperparameter's value must be, by our name (a kind says otherwise
# in its own `value_types`): each kind of value with the words that say it
VALUE_KINDS = {
    "count": "a whole number of 1 or more",
    "positive": "a number above 0",
    "fraction": "a number from 0 to 1",
    "nonnegative": "a number of 0 or more",
    "switch": "true or false",
    "name": "a name in quotes",
}
VALUE_TYPES = {
    "training_steps": "count", "epochs": "positive", "n_epochs": "count", "batch_size": "count",
    "learning_rate": "positive", "learning_rate_multiplier": "positive", "weight_decay": "nonnegative",
    "warmup_fraction": "fraction", "warmup_ratio": "fraction", "fim_ratio": "fraction", "seq_len": "count",
    "lora": "switch", "lora_r": "count", "lora_alpha": "count", "n_checkpoints": "count", "training_method": "name",
}


def _fits(kind: str, value: Any) -> bool:
    import math

    if kind == "switch":
        return isinstance(value, bool)
    if kind == "name":
        return isinstance(value, str) and bool(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    if kind == "count":
        return float(value).is_integer() and value >= 1
    if kind == "positive":
        return value > 0
    if kind == "fraction":
        return 0 <= value <= 1
    return value >= 0


class ProviderKind:
    """One provider kind. Subclasses fill in the class attributes and `client`."""

    kind: ClassVar[str]
    section: ClassVar[type[ProviderSection]]
    # our hyperparameter names -> the provider's own
    hyperparameters: ClassVar[dict[str, str]] = {}
    # what a value must be where this kind differs from VALUE_TYPES, and the
    # words it takes instead of a number ("auto": the provider chooses)
    value_types: ClassVar[dict[str, str]] = {}
    value_words: ClassVar[frozenset[str]] = frozenset()
    # the [kind] section of the price table this kind is billed by
    price_key: ClassVar[str]
    # what a training example may hold
    roles: ClassVar[frozenset[str]] = frozenset({"system", "user", "assistant", "tool"})
    example_keys: ClassVar[frozenset[str]] = frozenset({"messages", "tools"})
    # the provider prices a job before it runs (Mistral: auto_start=False)
    quotes: ClassVar[bool] = False
    # a job takes several training files, each with its own weight
    file_weights: ClassVar[bool] = False
    # the client answers chat completions (the evaluation gate) and reports
    # a training log (events, metrics, checkpoints)
    chat: ClassVar[bool] = False
    training_log: ClassVar[bool] = False
    # the evaluation gate's answers come in batches the cluster answers (a
    # job per batch: start_answers / answer_batch) instead of chat calls
    chat_batches: ClassVar[bool] = False
    # a job's checkpoints are models its chat answers with (the client's
    # `checkpoints(job_id)`): the gate's checkpoints = "best" evaluates each
    checkpoint_models: ClassVar[bool] = False
    # admission is also bounded by the free resources the provider reports
    # (its client's `room`), and a job that cannot fit anywhere is refused at submit
    resources: ClassVar[bool] = False
    # the provider signs webhooks about its jobs (Standard Webhooks)
    webhooks: ClassVar[bool] = False
    # the webhook event types about its jobs (any other means nothing to ftctl)
    webhook_types: ClassVar[tuple[str, ...]] = ()
    # a job may continue from an upstream job's model (JobSpec.upstream_job_id)
    chaining: ClassVar[bool] = False
    # `[retention]` can delete a fine-tuned model, an uploaded file, a job's
    # checkpoints but its model (the client's delete_model, delete_file,
    # prune_checkpoints)
    deletes_models: ClassVar[bool] = False
    deletes_files: ClassVar[bool] = False
    prunes_checkpoints: ClassVar[bool] = False
    # the training methods this kind takes (the first is the default), each
    # with its data format (providers.formats), and the hyperparameter that
    # picks one
    methods: ClassVar[tuple[str, ...]] = ("sft",)
    method_key: ClassVar[str | None] = None
    # the SDK module the client needs, and how to install it from a checkout
    sdk: ClassVar[str | None] = None
    install_hint: ClassVar[str | None] = None
    # what is known about the end of its fine-tuning (dates, with sources)
    lifecycle: ClassVar[Lifecycle] = Lifecycle()

    # -- clients -------------------------------------------------------------

    def build(self, name: str, section: ProviderSection, env: BuildEnv | None = None) -> "Provider":
        """A client for provider `name`, from its own section; ProviderUnavailable
        (one line that names the fix) when it cannot be had here."""
        missing = ProviderUnavailable(f"providers.{name}: the {self.sdk} SDK is not installed"
                                      + (f" ({self.install_hint})" if self.install_hint else ""))
        if self.sdk:
            try:
                found = importlib.util.find_spec(self.sdk) is not None
            except (ImportError, ValueError):  # a broken or blocked module
                found = False
            if not found:
                raise missing
        try:
            return self.client(name, section, env or BuildEnv())
        except ImportError as exc:  # found, but it cannot be imported
            if self.sdk and (exc.name or "").split(".")[0] == self.sdk:
                raise missing from None
            raise

    def client(self, name: str, section: Any, env: BuildEnv) -> "Provider":  # pragma: no cover
        raise NotImplementedError

    def verify_webhook(self, body: bytes, headers: dict[str, str], secret: str) -> "WebhookEvent":
        """A webhook this provider signed (descriptor.webhooks), verified with
        its own SDK; WebhookRejected (with the 4xx to answer) otherwise."""
        from ftctl.providers.base import WebhookRejected

        raise WebhookRejected(f"{self.kind} sends no webhooks", status=404)

    # -- data -----------------------------------------------------------------

    def unknown_hyperparameters(self, hyperparameters: dict[str, Any]) -> list[str]:
        return sorted(set(hyperparameters) - set(self.hyperparameters))

    def bad_hyperparameter(self, hyperparameters: dict[str, Any]) -> tuple[str, str] | None:
        """(name, why) for the first known hyperparameter whose value is not of
        its kind (`training_steps = "ten"`), else None."""
        for name, value in hyperparameters.items():
            kind = self.value_types.get(name) or VALUE_TYPES.get(name)
            if name not in self.hyperparameters or kind is None or _fits(kind, value):
                continue
            if kind != "name" and isinstance(value, str) and value in self.value_words:
                continue
            words = " or ".join([VALUE_KINDS[kind], *(f'"{w}"' for w in sorted(self.value_words) if kind != "name")])
            import json

            # as TOML writes it ("ten", true), on one line
            shown = json.dumps(value[:40] + "..." if isinstance(value, str) and len(value) > 40 else value)
            return name, f"{shown} is not {words}"
        return None

    def provider_hyperparameters(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        unknown = self.unknown_hyperparameters(hyperparameters)
        if unknown:
            from ftctl.providers.base import PermanentError

            raise PermanentError(f"hyperparameters not known to {self.kind}: {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(self.hyperparameters))})")
        return {self.hyperparameters[k]: v for k, v in hyperparameters.items()}

    def training_method(self, hyperparameters: dict[str, Any] | None = None) -> str:
        """The training method a job's hyperparameters choose (ValueError, in one
        line, for one this kind does not know)."""
        value = (hyperparameters or {}).get(self.method_key) if self.method_key else None
        return self.methods[0] if value is None else self._known_method(value)

    def example_format(self, method: str | None = None) -> "ExampleFormat":
        """What one line of a training file holds for `method` (default: this kind's first)."""
        from ftctl.providers.formats import format_for

        return format_for(self._known_method(method or self.methods[0]), self.example_keys)

    def _known_method(self, method: Any) -> str:
        if method not in self.methods:
            where = f"{self.method_key} " if self.method_key else "training method "
            raise ValueError(f"{where}{method!r} is not known to {self.kind} (known: {', '.join(self.methods)})")
        return method

    # -- models ---------------------------------------------------------------

    def base_model(self, model: str) -> str:
        """The root model of a fine-tuned id (`ft:ROOT:...`); a base model is its own root."""
        if model.startswith("ft:"):
            parts = model.split(":")
            if len(parts) > 1 and parts[1]:
                return parts[1]
        return model

    def price_entry(self, section: Any, model: str, hyperparameters: dict[str, Any] | None) -> dict[str, Any] | None:
        """A price entry made from the provider's own section (self-hosted
        hardware has no price table), or None: the shipped table prices it."""
        return None

    def default_epochs(self, examples: int) -> tuple[float, str]:
        """The epochs the provider trains for when none are given, and why."""
        return 1.0, "epochs not given: 1 assumed"

    def claims(self, model: str) -> bool:
        """Whether a bare model name belongs to this kind (to guess a kind offline)."""
        return False

    def counter(self, model: str) -> "Counter":
        """The token counter preflight uses for `model` (its root model's tokenizer)."""
        raise NotImplementedError
