"""The job lifecycle: states, triggers and which moves are allowed.

One `transitions.Machine` is shared by every job: a stored row is attached
to it with its own state (``add_model(..., initial=stored)``, never the
machine's default), fired, and detached again. The machine is the single
source of truth for what is allowed; the store writes the result and its
history row in one transaction.
"""

from __future__ import annotations

import threading

from transitions import Machine, MachineError

PREPARED = "prepared"
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

STATES = (PREPARED, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
IN_FLIGHT = frozenset({QUEUED, RUNNING})

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
    states=list(STATES),
    transitions=[dict(t) for t in TRANSITIONS],
    initial=PREPARED,
    auto_transitions=False,
    ignore_invalid_triggers=False,
)
_lock = threading.Lock()


def next_state(state: str, trigger: str) -> str:
    """The state `trigger` leads to from `state`, or InvalidTransition."""
    if state not in STATES:
        raise InvalidTransition(trigger, state)
    if trigger not in TRIGGERS:
        raise InvalidTransition(trigger, state)
    carrier = _Carrier()
    with _lock:
        _machine.add_model(carrier, initial=state)
        try:
            carrier.trigger(trigger)
        except MachineError:
            raise InvalidTransition(trigger, state) from None
        finally:
            _machine.remove_model(carrier)
    return carrier.state


def allowed_triggers(state: str) -> list[str]:
    return sorted(t for t in _machine.get_triggers(state) if t in TRIGGERS) if state in STATES else []


def can(state: str, trigger: str) -> bool:
    return trigger in allowed_triggers(state)
