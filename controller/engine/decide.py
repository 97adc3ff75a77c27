"""The reconcile step: (stored jobs, provider observations, now) -> decisions.

No I/O happens here: the caller loads the jobs, observes the providers,
and applies what comes back (controller.reconciler). That keeps the policy
testable on a virtual clock and cheap to benchmark.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ftctl.controller.engine.states import CANCELLED, IN_FLIGHT, PREPARED, RUNNING
from ftctl.providers.base import (
    FAIL_CAPACITY,
    FAIL_DATA,
    P_CANCELLED,
    P_FAILED,
    P_QUEUED,
    P_RUNNING,
    P_SUCCEEDED,
    ProviderError,
    ProviderJob,
)

UNCHANGED: Any = object()


# -- inputs ----------------------------------------------------------------------


@dataclass(frozen=True)
class JobView:
    id: int
    agent: str
    provider: str
    state: str
    attempt: int = 0
    client_token: str | None = None
    provider_job_id: str | None = None
    intent_at: datetime | None = None
    not_before: datetime | None = None
    created_at: datetime | None = None
    cancel_pending: bool = False
    reason: str | None = None
    provider_status: str | None = None
    estimated_cost: float | None = None

    @classmethod
    def of(cls, row: Any) -> "JobView":
        return cls(**{f: getattr(row, f) for f in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ProviderView:
    name: str
    configured_limit: int
    jobs: tuple[ProviderJob, ...] | None  # None: the provider could not be observed
    error: ProviderError | None = None
    learned_limit: int | None = None
    learned_at: datetime | None = None
    paused_reason: str | None = None
    paused_until: datetime | None = None
    # our provider job ids that the provider says it does not know
    missing: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 5
    backoff_initial: float = 30.0
    backoff_max: float = 1800.0
    capacity_hold: float = 3600.0

    @classmethod
    def of(cls, retry: Any) -> "Policy":
        return cls(retry.max_attempts, retry.backoff_initial, retry.backoff_max, retry.capacity_hold)


@dataclass(frozen=True)
class Budget:
    """The [budget] caps and what finished jobs spent in the current period."""

    per_job: float | None = None
    total: float | None = None
    spent: float = 0.0

    @property
    def active(self) -> bool:
        return self.per_job is not None or self.total is not None


class _BudgetLeft:
    """What is left to commit during one tick, across all providers."""

    def __init__(self, budget: Budget | None, jobs: list["JobView"]):
        self.budget = budget if budget is not None and budget.active else None
        committed = sum(j.estimated_cost or 0.0 for j in jobs if j.state in IN_FLIGHT)
        self.left = None
        if self.budget is not None and self.budget.total is not None:
            self.left = self.budget.total - self.budget.spent - committed

    def refuse(self, job: "JobView") -> str | None:
        """Why `job` may not start now for money reasons, or None."""
        if self.budget is None:
            return None
        cost = job.estimated_cost
        if cost is None:
            return "over budget: the job has no cost estimate (submit it again)"
        if self.budget.per_job is not None and cost > self.budget.per_job:
            return f"over budget: estimate ${cost:.2f} > per-job cap ${self.budget.per_job:.2f}"
        if self.left is not None and cost > self.left:
            return f"over budget: estimate ${cost:.2f} > ${max(self.left, 0.0):.2f} left"
        return None

    def commit(self, job: "JobView") -> None:
        if self.left is not None:
            self.left -= job.estimated_cost or 0.0


# -- decisions -------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    job_id: int
    expect: str
    trigger: str
    reason: str | None
    updates: dict[str, Any] = field(default_factory=dict)
    provider_status: str | None = None
    # how the provider attempt ended: (outcome, counted)
    attempt_outcome: tuple[str, bool] | None = None


@dataclass(frozen=True)
class Note:
    """New facts about a job that do not change its state."""

    job_id: int
    expect: str
    updates: dict[str, Any]


@dataclass(frozen=True)
class Submit:
    """Hand a job to its provider. client_token None: a new submission
    (prepared -> queued, a new token); a token: create again for an intent
    the provider never received."""

    job_id: int
    client_token: str | None = None


@dataclass(frozen=True)
class CancelAtProvider:
    job_id: int
    provider_job_id: str


@dataclass(frozen=True)
class ProviderUpdate:
    name: str
    learned_limit: Any = UNCHANGED
    learned_at: Any = UNCHANGED
    paused_reason: Any = UNCHANGED
    paused_until: Any = UNCHANGED

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "name" and v is not UNCHANGED}


@dataclass(frozen=True)
class Slots:
    """What admission saw on a provider (for status lines and metrics)."""

    name: str
    used: int
    limit: int
    waiting: int  # prepared jobs told to wait for a slot


Decision = Transition | Note | Submit | CancelAtProvider | ProviderUpdate | Slots


# -- policy helpers --------------------------------------------------------------


def backoff_seconds(attempt: int, policy: Policy, rng: random.Random) -> float:
    """Capped exponential backoff with jitter: half fixed, half random."""
    base = min(policy.backoff_max, policy.backoff_initial * (2 ** max(0, attempt - 1)))
    return base / 2 + rng.uniform(0, base / 2)


def clock_text(at: datetime) -> str:
    return at.strftime("%H:%M:%S UTC")


def effective_limit(pv: ProviderView, now: datetime, policy: Policy) -> int:
    if pv.learned_limit and pv.learned_at and (now - pv.learned_at).total_seconds() < policy.capacity_hold:
        return max(1, min(pv.configured_limit, pv.learned_limit))
    return pv.configured_limit


def slot_reason(used: int, limit: int, provider: str) -> str:
    return f"waiting for a slot ({used}/{limit} busy on {provider})"


def error_reason(err: ProviderError | None) -> str:
    if err is None:
        return "provider not observed yet"
    if err.kind == "auth":
        return f"provider auth failing: {err.message}"
    if err.kind == "quota":
        return f"provider quota exhausted: {err.message}"
    return f"provider unreachable: {err.message}; retrying"


# -- the step --------------------------------------------------------------------


def decide(jobs: Iterable[JobView], providers: dict[str, ProviderView], now: datetime,
           policy: Policy, rng: random.Random, budget: Budget | None = None) -> list[Decision]:
    jobs = list(jobs)
    money = _BudgetLeft(budget, jobs)
    grouped: dict[str, list[JobView]] = {}
    for job in jobs:
        grouped.setdefault(job.provider, []).append(job)
    out: list[Decision] = []
    for name, group in grouped.items():
        group.sort(key=lambda j: j.id)
        pv = providers.get(name)
        if pv is None:
            reason = f"provider {name!r} is not in the config"
            out.extend(_note(j, reason=reason) for j in group if j.state != CANCELLED)
            continue
        out.extend(_ProviderStep(group, pv, now, policy, rng, money).run())
    return [d for d in out if d is not None]


def _note(job: JobView, **updates: Any) -> Note | None:
    changed = {k: v for k, v in updates.items() if getattr(job, k, UNCHANGED) != v}
    return Note(job.id, job.state, changed) if changed else None


class _ProviderStep:
    def __init__(self, jobs: Sequence[JobView], pv: ProviderView, now: datetime, policy: Policy,
                 rng: random.Random, money: _BudgetLeft):
        self.jobs, self.pv, self.now, self.policy, self.rng = jobs, pv, now, policy, rng
        self.money = money
        self.out: list[Decision | None] = []
        # (provider job id, client token) of each of our jobs still holding a slot
        self.inflight: list[tuple[str | None, str | None]] = []
        self.capacity_hit = False

    def run(self) -> list[Decision | None]:
        pv = self.pv
        if pv.jobs is None:
            return self._unobserved()
        paused = False
        if pv.paused_reason:
            if pv.paused_until is not None and self.now < pv.paused_until:
                paused = True
            else:
                self.out.append(ProviderUpdate(pv.name, paused_reason=None, paused_until=None))
        limit = effective_limit(pv, self.now, self.policy)
        if pv.learned_limit and limit == pv.configured_limit:
            self.out.append(ProviderUpdate(pv.name, learned_limit=None, learned_at=None))

        by_id = {pj.id: pj for pj in pv.jobs}
        by_token = {pj.client_token: pj for pj in pv.jobs if pj.client_token}
        for job in self.jobs:
            if job.state == CANCELLED:
                self._cancelled(job, by_id, by_token)
            elif job.state in IN_FLIGHT:
                self._in_flight(job, by_id, by_token)

        if self.capacity_hit:
            still_active = sum(1 for pj in pv.jobs if pj.active)
            learned = max(1, min(limit, still_active))
            self.out.append(ProviderUpdate(pv.name, learned_limit=learned, learned_at=self.now))
            limit = learned

        self._admit(limit, by_id, paused)
        return self.out

    # -- when the provider could not be listed -----------------------------------

    def _unobserved(self) -> list[Decision | None]:
        err = self.pv.error
        reason = error_reason(err)
        if err is not None and err.kind in ("auth", "quota"):
            until = None
            if err.kind == "quota":
                until = self.now + timedelta(seconds=self.policy.backoff_max)
            self.out.append(ProviderUpdate(self.pv.name, paused_reason=reason, paused_until=until))
        for job in self.jobs:
            if job.state != CANCELLED:
                self.out.append(_note(job, reason=reason))
        return self.out

    # -- jobs that hold a slot --------------------------------------------------

    def _cancelled(self, job: JobView, by_id: dict, by_token: dict) -> None:
        pj = by_id.get(job.provider_job_id) if job.provider_job_id else by_token.get(job.client_token)
        if pj is not None and pj.active:
            self.out.append(CancelAtProvider(job.id, pj.id))
        elif pj is not None or not job.provider_job_id or job.provider_job_id in self.pv.missing:
            # finished at the provider already, or never created there
            updates = {"cancel_pending": False}
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
            if job.provider_job_id and job.provider_job_id in self.pv.missing:
                why = f"the provider no longer knows job {job.provider_job_id}"
                self._retry_or_fail(job, why, outcome="lost")
                return
            self.inflight.append((job.provider_job_id, job.client_token))
            if job.provider_job_id:
                self.out.append(_note(job, reason="not in the provider's listing; checking again"))
                return
            # an intent the provider never received: create it (same token)
            if job.not_before and self.now < job.not_before:
                return
            self.out.append(Submit(job.id, job.client_token))
            return
        bound = {} if job.provider_job_id == pj.id else {"provider_job_id": pj.id}
        if pj.status == P_QUEUED or (pj.status == P_RUNNING and job.state == RUNNING):
            self.inflight.append((pj.id, job.client_token))
            text = "queued at provider" if pj.status == P_QUEUED else "training"
            self.out.append(_note(job, reason=f"{text} ({pj.raw_status})", provider_status=pj.raw_status,
                                  **bound))
        elif pj.status == P_RUNNING:
            self.inflight.append((pj.id, job.client_token))
            self.out.append(Transition(job.id, job.state, "start", f"training ({pj.raw_status})", bound,
                                       provider_status=pj.raw_status))
        elif pj.status == P_SUCCEEDED:
            updates = {**bound, "fine_tuned_model": pj.fine_tuned_model, "actual_cost": pj.cost,
                       "trained_tokens": pj.trained_tokens, "not_before": None, "last_error": None}
            self.out.append(Transition(job.id, job.state, "succeed", None, updates,
                                       provider_status=pj.raw_status, attempt_outcome=("succeeded", True)))
        elif pj.status == P_CANCELLED:
            self.out.append(Transition(job.id, job.state, "cancel", "cancelled at the provider", bound,
                                       provider_status=pj.raw_status, attempt_outcome=("cancelled", True)))
        elif pj.status == P_FAILED:
            message = pj.message or pj.raw_status
            if pj.failure == FAIL_CAPACITY:
                self.capacity_hit = True
                updates = {"attempt": max(0, job.attempt - 1), "client_token": None, "provider_job_id": None,
                           "intent_at": None, "not_before": None, "last_error": message}
                reason = f"provider at its concurrency limit ({pj.raw_status}); waiting for a slot"
                self.out.append(Transition(job.id, job.state, "requeue", reason, updates,
                                           provider_status=pj.raw_status, attempt_outcome=("capacity", False)))
            elif pj.failure == FAIL_DATA:
                self.out.append(Transition(job.id, job.state, "fail", f"provider rejected the data: {message}",
                                           {**bound, "last_error": message}, provider_status=pj.raw_status,
                                           attempt_outcome=("rejected", True)))
            else:
                self._retry_or_fail(job, f"training failed: {message}", outcome="failed",
                                    provider_status=pj.raw_status)

    def _retry_or_fail(self, job: JobView, why: str, *, outcome: str, provider_status: str | None = None) -> None:
        max_attempts = self.policy.max_attempts
        if job.attempt >= max_attempts:
            self.out.append(Transition(job.id, job.state, "fail", f"failed after {job.attempt} attempts: {why}",
                                       {"last_error": why}, provider_status=provider_status,
                                       attempt_outcome=(outcome, True)))
            return
        until = self.now + timedelta(seconds=backoff_seconds(job.attempt, self.policy, self.rng))
        reason = f"backoff until {clock_text(until)} (attempt {job.attempt + 1} of {max_attempts}): {why}"
        updates = {"not_before": until, "client_token": None, "provider_job_id": None, "intent_at": None,
                   "last_error": why}
        self.out.append(Transition(job.id, job.state, "requeue", reason, updates, provider_status=provider_status,
                                   attempt_outcome=(outcome, True)))

    # -- admission ----------------------------------------------------------------

    def _admit(self, limit: int, by_id: dict, paused: bool) -> None:
        ids = {i for i, _ in self.inflight if i}
        tokens = {t for _, t in self.inflight if t}
        foreign = sum(1 for pj in self.pv.jobs if pj.active and pj.id not in ids
                      and (not pj.client_token or pj.client_token not in tokens))
        used = len(self.inflight) + foreign
        waiting = [j for j in self.jobs if j.state == PREPARED]
        waiting.sort(key=lambda j: (j.created_at or self.now, j.id))
        told_to_wait = 0
        for job in waiting:
            if job.attempt >= self.policy.max_attempts:
                self.out.append(Transition(job.id, job.state, "fail",
                                           f"failed after {job.attempt} attempts: {job.reason or 'no attempts left'}",
                                           {}))
                continue
            if job.not_before and self.now < job.not_before:
                continue  # its reason says until when it backs off
            if paused:
                self.out.append(_note(job, reason=self.pv.paused_reason))
                continue
            over = self.money.refuse(job)
            if over:
                self.out.append(_note(job, reason=over))
            elif used < limit:
                used += 1
                self.money.commit(job)
                self.out.append(Submit(job.id))
            else:
                told_to_wait += 1
                self.out.append(_note(job, reason=slot_reason(used, limit, self.pv.name)))
        self.out.append(Slots(self.pv.name, used, limit, told_to_wait))
