"""The I/O shell around the decision step: load, observe, decide, apply.

It decides nothing itself. What it observes goes into `decide.decide`; the
outcome of every provider call it makes goes into a `decide.after_*`
function, and what those return is applied like any other decision. Each
provider is built, observed and acted on inside its own boundary: one that
cannot be built or answers garbage pauses, the others go on.
"""

from __future__ import annotations

import contextlib
import gc
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import structlog

from ftctl.controller.agents import root_model
from ftctl.controller.config import Config
from ftctl.controller.engine import decide as rc
from ftctl.controller.engine.eval_batches import EvalBatches
from ftctl.controller.engine.evaluation import Evaluations
from ftctl.controller.engine.jobs import StaleState, cancelled_at_provider, fire, fire_promotion, note_many, note_many_in
from ftctl.controller.engine.lines import Lines
from ftctl.controller.engine.moving import Moves, pause_clock
from ftctl.controller.engine.observe import LISTING_MARGIN, LISTING_WINDOW, Observation  # noqa: F401
from ftctl.controller.engine.policy import Budget, Policy
from ftctl.controller.engine.submission import Submission
from ftctl.controller.ledger.pricing import Price, PriceUnknown, price_for
from ftctl.controller.ledger.states import (IN_FLIGHT, PROMOTION_OPEN, STATES, SUCCEEDED, TERMINAL, UNFINISHED,
                                            InvalidTransition)
from ftctl.models import Job, ProviderState, Store, utcnow
from ftctl.models.store import TICK_COLUMNS
from ftctl.providers.base import Provider, ProviderError
from ftctl.providers.kind import RemoteSection

# the store loads a tick's jobs as tuples in the order of the view's fields
# (the jobs a downstream job waits for come as their ids: Ticker._views)
assert TICK_COLUMNS == tuple("upstream_job_ids" if f == "upstream" else f for f in rc.JobView._fields), \
    "TICK_COLUMNS must list JobView's fields"


@dataclass
class TickResult:
    at: datetime
    states: Counter = field(default_factory=Counter)
    waiting_for_slot: int = 0
    decisions: int = 0
    # (provider, error class) of every provider call that failed this tick
    errors: list[tuple[str, str]] = field(default_factory=list)
    slots: dict[str, rc.Slots] = field(default_factory=dict)
    # succeeded jobs whose model is not yet promoted or rejected
    promotions_open: int = 0

    @property
    def all_terminal(self) -> bool:
        return all(self.states[s] == 0 for s in STATES if s not in TERMINAL) and not self.promotions_open

    def summary(self) -> str:
        """One line: for systemd's STATUS=, `ftctl tick` and the logs."""
        s = self.states
        other = max(0, s["prepared"] - self.waiting_for_slot)
        line = (f"{s['running']} running, {s['queued']} queued, {self.waiting_for_slot} waiting for a slot, "
                f"{other} waiting otherwise, {s['failed']} failed, {s['succeeded']} succeeded")
        return line + (f", {self.promotions_open} being evaluated" if self.promotions_open else "")


def _never() -> bool:
    return False


def _no_guard() -> None:
    return None


class Ticker(Observation, Lines, Submission, Evaluations, EvalBatches, Moves):
    def __init__(self, config: Config, store: Store, providers: dict[str, Provider] | None = None, *,
                 clock: Callable[[], datetime] = utcnow, rng: random.Random | None = None,
                 logger: Any = None, should_stop: Callable[[], bool] = _never,
                 guard: Callable[[], None] = _no_guard):
        self.config = config
        self.store = store
        self.providers: dict[str, Provider] = dict(providers or {})
        self.clock = clock
        self.rng = rng or random.Random()
        self.policy = Policy.of(config.retry)
        # checked between decisions: a stop request ends the tick early. Every
        # decision is complete on its own, and the next tick decides afresh.
        self.should_stop = should_stop
        # raises when this process may no longer act (the daemon lock is lost):
        # called right before every provider mutation
        self.guard = guard
        # a provider that answered 429/503 with Retry-After is not asked again before then
        self._quiet_until: dict[str, tuple[datetime, ProviderError]] = {}
        # the same for the evaluation gate's chat calls, and its cost estimates (engine.evaluation)
        self._quiet_chat: dict[str, datetime] = {}
        self._eval_estimates: dict[tuple, float] = {}
        self._eval_checkpoints: dict[int, list] = {}  # checkpoints = "best": each job's, listed once
        self._eval_until: float | None = None
        self._result: TickResult | None = None
        self._active: dict[str, int] = {}
        # per provider: the creation time of the oldest job the last listing saw
        # active, or when it was read if none was (see LISTING_WINDOW)
        self._floors: dict[str, datetime] = {}
        # per provider: the ids of the jobs the last listing saw active (observe._enough)
        self._live: dict[str, frozenset[str]] = {}
        self.log = logger or structlog.get_logger("ftctl")

    # -- providers -------------------------------------------------------------

    def provider(self, name: str) -> Provider:
        if name not in self.providers:
            from ftctl.providers import build_provider

            def epoch() -> float:
                return self.clock().replace(tzinfo=timezone.utc).timestamp()

            self.providers[name] = build_provider(name, self.config.providers[name], self.config.provider_env(epoch))
        return self.providers[name]

    def settle(self, name: str) -> float:
        """How long after a create call went out it may still land at `name`:
        the client's timeout plus a margin for a provider over the network;
        nothing for one in this process, whose create is over when it returns."""
        section = self.config.providers[name]
        if not isinstance(section, RemoteSection):
            return 0.0
        return section.timeout + self.policy.create_margin

    def reload(self, config: Config) -> list[str]:
        """Take a new config between ticks; returns what changed, in words."""
        changes = []
        for name in sorted(set(self.config.providers) | set(config.providers)):
            old, new = self.config.providers.get(name), config.providers.get(name)
            if old == new:
                continue
            changes.append(f"providers.{name}")
            self._floors.pop(name, None)
            self._live.pop(name, None)
            provider = self.providers.pop(name, None)
            if provider is not None:
                provider.close()
            if old is not None and new is not None and old.concurrency != new.concurrency:
                # a limit learned under the old concurrency no longer applies
                self._provider_update(rc.ProviderUpdate(name, learned_limit=None, learned_at=None, probe_hold=None))
        for section in ("controller", "retry", "budget", "prices", "agents", "export"):
            if getattr(self.config, section) != getattr(config, section):
                changes.append(section)
        self.config = config
        self.policy = Policy.of(config.retry)
        self._quiet_until.clear()
        self._quiet_chat.clear()
        return changes

    def close(self) -> None:
        for p in self.providers.values():
            p.close()
        self.providers.clear()

    # -- one pass ----------------------------------------------------------------

    def tick(self, only: set[str] | frozenset[str] | None = None) -> TickResult:
        """One pass; `only`: just these providers (a webhook's hint that one
        of them has news), the others wait for the next full pass."""
        # a tick makes tens of thousands of short-lived objects at 10,000 jobs
        # (views, listed jobs, decisions), all freed by reference counting:
        # the cyclic collector passes that their allocation would trigger
        # midway, each walking the whole heap, are left to after the tick
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._tick(only)
        finally:
            if paused:
                gc.enable()

    def _tick(self, only: set[str] | frozenset[str] | None) -> TickResult:
        now = self.clock()
        self._active = {}
        self._eval_until = None  # engine.evaluation: this tick's time for questions starts at the first
        rows = self.store.jobs_to_reconcile(list(UNFINISHED), list(PROMOTION_OPEN), self.policy.max_attempts)
        quotes = self.store.pending_quotes()
        if only is not None:
            rows = [r for r in rows if r[2] in only]  # TICK_COLUMNS: provider is the third
            quotes = {k: v for k, v in quotes.items() if k in only}
        views = self._views(rows)
        states = self.store.provider_states()
        quote_times = self.store.oldest_pending_quotes()
        observed: dict[str, rc.ProviderView] = {}
        mine: dict[str, list[rc.JobView]] = {}
        for v in views:
            if v.state != SUCCEEDED:
                mine.setdefault(v.provider, []).append(v)
        lined = self.store.lined_providers(sorted(n for n in self.config.providers if (only is None or n in only)
                                                  and n not in mine and n not in quotes))
        for name in sorted(set(mine) | set(quotes) | lined):
            if name in self.config.providers:
                pv = self._observe(name, mine.get(name, []), states.get(name), quotes.get(name, ()),
                                   quote_times.get(name), now)
                observed[name] = replace(pv, prices=self._prices(name, mine.get(name, ())))
        # a re-home's job is gated (parity with the model it replaces) even where its agent has no [eval]
        gated = frozenset(name for name, agent in self.config.agents.items()
                          if agent.evaluation is not None) | self.store.rehoming_agents()
        open_rows = self._open_promotions(views)
        gates = self._gates(list(open_rows.values()))
        budget = self._budget(now)
        left = rc.money_left(views, budget, gates)
        views = self._read_lines(views, observed, budget.ceiling(left) if budget else None)
        decisions = rc.decide(views, observed, now, self.policy, self.rng, budget, gates, gated)
        by_id: dict[int, Any] = {v.id: v for v in views}
        by_id.update(open_rows)
        result = TickResult(at=now, decisions=len(decisions))
        self._result = result
        result.errors.extend((name, pv.error.kind) for name, pv in observed.items()
                             if pv.error is not None and pv.jobs is None)
        self._write_facts(decisions, states, now)
        for decision in decisions:
            if isinstance(decision, rc.Slots):
                result.slots[decision.name] = decision
            if isinstance(decision, (rc.Note, rc.Slots, rc.ProviderUpdate, rc.Line)):
                continue
            if self.should_stop():
                self.log.info("tick cut short by a stop request")
                break
            self._apply(decision, by_id, now)
        result.states = Counter(self.store.count_by_state())
        result.waiting_for_slot = self._waiting_for_slot(decisions, by_id, states, budget, left)
        result.promotions_open = self.store.count_open_promotions(list(PROMOTION_OPEN))
        self._export()
        return result

    def _views(self, rows: list[tuple]) -> list[rc.JobView]:
        """JobViews from the store's TICK_COLUMNS tuples; a downstream job's
        upstream ids become the jobs it waits for, as they are now."""
        views = [rc.JobView._make(r) for r in rows]
        chained = [i for i, v in enumerate(views) if v.upstream]
        if not chained:
            return views
        found = self.store.jobs_by_id(sorted({u for i in chained for u in views[i].upstream}))
        for i in chained:
            views[i] = views[i]._replace(upstream=tuple(
                rc.UpstreamView(u, found[u].agent, found[u].state, found[u].fine_tuned_model, found[u].provider_job_id,
                                found[u].provider)
                if u in found else rc.UpstreamView(u, "?", "gone") for u in views[i].upstream))
        return views

    def _prices(self, name: str, views: list[rc.JobView]) -> dict[str, Price]:
        """What training costs on `name` for each model its jobs in flight
        train: the decision step prices a job that succeeds with trained
        tokens and no cost (OpenAI) by it."""
        kind, found = self.config.providers[name].kind, {}
        for model in {v.model for v in views if v.state in IN_FLIGHT and v.model}:
            # a chain's stage ("@upstream") is priced as its root base model, as submit priced it
            upstream = model[1:] if model.startswith("@") else None
            root = root_model(self.config, upstream, name) if upstream in self.config.agents else model
            with contextlib.suppress(PriceUnknown, KeyError):
                found[model] = price_for(kind, root, self.config.price_overrides)
        return found

    def _open_promotions(self, views: list[rc.JobView]) -> dict[int, Job]:
        """The whole rows of succeeded jobs whose promotion is still open (the
        gate reads their models): a few, read again."""
        ids = [v.id for v in views if v.state == SUCCEEDED and v.promotion in PROMOTION_OPEN]
        return self.store.jobs_by_id(ids) if ids else {}

    def _export(self) -> None:
        """[export]: rewrite the file when the set of promoted models changed."""
        conf = self.config.export
        if conf is None:
            return
        from ftctl.controller.engine.export import sync

        try:
            if sync(self.config.resolve(conf.path), conf.fmt, self.store.promoted_models()):
                self.log.info("export written", path=str(self.config.resolve(conf.path)))
        except OSError as exc:
            self.log.error("export failed", path=conf.path, error=f"{exc.__class__.__name__}: {exc}")

    def _write_facts(self, decisions: list[rc.Decision], states: dict[str, ProviderState], now: datetime) -> None:
        """What the tick learned without a provider call (notes on jobs, slots,
        provider pauses and limits): one write transaction, none if nothing changed."""
        notes = [d for d in decisions if isinstance(d, rc.Note)]
        updates = [d for d in decisions if isinstance(d, rc.ProviderUpdate)
                   and not self._same(states.get(d.name), d.changes())]
        facts = [(d.name, {"slots_used": d.used, "slots_limit": d.limit}) for d in decisions if isinstance(d, rc.Slots)]
        facts += [(d.name, {"line_code": d.reason.code, "line_args": dict(d.reason.args)}) for d in decisions
                  if isinstance(d, rc.Line)]
        facts = [(name, changes) for name, changes in facts if not self._same(states.get(name), changes)]
        if not (notes or updates or facts):
            return
        with self.store.write() as s:
            note_many_in(self.store, s, notes, now)
            for name, changes in [(d.name, d.changes()) for d in updates] + facts:
                row = s.get(ProviderState, name) or ProviderState(name=name)
                for key, value in changes.items():
                    setattr(row, key, value)
                pause_clock(row, now)
                s.add(row)
        for d in updates:
            self.log.info("provider state", provider=d.name, **{k: str(v) for k, v in d.changes().items()})

    @staticmethod
    def _same(state: ProviderState | None, changes: dict[str, Any]) -> bool:
        state = state or ProviderState()
        return all(getattr(state, k) == v for k, v in changes.items())

    def _budget(self, now: datetime) -> Budget | None:
        caps = self.config.budget
        if caps.per_job is None and caps.total is None:
            return None
        spent = self.store.spent_in(now - timedelta(seconds=caps.period), now) if caps.total is not None else 0.0
        return Budget(per_job=caps.per_job, total=caps.total, spent=spent)

    # -- applying decisions ------------------------------------------------------

    def _apply(self, d: rc.Decision, rows: dict[int, Any], now: datetime) -> None:
        if isinstance(d, rc.Transition):
            self._transition(d, now)
        elif isinstance(d, rc.Note):
            note_many(self.store, [d], now)
        elif isinstance(d, rc.Submit):
            row = self.store.get_job(d.job_id)  # the whole row, for the few jobs handed to a provider
            if row is not None:
                self._submit(row, d, now)
        elif isinstance(d, rc.Move):
            self._move(d, now)
        elif isinstance(d, rc.CancelAtProvider):
            self._cancel_at_provider(rows[d.job_id], d.provider_job_id, now)
        elif isinstance(d, rc.CancelQuote):
            self._cancel_quote(d, now)
        elif isinstance(d, rc.QuoteSettled):
            self.store.settle_quote(d.provider, d.provider_job_id, now)
        elif isinstance(d, rc.ForgetUpload):
            self.store.forget_upload(d.provider, d.content_hash)
        elif isinstance(d, rc.ProviderUpdate):
            self._provider_update(d)
        elif isinstance(d, rc.Promote):
            self._promote(d, now)
        elif isinstance(d, rc.Evaluate):
            self._evaluate(rows[d.job_id], now)

    def _apply_all(self, decisions: list[rc.Decision], rows: dict[int, Any], now: datetime) -> None:
        for d in decisions:
            self._apply(d, rows, now)

    def _transition(self, d: rc.Transition, now: datetime) -> Job | None:
        try:
            before, job = fire(self.store, d.job_id, d.trigger, expect=d.expect, reason=d.reason, updates=d.updates,
                               provider_status=d.provider_status, attempt_outcome=d.attempt_outcome, now=now,
                               promotion=d.promotion)
        except StaleState:
            return None
        except InvalidTransition as exc:
            self.log.error("transition refused", job_id=d.job_id, trigger=d.trigger, error=str(exc))
            return None
        self.log.info("transition", job_id=job.id, agent=job.agent, provider=job.provider, state=job.state,
                      from_state=before, trigger=d.trigger, reason=d.reason.text() if d.reason else None,
                      provider_job_id=job.provider_job_id, fine_tuned_model=job.fine_tuned_model)
        return job

    def _promote(self, d: rc.Promote, now: datetime) -> None:
        try:
            before, job = fire_promotion(self.store, d.job_id, d.trigger, reason=d.reason, expect=d.expect,
                                         evaluation=d.evaluation, now=now)
        except (StaleState, InvalidTransition) as exc:  # a person moved it meanwhile
            self.log.info("promotion skipped", job_id=d.job_id, trigger=d.trigger, error=str(exc))
            return
        self.log.info("promotion", job_id=job.id, agent=job.agent, provider=job.provider, state=job.state,
                      promotion=job.promotion, from_promotion=before, trigger=d.trigger,
                      reason=d.reason.text() if d.reason else None, fine_tuned_model=job.fine_tuned_model)

    def _provider_update(self, d: rc.ProviderUpdate) -> None:
        state = self.store.provider_states().get(d.name) or ProviderState(name=d.name)
        changes = d.changes()
        if all(getattr(state, k) == v for k, v in changes.items()):
            return
        for key, value in changes.items():
            setattr(state, key, value)
        pause_clock(state, self.clock())
        self.store.save_provider_state(state)
        self.log.info("provider state", provider=d.name, **{k: str(v) for k, v in changes.items()})

    def _cancel_at_provider(self, job: Any, provider_job_id: str, now: datetime) -> None:
        self.guard()
        try:
            pj = self.provider(job.provider).cancel_job(provider_job_id)
        except Exception as exc:  # noqa: BLE001
            err = self._as_provider_error(exc)
            self.log.warning("cancel at provider failed", job_id=job.id, agent=job.agent, provider=job.provider,
                             state=job.state, error_class=err.kind, error=err.message)
            return
        cancelled_at_provider(self.store, job.id, pj.id, pj.raw_status, now=now)
        self.log.info("cancelled at provider", job_id=job.id, agent=job.agent, provider=job.provider,
                      state=job.state, provider_job_id=pj.id)

    def _cancel_quote(self, d: rc.CancelQuote, now: datetime) -> None:
        self.guard()
        try:
            self.provider(d.provider).cancel_job(d.provider_job_id)
        except ProviderError as exc:
            self.log.warning("cancel of a quote job failed", provider=d.provider, provider_job_id=d.provider_job_id,
                             error_class=exc.kind, error=exc.message)
            return
        self.store.settle_quote(d.provider, d.provider_job_id, now)
        self.log.info("quote job cancelled", provider=d.provider, provider_job_id=d.provider_job_id)
