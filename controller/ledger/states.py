"""The job lifecycle and the promotion of its model: states, triggers and
which moves are allowed.

Two small `transitions.Machine`s, each shared by every job: a stored row is
attached with its own state (``add_model(..., initial=stored)``, never the
machine's default), fired, and detached again. The lifecycle machine says
how a job moves (prepared -> ... -> succeeded); the promotion machine says
what becomes of a succeeded job's model (candidate -> evaluating ->
promoted | rejected). They are the single source of truth for what is
allowed; the store writes the result and its history row in one transaction.
"""

from __future__ import annotations

import threading
from enum import StrEnum



class JobState(StrEnum):
    """A job's state; stored as its value, and equal to it as a string."""

    PREPARED = "prepared"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


PREPARED, QUEUED, RUNNING = JobState.PREPARED, JobState.QUEUED, JobState.RUNNING
SUCCEEDED, FAILED, CANCELLED = JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED

STATES = tuple(JobState)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
IN_FLIGHT = frozenset({QUEUED, RUNNING})
# what the reconcile step looks at (plus finished jobs that still owe a cancel)
UNFINISHED = frozenset({PREPARED, QUEUED, RUNNING})
# notes: what happened to a job without moving it (a history row named for
# its trigger, as `ftctl events` shows it)
NOTES = ("created", "create-failed", "found", "provider-cancel")
# what `[retention]` deleted at the provider (the job's model, a training
# file it used, its checkpoints but the one its model is): notes too
DELETIONS = ("model-deleted", "file-deleted", "checkpoints-deleted")
# the events a hook may ask for, every kind `ftctl events` shows: the state a
# transition reached, a promotion's (evaluating, promoted: the job's model
# became its agent's, rejected), or a note
EVENTS = (*(s.value for s in STATES), "evaluating", "promoted", "rejected", *NOTES, *DELETIONS)

TRANSITIONS = (
    # handed to the provider (the intent and client token are stored first)
    {"trigger": "submit", "source": PREPARED, "dest": QUEUED},
    # the provider reports training
    {"trigger": "start", "source": QUEUED, "dest": RUNNING},
    # the provider reports success (it may skip a state we did not observe)
    {"trigger": "succeed", "source": [QUEUED, RUNNING], "dest": SUCCEEDED},
    # permanent failure or attempts exhausted
    {"trigger": "fail", "source": [PREPARED, QUEUED, RUNNING], "dest": FAILED},
    # retryable failure or capacity rejection: back to waiting locally
    {"trigger": "requeue", "source": [QUEUED, RUNNING], "dest": PREPARED},
    # by the user (or at the provider)
    {"trigger": "cancel", "source": [PREPARED, QUEUED, RUNNING], "dest": CANCELLED},
    # by the user: run a finished-but-unsuccessful job again
    {"trigger": "retry", "source": [FAILED, CANCELLED], "dest": PREPARED},
    # to the next provider in its agent's list, holding nothing at the old one
    {"trigger": "move", "source": [PREPARED, QUEUED], "dest": PREPARED},
)

TRIGGERS = tuple(sorted({t["trigger"] for t in TRANSITIONS}))


class PromotionState(StrEnum):
    """What a succeeded job's model is to its agent; None before it succeeded."""

    CANDIDATE = "candidate"
    EVALUATING = "evaluating"
    PROMOTED = "promoted"
    REJECTED = "rejected"


CANDIDATE, EVALUATING = PromotionState.CANDIDATE, PromotionState.EVALUATING
PROMOTED, REJECTED = PromotionState.PROMOTED, PromotionState.REJECTED
PROMOTION_STATES = tuple(PromotionState)
# a model whose promotion is still open: the daemon is not done with it
PROMOTION_OPEN = frozenset({CANDIDATE, EVALUATING})

PROMOTION_TRANSITIONS = (
    # the agent has an evaluation: ask both models every example
    {"trigger": "evaluate", "source": CANDIDATE, "dest": EVALUATING},
    # the agent has no evaluation: the model is the agent's at once
    {"trigger": "skip", "source": CANDIDATE, "dest": PROMOTED},
    # the gate's verdict
    {"trigger": "accept", "source": EVALUATING, "dest": PROMOTED},
    {"trigger": "decline", "source": [CANDIDATE, EVALUATING], "dest": REJECTED},
    # a person overrides the gate (`ftctl promote JOB`, `ftctl reject JOB`)
    {"trigger": "promote", "source": [CANDIDATE, EVALUATING, REJECTED], "dest": PROMOTED},
    {"trigger": "reject", "source": [CANDIDATE, EVALUATING, PROMOTED], "dest": REJECTED},
)
PROMOTION_TRIGGERS = tuple(sorted({t["trigger"] for t in PROMOTION_TRANSITIONS}))


class InvalidTransition(Exception):
    def __init__(self, trigger: str, state: str, what: str = "job"):
        self.trigger = trigger
        self.state = state
        allowed = ", ".join((_PROMOTION if what == "model" else _LIFECYCLE).allowed(state)) or "nothing (it is final)"
        super().__init__(f"cannot {trigger} a {state} {what} (allowed from {state}: {allowed})")


class _Carrier:
    """The attachable stand-in for a stored job row."""

    __slots__ = ("state", "__dict__")


class _SharedMachine:
    """One machine for every row; rows are attached only while fired."""

    def __init__(self, states: tuple, transitions: tuple, what: str):
        self.states = states
        self.triggers = tuple(sorted({t["trigger"] for t in transitions}))
        self.what = what
        self.transitions = transitions
        self._machine = None  # built on first use: a read command never imports `transitions`
        self.lock = threading.Lock()

    @property
    def machine(self):
        if self._machine is None:
            from transitions import Machine

            self._machine = Machine(
                model=None,
                states=[s.value for s in self.states],
                # plain strings: transitions would name Enum states by their member names
                transitions=[{k: (v if k == "trigger" else [str(s) for s in v] if isinstance(v, list) else str(v))
                              for k, v in t.items()} for t in self.transitions],
                initial=self.states[0].value,
                auto_transitions=False,
                ignore_invalid_triggers=False,
            )
        return self._machine

    def next(self, state: str, trigger: str) -> str:
        if state not in self.states or trigger not in self.triggers:
            raise InvalidTransition(trigger, state, self.what)
        carrier = _Carrier()
        with self.lock:
            machine = self.machine
            machine.add_model(carrier, initial=str(state))
            from transitions import MachineError

            try:
                carrier.trigger(trigger)
            except MachineError:
                raise InvalidTransition(trigger, state, self.what) from None
            finally:
                machine.remove_model(carrier)
        return carrier.state

    def allowed(self, state: str) -> list[str]:
        if state not in self.states:
            return []
        return sorted(t for t in self.machine.get_triggers(str(state)) if t in self.triggers)


_LIFECYCLE = _SharedMachine(STATES, TRANSITIONS, "job")
_PROMOTION = _SharedMachine(PROMOTION_STATES, PROMOTION_TRANSITIONS, "model")


def next_state(state: str, trigger: str) -> JobState:
    """The state `trigger` leads to from `state`, or InvalidTransition."""
    return JobState(_LIFECYCLE.next(state, trigger))


def allowed_triggers(state: str) -> list[str]:
    return _LIFECYCLE.allowed(state)


def can(state: str, trigger: str) -> bool:
    return trigger in allowed_triggers(state)


def next_promotion(state: str, trigger: str) -> PromotionState:
    """The promotion state `trigger` leads to from `state`, or InvalidTransition."""
    return PromotionState(_PROMOTION.next(state, trigger))


def promotion_triggers(state: str) -> list[str]:
    return _PROMOTION.allowed(state)
