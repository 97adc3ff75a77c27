"""Training metrics of a simulated job, so that logs have something to show.

A job trains for `train_time` once RUNNING, in `total_steps` steps (the
job's training_steps, else 10 per epoch). Step n is done at
running_at + train_time * n / total, with a train_loss that falls from about
2.5 toward 0.3 (seeded noise per job and step); every fifth of the run (and
the last step) is a checkpoint that also has valid_loss and
valid_mean_token_accuracy. All computed from the job's stored times: nothing
is stored beyond the job itself, and every read agrees with the last.
"""

from __future__ import annotations

import math
import random
from typing import Any

_TERMINAL = ("SUCCESS", "FAILED", "CANCELLED", "CANCELLATION_REQUESTED")


def total_steps(job: dict[str, Any]) -> int:
    hp = job["hyperparameters"]
    steps = hp.get("training_steps")
    if not steps:
        epochs = hp.get("epochs") or hp.get("n_epochs")
        steps = 10 * int(float(epochs)) if isinstance(epochs, (int, float)) else 10
    return max(1, min(1000, int(steps)))


def _running_since(job: dict[str, Any]) -> tuple[float | None, float | None]:
    """(when training started, when it stopped) from the job's history."""
    start = end = None
    for ev in job["events"]:
        status = ev["data"].get("status")
        if status == "RUNNING":
            start = float(ev["created_at"])
        elif start is not None and status in _TERMINAL and end is None:
            end = float(ev["created_at"])
    if job["status"] == "RUNNING":
        start = job["phase_at"]  # exact, where the event has whole seconds
    return start, end


def steps_done(job: dict[str, Any], now: float, train_time: float) -> tuple[int, float | None]:
    """(steps done by `now`, when training started)."""
    total = total_steps(job)
    if job["status"] == "SUCCESS":
        start, _ = _running_since(job)
        return total, start
    start, end = _running_since(job)
    if start is None:
        return 0, None
    elapsed = (end if end is not None else now) - start
    return max(0, min(total, int(total * elapsed / max(train_time, 1e-9)))), start


def loss(job: dict[str, Any], step: int, total: int) -> float:
    rng = random.Random(f"{job['id']}:{step}")
    return round(0.3 + 2.2 * math.exp(-3.0 * step / total) + rng.uniform(-0.04, 0.04), 4)


def points(job: dict[str, Any], now: float, train_time: float) -> list[dict[str, Any]]:
    """One point a step done: {step, at, train_loss, checkpoint, [valid_loss,
    valid_mean_token_accuracy]}."""
    total = total_steps(job)
    done, start = steps_done(job, now, train_time)
    every = max(1, total // 5)
    out = []
    for step in range(1, done + 1):
        at = (start or job["created_at"]) + train_time * step / total
        point = {"step": step, "at": at, "train_loss": loss(job, step, total),
                 "checkpoint": step % every == 0 or step == total}
        if point["checkpoint"]:
            point["valid_loss"] = round(point["train_loss"] + 0.08, 4)
            point["valid_mean_token_accuracy"] = round(min(0.99, 0.5 + 0.45 * step / total), 4)
        out.append(point)
    return out
