"""HTTP emulators of the providers' fine-tuning APIs, over the simulated engine.

`ftctl emulator --kind mistral|openai --port N` runs one; tests start them in
process. One job engine (providers.simulated.engine), thin wire facades.
"""

from __future__ import annotations

from pathlib import Path

from ftctl.providers.emulator.server import Emulator, RunningServer
from ftctl.providers.simulated.engine import EngineSettings, SimEngine


def make_emulator(kind: str, state_file: Path | str, settings: EngineSettings | None = None,
                  api_key: str | None = None) -> Emulator:
    engine = SimEngine(state_file, settings or EngineSettings())
    if kind == "mistral":
        from ftctl.providers.emulator.mistral_api import MistralEmulator

        return MistralEmulator(engine, api_key=api_key)
    if kind == "openai":
        from ftctl.providers.emulator.openai_api import OpenAIEmulator

        return OpenAIEmulator(engine, api_key=api_key)
    raise ValueError(f"unknown emulator kind {kind!r} (mistral or openai)")


__all__ = ["Emulator", "RunningServer", "make_emulator"]
