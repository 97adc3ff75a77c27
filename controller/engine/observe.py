"""Observing a provider: its listing, read newest first back to the oldest
job that can still change, completed with what the listing leaves out (our
jobs it no longer shows, a failed job's details), each provider inside its
own boundary. A part of `engine.tick.Ticker`."""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from ftctl.controller.engine import decide as rc
from ftctl.controller.ledger.closing import provider_closed, today
from ftctl.controller.ledger.states import IN_FLIGHT
from ftctl.models import ProviderState
from ftctl.providers.base import ACTIVE, P_FAILED, NotFoundError, Provider, ProviderError, ProviderJob, TransientError
from ftctl.providers.registry import KINDS

# The provider's listing is read newest first, back to the oldest job that
# can still change: ours in flight, a quote not yet settled, and any job
# (anyone's: they hold slots) the previous listing saw active. The first
# listing after a start has no such memory and reads back this far.
LISTING_WINDOW = timedelta(days=7)
# read a little further back than that, for clocks that disagree
LISTING_MARGIN = timedelta(minutes=15)
# Those are the listing's outer bound. Within it, a client that pages stops
# at the page holding the last job that can still change, known by id (ours
# in flight, and the ones the previous listing saw active): a bulk campaign's
# finished jobs behind it are not read again every tick. Only what is known
# by a time alone (a create whose job id is not known yet, a pending quote)
# reads back to that time, with the margin.


class Observation:
    config: Any
    store: Any
    log: Any
    clock: Any
    _floors: dict[str, datetime]
    _live: dict[str, frozenset[str]]
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

    def _stop(self, name: str, mine: list[rc.JobView], quote_since: datetime | None) -> "_Stop | None":
        """Where the listing may stop (see LISTING_MARGIN); None (read the
        whole window) for the first listing after a start, which has not
        seen the others' active jobs yet."""
        seen_active = self._live.get(name)
        if seen_active is None:
            return None
        stop = _Stop(set(seen_active), quote_since)
        for v in mine:
            if v.state in IN_FLIGHT or v.cancel_pending:
                if v.provider_job_id:
                    stop.wanted.add(v.provider_job_id)
                elif v.intent_at or v.created_at:  # a create that may have landed: found by its token
                    at = v.intent_at or v.created_at
                    stop.back_to = at if stop.back_to is None else min(stop.back_to, at)
        stop.back_to = stop.back_to - LISTING_MARGIN if stop.back_to is not None else None
        return stop

    def _observe(self, name: str, mine: list[rc.JobView], state: ProviderState | None,
                 quotes: tuple[str, ...], quote_since: datetime | None, now: datetime) -> rc.ProviderView:
        conf = self.config.providers[name]
        state = state or ProviderState(name=name)
        finished = (self.store.finished_since(name, state.learned_at)
                    if state.learned_limit and state.learned_at else 0)
        base = dict(name=name, configured_limit=conf.concurrency, learned_limit=state.learned_limit,
                    learned_at=state.learned_at, probe_hold=state.probe_hold, finished_since_learned=finished,
                    paused_why=state.paused_why, paused_since=state.paused_since, closed=self._closed(name, now),
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
            stop = self._stop(name, mine, quote_since)
            listing = _list(provider, since, stop)
            at = {pj.id: i for i, pj in enumerate(listing)}
            ours = {v.provider_job_id for v in mine}
            for job_id in sorted(stop.wanted - at.keys() - ours) if stop is not None else ():
                try:  # someone else's job, active when last seen, behind the pages read
                    listing.append(provider.get_job(job_id))
                except NotFoundError:
                    pass
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
        active = [pj for pj in listing if pj.status in ACTIVE]  # one pass: the step and the lines use it
        self._floors[name] = min((pj.created_at for pj in active if pj.created_at is not None), default=listed_at)
        self._live[name] = live = frozenset(pj.id for pj in active)
        if room is not None:
            base.update(room=room.jobs, room_need=room.need, room_short=room.short)
        return rc.ProviderView(jobs=tuple(listing), missing=frozenset(missing), listed_at=listed_at,
                               active_ids=live, **base)

    def _closed(self, name: str, now: datetime) -> str | None:
        """Why `name` takes no new jobs today by its date (providers.lifecycle), or None."""
        ended = provider_closed(self.config, name, today(now.date()))
        return ended.line(today(now.date())) if ended is not None else None

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


# the listing stops once at most this many jobs that can still change are
# not seen yet: each is then read by its id, one call, not a page each
FETCH_AT_MOST = 5


class _Stop:
    """The listing's stop: True after a page once every job that can still
    change, but at most FETCH_AT_MOST, is seen, and the pages reach back to
    `back_to` (a create whose job id is not known yet, a pending quote)."""

    def __init__(self, wanted: set[str], back_to: datetime | None):
        self.wanted, self.back_to = wanted, back_to

    def __call__(self, page: list[ProviderJob]) -> bool:
        self.wanted.difference_update(pj.id for pj in page)
        if self.back_to is not None and any(pj.created_at is not None and pj.created_at < self.back_to
                                            for pj in page):
            self.back_to = None
        return len(self.wanted) <= FETCH_AT_MOST and self.back_to is None


@cache
def _pages_on_request(list_jobs: Any) -> bool:
    """Whether a client's listing takes `enough` (one that does not reads
    its whole window, as every listing did before)."""
    try:
        return "enough" in inspect.signature(list_jobs).parameters
    except (TypeError, ValueError):
        return False


def _list(provider: Provider, since: datetime, enough: _Stop | None) -> list:
    method = provider.list_jobs
    if enough is not None and _pages_on_request(getattr(method, "__func__", method)):
        return method(created_after=since, enough=enough)
    return method(created_after=since)
