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
_EVAL_COLUMNS = ("id", "job_id", "metric", "file", "examples", "candidate_model", "compare_model", "min_improvement",
                 "estimated_cost", "started_at", "finished_at", "candidate_score", "compare_score", "improvement",
                 "last_error", "error", "compare_provider")
EvalRow = namedtuple("EvalRow", _EVAL_COLUMNS)


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
        answered = self._one("SELECT COUNT(*) FROM eval_answers WHERE evaluation_id = :id", {"id": values[0]})[0]
        return EvalRow(*values), int(answered)
