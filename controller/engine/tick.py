"""The I/O around the reconcile step: load, observe, decide, apply."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import structlog

from ftctl.controller.engine import decide as rc
from ftctl.controller.config import Config
from ftctl.controller.engine.jobs import StaleState, cancelled_at_provider, file_sha256, fire, new_client_token, note
from ftctl.controller.engine.states import IN_FLIGHT, PREPARED, QUEUED, STATES, TERMINAL, InvalidTransition
from ftctl.models import Job, ProviderState, Store, utcnow
from ftctl.providers.base import JobSpec, NotFoundError, Provider, ProviderError

# how far back the provider's own list is read (to count foreign active jobs)
LISTING_WINDOW = timedelta(days=7)


@dataclass
class TickResult:
    at: datetime
    states: Counter = field(default_factory=Counter)
    waiting_for_slot: int = 0
    decisions: int = 0
    # (provider, error class) of every provider call that failed this tick
    errors: list[tuple[str, str]] = field(default_factory=list)
    slots: dict[str, rc.Slots] = field(default_factory=dict)

    @property
    def all_terminal(self) -> bool:
        return all(self.states[s] == 0 for s in STATES if s not in TERMINAL)

    def summary(self) -> str:
        """One line: for systemd's STATUS=, `ftctl tick` and the logs."""
        s = self.states
        other = max(0, s["prepared"] - self.waiting_for_slot)
        return (f"{s['running']} running, {s['queued']} queued, {self.waiting_for_slot} waiting for a slot, "
                f"{other} waiting otherwise, {s['failed']} failed, {s['succeeded']} succeeded")


class Reconciler:
    def __init__(self, config: Config, store: Store, providers: dict[str, Provider] | None = None, *,
                 clock: Callable[[], datetime] = utcnow, rng: random.Random | None = None,
                 logger: Any = None, should_stop: Callable[[], bool] = lambda: False):
        self.config = config
        # checked between decisions: a stop request ends the tick early. Every
        # decision is complete on its own, and the next tick decides afresh.
        self.should_stop = should_stop
        self.store = store
        self.providers: dict[str, Provider] = dict(providers or {})
        self.clock = clock
        self.rng = rng or random.Random()
        self.policy = rc.Policy.of(config.retry)
        # a provider that answered 429/503 with Retry-After is not asked again before then
        self._quiet_until: dict[str, tuple[datetime, ProviderError]] = {}
        self._result: TickResult | None = None
        self.log = logger or structlog.get_logger("ftctl")

    # -- providers -------------------------------------------------------------

    def provider(self, name: str) -> Provider:
        if name not in self.providers:
            from ftctl.providers import build_provider

            def epoch() -> float:
                return self.clock().replace(tzinfo=timezone.utc).timestamp()

            self.providers[name] = build_provider(name, self.config.providers[name], self.config.provider_env(epoch))
        return self.providers[name]

    def reload(self, config: Config) -> list[str]:
        """Take a new config between ticks; returns what changed, in words."""
        changes = []
        for name in sorted(set(self.config.providers) | set(config.providers)):
            old, new = self.config.providers.get(name), config.providers.get(name)
            if old == new:
                continue
            changes.append(f"providers.{name}")
            provider = self.providers.pop(name, None)
            if provider is not None:
                provider.close()
            if old is not None and new is not None and old.concurrency != new.concurrency:
                # a limit learned under the old concurrency no longer applies
                self._provider_update(rc.ProviderUpdate(name, learned_limit=None, learned_at=None))
        for section in ("controller", "retry", "budget", "prices", "agents"):
            if getattr(self.config, section) != getattr(config, section):
                changes.append(section)
        self.config = config
        self.policy = rc.Policy.of(config.retry)
        self._quiet_until.clear()
        return changes

    def close(self) -> None:
        for p in self.providers.values():
            p.close()
        self.providers.clear()

    # -- one pass ----------------------------------------------------------------

    def tick(self) -> TickResult:
        now = self.clock()
        rows = self.store.jobs_to_reconcile([PREPARED, *IN_FLIGHT])
        views = [rc.JobView.of(j) for j in rows]
        states = self.store.provider_states()
        observed: dict[str, rc.ProviderView] = {}
        for name in sorted({v.provider for v in views}):
            if name in self.config.providers:
                observed[name] = self._observe(name, [v for v in views if v.provider == name], states.get(name), now)
        decisions = rc.decide(views, observed, now, self.policy, self.rng, self._budget(now))
        by_id = {r.id: r for r in rows}
        result = TickResult(at=now, decisions=len(decisions))
        self._result = result
        result.errors.extend((name, pv.error.kind) for name, pv in observed.items()
                             if pv.error is not None and pv.jobs is None)
        for decision in decisions:
            if isinstance(decision, rc.Slots):
                result.slots[decision.name] = decision
                continue
            if self.should_stop():
                self.log.info("tick cut short by a stop request")
                break
            try:
                self._apply(decision, by_id, now)
            except StaleState:
                continue
        result.states = Counter(self.store.count_by_state())
        result.waiting_for_slot = self.store.count_waiting("waiting for a slot")
        return result

    def _budget(self, now: datetime) -> rc.Budget | None:
        caps = self.config.budget
        if caps.per_job is None and caps.total is None:
            return None
        spent = self.store.spent_since(now - timedelta(seconds=caps.period)) if caps.total is not None else 0.0
        return rc.Budget(per_job=caps.per_job, total=caps.total, spent=spent)

    def _observe(self, name: str, mine: list[rc.JobView], state: ProviderState | None,
                 now: datetime) -> rc.ProviderView:
        conf = self.config.providers[name]
        state = state or ProviderState(name=name)
        base = dict(name=name, configured_limit=conf.concurrency, learned_limit=state.learned_limit,
                    learned_at=state.learned_at, paused_reason=state.paused_reason,
                    paused_until=state.paused_until)
        quiet = self._quiet_until.get(name)
        if quiet and now < quiet[0]:
            return rc.ProviderView(jobs=None, error=quiet[1], **base)
        intents = [v.intent_at for v in mine if v.intent_at]
        since = min([now - LISTING_WINDOW, *[t - timedelta(hours=1) for t in intents]])
        try:
            provider = self.provider(name)
            listing = provider.list_jobs(created_after=since)
            seen = {pj.id for pj in listing}
            missing = set()
            for v in mine:
                if v.provider_job_id and v.provider_job_id not in seen:
                    try:
                        listing.append(provider.get_job(v.provider_job_id))
                    except NotFoundError:
                        missing.add(v.provider_job_id)
        except ProviderError as exc:
            self.log.warning("provider observation failed", provider=name, error_class=exc.kind,
                             error=exc.message, retry_after=exc.retry_after)
            if exc.retry_after:
                self._quiet_until[name] = (now + timedelta(seconds=exc.retry_after), exc)
            return rc.ProviderView(jobs=None, error=exc, **base)
        return rc.ProviderView(jobs=tuple(listing), missing=frozenset(missing), **base)

    # -- applying decisions ------------------------------------------------------

    def _apply(self, d: rc.Decision, rows: dict[int, Job], now: datetime) -> None:
        if isinstance(d, rc.Transition):
            if d.trigger == "succeed" and d.updates.get("actual_cost") is None and d.updates.get("trained_tokens"):
                cost = self._cost_of(rows[d.job_id], d.updates["trained_tokens"])
                d = replace(d, updates={**d.updates, "actual_cost": cost})
            self._transition(d.job_id, d.trigger, expect=d.expect, reason=d.reason, updates=d.updates,
                             provider_status=d.provider_status, attempt_outcome=d.attempt_outcome, now=now)
        elif isinstance(d, rc.Note):
            note(self.store, d.job_id, d.updates, expect=d.expect, now=now)
        elif isinstance(d, rc.Submit):
            self._submit(rows[d.job_id], d.client_token, now)
        elif isinstance(d, rc.CancelAtProvider):
            self._cancel_at_provider(rows[d.job_id], d.provider_job_id, now)
        elif isinstance(d, rc.ProviderUpdate):
            self._provider_update(d)

    def _transition(self, job_id: int, trigger: str, *, now: datetime, **kw: Any) -> Job | None:
        try:
            before, job = fire(self.store, job_id, trigger, now=now, **kw)
        except InvalidTransition as exc:
            self.log.error("transition refused", job_id=job_id, trigger=trigger, error=str(exc))
            return None
        self.log.info("transition", job_id=job.id, agent=job.agent, provider=job.provider, state=job.state,
                      from_state=before, trigger=trigger, reason=job.reason,
                      provider_job_id=job.provider_job_id, fine_tuned_model=job.fine_tuned_model)
        return job

    def _cost_of(self, job: Job, trained_tokens: int) -> float | None:
        """A provider that reports trained tokens but no cost (OpenAI): price them."""
        from ftctl.controller.preflight.pricing import PriceUnknown, price_for

        try:
            price = price_for(self.config.providers[job.provider].kind, job.model, self.config.price_overrides)
        except (PriceUnknown, KeyError):
            return None
        return round(max(price.min_fee, trained_tokens / 1e6 * price.train_per_m), 2)

    def _provider_update(self, d: rc.ProviderUpdate) -> None:
        state = self.store.provider_states().get(d.name) or ProviderState(name=d.name)
        changes = d.changes()
        if all(getattr(state, k) == v for k, v in changes.items()):
            return
        for key, value in changes.items():
            setattr(state, key, value)
        self.store.save_provider_state(state)
        self.log.info("provider state", provider=d.name, **{k: str(v) for k, v in changes.items()})

    def _cancel_at_provider(self, job: Job, provider_job_id: str, now: datetime) -> None:
        try:
            pj = self.provider(job.provider).cancel_job(provider_job_id)
        except ProviderError as exc:
            self.log.warning("cancel at provider failed", job_id=job.id, agent=job.agent, provider=job.provider,
                             state=job.state, error_class=exc.kind, error=exc.message)
            return
        cancelled_at_provider(self.store, job.id, pj.id, pj.raw_status, now=now)
        self.log.info("cancelled at provider", job_id=job.id, agent=job.agent, provider=job.provider,
                      state=job.state, provider_job_id=pj.id)

    # -- submission (crash-safe) ---------------------------------------------------

    def _submit(self, row: Job, token: str | None, now: datetime) -> None:
        """Intent first, then the create call, then the provider's id.

        A new submission stores its client token with the move to `queued`
        before the provider is called; if the process dies anywhere after
        that, the next tick finds the job by its token in the provider's
        listing, or (not found) creates it with the same token.
        """
        if token is None:
            token = new_client_token(row.agent)
            updates = {"attempt": row.attempt + 1, "client_token": token, "intent_at": now,
                       "provider_job_id": None, "not_before": None, "provider_status": None}
            job = self._transition(row.id, "submit", expect=PREPARED, reason="submitting to the provider",
                                   updates=updates, now=now)
            if job is None:
                return
        else:
            job = row
        provider = self.provider(job.provider)
        try:
            if row.client_token == token:
                # creating again for an intent the listing did not show: ask
                # for the token itself first, the last guard against a twin
                found = provider.find_by_token(token)
                if found:
                    pj = max(found, key=lambda j: j.created_at or datetime.min)
                    note(self.store, job.id, {"provider_job_id": pj.id, "provider_status": pj.raw_status,
                                              "reason": f"queued at provider ({pj.raw_status})"},
                         expect_token=token, event=("found", f"found at the provider by its token as {pj.id}"),
                         now=now)
                    return
            file_id = self._upload(provider, job, now)
            if file_id is None:
                return
            pj = provider.create_job(JobSpec(agent=job.agent, model=job.model, training_file_id=file_id,
                                             hyperparameters=dict(job.hyperparameters), client_token=token))
        except ProviderError as exc:
            self._submit_failed(job, token, exc, now)
            return
        bound = note(self.store, job.id, {"provider_job_id": pj.id, "provider_status": pj.raw_status,
                                          "reason": f"queued at provider ({pj.raw_status})"},
                     expect_token=token, event=("created", f"created at the provider as {pj.id}"), now=now)
        self.log.info("created at provider", job_id=job.id, agent=job.agent, provider=job.provider,
                      state=bound.state if bound else job.state, provider_job_id=pj.id, client_token=token)

    def _upload(self, provider: Provider, job: Job, now: datetime) -> str | None:
        path = Path(job.training_file)
        try:
            digest = file_sha256(path)
        except OSError as exc:
            self._transition(job.id, "fail", expect=QUEUED, now=now,
                             reason=f"training file unreadable: {path} ({exc.__class__.__name__})",
                             attempt_outcome=("rejected", True))
            return None
        if digest != job.content_hash:
            self._transition(job.id, "fail", expect=QUEUED, now=now,
                             reason=f"training file changed since submit: {path}",
                             attempt_outcome=("rejected", True))
            return None
        file_id = self.store.uploaded_file(job.provider, digest)
        if file_id is None:
            file_id = provider.upload_file(path, digest)
            self.store.remember_upload(job.provider, digest, file_id)
        if job.provider_file_id != file_id:
            note(self.store, job.id, {"provider_file_id": file_id}, now=now)
        return file_id

    def _submit_failed(self, job: Job, token: str, exc: ProviderError, now: datetime) -> None:
        if self._result is not None:
            self._result.errors.append((job.provider, exc.kind))
        log = self.log.bind(job_id=job.id, agent=job.agent, provider=job.provider, state=job.state)
        log.warning("create at provider failed", error_class=exc.kind, error=exc.message)
        uncounted = {"attempt": max(0, job.attempt - 1), "client_token": None, "intent_at": None,
                     "last_error": exc.message}
        if exc.kind == "transient" or exc.kind == "not_found":
            # ambiguous: the job may exist. Keep the token; the next tick after
            # not_before looks for it, and creates it only if it is not there.
            if exc.kind == "not_found":  # e.g. the uploaded file vanished: upload again
                self.store.forget_upload(job.provider, job.content_hash)
            delay = exc.retry_after or rc.backoff_seconds(max(1, job.attempt), self.policy, self.rng)
            until = now + timedelta(seconds=delay)
            note(self.store, job.id, {
                "not_before": until, "last_error": exc.message,
                "reason": f"create failed ({exc.message}); looking for it and retrying at {rc.clock_text(until)}",
            }, expect_token=token, event=("create-failed", exc.message), now=now)
        elif exc.kind in ("auth", "quota", "capacity"):
            reason = rc.error_reason(exc) if exc.kind != "capacity" else (
                f"provider at its concurrency limit ({exc.message}); waiting for a slot")
            self._transition(job.id, "requeue", expect=QUEUED, reason=reason, updates=uncounted, now=now,
                             attempt_outcome=(exc.kind, False))
            if exc.kind != "capacity":
                until = now + timedelta(seconds=self.policy.backoff_max) if exc.kind == "quota" else None
                self._provider_update(rc.ProviderUpdate(job.provider, paused_reason=reason, paused_until=until))
        else:
            self._transition(job.id, "fail", expect=QUEUED, reason=f"provider refused the job: {exc.message}",
                             updates={"last_error": exc.message}, now=now, attempt_outcome=("rejected", True))
