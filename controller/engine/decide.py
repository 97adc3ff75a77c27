"""The decision step: (stored jobs, provider observations, now) -> decisions.

No I/O happens here. The shell (`engine.tick`) loads the jobs, observes the
providers and applies what comes back; the outcome of every provider call it
makes goes through `engine.outcomes`. That keeps every rule on a virtual
clock and cheap to benchmark; the shell decides nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from ftctl.controller.engine import fallback
from ftctl.controller.engine.gate import decide_promotions
from ftctl.controller.engine.outcomes import after_create, after_upload_error, begin_submit, file_problem
from ftctl.controller.engine.policy import Budget, Policy, backoff_seconds
from ftctl.controller.engine.rules import (capacity_requeue, effective_limit, error_reason, note_if_changed,
                                           pause_for, retry_or_fail)
from ftctl.controller.engine.step_types import (UNCHANGED, CancelAtProvider, CancelQuote, Decision, Evaluate,
                                                ForgetUpload, GateView, JobView, Line, Move, Note, Promote,
                                                ProviderUpdate, ProviderView, QuoteSettled, Slots, Submit, Transition,
                                                UpstreamView)
from ftctl.controller.ledger.reasons import Reason
from ftctl.controller.ledger.states import (CANCELLED, EVALUATING, FAILED, IN_FLIGHT, PREPARED, RUNNING,
                                            SUCCEEDED, JobState)
from ftctl.providers.base import FAIL_CAPACITY, FAIL_DATA, P_CANCELLED, P_FAILED, P_QUEUED, P_RUNNING, P_SUCCEEDED


def decide(jobs: Iterable[JobView], providers: dict[str, ProviderView], now: datetime,
           policy: Policy, rng: random.Random, budget: Budget | None = None,
           gates: dict[int, GateView] | None = None, gated: frozenset[str] = frozenset()) -> list[Decision]:
    """`gates`: what the shell found of each succeeded job's evaluation gate;
    `gated`: the agents that have one (a job of another agent is promoted
    the moment it succeeds)."""
    jobs = list(jobs)
    gates = gates or {}
    budget = budget or Budget()
    money = _Money(budget, money_left(jobs, budget, gates))
    out: list[Decision | None] = []
    grouped: dict[str, list[JobView]] = {}
    for job in jobs:
        if job.state == SUCCEEDED:
            continue  # its model's promotion: below
        if job.state == PREPARED and job.upstream:
            held, decision = _upstream(job)
            out.append(decision)
            if held:
                continue
        grouped.setdefault(job.provider, []).append(job)
    for name, group in grouped.items():
        group.sort(key=lambda j: j.id)
        pv = providers.get(name)
        if pv is None:
            reason = Reason("unknown_provider", {"provider": name})
            out.extend(note_if_changed(j, reason) for j in group if j.state != CANCELLED)
            continue
        out.extend(_ProviderStep(group, pv, now, policy, rng, money, gated).run())
    for name, pv in providers.items():
        if name not in grouped:  # none of its jobs read: its line (if any) still gets its reason
            out.extend(_ProviderStep((), pv, now, policy, rng, money, gated).run())
    out.extend(decide_promotions([j for j in jobs if j.state == SUCCEEDED], gates, now, money))
    return [d for d in out if d is not None]


def money_left(jobs: Sequence[JobView], budget: Budget | None,
               gates: dict[int, GateView] | None = None) -> float | None:
    """What is left to commit before this tick admits anything (None: no
    total cap): what queued and running jobs and evaluations under way hold
    counts as spent. The shell reads a line only within
    `budget.ceiling(money_left(...))`: a job above it is refused anyway."""
    budget, gates = budget or Budget(), gates or {}
    if budget.total is None:
        return None
    committed = sum(j.estimated_cost or 0.0 for j in jobs if j.state in IN_FLIGHT)
    committed += sum(gates[j.id].estimate for j in jobs if j.promotion == EVALUATING and j.id in gates)
    return budget.left(committed)


def _upstream(job: JobView) -> tuple[bool, Decision | None]:
    """A downstream job waits in `prepared` until every upstream job
    succeeded, and fails, sending nothing, when one ended otherwise.
    (held, decision): held jobs are not admitted this tick."""
    for up in job.upstream:
        if up.state in (FAILED, CANCELLED, "gone") or (up.state == SUCCEEDED and up.job_id == job.model_job_id
                                                        and not up.fine_tuned_model):
            reason = Reason("upstream_failed", {"agent": up.agent, "job": up.job_id, "state": up.state})
            return True, Transition(job.id, PREPARED, "fail", reason, {"last_error": reason.text()})
    for up in job.upstream:
        if up.state != SUCCEEDED:
            return True, note_if_changed(job, Reason("upstream", {"agent": up.agent, "job": up.job_id,
                                                                  "state": up.state}))
    return fallback.follow(job)  # its upstream's model is where the upstream ran


def _submit(job: JobView, token: str | None = None) -> Submit:
    """A Submit that names the upstream job's model for a job trained on it."""
    base: UpstreamView | None = next((u for u in job.upstream if u.job_id == job.model_job_id), None)
    if base is None:
        return Submit(job.id, token)
    return Submit(job.id, token, base_model=base.fine_tuned_model, upstream_ref=base.provider_job_id)


class _Money:
    """What is left to commit during one tick, across all providers (jobs,
    then evaluations)."""

    def __init__(self, budget: Budget, left: float | None):
        self.budget, self.left = budget, left

    def refuse(self, cost: float | None) -> Reason | None:
        if not self.budget.active:
            return None
        return self.budget.refuse(cost, self.left)

    def commit(self, cost: float | None) -> None:
        if self.left is not None:
            self.left -= cost or 0.0


def _quotes(pv: ProviderView) -> list[Decision]:
    by_id = {pj.id: pj for pj in pv.jobs or ()}
    out: list[Decision] = []
    for quote_id in pv.pending_quotes:
        pj = by_id.get(quote_id)
        if pj is not None and pj.active:
            out.append(CancelQuote(pv.name, quote_id))
        elif quote_id in by_id or quote_id in pv.missing:
            out.append(QuoteSettled(pv.name, quote_id))
    return out


class _ProviderStep:
    def __init__(self, jobs: Sequence[JobView], pv: ProviderView, now: datetime, policy: Policy,
                 rng: random.Random, money: _Money, gated: frozenset[str] = frozenset()):
        self.jobs, self.pv, self.now, self.policy, self.rng = jobs, pv, now, policy, rng
        self.money, self.gated = money, gated
        self.out: list[Decision | None] = []
        # (provider job id, client token) of each of our jobs still holding a slot
        self.inflight: list[tuple[str | None, str | None]] = []
        self.capacity_hit = False

    def run(self) -> list[Decision | None]:
        pv = self.pv
        if pv.jobs is None:
            return self._unobserved()
        paused = False
        if pv.paused_why:
            if pv.paused_until is not None and self.now < pv.paused_until:
                paused = True
            else:
                self.out.append(ProviderUpdate(pv.name, paused_why=None, paused_message=None, paused_until=None))
        by_id = {pj.id: pj for pj in pv.jobs}
        by_token = {pj.client_token: pj for pj in pv.jobs if pj.client_token}
        for job in self.jobs:
            if job.state == CANCELLED:
                self._cancelled(job, by_id, by_token)
            elif job.state in IN_FLIGHT:
                self._in_flight(job, by_id, by_token)

        waiting = any(j.state == PREPARED for j in self.jobs)
        limit, _probe = effective_limit(pv, self.now, self.policy, waiting=waiting)
        if self.capacity_hit:
            still_active = len(pv.active() - pv.quote_ids)
            learned = max(1, min(pv.configured_limit, still_active))
            hold = pv.probe_hold or self.policy.capacity_hold
            # a rejection while a limit was known already is a probe that found no room
            self.out.append(ProviderUpdate(pv.name, learned_limit=learned, learned_at=self.now,
                                           probe_hold=hold * 2 if pv.learned_limit else None))
            limit = learned
        elif pv.learned_limit:
            running = sum(1 for pj in pv.jobs if pj.status == P_RUNNING and pj.id not in pv.quote_ids)
            if running > pv.learned_limit:  # evidence of more room: the provider runs more than we thought
                more = None if running >= pv.configured_limit else running
                self.out.append(ProviderUpdate(pv.name, learned_limit=more, learned_at=self.now, probe_hold=None))
                limit = max(limit, min(running, pv.configured_limit))
        self._admit(limit, paused)
        self.out.extend(_quotes(pv))
        return self.out

    # -- when the provider could not be listed -----------------------------------

    def _unobserved(self) -> list[Decision | None]:
        err = self.pv.error
        if err is not None:
            self.out.append(pause_for(err, self.pv.name, self.now, self.policy))
        reason = error_reason(err)
        self.out.append(Line(self.pv.name, reason))
        for job in self.jobs:
            handled, moved = fallback.waiting(job, self.pv, self.now) if job.state == PREPARED else (False, None)
            if not handled and job.state == PREPARED and job.not_before and self.now < job.not_before:
                continue  # its reason says until when it backs off
            if job.state != CANCELLED:
                self.out.append(moved if handled else note_if_changed(job, reason))
        return self.out

    # -- jobs that hold a slot --------------------------------------------------

    def _cancelled(self, job: JobView, by_id: dict, by_token: dict) -> None:
        pj = by_id.get(job.provider_job_id) if job.provider_job_id else by_token.get(job.client_token)
        if pj is not None and pj.active:
            self.out.append(CancelAtProvider(job.id, pj.id))
        elif pj is not None or not job.provider_job_id or job.provider_job_id in self.pv.missing:
            # finished at the provider already, or never created there
            updates: dict[str, Any] = {"cancel_pending": False}
            if pj is not None:
                updates["provider_job_id"] = pj.id
                updates["provider_status"] = pj.raw_status
            self.out.append(Note(job.id, job.state, updates))

    def _in_flight(self, job: JobView, by_id: dict, by_token: dict) -> None:
        if job.provider_job_id:
            pj = by_id.get(job.provider_job_id)
        else:
            pj = by_token.get(job.client_token) if job.client_token else None
        if pj is None:
            self._not_listed(job)
            return
        bound = {} if job.provider_job_id == pj.id else {"provider_job_id": pj.id}
        if pj.status == P_QUEUED or (pj.status == P_RUNNING and job.state == RUNNING):
            self.inflight.append((pj.id, job.client_token))
            code, raw = "queued_at" if pj.status == P_QUEUED else "training", pj.raw_status
            args = {"status": raw, "why": pj.message} if pj.status == P_QUEUED and pj.message else {"status": raw}
            # the common case at scale, a job still where it was: nothing to build
            if bound or job.provider_status != raw or job.reason_code != code or job.reason_args != args:
                self.out.append(note_if_changed(job, Reason(code, args), provider_status=raw, **bound))
        elif pj.status == P_RUNNING:
            self.inflight.append((pj.id, job.client_token))
            self.out.append(Transition(job.id, job.state, "start", Reason("training", {"status": pj.raw_status}),
                                       bound, provider_status=pj.raw_status))
        elif pj.status == P_SUCCEEDED:
            updates = {**bound, "fine_tuned_model": pj.fine_tuned_model, "actual_cost": self._cost(job, pj),
                       "trained_tokens": pj.trained_tokens, "not_before": None, "last_error": None}
            self.out.append(Transition(job.id, job.state, "succeed", None, updates,
                                       provider_status=pj.raw_status, attempt_outcome=("succeeded", True),
                                       promotion=None if job.agent in self.gated else "skip"))
        elif pj.status == P_CANCELLED:
            self.out.append(Transition(job.id, job.state, "cancel", Reason("cancelled_provider"), bound,
                                       provider_status=pj.raw_status, attempt_outcome=("cancelled", True)))
        elif pj.status == P_FAILED and not pj.detailed:
            # why it failed is not known yet (its details could not be read): next tick
            self.inflight.append((pj.id, job.client_token))
        elif pj.status == P_FAILED:
            message = pj.message or pj.raw_status
            if pj.failure == FAIL_CAPACITY:
                self.capacity_hit = True
                self.out.append(capacity_requeue(job, message, pj.raw_status))
            elif pj.failure == FAIL_DATA:
                self.out.append(Transition(job.id, job.state, "fail", Reason("rejected_data", {"message": message}),
                                           {**bound, "last_error": message}, provider_status=pj.raw_status,
                                           attempt_outcome=("rejected", True)))
            else:
                self._retry_or_fail(job, f"training failed: {message}", outcome="failed",
                                    provider_status=pj.raw_status)

    def _cost(self, job: JobView, pj: Any) -> float | None:
        """What a succeeded job cost: the provider's figure, else its trained
        tokens at the price the shell gave for the job's model (OpenAI reports
        no cost), else unknown."""
        if pj.cost is not None or not pj.trained_tokens:
            return pj.cost
        price = (self.pv.prices or {}).get(job.model) if job.model else None
        return round(price.training_cost(pj.trained_tokens), 2) if price is not None else None

    def _not_listed(self, job: JobView) -> None:
        pv = self.pv
        if job.provider_job_id:
            if job.provider_job_id in pv.missing:
                self._retry_or_fail(job, f"the provider no longer knows job {job.provider_job_id}", outcome="lost")
                return
            self.inflight.append((job.provider_job_id, job.client_token))
            self.out.append(note_if_changed(job, Reason("not_listed")))
            return
        # an intent without a provider id, and no job with its token listed
        self.inflight.append((None, job.client_token))
        if job.intent_at is not None:
            settled = job.intent_at + timedelta(seconds=pv.settle)
            if pv.listed_at is None or pv.listed_at < settled:
                # the first call may still land: never create again before a
                # listing read after that moment shows nothing
                message = job.last_error or "no answer to the create call"
                self.out.append(note_if_changed(job, Reason("create_unknown", {"message": message,
                                                                     "until": settled.isoformat()})))
                return
        if job.not_before and self.now < job.not_before:
            return
        # proven absent: a job that moves on goes now, else it is created again
        self.out.append(fallback.settled(job, pv, self.now) or _submit(job, job.client_token))

    def _retry_or_fail(self, job: JobView, why: str, *, outcome: str, provider_status: str | None = None) -> None:
        self.out.append(retry_or_fail(job, why, self.now, self.policy, self.rng, outcome=outcome,
                                      provider_status=provider_status))

    # -- admission ----------------------------------------------------------------

    def _admit(self, limit: int, paused: bool) -> None:
        pv = self.pv
        ids = {i for i, _ in self.inflight if i}
        tokens = {t for _, t in self.inflight if t}
        others = pv.active() - ids - pv.quote_ids  # set arithmetic: the few not ours are looked at
        if others and tokens:
            by_id = {pj.id: pj for pj in pv.jobs if pj.id in others}
            others = {i for i in others if by_id[i].client_token not in tokens or not by_id[i].client_token}
        foreign = len(others)
        used = len(self.inflight) + foreign
        waiting = [j for j in self.jobs if j.state == PREPARED]
        waiting.sort(key=lambda j: (j.created_at or self.now, j.id))
        told_to_wait = 0
        slot = Reason("slot", {"provider": pv.name})
        room = pv.room
        if pv.room_short:
            slot = Reason("resources_short", {"provider": pv.name, "message": pv.room_short})
            room = 0
        resources = Reason("resources", {"provider": pv.name, "need": pv.room_need or "resources"})
        paused_why = Reason("paused", {"why": pv.paused_why, "message": pv.paused_message})
        end = pv.line_end
        for job in waiting:
            if job.attempt >= self.policy.max_attempts:
                why = job.last_error or "no attempts left"
                self.out.append(Transition(job.id, job.state, "fail",
                                           Reason("attempts_exhausted", {"attempts": job.attempt, "why": why}), {}))
                continue
            handled, decision = fallback.waiting(job, pv, self.now)  # closed, or paused too long: moves on
            if handled:
                self.out.append(decision)
                continue
            if job.not_before and self.now < job.not_before:
                continue  # its reason says until when it backs off
            if paused:
                self.out.append(note_if_changed(job, paused_why))
                continue
            over = self.money.refuse(job.estimated_cost)
            # a job behind the part of the line read (a retried one, read on
            # its own) waits for those ahead of it, whatever is free
            behind = end is not None and (job.created_at or self.now, job.id) > end
            if over:
                self.out.append(note_if_changed(job, over))
            elif used < limit and (room is None or room > 0) and not behind:
                used += 1
                room = None if room is None else room - 1
                self.money.commit(job.estimated_cost)
                self.out.append(_submit(job))
            else:
                told_to_wait += 1
                why = slot if used >= limit or pv.room_short or behind else resources
                self.out.append(note_if_changed(job, why))
        # what a job in line that was not read (or comes later) is shown with
        if paused:
            line = paused_why
        elif used >= limit:
            line = Reason("slot", {"provider": pv.name})
        elif pv.room_short or (room is not None and room <= 0):
            line = slot if pv.room_short else resources
        else:
            line = Reason("daemon")  # nothing stops it: the next tick takes the next job
        self.out.append(Line(pv.name, line))
        self.out.append(Slots(pv.name, used, limit, told_to_wait))


__all__ = ["UNCHANGED", "Budget", "CancelAtProvider", "CancelQuote", "Decision", "Evaluate", "ForgetUpload",
           "GateView", "JobState", "JobView", "Line", "Move", "Note", "money_left", "Policy", "Promote", "ProviderUpdate", "ProviderView",
           "QuoteSettled", "Slots", "Submit", "Transition", "UpstreamView", "after_create", "after_upload_error", "backoff_seconds", "begin_submit", "decide",
           "effective_limit", "error_reason", "file_problem", "pause_for", "retry_or_fail"]
