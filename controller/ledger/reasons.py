"""Why a job is where it is: a code and its arguments, rendered to one line.

A reason is stored as data (`reason_code`, `reason_args`), like Slurm's
pending reasons, and turned into its line only here. Numbers that change
while a job waits (slots busy, money left) are not stored: `render` takes
them from `Live` facts at display time, so a tick never rewrites every
waiting job because one slot freed up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ftctl.controller.ledger.criteria import short_text


@dataclass(frozen=True)
class Reason:
    code: str
    args: Mapping[str, Any] = field(default_factory=dict)

    def text(self, live: "Live | None" = None) -> str:
        return render(self.code, self.args, live)

    def stored(self) -> dict[str, Any]:
        """The job columns this reason is stored in."""
        return {"reason_code": self.code, "reason_args": dict(self.args)}


class Live:
    """Facts known at display time: (used, limit) per provider, money left,
    why each provider's line does not move (as the last tick saw it), the
    budget's answer for an estimate, the providers configured. Each may be
    given as a function, asked the first time a reason needs it: a listing
    whose jobs wait for nothing reads none of them."""

    def __init__(self, slots: Mapping[str, tuple[int, int]] | Callable[[], Mapping[str, tuple[int, int]]] | None = None,
                 budget_left: float | None | Callable[[], float | None] = None,
                 lines: Mapping[str, Reason] | Callable[[], Mapping[str, Reason]] | None = None,
                 refusal: Callable[[float | None], Reason | None] | None = None,
                 providers: frozenset[str] | None = None):
        self._slots, self._budget_left, self._lines = slots, budget_left, lines
        self.refusal, self.providers = refusal, providers

    @property
    def lines(self) -> Mapping[str, Reason]:
        if callable(self._lines):
            self._lines = self._lines()
        return self._lines or {}

    @property
    def slots(self) -> Mapping[str, tuple[int, int]]:
        if callable(self._slots):
            self._slots = self._slots()
        return self._slots or {}

    @property
    def budget_left(self) -> float | None:
        if callable(self._budget_left):
            self._budget_left = self._budget_left()
        return self._budget_left


# A waiting job in its provider's line carries one of these codes: why the
# line does not move, or why its estimate does not fit the budget. The tick
# reads a line only as far as admission goes, so a job further back keeps
# what it was told last (at first "daemon"): it is shown as the line and the
# money are now (`shown`). models.schema.IN_LINE_CODES names the same codes.
IN_LINE = frozenset({"daemon", "slot", "paused", "unreachable", "unobserved", "unknown_provider", "budget_left",
                     "budget_cap", "budget_no_estimate", "resources", "resources_short"})
# a line stopped for its whole provider: no job in it goes, whatever it costs
_STOPPED = frozenset({"paused", "unreachable", "unobserved"})


def shown(job: Any, live: "Live | None") -> Reason | None:
    """The reason a stored job is shown with: its own, or for a waiting job
    in line, its provider's line as the last tick saw it (stopped for the
    whole provider; else the budget's answer for its estimate; else what it
    waits for in line). "daemon": no tick has looked at the provider yet."""
    code = job.reason_code
    if code is None:
        return None
    own = Reason(code, job.reason_args or {})
    if live is None or job.state != "prepared" or code not in IN_LINE:
        return own
    if live.providers is not None and job.provider not in live.providers:
        return Reason("unknown_provider", {"provider": job.provider})
    line = live.lines.get(job.provider)
    if line is None:
        return own
    if line.code in _STOPPED:
        return line
    refused = live.refusal(job.estimated_cost) if live.refusal is not None else None
    return refused or line


def clock_text(at: datetime | str) -> str:
    if isinstance(at, str):
        at = datetime.fromisoformat(at)
    return at.strftime("%H:%M:%S UTC")


def _slot(a: Mapping[str, Any], live: Live | None) -> str:
    used, limit = (live.slots.get(a["provider"]) if live else None) or (None, None)
    busy = f"{used}/{limit} busy on {a['provider']}" if used is not None else f"all busy on {a['provider']}"
    return f"waiting for a slot ({busy})"


def _budget_left(a: Mapping[str, Any], live: Live | None) -> str:
    left = live.budget_left if live else None
    if left is None:
        return f"over budget: estimate ${a['estimate']:.2f} > what is left"
    return f"over budget: estimate ${a['estimate']:.2f} > ${max(left, 0.0):.2f} left"


def _paused(a: Mapping[str, Any], live: Live | None) -> str:
    what = {"auth": "provider auth failing", "quota": "provider quota exhausted",
            "unavailable": "provider unavailable"}.get(a.get("why", ""), "provider paused")
    return f"{what}: {a['message']}"


def _backoff(a: Mapping[str, Any], live: Live | None) -> str:
    return f"backoff until {clock_text(a['until'])} (attempt {a['attempt']} of {a['max']}): {a['why']}"


def _create_unknown(a: Mapping[str, Any], live: Live | None) -> str:
    return (f"create outcome unknown ({a['message']}); not created again before the provider's listing "
            f"after {clock_text(a['until'])} shows no such job")


def _eval_budget(a: Mapping[str, Any], live: Live | None) -> str:
    left = live.budget_left if live else None
    over = f"${max(left, 0.0):.2f} left" if left is not None else "what is left"
    return f"evaluation waits, over budget: estimate ${a['estimate']:.2f} > {over}"


def _verdict(a: Mapping[str, Any], live: Live | None) -> str:
    text = _verdict_text(a)
    chosen = a.get("chosen") or {}
    if chosen.get("step") is not None:  # checkpoints = "best" chose a checkpoint over the final model
        return text.replace("promoted: ", f"promoted checkpoint step {chosen['step']} ({chosen['model']}): ", 1)
    if a.get("checkpoints") and not a["passed"]:
        others = len(a["checkpoints"]) - 1
        return text.replace("rejected: ", f"rejected (nor did any of its {others} checkpoints pass): ", 1)
    return text


def _verdict_text(a: Mapping[str, Any]) -> str:
    scores = (f"{a['metric']} {a['candidate']:.2f} vs {a['compare']:.2f} for {a['compare_model']}, "
              f"n={a['n']}")
    checks = a.get("criteria")
    if not checks:  # the score alone
        if a["passed"]:
            return f"promoted: improvement {a['improvement']:+.2f} >= {a['min']:+.2f} ({scores})"
        return f"rejected: improvement {a['improvement']:+.2f} < {a['min']:+.2f} ({scores})"

    texts = [(c, short_text(c, f" ({scores})")) for c in checks]
    if a["passed"]:
        return "promoted: " + "; ".join(t for _, t in texts)
    failed = "; ".join(t for c, t in texts if not c["passed"])
    passed = ", ".join(c["name"] for c, _ in texts if c["passed"])
    return f"rejected: {failed}" + (f" (passed: {passed})" if passed else "")


_TEXT: dict[str, Callable[[Mapping[str, Any], Live | None], str]] = {
    "text": lambda a, _: a["text"],
    "daemon": lambda a, _: "waiting for the daemon",
    "submitting": lambda a, _: "submitting to the provider",
    "slot": _slot,
    "backoff": _backoff,
    "budget_left": _budget_left,
    "budget_cap": lambda a, _: f"over budget: estimate ${a['estimate']:.2f} > per-job cap ${a['cap']:.2f}",
    "budget_no_estimate": lambda a, _: "over budget: the job has no cost estimate (submit it again)",
    "paused": _paused,
    "unreachable": lambda a, _: f"provider unreachable: {a['message']}; retrying",
    "unobserved": lambda a, _: "provider not observed yet",
    "unknown_provider": lambda a, _: f"provider {a['provider']!r} is not in the config",
    "queued_at": lambda a, _: f"{a['why']} ({a['status']})" if a.get("why") else f"queued at provider ({a['status']})",
    "resources": lambda a, _: f"waiting for {a['need']} on the {a['provider']} cluster (none free now)",
    "resources_short": lambda a, _: f"cannot run on {a['provider']}: {a['message']}",
    "training": lambda a, _: f"training ({a['status']})",
    "not_listed": lambda a, _: "not in the provider's listing; checking again",
    "create_unknown": _create_unknown,
    "create_retry": lambda a, _: f"create failed ({a['message']}); trying again at {clock_text(a['until'])}",
    "upload_retry": lambda a, _: f"upload failed ({a['message']}); trying again at {clock_text(a['until'])}",
    "capacity": lambda a, _: f"provider at its concurrency limit ({a['status']}); waiting for a slot",
    "attempts_exhausted": lambda a, _: f"failed after {a['attempts']} attempts: {a['why']}",
    "rejected_data": lambda a, _: f"provider rejected the data: {a['message']}",
    "refused": lambda a, _: f"provider refused the job: {a['message']}",
    "file_unreadable": lambda a, _: f"training file unreadable: {a['path']} ({a['error']})",
    "file_changed": lambda a, _: f"training file changed since submit: {a['path']}",
    "cancelled_provider": lambda a, _: "cancelled at the provider",
    "cancelled_user": lambda a, _: "cancelled by the user",
    "retried": lambda a, _: "retried by the user",
    # a provider that closed (providers.lifecycle), and the move to the next in an agent's list
    "provider_closed": lambda a, _: f"provider {a['provider']} is closed to new jobs: {a['message']}",
    "model_closed": lambda a, _: f"provider {a['provider']} no longer fine-tunes this model: {a['message']}",
    "moved": lambda a, _: f"moved from {a['from']} to {a['to']}: {a['why']}",
    "upstream_elsewhere": lambda a, _: (f"upstream {a['agent']} (job {a['job']}) trained on {a['provider']}: its "
                                        f"model cannot be a base on {a['here']}, and {a['provider']} is not in "
                                        f"this agent's providers; nothing was sent"),
    # pipelines
    "upstream": lambda a, _: f"waiting for {a['agent']} (job {a['job']}, {a['state']})",
    "upstream_failed": lambda a, _: (f"upstream {a['agent']} (job {a['job']}) is {a['state']}; nothing was sent "
                                     f"(`ftctl retry {a['job']}` brings the chain back)"),
    "retried_upstream": lambda a, _: f"retried with its upstream job {a['job']}",
    # the evaluation gate and the promotion of a succeeded job's model
    "evaluating": lambda a, _: f"evaluating ({a['done']}/{a['total']} answers)",
    "eval_budget": _eval_budget,
    "eval_backoff": lambda a, _: f"evaluation paused until {clock_text(a['until'])}: {a['why']}",
    "gate": _verdict,
    "eval_error": lambda a, _: f"rejected: the evaluation could not run: {a['message']}",
    "no_gate": lambda a, _: "promoted (no evaluation configured)",
    "promoted_user": lambda a, _: "promoted by the user (gate overridden)",
    "rejected_user": lambda a, _: "rejected by the user (gate overridden)",
}
CODES = frozenset(_TEXT)


def render(code: str | None, args: Mapping[str, Any] | None, live: Live | None = None) -> str | None:
    if code is None:
        return None
    fn = _TEXT.get(code)
    if fn is None:
        return code
    try:
        return fn(args or {}, live)
    except (KeyError, TypeError, ValueError):  # a row written by another version
        return code


def text(value: str) -> Reason:
    """A reason that is only its text."""
    return Reason("text", {"text": value})
