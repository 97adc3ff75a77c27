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
                  api_key: str | None = None) -> "Emulator":
    from ftctl.providers.simulated.engine import EngineSettings, SimEngine

    cls = emulator_class(kind)
    return cls(SimEngine(state_file, settings or EngineSettings()), api_key=api_key)


def __getattr__(name: str):
    if name in ("Emulator", "RunningServer"):
        from ftctl.providers.emulator import server

        return getattr(server, name)
    raise AttributeError(name)


__all__ = ["EMULATORS", "Emulator", "RunningServer", "emulator_class", "make_emulator"]
