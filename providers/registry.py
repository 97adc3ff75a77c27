"""Every provider kind ftctl knows: one line each."""

from __future__ import annotations

from ftctl.providers.kind import ProviderKind
from ftctl.providers.mistral import KIND as MISTRAL
from ftctl.providers.openai import KIND as OPENAI
from ftctl.providers.ray import KIND as RAY
from ftctl.providers.simulated import KIND as SIMULATED
from ftctl.providers.together import KIND as TOGETHER

KINDS: dict[str, ProviderKind] = {k.kind: k for k in (
    SIMULATED,
    MISTRAL,
    OPENAI,
    TOGETHER,
    RAY,
)}


class UnknownKind(ValueError):
    pass


def kind(name: str) -> ProviderKind:
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"unknown provider kind {name!r} (known: {', '.join(KINDS)})") from None


def guess(model: str) -> ProviderKind:
    """The kind a bare model name belongs to, for offline checks without a
    configured provider (Mistral when nothing claims it)."""
    return next((k for k in KINDS.values() if k.claims(model)), MISTRAL)
