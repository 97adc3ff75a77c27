"""HTTP emulators of the providers' fine-tuning APIs, over the simulated engine.

`ftctl emulator --kind KIND --port N` runs one; tests start them in process.
One job engine (providers.simulated.engine), thin wire facades, listed in
EMULATORS: the CLI's `--kind` choices come from there.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ftctl.providers.emulator.server import Emulator, RunningServer
    from ftctl.providers.simulated.engine import EngineSettings

# kind -> (module, class): importing this package stays cheap (the CLI reads the kinds)
EMULATORS: dict[str, tuple[str, str]] = {
    "mistral": ("ftctl.providers.emulator.mistral_api", "MistralEmulator"),
    "openai": ("ftctl.providers.emulator.openai_api", "OpenAIEmulator"),
    "together": ("ftctl.providers.emulator.together_api", "TogetherEmulator"),
}


def emulator_class(kind: str) -> "type[Emulator]":
    if kind not in EMULATORS:
        raise ValueError(f"unknown emulator kind {kind!r} (known: {', '.join(EMULATORS)})")
    module, name = EMULATORS[kind]
    return getattr(importlib.import_module(module), name)


def make_emulator(kind: str, state_file: Path | str, settings: "EngineSettings | None" = None,
                  api_key: str | None = None, webhook_url: str | None = None,
                  webhook_secret: str | None = None) -> "Emulator":
    """An emulator; with `webhook_url` (and its secret) it also delivers
    signed webhooks when jobs finish (ValueError for a kind that sends none)."""
    from ftctl.providers.simulated.engine import EngineSettings, SimEngine

    cls = emulator_class(kind)
    emulator = cls(SimEngine(state_file, settings or EngineSettings()), api_key=api_key)
    if webhook_url:
        if cls.webhook_kind is None:
            raise ValueError(f"the {kind} emulator sends no webhooks "
                             f"(only: {', '.join(k for k in EMULATORS if emulator_class(k).webhook_kind)})")
        if not webhook_secret:
            raise ValueError("a webhook secret is needed to sign the webhooks")
        from ftctl.providers.emulator.webhooks import WebhookSender

        emulator.webhooks = WebhookSender(emulator.engine, webhook_url, webhook_secret).start()
    return emulator


def __getattr__(name: str):
    if name in ("Emulator", "RunningServer"):
        from ftctl.providers.emulator import server

        return getattr(server, name)
    raise AttributeError(name)


__all__ = ["EMULATORS", "Emulator", "RunningServer", "emulator_class", "make_emulator"]
