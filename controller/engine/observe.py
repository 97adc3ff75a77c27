"""Observing a provider: its listing, read newest first back to the oldest
job that can still change, completed with what the listing leaves out (our
jobs it no longer shows, a failed job's details), each provider inside its
own boundary. A part of `engine.tick.Ticker`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ftctl.controller.engine import decide as rc
from ftctl.controller.engine.states import IN_FLIGHT
from ftctl.models import ProviderState
from ftctl.providers.registry import KINDS
from ftctl.providers.base import P_FAILED, NotFoundError, ProviderError, TransientError

# The provider's listing is read newest first, back to the oldest job that
# can still change: ours in flight, a quote not yet settled, and any job
# (anyone's: they hold slots) the previous listing saw active. The first
# listing after a start has no such memory and reads back this far.
LISTING_WINDOW = timedelta(days=7)
# read a little further back than that, for clocks that disagree
LISTING_MARGIN = timedelta(minutes=15)


class Observation:
    config: Any
    store: Any
    log: Any
    clock: Any
    _floors: dict[str, datetime]
    _quiet_until: dict[str, tuple[datetime, ProviderError]]

    def _since(self, name: str, mine: list[rc.JobView], quote_since: datetime | None, now: datetime) -> datetime:
        """How far back the listing is read: the oldest job that can still change."""
        floor = self._floors.get(name, now - LISTING_WINDOW)
        for v in mine:
            if v.state in IN_FLIGHT or v.cancel_pending:
                floor = min(floor, v.intent_at or v.created_at or floor)
        if quote_since is not None:
            floor = min(floor, quote_since)
        return floor - LISTING_MARGIN

    def _observe(self, name: str, mine: list[rc.JobView], state: ProviderState | None,
                 quotes: tuple[str, ...], quote_since: datetime | None, now: datetime) -> rc.ProviderView:
        conf = self.config.providers[name]
        state = state or ProviderState(name=name)
        finished = (self.store.finished_since(name, state.learned_at)
                    if state.learned_limit and state.learned_at else 0)
        base = dict(name=name, configured_limit=conf.concurrency, learned_limit=state.learned_limit,
                    learned_at=state.learned_at, probe_hold=state.probe_hold, finished_since_learned=finished,
                    paused_why=state.paused_why,
                    paused_message=state.paused_message, paused_until=state.paused_until,
                    settle=self.settle(name), quote_ids=frozenset(self.store.quote_ids(name)),
                    pending_quotes=tuple(quotes))
        quiet = self._quiet_until.get(name)
        if quiet and now < quiet[0]:
            return rc.ProviderView(jobs=None, error=quiet[1], **base)
        since = self._since(name, mine, quote_since, now)
        listed_at = self.clock()
        try:
            provider = self.provider(name)
            listing = provider.list_jobs(created_after=since)
            at = {pj.id: i for i, pj in enumerate(listing)}
            by_token = {pj.client_token: i for i, pj in enumerate(listing) if pj.client_token}
            missing = set()
            for v in mine:
                if v.provider_job_id and v.provider_job_id not in at:
                    try:
                        listing.append(provider.get_job(v.provider_job_id))
                    except NotFoundError:
                        missing.add(v.provider_job_id)
                    continue
                i = at.get(v.provider_job_id) if v.provider_job_id else by_token.get(v.client_token)
                if i is not None and v.state in IN_FLIGHT and listing[i].status == P_FAILED \
                        and not listing[i].detailed:
                    # a listing carries no failure details: read them for our own job, once
                    listing[i] = provider.get_job(listing[i].id)
            for quote_id in quotes:
                if quote_id not in at:
                    missing.add(quote_id)
            room = provider.room(listing) if KINDS[conf.kind].resources else None
        except Exception as exc:  # noqa: BLE001 - one provider's trouble stays its own
            return self._unobserved(name, exc, base)
        active = [pj.created_at for pj in listing if pj.active and pj.created_at is not None]
        self._floors[name] = min(active, default=listed_at)
        if room is not None:
            base.update(room=room.jobs, room_need=room.need, room_short=room.short)
        return rc.ProviderView(jobs=tuple(listing), missing=frozenset(missing), listed_at=listed_at, **base)

    def _unobserved(self, name: str, exc: Exception, base: dict[str, Any]) -> rc.ProviderView:
        err = self._as_provider_error(exc)
        self.log.warning("provider observation failed", provider=name, error_class=err.kind,
                         error=err.message, retry_after=err.retry_after)
        if err.retry_after:
            self._quiet_until[name] = (self.clock() + timedelta(seconds=err.retry_after), err)
        return rc.ProviderView(jobs=None, error=err, **base)

    def _as_provider_error(self, exc: Exception) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        # a bug or a surprise in a client: its outcome is unknown
        self.log.error("unexpected provider error", error=f"{exc.__class__.__name__}: {exc}")
        return TransientError(f"unexpected error: {exc.__class__.__name__}")
