"""The evaluation gate's rules: what becomes of a succeeded job's model.

Pure, like `decide`: (succeeded jobs, what the shell found of their gates,
now, money left) -> promotion moves and evaluation slices to run. The
promotion machine itself is in `ledger.states`; the chat calls and the
stored answers are the shell's (`engine.evaluation`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ftctl.controller.engine.rules import note_if_changed
from ftctl.controller.engine.step_types import Decision, Evaluate, GateView, JobView, Promote
from ftctl.controller.ledger.criteria import ROLES, criteria
from ftctl.controller.ledger.reasons import Reason
from ftctl.controller.ledger.states import CANDIDATE, EVALUATING

# scores are means of per-example scores: a hair of float noise must not
# turn 0.08 into 0.0799999
EPSILON = 1e-9


def score(metric: str, expected: str, answer: str) -> float:
    """One answer against the expected one: `exact` (equal once trimmed),
    `contains`, `json` (parses, and equals as JSON). 1.0 or 0.0."""
    expected, answer = expected.strip(), (answer or "").strip()
    if metric == "exact":
        return float(answer == expected)
    if metric == "contains":
        return float(bool(expected) and expected in answer)
    if metric == "json":
        try:
            return float(json.loads(answer) == json.loads(expected))
        except ValueError:
            return 0.0
    raise ValueError(f"metric {metric!r} is not scored here")


def total_questions(examples: int, repeats: int = 1, safety: int = 0, candidates: int = 1) -> int:
    """What an evaluation asks: each example per repeat by the comparison
    and each candidate (the final model, and with checkpoints = "best" each
    checkpoint), and each safety prompt of each candidate."""
    return examples * max(1, repeats) * (1 + candidates) + safety * candidates


def checkpoint_role(step: int) -> str:
    return f"ckpt-{step}"


def verdict(gate: GateView) -> tuple[bool, dict[str, Any]]:
    """Whether every criterion passes: the candidate beat the comparison by
    at least min_improvement, and the others the gate has (ledger.criteria);
    and the figures that say so (the reason's arguments, stored with the run).
    With checkpoints = "best" each checkpoint is judged so too, and the best
    that passes (its score; a later step on a tie; the final model last) is
    chosen: `chosen` names it, `checkpoints` sums each one up."""
    passed, out = _judge(gate, gate.figures or {})
    if not gate.checkpoint_figures:
        return passed, out
    judged = [(None, gate.candidate_model, passed, out)]
    for c in gate.checkpoint_figures.values():
        ok, figures = _judge(gate, c["figures"])
        judged.append((c["step"], c["model"], ok, figures))
    summary = [{"step": step, "model": model, "score": f["candidate"], "passed": ok}
               for step, model, ok, f in judged]
    passing = [j for j in judged if j[2]]
    if not passing:
        return False, {**out, "checkpoints": summary}
    step, model, _, figures = max(passing, key=lambda j: (j[3]["candidate"], float("inf") if j[0] is None
                                                         else j[0]))
    return True, {**figures, "checkpoints": summary, "chosen": {"step": step, "model": model}}


def _judge(gate: GateView, figures: Any) -> tuple[bool, dict[str, Any]]:
    candidate = figures.get("candidate", gate.candidate_score) or 0.0
    compare = figures.get("compare", gate.compare_score) or 0.0
    improvement = round(candidate - compare, 6)
    better = improvement + EPSILON >= gate.min_improvement
    checks = criteria(gate, figures, improvement, better)
    passed = all(c["passed"] for c in checks)
    out = {"metric": gate.metric, "candidate": round(candidate, 6), "compare": round(compare, 6),
           "compare_model": gate.compare_model, "improvement": improvement, "min": gate.min_improvement,
           "n": gate.examples, "passed": passed}
    if len(checks) > 1:
        out["criteria"] = checks
    return passed, out


def decide_promotions(jobs: Iterable[JobView], gates: Mapping[int, GateView], now: datetime,
                      money: Any) -> list[Decision]:
    """For each succeeded job whose model's promotion is still open: start its
    evaluation (when the budget allows), ask its next questions, or settle it."""
    out: list[Decision | None] = []
    for job in jobs:
        gate = gates.get(job.id)
        if job.promotion == CANDIDATE:
            out.append(_candidate(job, gate, money))
        elif job.promotion == EVALUATING:
            out.append(_evaluating(job, gate, now))
    return [d for d in out if d is not None]


def _candidate(job: JobView, gate: GateView | None, money: Any) -> Decision | None:
    if gate is None or not gate.configured:
        return Promote(job.id, CANDIDATE, "skip", Reason("no_gate"))
    if gate.problem:
        return Promote(job.id, CANDIDATE, "decline", Reason("eval_error", {"message": gate.problem}))
    if gate.pending:
        return note_if_changed(job, Reason("text", {"text": f"evaluation waits: {gate.pending}"}))
    over = money.refuse(gate.estimate)
    if over is not None:
        return note_if_changed(job, Reason("eval_budget", {"estimate": gate.estimate}))
    money.commit(gate.estimate)
    return Promote(job.id, CANDIDATE, "evaluate", Reason("evaluating", {"done": 0, "total": gate.total or total_questions(gate.examples)}),
                   evaluation={**(gate.start or {}), "estimated_cost": gate.estimate})


def _evaluating(job: JobView, gate: GateView | None, now: datetime) -> Decision | None:
    if gate is None or not gate.configured:
        # the agent's [eval] went away while its model was evaluated
        return Promote(job.id, EVALUATING, "accept", Reason("no_gate"), evaluation={"finished_at": now})
    if not gate.started:
        return Promote(job.id, EVALUATING, "decline", Reason("eval_error", {"message": "its evaluation record "
                                                                                       "is missing"}))
    if gate.error:
        return Promote(job.id, EVALUATING, "decline", Reason("eval_error", {"message": gate.error}),
                       evaluation={"finished_at": now})
    if gate.answered >= (gate.total or total_questions(gate.examples)):
        passed, figures = verdict(gate)
        return Promote(job.id, EVALUATING, "accept" if passed else "decline", Reason("gate", figures),
                       evaluation={"finished_at": now, "candidate_score": figures["candidate"],
                                   "compare_score": figures["compare"], "improvement": figures["improvement"],
                                   "criteria": figures.get("criteria"),
                                   "chosen_model": (figures.get("chosen") or {}).get("model")})
    if gate.not_before is not None and now < gate.not_before:
        return None  # its reason says until when it waits
    return Evaluate(job.id)
