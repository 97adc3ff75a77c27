"""The store's queries about re-homes (`ftctl rehome`): which jobs are
re-homes, their golden sets, and each agent's promoted job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import select

from ftctl.models.tables import GoldenAnswer, Job, JobEvent, Rehome


class RehomeQueries:
    """Mixed into the Store (which gives `read`, `write` and `engine`)."""

    def rehomes(self, job_ids: Sequence[int]) -> dict[int, Rehome]:
        """job id -> its re-home, for the jobs among `job_ids` that are re-homes."""
        if not job_ids:
            return {}
        with self.read() as s:
            return {r.job_id: r for r in s.exec(select(Rehome).where(Rehome.job_id.in_(sorted(set(job_ids)))))}

    def golden(self, rehome_id: int) -> list[GoldenAnswer]:
        with self.read() as s:
            return list(s.exec(select(GoldenAnswer).where(GoldenAnswer.rehome_id == rehome_id)
                               .order_by(GoldenAnswer.example)))

    def rehoming_agents(self) -> frozenset[str]:
        """Agents with a re-home whose model is not settled yet: its job is
        gated (promoted only on parity) even where the agent has no [eval]."""
        sql = ("SELECT DISTINCT r.agent FROM rehomes AS r JOIN jobs AS j ON j.id = r.job_id "
               "WHERE j.state IN ('prepared', 'queued', 'running') OR (j.state = 'succeeded' AND "
               "(j.promotion IS NULL OR j.promotion IN ('candidate', 'evaluating')))")
        with self.engine.connect() as conn:
            return frozenset(row[0] for row in conn.exec_driver_sql(sql))

    def promoted_jobs(self) -> dict[str, Job]:
        """Each agent's newest promoted job (the one the export file names:
        the latest promotion, then the highest id), grouped in the database
        over the index of exactly those jobs, as `promoted_models` is."""
        promoted = "state = 'succeeded' AND promotion = 'promoted' AND fine_tuned_model IS NOT NULL"
        sql = (f"SELECT j.agent, j.id FROM (SELECT agent, MAX(promoted_at) AS at FROM jobs WHERE {promoted} "
               f"GROUP BY agent) AS m JOIN jobs AS j ON j.agent = m.agent AND j.promoted_at = m.at "
               f"WHERE j.{promoted.replace(' AND ', ' AND j.')}")
        with self.engine.connect() as conn:
            ids: dict[str, int] = {}
            for agent, job_id in conn.exec_driver_sql(sql):
                ids[agent] = max(job_id, ids.get(agent, 0))
        found = self.jobs_by_id(list(ids.values()))
        return {agent: found[i] for agent, i in sorted(ids.items()) if i in found}

    def durations(self, provider: str, last: int = 20) -> list[float]:
        """Seconds from the hand-over to success of the last `last` jobs that
        succeeded on `provider` (what `rehome --plan` estimates time with)."""
        with self.read() as s:
            ids = list(s.exec(select(Job.id).where(Job.provider == provider, Job.state == "succeeded")
                              .order_by(Job.id.desc()).limit(last)))
            if not ids:
                return []
            first: dict[int, Any] = {}
            done: dict[int, Any] = {}
            for job_id, to_state, at in s.exec(select(JobEvent.job_id, JobEvent.to_state, JobEvent.at).where(
                    JobEvent.job_id.in_(ids), JobEvent.to_state.in_(("queued", "succeeded")))
                    .order_by(JobEvent.id)):
                (first.setdefault(job_id, at) if to_state == "queued" else done.__setitem__(job_id, at))
        return [(done[i] - first[i]).total_seconds() for i in ids if i in first and i in done]
