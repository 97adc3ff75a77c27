"""The decision step's rules for a provider that closes, and for a job that
moves to the next provider in its agent's list (`provider = ["openai", "gpu"]`).

Pure, like the rest of the decision step. A job moves only while it holds
nothing at its provider: waiting in `prepared`, or an intent whose create
was refused, or one proven absent by the listing rules (`decide._not_listed`:
a listing read after the first call could still land shows no job with its
token). A job the provider knows (queued, running) stays where it is: never
two live provider jobs for one ftctl job.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ftctl.controller.engine.policy import Policy
from ftctl.controller.engine.rules import note_if_changed
from ftctl.controller.engine.step_types import Decision, JobView, Move, ProviderUpdate, ProviderView, Transition
from ftctl.controller.ledger.reasons import Reason
from ftctl.providers.base import ModelClosed, ProviderClosed, ProviderError
from ftctl.providers.settings import duration_text

# the pauses a job with a fallback waits out for its fallback_after, then moves on
LONG_PAUSES = ("auth", "quota", "unavailable")
# the provider-wide mark left by a create refused as closed (ProviderState.paused_why)
CLOSED = "closed"


def closed_now(pv: ProviderView, now: datetime) -> str | None:
    """Why `pv` takes no new jobs now (its date passed, or it refused a create
    as closed to the account, until that mark's hold ends), or None."""
    if pv.paused_why == CLOSED and (pv.paused_until is None or now < pv.paused_until):
        return pv.paused_message or "fine-tuning is not available"
    return pv.closed


def move_reason(job: JobView, pv: ProviderView, now: datetime) -> Reason | None:
    """Why a job that holds nothing at its provider moves on now, or None."""
    if not job.fallbacks:
        return None
    closed = closed_now(pv, now)
    why = None
    if closed:
        why = f"{pv.name} is closed to new jobs: {closed}"
    elif (pv.paused_why in LONG_PAUSES and job.fallback_after and pv.paused_since is not None
          and (now - pv.paused_since).total_seconds() >= job.fallback_after):
        why = (f"{pv.name} paused ({pv.paused_why}) since {pv.paused_since:%Y-%m-%d %H:%M} UTC, longer than "
               f"fallback_after {duration_text(job.fallback_after)}: {pv.paused_message or pv.paused_why}")
    if why is None:
        return None
    return Reason("moved", {"from": job.provider, "to": job.fallbacks[0], "why": why})


def waiting(job: JobView, pv: ProviderView, now: datetime) -> tuple[bool, Decision | None]:
    """A job waiting in `prepared` on `pv`: (handled, decision). Handled: it
    moves on, or it waits because its provider refused creates as closed
    (not a retry: the mark's hold is over first). Not handled: admission
    as usual (a date that passed does not stop a job without a fallback: the
    submit was forced, and the provider has the last word)."""
    reason = move_reason(job, pv, now)
    if reason is not None:
        return True, Move(job.id, job.state, job.fallbacks[0], reason)
    if pv.paused_why == CLOSED and (pv.paused_until is None or now < pv.paused_until):
        return True, note_if_changed(job, Reason("provider_closed", {"provider": pv.name,
                                                                     "message": closed_now(pv, now)}))
    return False, None


def settled(job: JobView, pv: ProviderView, now: datetime) -> Move | None:
    """An intent proven absent at its provider (the point where it would be
    created again): a Move instead, where the job moves on now."""
    reason = move_reason(job, pv, now)
    return Move(job.id, job.state, job.fallbacks[0], reason) if reason is not None else None


def after_refused(job: JobView, err: ProviderError, arrived_at: datetime, policy: Policy,
                  uncounted: dict[str, Any]) -> list[Decision] | None:
    """A create the provider refused as closed to the account (`provider
    closed`: never a retry, never counted; the provider is marked closed for
    a while, so no other job knocks) or as a model it no longer fine-tunes:
    the job moves on where it has a fallback (the refusal is an answer:
    nothing was created), else waits (closed) or fails (the model). None:
    another kind of error."""
    moved = None
    if isinstance(err, ProviderClosed):
        why = f"{job.provider} refused the create as closed: {err.message}"
    elif isinstance(err, ModelClosed):
        why = f"{job.provider} no longer fine-tunes the model: {err.message}"
    else:
        return None
    if job.fallbacks:
        moved = Move(job.id, job.state, job.fallbacks[0], Reason("moved", {"from": job.provider,
                                                                          "to": job.fallbacks[0], "why": why}))
    if isinstance(err, ModelClosed):
        return [moved] if moved is not None else None  # no fallback: a permanent refusal, as any other
    mark = ProviderUpdate(job.provider, paused_why=CLOSED, paused_message=err.message,
                          paused_until=arrived_at + timedelta(seconds=policy.backoff_max))
    if moved is not None:
        return [moved, mark]
    reason = Reason("provider_closed", {"provider": job.provider, "message": err.message})
    return [Transition(job.id, job.state, "requeue", reason, uncounted, attempt_outcome=("closed", False)), mark]


def follow(job: JobView) -> tuple[bool, Decision | None]:
    """A pipeline stage trained on its upstream's model (`"@upstream"`),
    whose upstream succeeded: it trains where that model is, the provider the
    upstream ran on (a fine-tuned model stays with the provider that made it).
    On another provider it moves there if its list has it, else fails in one
    line, sending nothing. (held, decision), as `decide._upstream`."""
    base = next((u for u in job.upstream if u.job_id == job.model_job_id), None)
    if base is None or base.provider is None or base.provider == job.provider:
        return False, None
    if base.provider in job.fallbacks:
        why = f"follows its upstream {base.agent} (job {base.job_id}), whose model is on {base.provider}"
        return True, Move(job.id, job.state, base.provider, Reason("moved", {"from": job.provider,
                                                                            "to": base.provider, "why": why}))
    reason = Reason("upstream_elsewhere", {"agent": base.agent, "job": base.job_id, "provider": base.provider,
                                           "here": job.provider})
    return True, Transition(job.id, job.state, "fail", reason, {"last_error": reason.text()})
