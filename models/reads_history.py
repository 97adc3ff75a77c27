"""What `show` reads beside the job (models.reads, without the ORM): its
stored training-log points and its evaluation gate's run.

A mixin of `Reads`, kept apart so each stays readable; the same columns
and order as the store's `log_points`, `evaluations` and `eval_progress`.
"""

from __future__ import annotations

import json
from collections import namedtuple
from datetime import datetime
from typing import Any

PointRow = namedtuple("PointRow", "id job_id provider_job_id key kind at step message metrics")
_EVAL_COLUMNS = ("id", "job_id", "metric", "file", "file_hash", "examples", "candidate_model", "compare_model",
                 "compare_provider", "min_improvement", "estimated_cost", "started_at", "finished_at",
                 "candidate_score", "compare_score", "improvement", "last_error", "error", "repeats", "temperature",
                 "max_score_stdev", "max_latency_p95", "safety_file", "safety_examples", "criteria", "checkpoints",
                 "chosen_model")
EvalRow = namedtuple("EvalRow", _EVAL_COLUMNS)
AnswerRow = namedtuple("AnswerRow", "part example role repeat answer score seconds")


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


class HistoryReads:
    """Mixed into Reads: needs `_rows()` and `_one()`."""

    def log_points(self, job_id: int, provider_job_id: str | None = None) -> list[PointRow]:
        """A job's stored points (one provider job's, when given), in time
        order (a step breaks ties: providers stamp whole seconds)."""
        params: dict[str, Any] = {"job": job_id}
        sql = ("SELECT id, job_id, provider_job_id, key, kind, at, step, message, metrics FROM log_points "
               "WHERE job_id = :job")
        if provider_job_id is not None:
            sql += " AND provider_job_id = :pid"
            params["pid"] = provider_job_id
        rows = [PointRow(*r[:5], _time(r[5]), r[6], r[7],
                         json.loads(r[8]) if isinstance(r[8], (str, bytes)) else r[8]) for r in self._rows(sql, params)]
        return sorted(rows, key=lambda p: (p.at is None, p.at or datetime.min, p.step or 0, p.id))

    def evaluation(self, job_id: int) -> tuple[EvalRow, int] | None:
        """The job's evaluation run and how many answers it has, or None."""
        raw = self._one(f"SELECT {', '.join(_EVAL_COLUMNS)} FROM evaluations WHERE job_id = :job", {"job": job_id})
        if raw is None:
            return None
        values = list(raw)
        for i in (_EVAL_COLUMNS.index("started_at"), _EVAL_COLUMNS.index("finished_at")):
            values[i] = _time(values[i])
        for at in (_EVAL_COLUMNS.index("criteria"), _EVAL_COLUMNS.index("checkpoints")):
            if isinstance(values[at], (str, bytes)):
                values[at] = json.loads(values[at])
        answered = self._one("SELECT COUNT(*) FROM eval_answers WHERE evaluation_id = :id", {"id": values[0]})[0]
        return EvalRow(*values), int(answered)

    def eval_answer_rows(self, evaluation_id: int) -> list[AnswerRow]:
        """An evaluation's answers, by part, example, repeat and role."""
        return [AnswerRow(*r) for r in self._rows(
            "SELECT part, example, role, repeat, answer, score, seconds FROM eval_answers WHERE evaluation_id = :id "
            "ORDER BY part, example, repeat, role", {"id": evaluation_id})]

    def golden_prompts(self, rehome_id: int) -> list[Any]:
        """A re-home's golden set's prompts, by example."""
        return [json.loads(r[0]) if isinstance(r[0], (str, bytes)) else r[0] for r in self._rows(
            "SELECT prompt FROM golden_answers WHERE rehome_id = :id ORDER BY example", {"id": rehome_id})]
