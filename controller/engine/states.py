"""The job lifecycle: states, triggers and which moves are allowed.

One `transitions.Machine` is shared by every job: a stored row is attached
to it with its own state (``add_model(..., initial=stored)``, never the
machine's default), fired, and detached again. The machine is the single
source of truth for what is allowed; the store writes the result and its
history row in one transaction.
"""

from __future__ import annotations

import threading
from enum import StrEnum

from transitions import Machine, MachineError


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
# the events a hook may ask for: the state a transition reached, or a
# promotion (the job's model became its agent's model)
EVENTS = (*(s.value for s in STATES), "promoted")

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
)

TRIGGERS = tuple(sorted({t["trigger"] for t in TRANSITIONS}))


class InvalidTransition(Exception):
    def __init__(self, trigger: str, state: str):
        self.trigger = trigger
        self.state = state
        allowed = ", ".join(allowed_triggers(state)) or "nothing (it is final)"
        super().__init__(f"cannot {trigger} a {state} job (allowed from {state}: {allowed})")


class _Carrier:
    """The attachable stand-in for a stored job row."""

    __slots__ = ("state", "__dict__")


_machine = Machine(
    model=None,
    states=[s.value for s in STATES],
    # plain strings: transitions would name Enum states by their member names
    transitions=[{k: (v if k == "trigger" else [str(s) for s in v] if isinstance(v, list) else str(v))
                  for k, v in t.items()} for t in TRANSITIONS],
    initial=PREPARED.value,
    auto_transitions=False,
    ignore_invalid_triggers=False,
)
_lock = threading.Lock()


def next_state(state: str, trigger: str) -> JobState:
    """The state `trigger` leads to from `state`, or InvalidTransition."""
    if state not in STATES:
        raise InvalidTransition(trigger, state)
    if trigger not in TRIGGERS:
        raise InvalidTransition(trigger, state)
    carrier = _Carrier()
    with _lock:
        _machine.add_model(carrier, initial=str(state))
        try:
            carrier.trigger(trigger)
        except MachineError:
            raise InvalidTransition(trigger, state) from None
        finally:
            _machine.remove_model(carrier)
    return JobState(carrier.state)


def allowed_triggers(state: str) -> list[str]:
    return sorted(t for t in _machine.get_triggers(str(state)) if t in TRIGGERS) if state in STATES else []


def can(state: str, trigger: str) -> bool:
    return trigger in allowed_triggers(state)
