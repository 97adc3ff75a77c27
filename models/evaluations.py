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
                               .order_by(EvalAnswer.example, EvalAnswer.role)))

    def eval_progress(self, evaluation_ids: Sequence[int]) -> dict[int, dict[str, tuple[int, float]]]:
        """{evaluation id: {role: (answers, sum of scores)}}."""
        if not evaluation_ids:
            return {}
        with self.read() as s:
            rows = s.exec(select(EvalAnswer.evaluation_id, EvalAnswer.role, func.count(), func.sum(EvalAnswer.score))
                          .where(EvalAnswer.evaluation_id.in_(sorted(set(evaluation_ids))))
                          .group_by(EvalAnswer.evaluation_id, EvalAnswer.role))
            out: dict[int, dict[str, tuple[int, float]]] = {}
            for ev, role, n, total in rows:
                out.setdefault(ev, {})[role] = (int(n), float(total or 0.0))
            return out

    def add_eval_answers(self, evaluation_id: int, answers: Sequence[tuple[int, str, str, float]],
                         now: datetime) -> None:
        """(example, role, answer, score) rows; one already stored is kept as it was."""
        with self.write() as s:
            have = {(a.example, a.role) for a in s.exec(select(EvalAnswer).where(
                EvalAnswer.evaluation_id == evaluation_id))}
            for example, role, answer, score in answers:
                if (example, role) not in have:
                    have.add((example, role))
                    s.add(EvalAnswer(evaluation_id=evaluation_id, example=example, role=role, answer=answer,
                                     score=score, at=now))

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
