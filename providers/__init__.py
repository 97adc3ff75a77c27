"""ftctl.providers: everything ftctl knows about the providers.

`base` is the one interface every client implements and the error classes
the engine decides on; `kind` the descriptor each provider module declares;
`registry` lists them. `keys` reads API keys and keeps them out of every
text; `settings` holds what config sections share. Nothing here imports
`ftctl.controller`, and no SDK is imported until a client is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ftctl.providers.base import Provider
    from ftctl.providers.kind import BuildEnv, ProviderSection


def build_provider(name: str, section: "ProviderSection", env: "BuildEnv | None" = None) -> "Provider":
    """A client for the provider configured as `name`, from its own section."""
    from ftctl.providers.registry import kind

    return kind(section.kind).build(name, section, env)
