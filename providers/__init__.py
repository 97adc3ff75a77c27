"""Provider implementations behind one interface (providers.base).

Nothing here is imported by the read-only CLI commands: `build_provider`
imports an implementation only when the daemon or `tick` needs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from controller.config import Config
    from providers.base import Provider


def build_provider(config: "Config", name: str, clock: Callable[[], float] = time.time) -> "Provider":
    conf = config.providers[name]
    if conf.kind == "simulated":
        from providers.simulated.engine import EngineSettings
        from providers.simulated.provider import SimulatedProvider

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
    raise ValueError(f"providers.{name}.kind: unknown provider kind {conf.kind!r}")
