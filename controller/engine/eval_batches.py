"""The evaluation gate on a self-hosted cluster (descriptor.chat_batches):
the questions are answered by a job on the cluster that loads each model
once, not by chat calls. A part of `engine.tick.Ticker`, beside
`engine.evaluation`, whose rules it keeps: the answers are scored here with
the same metrics and stored with their scores; a daemon killed halfway
finds its batch again by its id and never asks twice.

A batch's id is the evaluation's key, the number of answers stored when
it started and the number of failures so far: while a batch runs it is
read, never started again; when it ends its answers are stored, so the
next batch (for what is left) has a new id. A batch that failed for good
(a model the cluster cannot load) ends the evaluation, and the gate rejects
the model; any other failure backs off, then a new batch asks what is left.

A batch answers each question once and says nothing of how long an answer
took: repeats are not asked here (the evaluation starts with one) and the
consistency and latency criteria say "not measured on ray"; the safety
prompts are asked in the same batch as the examples ("s:N" keys).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ftctl.controller.engine.gate import ROLES, total_questions
from ftctl.controller.ledger.eval_files import ScorerError
from ftctl.models import Evaluation, Job
from ftctl.providers.base import FAIL_DATA, P_FAILED, NotFoundError, PermanentError, ProviderError, TransientError


class EvalBatches:
    """Mixed into the Ticker, beside `Evaluations`."""

    def _batch_id(self, row: Job, run: Evaluation, answered: int) -> str:
        # the job's client token (random) first: ids of another ftctl install on the same cluster, or of a
        # database started again, never meet this one's (Ray would hand back that other batch as ours)
        return f"ev-{row.client_token or row.id}-{run.id}-{answered}-{run.failures}"

    def _evaluate_batches(self, row: Job, run: Evaluation, conf: Any, examples: list, safety: list,
                          answered: set, now: datetime, roles: tuple[str, ...] = ROLES,
                          provider_name: str | None = None) -> bool:
        """The batch of `roles` on `provider_name` (the job's own by default);
        True when that side is done and nothing stopped the evaluation (the
        other side, on a provider that chats, may go on this tick)."""
        # (part, example, role, repeat) and the key the batch answers it by
        todo = [(("eval", i, role, 0), f"{i}:{role}") for i in range(len(examples)) for role in roles]
        if "candidate" in roles:
            todo += [(("safety", i, "candidate", 0), f"s:{i}") for i in range(len(safety))]
        todo = [(q, key) for q, key in todo if q not in answered]
        if not todo:
            return True
        total = total_questions(len(examples), 1, len(safety))
        # numbered by this side's answers only: the other side's, stored meanwhile, never renumber a running batch
        batch = self._batch_id(row, run, sum(1 for q in answered if q[2] in roles))
        try:
            provider = self.provider(provider_name or row.provider)
            try:
                status, got, _ = provider.answers(batch)
            except NotFoundError:
                status, got = None, {}
            if status is None:  # not started yet: start it, for every question not answered
                models = {r: m for r, m in (("candidate", run.candidate_model), ("compare", run.compare_model))
                          if r in roles}
                questions = [{"key": key, "role": role, "messages": [dict(m) for m in (
                    examples[i].prompt if part == "eval" else safety[i].prompt)]} for (part, i, role, _), key in todo]
                self.guard()
                provider.start_answers(batch, models, questions, conf.max_tokens)
                self.log.info("evaluation batch started", job_id=row.id, agent=row.agent, provider=row.provider,
                              state=row.state, batch=batch, questions=len(questions))
                self._after_slice(row, run, None, len(answered), total, now)
                return True
            if status in ("queued", "running"):
                self._after_slice(row, run, None, len(answered), total, now)
                return True
            scored = []
            for (part, i, role, repeat), key in todo:
                answer = got.get(key)
                if answer is None:
                    continue
                scored.append((part, i, role, repeat, answer, self._score(run, conf, examples, safety, part, i, answer),
                               None))
            if scored:
                self.store.add_eval_answers(run.id, scored, self.clock())
            stop: Exception | None = None
            if status == P_FAILED:
                job = provider.get_job(batch)
                message = f"evaluation batch {batch}: {job.message or 'failed'}"
                stop = PermanentError(message) if job.failure == FAIL_DATA else TransientError(message)
            elif len(scored) < len(todo):  # finished, yet some questions unanswered: a new batch asks them
                stop = TransientError(f"evaluation batch {batch} ended with {len(todo) - len(scored)} "
                                      f"questions unanswered")
        except (ProviderError, ScorerError) as exc:
            stop = exc
        except Exception as exc:  # noqa: BLE001 - a surprise in a client: retried later
            stop = self._as_provider_error(exc)
        stored = len(self.store.eval_answers(run.id))
        self._after_slice(row, run, stop, stored, total, now)
        return stop is None
