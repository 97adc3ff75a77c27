"""Retry and budget policy: pure arithmetic the decision step and the CLI share."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ftctl.controller.ledger.reasons import Reason


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 5
    backoff_initial: float = 30.0
    backoff_max: float = 1800.0
    capacity_hold: float = 3600.0
    # after a create whose outcome is unknown, how long past the client's
    # timeout a request may still land at the provider
    create_margin: float = 30.0

    @classmethod
    def of(cls, retry: Any) -> "Policy":
        return cls(retry.max_attempts, retry.backoff_initial, retry.backoff_max, retry.capacity_hold,
                   retry.create_margin)


def backoff_seconds(attempt: int, policy: Policy, rng: random.Random) -> float:
    """Capped exponential backoff with jitter: half fixed, half random."""
    base = min(policy.backoff_max, policy.backoff_initial * (2 ** max(0, attempt - 1)))
    return base / 2 + rng.uniform(0, base / 2)


@dataclass(frozen=True)
class Budget:
    """The [budget] caps, and what succeeded jobs spent in the current period."""

    per_job: float | None = None
    total: float | None = None
    spent: float = 0.0

    @property
    def active(self) -> bool:
        return self.per_job is not None or self.total is not None

    def left(self, committed: float) -> float | None:
        """Money left to commit, given what queued and running jobs hold;
        None without a total cap. The one place this sum is made."""
        if self.total is None:
            return None
        return self.total - self.spent - committed

    def ceiling(self, left: float | None) -> float | None:
        """The highest estimate `refuse` lets through with `left` to commit
        (None: any, even none, the budget being off). A job without an
        estimate never fits an active budget."""
        if not self.active:
            return None
        caps = [c for c in (self.per_job, left) if c is not None]
        return min(caps) if caps else float("inf")

    def refuse(self, cost: float | None, left: float | None) -> Reason | None:
        """Why a job that would cost `cost` may not start, or None."""
        if not self.active:
            return None
        if cost is None:
            return Reason("budget_no_estimate")
        if self.per_job is not None and cost > self.per_job:
            return Reason("budget_cap", {"estimate": cost, "cap": self.per_job})
        if left is not None and cost > left:
            return Reason("budget_left", {"estimate": cost})
        return None
