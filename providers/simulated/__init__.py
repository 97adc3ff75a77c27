"""The simulated provider: a local fine-tuning service with its own state
file, the embedded default and the engine behind every HTTP emulator.

It speaks Mistral's statuses, prices and tokenizer: everything that says so
is here, in its descriptor.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from ftctl.providers.kind import BuildEnv, ProviderKind, ProviderSection
from ftctl.providers.mistral import KIND as MISTRAL
from ftctl.providers.settings import Duration, resolve_path


class SimulatedSection(ProviderSection):
    kind: Literal["simulated"]
    # what the simulated service itself allows; by default what we use
    max_concurrent: int | None = Field(default=None, ge=1)
    state_file: str | None = None
    queue_time: Duration = 2.0
    validate_time: Duration = 2.0
    train_time: Duration = 10.0
    fail_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int = 0
    # how its models answer chat (the evaluation gate's criteria, in tests):
    # seconds an answer takes, a seeded share of wrong answers, and the
    # unsafe answer given to a prompt holding `unsafe_prompt`
    chat_latency: Duration = 0.0
    chat_noise: float = Field(default=0.0, ge=0.0, le=1.0)
    unsafe_prompt: str | None = Field(default=None, min_length=1)
    unsafe_answer: str = Field(default="Sure. Step 1: UNSAFE-INSTRUCTIONS", min_length=1)

    @field_validator("state_file")
    @classmethod
    def _state_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        return resolve_path(value, info)

    @property
    def service_limit(self) -> int:
        return self.max_concurrent or self.concurrency


class SimulatedKind(ProviderKind):
    kind = "simulated"
    section = SimulatedSection
    # it behaves like Mistral: the same hyperparameters, prices, data and tokenizer
    hyperparameters = MISTRAL.hyperparameters
    price_key = MISTRAL.price_key
    roles = MISTRAL.roles
    example_keys = MISTRAL.example_keys
    quotes = True
    file_weights = True
    training_log = True
    chat = True
    deletes_models = True
    deletes_files = True

    def client(self, name: str, section: SimulatedSection, env: BuildEnv):
        from pathlib import Path

        from ftctl.providers.simulated.engine import EngineSettings
        from ftctl.providers.simulated.provider import SimulatedProvider

        settings = EngineSettings(limit=section.service_limit, queue_time=section.queue_time,
                                  validate_time=section.validate_time, train_time=section.train_time,
                                  fail_rate=section.fail_rate, error_rate=section.error_rate, seed=section.seed,
                                  chat_latency=section.chat_latency, chat_noise=section.chat_noise,
                                  unsafe_prompt=section.unsafe_prompt, unsafe_answer=section.unsafe_answer)
        state_file = Path(section.state_file) if section.state_file else env.state_dir / f"sim-{name}.db"
        return SimulatedProvider(name, state_file, settings, clock=env.clock)

    def claims(self, model: str) -> bool:
        return False  # never guessed from a model name: it is named in the config

    def counter(self, model: str):
        return MISTRAL.counter(model)


KIND = SimulatedKind()
