"""The shell's part of a move to the next provider (engine.fallback decides
it): the job takes the settings, estimate and cost it was checked and priced
with at submit for that provider, drops everything it held at the old one,
and goes back to `prepared`: one transaction, with its history row saying
why. Nothing is called at either provider here: the next tick admits it at
the new provider (and its budget check counts the new estimate).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ftctl.controller.engine import decide as rc


def pause_clock(state: Any, now: datetime) -> None:
    """A provider's pause starts its clock (`paused_since`) when none runs:
    a pause that clears and comes back (a quota pause's hold ends, the next
    create is refused again) is one pause until a create gets through."""
    if state.paused_why and state.paused_why != "closed" and state.paused_since is None:
        state.paused_since = now


class Moves:
    """Mixed into the Ticker."""

    def _move(self, d: rc.Move, now: datetime) -> Any:
        row = self.store.get_job(d.job_id)
        entries = list(row.fallbacks or []) if row is not None else []
        at = next((i for i, e in enumerate(entries) if e["provider"] == d.to), None)
        if row is None or row.state != d.expect or at is None:
            return None  # it changed meanwhile: the next tick decides afresh
        # the next in order; a pipeline stage that follows its upstream may skip ahead to it
        nxt, rest = entries[at], entries[at + 1:]
        if nxt["provider"] not in self.config.providers:
            # taken out of the config since submit: the job stays where it is, and says why
            self.log.error("fallback provider not configured", job_id=row.id, agent=row.agent, provider=nxt["provider"])
            return None
        updates = {"provider": nxt["provider"], "model": nxt["model"],
                   "hyperparameters": dict(nxt.get("hyperparameters") or {}),
                   "estimated_cost": nxt.get("estimated_cost"), "data_tokens": nxt.get("data_tokens"),
                   "storage_per_month": nxt.get("storage_per_month") or None, "fallbacks": rest or None,
                   "attempt": 0, "client_token": None, "intent_at": None, "provider_job_id": None,
                   "provider_file_id": None, "provider_status": None, "not_before": None, "last_error": None,
                   "base_model": None, "model_job_id": nxt.get("model_job_id")}
        job = self._transition(rc.Transition(row.id, d.expect, "move", d.reason, updates,
                                             attempt_outcome=("moved", False)), now)
        if job is not None:
            self.log.info("moved to the next provider", job_id=job.id, agent=job.agent, from_provider=row.provider,
                          provider=job.provider, model=job.model, estimated_cost=job.estimated_cost,
                          reason=d.reason.text())
        return job

    def _created_at(self, name: str) -> None:
        """A create got through at `name`: whatever paused it is over."""
        state = self.store.provider_states().get(name)
        if state is not None and state.paused_since is not None:
            state.paused_since = None
            self.store.save_provider_state(state)
