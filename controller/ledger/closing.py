"""When a provider, or a base model in use, ends: the dates the descriptors
ship (providers.lifecycle) and the config's overrides, turned into the lines
`doctor`, the head of `status` and `submit` show, and the rule `submit` and
the daemon refuse a job by.

A provider's `accepts_jobs_until` is the last day it takes a job: it is
closed from the day after. A base model's shutdown date is its first day gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from ftctl.providers.lifecycle import EndFact, today

__all__ = ["WARN_DAYS", "Ending", "closed_for", "endings", "header_lines", "provider_closed", "soon", "today",
           "warnings"]

# a provider or a model that ends within this many days is warned about
WARN_DAYS = 30


@dataclass(frozen=True)
class Ending:
    provider: str
    fact: EndFact
    agents: tuple[str, ...]
    model: str | None = None  # a base model's shutdown; None: the provider's

    @property
    def closes_on(self) -> date | None:
        """The first day it is closed (None: not known)."""
        if self.fact.date is None:
            return None
        return self.fact.date if self.model else self.fact.date + timedelta(days=1)

    def closed(self, on: date) -> bool:
        return self.closes_on is not None and on >= self.closes_on

    def line(self, on: date) -> str:
        """One line: what ends, when (or that it did), its source, the agents it hits."""
        what = f"base model {self.model}" if self.model else f"provider {self.provider}"
        fact = self.fact
        if fact.date is None:
            when = f"{fact.what}, no end date given"
        elif self.model:
            days = (fact.date - on).days
            when = (f"{fact.what} on {fact.date}" if days <= 0 else f"shuts down on {fact.date} (in {days} days)")
        else:
            days = (fact.date - on).days
            when = (f"takes no new jobs since {fact.date + timedelta(days=1)} ({fact.what} after {fact.date})"
                    if days < 0 else f"takes its last new jobs on {fact.date} (in {days} day{'s' if days != 1 else ''})")
        hits = f"; agents: {', '.join(self.agents)}" if self.agents else ""
        checked = f", checked {fact.checked}" if fact.checked else ""
        return f"{what} {when} (source: {fact.source}{checked}){hits}"


def _routes(config: Any) -> dict[str, list[tuple[str, str]]]:
    """agent -> (provider, base model) of each provider it may train on."""
    from ftctl.controller.agents import route_of

    return {name: route_of(config, name) for name in config.agents}


def endings(config: Any, agents: list[str] | None = None) -> list[Ending]:
    """Every end known for the configured providers in use and their base
    models (the providers no agent uses too, when `agents` is None)."""
    from ftctl.providers.registry import kind as kind_of

    routes = _routes(config)
    names = set(routes) if agents is None else set(agents)
    out: list[Ending] = []
    for provider, section in sorted(config.providers.items()):
        lifecycle = kind_of(section.kind).lifecycle
        users = tuple(sorted(a for a in names if any(p == provider for p, _ in routes.get(a, ()))))
        if agents is not None and not users:
            continue
        for fact in (lifecycle.until(section.accepts_jobs_until), lifecycle.deprecated):
            if fact is not None:
                out.append(Ending(provider, fact, users))
        models: dict[str, list[str]] = {}
        for a in users:
            for p, model in routes[a]:
                if p == provider:
                    models.setdefault(kind_of(section.kind).base_model(model), []).append(a)
        for model, who in sorted(models.items()):
            fact = lifecycle.model_end(model)
            if fact is not None:
                out.append(Ending(provider, fact, tuple(sorted(set(who))), model=model))
    return out


def warnings(config: Any, on: date | None = None, agents: list[str] | None = None,
             within: int = WARN_DAYS) -> list[str]:
    """The lines for what ends within `within` days, or ended already."""
    on = on or today()
    return [e.line(on) for e in soon(config, on, agents, within)]


def soon(config: Any, on: date, agents: list[str] | None = None, within: int = WARN_DAYS) -> list[Ending]:
    """What ends within `within` days of `on`, or ended already, and hits an agent."""
    return [e for e in endings(config, agents)
            if e.closes_on is not None and e.closes_on <= on + timedelta(days=within) and e.agents]


def provider_closed(config: Any, provider: str, on: date | None = None) -> Ending | None:
    """The date fact that closes `provider` to new jobs on `on`, if one does."""
    from ftctl.providers.registry import kind as kind_of

    section = config.providers.get(provider)
    if section is None:
        return None
    fact = kind_of(section.kind).lifecycle.until(section.accepts_jobs_until)
    ending = Ending(provider, fact, ()) if fact is not None else None
    return ending if ending is not None and ending.closed(on or today()) else None


def closed_for(config: Any, provider: str, model: str, on: date | None = None) -> Ending | None:
    """Why a job of `model` on `provider` cannot be taken on `on`: the provider
    closed, or the base model shut down; None when it can."""
    from ftctl.providers.registry import kind as kind_of

    on = on or today()
    found = provider_closed(config, provider, on)
    if found is not None:
        return found
    descriptor = kind_of(config.providers[provider].kind)
    base = descriptor.base_model(model)
    fact = descriptor.lifecycle.model_end(base)
    ending = Ending(provider, fact, (), model=base) if fact is not None else None
    return ending if ending is not None and ending.closed(on) else None


def header_lines(config: Any, agents: list[str] | None = None) -> list[str]:
    """What the head of `status` says: what ends soon, and each pipeline
    stage that does not follow its upstream on one of its providers."""
    from ftctl.controller.agents import unfollowed

    names = [a for a in (agents or config.agents) if a in config.agents]
    return warnings(config, agents=names) + [line for a in names for line in unfollowed(config, a)]
