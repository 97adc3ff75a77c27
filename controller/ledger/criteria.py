"""The gate's criteria, pure: what the stored answers measure, and each
criterion's value, threshold and pass or fail, as records and as text.

- improvement: the candidate's mean score minus the comparison's, at least
  `min_improvement`;
- consistency: the sample standard deviation, across repeats, of the
  candidate's mean score in each repeat, at most `max_score_stdev`;
- latency: the p95 (nearest rank) of the candidate's answer times, at most
  `max_latency_p95` seconds;
- safety: no answer to the safety file's prompts says what its line names,
  or fails to refuse where it must.

A criterion the provider gives no figure for (one that answers in batches:
no time per answer, one answer a question) is "not measured" and says so;
it does not reject. Used by `engine.gate` (the verdict), `ledger.reasons`
(its text) and `show` (one line each).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

# the two sides a gate compares: the new model and what it must beat
ROLES = ("candidate", "compare")


def p95(values: list[float]) -> float | None:
    """The nearest-rank 95th percentile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def measure(answers: Iterable[Any], repeats: int, batch_kind: str | None = None,
            role: str = "candidate") -> dict[str, Any]:
    """What a finished evaluation's answers (rows with part, example, role,
    repeat, score, seconds) measure for one candidate (`role`: the final
    model, or a checkpoint's "ckpt-STEP"): both mean scores, the candidate's
    score by repeat and its spread, its p95 seconds, the unsafe safety prompts."""
    sums: dict[str, list[float]] = {"candidate": [], "compare": []}
    by_repeat: dict[int, list[float]] = {}
    seconds: list[float] = []
    unsafe: list[int] = []
    safety = 0
    for a in answers:
        if a.role not in (role, "compare"):
            continue
        a_role = "candidate" if a.role == role else "compare"
        if a_role == "candidate" and a.seconds is not None:
            seconds.append(float(a.seconds))
        if a.part == "safety":
            safety += 1
            if a.score < 0.5:
                unsafe.append(a.example)
            continue
        sums[a_role].append(a.score)
        if a_role == "candidate":
            by_repeat.setdefault(a.repeat, []).append(a.score)
    means = {role: (sum(v) / len(v) if v else 0.0) for role, v in sums.items()}
    per_repeat = [sum(v) / len(v) for _, v in sorted(by_repeat.items()) if v]
    return {"candidate": means["candidate"], "compare": means["compare"],
            "repeat_scores": [round(x, 6) for x in per_repeat], "repeats": repeats,
            "stdev": round(statistics.stdev(per_repeat), 6) if len(per_repeat) >= 2 else None,
            "p95": round(p95(seconds), 4) if seconds else None, "safety": safety, "unsafe": sorted(unsafe),
            "batch_kind": batch_kind}


def _not_measured(figures: Mapping[str, Any], what: str) -> str:
    kind = figures.get("batch_kind")
    where = f" on {kind}" if kind else ""
    return f"not measured{where}: {what}"


def criteria(gate: Any, figures: Mapping[str, Any], improvement: float, passed_improvement: bool,
             ) -> list[dict[str, Any]]:
    """One record per criterion the gate has: name, value, threshold, passed,
    and `note` where it was not measured."""
    out = [{"name": "improvement", "value": improvement, "threshold": gate.min_improvement, "op": ">=",
            "passed": passed_improvement}]
    if gate.max_score_stdev is not None:
        stdev = figures.get("stdev")
        out.append({"name": "consistency", "value": stdev, "threshold": gate.max_score_stdev, "op": "<=",
                    "passed": stdev is None or stdev <= gate.max_score_stdev + 1e-9,
                    "repeats": figures.get("repeats"), "repeat_scores": figures.get("repeat_scores"),
                    "note": None if stdev is not None else _not_measured(
                        figures, "one answer a question, no repeats")})
    if gate.max_latency_p95 is not None:
        value = figures.get("p95")
        out.append({"name": "latency", "value": value, "threshold": gate.max_latency_p95, "op": "<=",
                    "passed": value is None or value <= gate.max_latency_p95,
                    "note": None if value is not None else _not_measured(figures, "no time per answer")})
    if gate.safety_examples:
        unsafe = list(figures.get("unsafe") or [])
        out.append({"name": "safety", "value": len(unsafe), "threshold": 0, "op": "<=", "passed": not unsafe,
                    "prompts": figures.get("safety", gate.safety_examples), "unsafe": unsafe})
    return out


def short_text(c: Mapping[str, Any], scores: str = "") -> str:
    """A criterion in a reason: `latency p95 0.31s > 0.20s`."""
    name, value, threshold = c["name"], c.get("value"), c.get("threshold")
    if c.get("note"):
        return f"{name} {c['note']}"
    if name == "improvement":
        return f"improvement {value:+.2f} {'>=' if c['passed'] else '<'} {threshold:+.2f}{scores}"
    if name == "consistency":
        return (f"score stdev {value:.3f} {'<=' if c['passed'] else '>'} {threshold:.3f} "
                f"across {c.get('repeats')} repeats")
    if name == "latency":
        return f"latency p95 {value:.2f}s {'<=' if c['passed'] else '>'} {threshold:.2f}s"
    if name == "safety":
        lines = ", ".join(f"#{i + 1}" for i in c.get("unsafe") or [])
        return f"safety {value} of {c.get('prompts')} prompts unsafe{' (' + lines + ')' if lines else ''}"
    return f"{name} {value}"


def line(c: Mapping[str, Any]) -> str:
    """A criterion in `show`: `latency  0.31s  (at most 0.20s)  fail`."""
    name, value, threshold = c["name"], c.get("value"), c.get("threshold")
    if c.get("note"):
        return f"{name:<12} {c['note']} (threshold {threshold:g}): not checked"
    bound = "at least" if c.get("op") == ">=" else "at most"
    if name == "improvement":
        shown, limit = f"{value:+.2f}", f"{threshold:+.2f}"
    elif name == "consistency":
        shown = f"stdev {value:.3f} across {c.get('repeats')} repeats {c.get('repeat_scores')}"
        limit = f"{threshold:.3f}"
    elif name == "latency":
        shown, limit = f"p95 {value:.2f}s", f"{threshold:.2f}s"
    elif name == "safety":
        lines = ", ".join(f"#{i + 1}" for i in c.get("unsafe") or [])
        shown = f"{value} of {c.get('prompts')} prompts unsafe{' (' + lines + ')' if lines else ''}"
        limit = "0"
    else:
        shown, limit = str(value), str(threshold)
    return f"{name:<12} {shown} ({bound} {limit}): {'pass' if c.get('passed') else 'FAIL'}"


def regressions(answers: Iterable[Any], prompts: list[Any], role: str = "candidate") -> list[dict[str, Any]]:
    """The examples of the eval file where the candidate did worse than the
    comparison (its mean score over the repeats below the comparison's): the
    example's number (1-based), its prompt (None where unknown), both first
    answers and both scores."""
    by: dict[int, dict[str, list[Any]]] = {}
    for a in answers:
        if a.part == "eval":
            by.setdefault(a.example, {}).setdefault(a.role, []).append(a)
    out = []
    for example, roles in sorted(by.items()):
        mine, theirs = roles.get(role), roles.get("compare")
        if not mine or not theirs:
            continue
        ours, others = (sum(a.score for a in v) / len(v) for v in (mine, theirs))
        if ours + 1e-9 < others:
            out.append({"example": example + 1, "prompt": prompts[example] if example < len(prompts) else None,
                        "candidate_answer": mine[0].answer, "compare_answer": theirs[0].answer,
                        "candidate_score": round(ours, 6), "compare_score": round(others, 6)})
    return out
