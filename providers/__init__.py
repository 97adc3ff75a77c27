"""Provider implementations behind one interface (providers.base).

Nothing here is imported by the read-only CLI commands: `build_provider`
imports an implementation only when the daemon or `tick` needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ftctl.providers.base import ProviderUnavailable

if TYPE_CHECKING:  # pragma: no cover
    from ftctl.controller.config import Config
    from ftctl.providers.base import Provider


def build_provider(config: "Config", name: str, clock: Callable[[], float] = time.time) -> "Provider":
    conf = config.providers[name]
    if conf.kind == "simulated":
        from ftctl.providers.simulated.engine import EngineSettings
        from ftctl.providers.simulated.provider import SimulatedProvider

        settings = EngineSettings(
            limit=conf.service_limit,
            queue_time=conf.queue_time,
            validate_time=conf.validate_time,
            train_time=conf.train_time,
            fail_rate=conf.fail_rate,
            error_rate=conf.error_rate,
            seed=conf.seed,
        )
        return SimulatedProvider(name, config.provider_state_file(name), settings, clock=clock)
    if conf.kind in ("mistral", "openai"):
        from ftctl.providers.keys import SecretError, resolve_api_key

        key_file = config.resolve(conf.api_key_file) if conf.api_key_file else None
        try:
            key = resolve_api_key(name, api_key_env=conf.key_env, api_key_file=key_file,
                                  api_key_credential=conf.api_key_credential)
        except SecretError as exc:
            raise ProviderUnavailable(str(exc)) from None
        if conf.kind == "mistral":
            from ftctl.providers.mistral import MistralProvider

            return MistralProvider(name, key, base_url=conf.base_url, timeout=conf.timeout)
        try:
            from ftctl.providers.openai import OpenAIProvider
        except ImportError:  # the optional extra
            raise ProviderUnavailable(f"providers.{name}: the openai SDK is not installed "
                                      f"(pip install 'ftctl[openai]')") from None
        return OpenAIProvider(name, key, base_url=conf.base_url, timeout=conf.timeout)
    raise ValueError(f"providers.{name}.kind: unknown provider kind {conf.kind!r}")

