"""What the dashboard reads beside the listing and `show` (models.reads,
without the ORM): the events stream since a point, the providers' learned
state, spend by month, each agent's latest job and a gate's regressed
examples.

A mixin of `Reads`, kept apart so each stays readable.
"""

from __future__ import annotations

from collections import namedtuple
from datetime import datetime
from typing import Any

ProviderRow = namedtuple("ProviderRow", "name learned_limit learned_at paused_why paused_message paused_until "
                                        "slots_used slots_limit")
SpendRow = namedtuple("SpendRow", "month agent provider jobs estimated actual")
RegressedRow = namedtuple("RegressedRow", "example candidate_answer candidate_score compare_answer compare_score")


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


class DashboardReads:
    """Mixed into Reads: needs `_rows()`, `_one()` and `_engine`."""

    def last_event_seq(self) -> int:
        return int(self._one("SELECT COALESCE(MAX(id), 0) FROM job_events")[0])

    def events_since(self, after: int, limit: int = 500) -> list[tuple[int, int]]:
        """(seq, job id) of the events after `after`, oldest first."""
        return [(int(seq), int(job)) for seq, job in self._rows(
            "SELECT id, job_id FROM job_events WHERE id > :after ORDER BY id LIMIT :n", {"after": after, "n": limit})]

    def provider_rows(self) -> list[ProviderRow]:
        rows = self._rows("SELECT name, learned_limit, learned_at, paused_why, paused_message, paused_until, "
                          "slots_used, slots_limit FROM provider_state ORDER BY name")
        return [ProviderRow(r[0], r[1], _time(r[2]), r[3], r[4], _time(r[5]), r[6], r[7]) for r in rows]

    def spend_by_month(self) -> list[SpendRow]:
        """Succeeded jobs by the month they finished (UTC), agent and provider:
        how many, their estimates and what they cost (the provider's figure,
        else the estimate), newest month first."""
        month = "strftime('%Y-%m', updated_at)" if self._engine is None else "to_char(updated_at, 'YYYY-MM')"
        rows = self._rows(f"SELECT {month} AS m, agent, provider, COUNT(*), COALESCE(SUM(estimated_cost), 0.0), "
                          "COALESCE(SUM(COALESCE(actual_cost, estimated_cost, 0.0)), 0.0) FROM jobs "
                          "WHERE state = 'succeeded' GROUP BY m, agent, provider ORDER BY m DESC, agent, provider")
        return [SpendRow(r[0], r[1], r[2], int(r[3]), float(r[4]), float(r[5])) for r in rows]

    def latest_by_agent(self) -> dict[str, tuple[int, str]]:
        """Each agent's newest job: (job id, state)."""
        return {agent: (int(job), state) for agent, job, state in self._rows(
            "SELECT agent, id, state FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs GROUP BY agent)")}

    def regressed(self, evaluation_id: int, limit: int = 20) -> list[RegressedRow]:
        """The examples the candidate scored below the model it is compared
        with, the worst first."""
        rows = self._rows(
            "SELECT c.example, c.answer, c.score, k.answer, k.score FROM eval_answers AS c JOIN eval_answers AS k "
            "ON k.evaluation_id = c.evaluation_id AND k.example = c.example AND k.role = 'compare' "
            "WHERE c.evaluation_id = :id AND c.role = 'candidate' AND c.score < k.score "
            "ORDER BY k.score - c.score DESC, c.example LIMIT :n", {"id": evaluation_id, "n": limit})
        return [RegressedRow(*r) for r in rows]
