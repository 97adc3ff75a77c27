"""An agent's providers in order (`provider = ["openai", "gpu"]`) at submit:
each checked and priced as the first is, the closed ones skipped, and the
job refused in one line when none is open (`--force` stores it anyway)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ftctl.controller.agents import root_model, unfollowed
from ftctl.controller.ledger import closing


def route_plans(config: Any, plan: Any, check: Callable[[Any], Any], *, force: bool = False,
                adhoc: bool = False) -> Any:
    """The plan on the first open provider of its agent's list, checked by
    `check` (the submit's preflight), carrying the later ones checked and
    priced the same way, what ends soon, and why a provider was skipped."""
    from ftctl.controller.preflight.submit import SubmitError

    on = closing.today()
    conf = None if adhoc else config.agents.get(plan.agent)
    steps = [plan]
    if conf is not None:
        steps += [replace(plan, provider=s.provider, model=s.model, hyperparameters=dict(s.hyperparameters))
                  for s in conf.fallbacks]
    where = "--provider" if conf is None else f"agents.{plan.agent}"
    open_steps, skipped = [], []
    for step in steps:
        model = root_model(config, plan.agent, step.provider) if conf is not None else step.model
        ended = closing.closed_for(config, step.provider, model, on)
        if ended is None:
            open_steps.append(step)
        else:
            skipped.append(ended)
    if not open_steps:
        if not force:
            raise SubmitError(f"{where}: {skipped[0].line(on)}; nothing was stored (--force submits it anyway)")
        open_steps = steps
    notes = [f"{where}: skipped, closed: {e.line(on)}" for e in skipped if open_steps is not steps]
    if conf is not None:
        gone = {(e.provider, e.model) for e in skipped}
        notes += [e.line(on) for e in closing.soon(config, on, [plan.agent]) if (e.provider, e.model) not in gone]
        notes += unfollowed(config, plan.agent)
    checked = [check(s) for s in open_steps]
    fallbacks = tuple({"provider": c.provider, "model": c.model, "hyperparameters": dict(c.hyperparameters),
                       "estimated_cost": c.estimated_cost, "data_tokens": c.data_tokens,
                       "storage_per_month": c.storage_per_month} for c in checked[1:])
    return replace(checked[0], fallbacks=fallbacks, fallback_after=conf.fallback_after if conf else None,
                   warnings=tuple(dict.fromkeys(notes)))
