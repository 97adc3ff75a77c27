"""What the decision step takes in and gives out: plain, frozen data.

In: a JobView per stored job, a ProviderView per observed provider. Out:
decisions (a transition, a note, a submission, a cancel, a provider update,
...) that the shell (`engine.tick`) applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from ftctl.controller.ledger.pricing import Price
from ftctl.controller.ledger.reasons import Reason
from ftctl.providers.base import ProviderError, ProviderJob

UNCHANGED: Any = object()


# -- inputs ----------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamView:
    """A job another one waits for (depends_on), as it is now."""

    job_id: int
    agent: str
    state: str  # "gone" when the row no longer exists
    fine_tuned_model: str | None = None
    provider_job_id: str | None = None
    provider: str | None = None  # where it ran (its model stays there)


class JobView(NamedTuple):
    """A stored job as the decision step sees it: plain and immutable. A
    NamedTuple rather than a frozen dataclass: a tick builds one for every
    unfinished job (`JobView._make(row)` from the store's TICK_COLUMNS)."""

    id: int
    agent: str
    provider: str
    state: str
    attempt: int = 0
    client_token: str | None = None
    provider_job_id: str | None = None
    # when the latest create call for client_token went out
    intent_at: datetime | None = None
    not_before: datetime | None = None
    created_at: datetime | None = None
    cancel_pending: bool = False
    reason_code: str | None = None
    reason_args: Mapping[str, Any] | None = None
    provider_status: str | None = None
    estimated_cost: float | None = None
    last_error: str | None = None
    # pipelines: the job whose model this one trains on, and every job it waits for
    model_job_id: int | None = None
    upstream: tuple[UpstreamView, ...] = ()
    promotion: str | None = None
    # provider = [...]: the providers it may still move to, in order, and how
    # long its provider may be paused for auth or quota before it does
    fallbacks: tuple[str, ...] = ()
    fallback_after: float | None = None
    # the model it trains (its price, where the provider reports no cost)
    model: str | None = None

    @classmethod
    def of(cls, row: Any, **extra: Any) -> JobView:
        if isinstance(row, Mapping):
            view = cls(**{f: row[f] for f in cls._fields if f in row}, **extra)
        else:
            view = cls(**{f: getattr(row, f) for f in cls._fields if f not in extra and hasattr(row, f)}, **extra)
        if not view.fallbacks or isinstance(view.fallbacks[0], str):
            return view if view.fallbacks is not None else view._replace(fallbacks=())
        return view._replace(fallbacks=tuple(f["provider"] for f in view.fallbacks))  # a row's: by name

    @property
    def reason(self) -> Reason | None:
        return Reason(self.reason_code, self.reason_args or {}) if self.reason_code else None


@dataclass(frozen=True)
class ProviderView:
    name: str
    configured_limit: int
    jobs: tuple[ProviderJob, ...] | None  # None: the provider could not be observed
    error: ProviderError | None = None
    learned_limit: int | None = None
    learned_at: datetime | None = None
    # after a rejected probe above the learned limit, how long until the next
    # (None: capacity_hold); and how many of our jobs there finished since
    probe_hold: float | None = None
    finished_since_learned: int = 0
    paused_why: str | None = None
    paused_message: str | None = None
    paused_until: datetime | None = None
    paused_since: datetime | None = None
    # why it takes no new jobs (its date passed, or it refused a create as
    # closed to the account); None: it takes them
    closed: str | None = None
    # our provider job ids that the provider says it does not know
    missing: frozenset[str] = frozenset()
    # when the listing in `jobs` was asked for, and how long after a create
    # call went out it may still land (the client's timeout plus a margin)
    listed_at: datetime | None = None
    settle: float = 0.0
    # estimate quote jobs (auto_start=False) we made: never a slot of ours or
    # anyone's; those not yet confirmed cancelled are cancelled again
    quote_ids: frozenset[str] = frozenset()
    pending_quotes: tuple[str, ...] = ()
    # a self-hosted cluster (descriptor.resources): how many more jobs its
    # free resources take now (None: not bounded), what one job needs, and
    # why none can ever run there (no node is big enough)
    room: int | None = None
    room_need: str | None = None
    room_short: str | None = None
    # the waiting jobs in line were read only this far (created_at, id): the
    # ones behind it are not in `jobs` given to the step (None: all of them are)
    line_end: tuple[datetime, int] | None = None
    # the ids of the jobs in `jobs` that are active (None: not counted yet)
    active_ids: frozenset[str] | None = None
    # what training costs here, by the model of each of our jobs in flight:
    # a job that succeeds with trained tokens and no cost (OpenAI) is priced
    # by it in the step (None or a missing model: no price known, no cost)
    prices: Mapping[str, Price] | None = None

    def active(self) -> frozenset[str]:
        """The ids of the listed jobs that hold a slot at the provider (anyone's, quotes too)."""
        if self.active_ids is None:
            return frozenset(pj.id for pj in self.jobs or () if pj.active)
        return self.active_ids


@dataclass(frozen=True)
class GateView:
    """A succeeded job's evaluation gate, as the shell found it: not started
    (its cost `estimate`, or the `problem` that stops it), or under way."""

    job_id: int
    configured: bool = True
    estimate: float = 0.0
    problem: str | None = None
    started: bool = False
    examples: int = 0
    answered: int = 0  # answers stored, both models together
    total: int = 0  # the questions there are: each example per repeat by both models, the safety prompts
    candidate_score: float | None = None  # means so far
    compare_score: float | None = None
    min_improvement: float = 0.0
    metric: str = "exact"
    compare_model: str = ""
    not_before: datetime | None = None
    error: str | None = None  # the evaluation cannot go on: the gate fails
    # the other criteria (ledger.criteria), and once every question is
    # answered what the answers measure
    max_score_stdev: float | None = None
    max_latency_p95: float | None = None
    safety_examples: int = 0
    figures: Mapping[str, Any] | None = None
    # checkpoints = "best": the final model and each checkpoint's figures
    # (role "ckpt-STEP" -> {"step", "model", "figures"})
    candidate_model: str = ""
    checkpoint_figures: Mapping[str, Mapping[str, Any]] | None = None
    # a gate that cannot start yet, and why (the provider did not list the checkpoints)
    pending: str | None = None
    # for a gate not started: the evaluation record to start (metric, file,
    # models, examples, min_improvement)
    start: Mapping[str, Any] | None = None


# -- decisions -------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    job_id: int
    expect: str
    trigger: str
    reason: Reason | None
    updates: dict[str, Any] = field(default_factory=dict)
    provider_status: str | None = None
    # how the provider attempt ended: (outcome, counted)
    attempt_outcome: tuple[str, bool] | None = None
    # with `succeed`: the promotion trigger fired in the same transaction
    # ("skip" when the agent has no evaluation)
    promotion: str | None = None


@dataclass(frozen=True)
class Note:
    """New facts about a job that do not change its state; written only if
    the job is still in `expect` (and still carries `expect_token`)."""

    job_id: int
    expect: str
    updates: dict[str, Any]
    expect_token: str | None = None
    event: tuple[str, str] | None = None  # (trigger, text) for the history


@dataclass(frozen=True)
class Submit:
    """Hand a job to its provider. client_token None: a new submission
    (prepared -> queued, a new token); a token: create again for an intent
    that a listing, read after the first call could have landed, does not show.
    A downstream job names its upstream job's model (`base_model`) and, for a
    provider that continues from a job, that job (`upstream_ref`)."""

    job_id: int
    client_token: str | None = None
    base_model: str | None = None
    upstream_ref: str | None = None


@dataclass(frozen=True)
class Promote:
    """A move of a succeeded job's model (ledger.states' promotion machine);
    `evaluation`: with `evaluate`, the gate's run to start; with `accept` or
    `decline`, its final figures."""

    job_id: int
    expect: str
    trigger: str
    reason: Reason | None
    evaluation: dict[str, Any] | None = None


@dataclass(frozen=True)
class Evaluate:
    """Ask the models the evaluation's next questions (a bounded slice)."""

    job_id: int


@dataclass(frozen=True)
class Move:
    """Move a job that holds nothing at its provider (no create in flight,
    or one proven absent) to its next provider: its settings, estimate and
    cost there, back to `prepared`, with `reason` in its history."""

    job_id: int
    expect: str
    to: str
    reason: Reason


@dataclass(frozen=True)
class CancelAtProvider:
    job_id: int
    provider_job_id: str


@dataclass(frozen=True)
class CancelQuote:
    """A quote job still active at the provider: cancel it (again)."""

    provider: str
    provider_job_id: str


@dataclass(frozen=True)
class QuoteSettled:
    """A quote job is no longer active at the provider: nothing more is owed."""

    provider: str
    provider_job_id: str


@dataclass(frozen=True)
class ForgetUpload:
    """The provider lost an uploaded file: upload it again next time."""

    provider: str
    content_hash: str


@dataclass(frozen=True)
class ProviderUpdate:
    name: str
    learned_limit: Any = UNCHANGED
    learned_at: Any = UNCHANGED
    probe_hold: Any = UNCHANGED
    paused_why: Any = UNCHANGED
    paused_message: Any = UNCHANGED
    paused_until: Any = UNCHANGED

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "name" and v is not UNCHANGED}


@dataclass(frozen=True)
class Slots:
    """What admission saw on a provider: stored for status lines and metrics."""

    name: str
    used: int
    limit: int
    waiting: int  # prepared jobs told to wait for a slot


@dataclass(frozen=True)
class Line:
    """Why a provider's line of waiting jobs does not move (a slot, its
    pause, the cluster's resources; "daemon": it does, at the next tick).
    Stored on the provider's row: a job in line is shown with it
    (ledger.reasons.shown), so the jobs further back are never rewritten."""

    name: str
    reason: Reason


Decision = (Transition | Note | Submit | Move | CancelAtProvider | CancelQuote | QuoteSettled | ForgetUpload
            | ProviderUpdate | Slots | Line | Promote | Evaluate)
