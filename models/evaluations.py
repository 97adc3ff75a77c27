"""The store's queries about the evaluation gate: its runs and their answers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlmodel import func, select

from ftctl.models.tables import EvalAnswer, Evaluation


class EvaluationQueries:
    """Mixed into the Store (which gives `read` and `write`)."""

    def evaluations(self, job_ids: Sequence[int]) -> dict[int, Evaluation]:
        if not job_ids:
            return {}
        with self.read() as s:
            return {e.job_id: e for e in s.exec(select(Evaluation).where(Evaluation.job_id.in_(sorted(set(job_ids)))))}

    def eval_answers(self, evaluation_id: int) -> list[EvalAnswer]:
        with self.read() as s:
            return list(s.exec(select(EvalAnswer).where(EvalAnswer.evaluation_id == evaluation_id)
                               .order_by(EvalAnswer.part, EvalAnswer.example, EvalAnswer.repeat, EvalAnswer.role)))

    def eval_progress(self, evaluation_ids: Sequence[int]) -> dict[int, dict[str, tuple[int, float]]]:
        """{evaluation id: {role: (answers, sum of scores)}}: the eval file's
        answers by role (every repeat), the safety file's as "safety"."""
        if not evaluation_ids:
            return {}
        with self.read() as s:
            rows = s.exec(select(EvalAnswer.evaluation_id, EvalAnswer.part, EvalAnswer.role, func.count(),
                                 func.sum(EvalAnswer.score))
                          .where(EvalAnswer.evaluation_id.in_(sorted(set(evaluation_ids))))
                          .group_by(EvalAnswer.evaluation_id, EvalAnswer.part, EvalAnswer.role))
            out: dict[int, dict[str, tuple[int, float]]] = {}
            for ev, part, role, n, total in rows:
                key = role if part == "eval" else part
                n0, t0 = out.setdefault(ev, {}).get(key, (0, 0.0))
                out[ev][key] = (n0 + int(n), t0 + float(total or 0.0))
            return out

    def add_eval_answers(self, evaluation_id: int, answers: Sequence[tuple], now: datetime) -> None:
        """(part, example, role, repeat, answer, score, seconds) rows, or
        (example, role, answer, score): the eval file's, first repeat, no time;
        one already stored is kept as it was."""
        with self.write() as s:
            have = {(a.part, a.example, a.role, a.repeat) for a in s.exec(select(EvalAnswer).where(
                EvalAnswer.evaluation_id == evaluation_id))}
            for row in answers:
                part, example, role, repeat, answer, score, seconds = \
                    row if len(row) == 7 else ("eval", row[0], row[1], 0, row[2], row[3], None)
                if (part, example, role, repeat) not in have:
                    have.add((part, example, role, repeat))
                    s.add(EvalAnswer(evaluation_id=evaluation_id, part=part, example=example, role=role,
                                     repeat=repeat, answer=answer, score=score, seconds=seconds, at=now))

    def update_evaluation(self, evaluation_id: int, **changes) -> None:
        with self.write() as s:
            row = s.get(Evaluation, evaluation_id)
            if row is not None:
                for key, value in changes.items():
                    setattr(row, key, value)
                s.add(row)

    def reset_evaluation(self, evaluation_id: int, **changes) -> None:
        """The eval file changed under a running evaluation: start it over."""
        with self.write() as s:
            for row in s.exec(select(EvalAnswer).where(EvalAnswer.evaluation_id == evaluation_id)):
                s.delete(row)
            row = s.get(Evaluation, evaluation_id)
            for key, value in changes.items():
                setattr(row, key, value)
            s.add(row)
