"""The evaluation gate's I/O: the eval file, its cost, the chat calls and
their stored answers. What follows is decided in `engine.gate`.

The questions: each example of the eval file `repeats` times by both
models, then each prompt of the safety file by the candidate; each answer
is stored by (part, example, role, repeat) with its score and the seconds it
took. The chat calls run inside the tick in bounded slices: each tick asks the
evaluations' next questions, `concurrency` at a time, for at most
`Ticker.eval_slice` seconds over all of them (a call already out is waited
for; each is bounded by the provider's timeout), and stores every answer
with its score the moment it comes. A daemon killed halfway resumes from the stored
answers and never asks the same question twice. A 429 stops the slice and
the evaluation waits for its Retry-After (another passing error: a backoff);
an error no retry can mend (a 4xx, a model the provider does not know, a
scorer that fails) ends it, and the gate rejects the model.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ftctl.controller.engine.gate import ROLES, checkpoint_role, score, total_questions
from ftctl.controller.engine.jobs import note_many
from ftctl.controller.engine.policy import backoff_seconds
from ftctl.controller.engine.step_types import GateView, Note
from ftctl.controller.ledger.criteria import measure
from ftctl.controller.ledger.eval_files import (EvalExample, EvalFileError, SafetyPrompt, ScorerError, eval_estimate,
                                                load_eval_file, load_safety_file, run_scorer, safety_estimate,
                                                safety_score)
from ftctl.controller.ledger.reasons import Reason
from ftctl.controller.ledger.states import CANDIDATE, EVALUATING
from ftctl.models import Evaluation, Job, Rehome
from ftctl.providers.base import NotFoundError, PermanentError, ProviderError
from ftctl.providers.registry import KINDS

# an evaluation whose examples are a re-home's golden set names it so (not a file)
GOLDEN = "golden:"


def golden_file(rehome_id: int) -> str:
    return f"{GOLDEN}{rehome_id}"


class Evaluations:
    """Mixed into the Ticker: what it knows of gates, and the slices it runs."""

    # seconds of chat calls one tick may spend, over all evaluations
    eval_slice: float = 2.0

    def _score(self, run: Evaluation, conf: Any, examples: list, safety: list, part: str, i: int,
               answer: str) -> float:
        """One answer's score: a safety prompt's by its rule, an example's by the gate's metric (or its
        scorer command). Asked by chat or answered in a batch, an answer is scored here."""
        if part == "safety":
            return safety_score(safety[i], answer)
        if run.metric == "command":
            return run_scorer(conf.command, self.config.base_dir, examples[i], answer)
        return score(run.metric, examples[i].expected, answer)

    def _eval_deadline(self) -> float:
        """When this tick stops asking questions (monotonic): `eval_slice`
        seconds from its first question, over all its evaluations."""
        if self._eval_until is None:
            self._eval_until = time.monotonic() + self.eval_slice
        return self._eval_until

    def _chat_quiet(self) -> dict[str, datetime]:
        """provider -> until when no evaluation asks it anything (a 429's
        Retry-After holds for every evaluation on that provider)."""
        return self._quiet_chat

    def _gate_config(self, agent: str) -> Any:
        conf = self.config.agents.get(agent)
        return conf.evaluation if conf is not None else None

    def _gates(self, rows: list[Job]) -> dict[int, GateView]:
        """GateViews of succeeded jobs whose model's promotion is open."""
        open_rows = [r for r in rows if r.state == "succeeded" and r.promotion in (CANDIDATE, EVALUATING)]
        runs = self.store.evaluations([r.id for r in open_rows if r.promotion == EVALUATING])
        progress = self.store.eval_progress([e.id for e in runs.values()])
        rehomes = self.store.rehomes([r.id for r in open_rows])
        out: dict[int, GateView] = {}
        for row in open_rows:
            conf = self._job_gate(row, rehomes.get(row.id))
            if conf is None:
                out[row.id] = GateView(row.id, configured=False)
            elif row.promotion == EVALUATING:
                out[row.id] = self._running_gate(row, runs.get(row.id), progress)
            else:
                out[row.id] = self._new_gate(row, conf, rehomes.get(row.id))
        return out

    def _job_gate(self, row: Job, rehome: Rehome | None) -> Any:
        """The gate a job's model must pass: its agent's [eval]; for a re-home
        (`ftctl rehome`), parity with the model it replaces, on the agent's
        eval file or on its golden set, by the figures stored with it."""
        conf = self._gate_config(row.agent)
        if rehome is None:
            return conf
        from ftctl.controller.agents import EvalConfig

        settings = {"metric": rehome.metric, "min_improvement": rehome.min_improvement, "compare_to": "promoted",
                    "concurrency": conf.concurrency if conf else 4, "max_tokens": conf.max_tokens if conf else 512}
        if rehome.golden:
            return EvalConfig(file=golden_file(rehome.id), **settings)
        if conf is None:  # its [eval] went away since: there is nothing to compare on
            return None
        return conf.model_copy(update=settings)

    def _examples(self, file: str) -> tuple[str, list[EvalExample]]:
        """(hash, examples) of an eval file, or of a re-home's golden set ("golden:ID")."""
        if not file.startswith(GOLDEN):
            return load_eval_file(Path(file))
        rows = self.store.golden(int(file[len(GOLDEN):]))
        if not rows:
            raise EvalFileError(f"golden set {file[len(GOLDEN):]} has no answers")
        examples = [EvalExample(tuple(dict(m) for m in r.prompt), r.expected) for r in rows]
        digest = hashlib.sha256(json.dumps([[r.prompt, r.expected] for r in rows]).encode()).hexdigest()
        return digest, examples

    def _running_gate(self, row: Job, run: Evaluation | None, progress: dict) -> GateView:
        if run is None:
            return GateView(row.id, started=False)
        mine = progress.get(run.id, {})
        means = {role: (mine[role][1] / mine[role][0]) if role in mine and mine[role][0] else None for role in ROLES}
        answered = sum(n for n, _ in mine.values())
        checkpoints = run.checkpoints or []
        total = total_questions(run.examples, run.repeats, run.safety_examples, 1 + len(checkpoints))
        figures = others = None
        if answered >= total and not run.error:  # every question answered: what the answers measure
            batch_kind, answers = self._batch_kind(row, run), self.store.eval_answers(run.id)
            figures = measure(answers, run.repeats, batch_kind)
            others = {checkpoint_role(step): {"step": step, "model": model, "figures": measure(
                answers, run.repeats, batch_kind, role=checkpoint_role(step))} for step, model in checkpoints}
        return GateView(row.id, estimate=run.estimated_cost, started=True, examples=run.examples,
                        answered=answered, total=total, candidate_score=means["candidate"],
                        compare_score=means["compare"], min_improvement=run.min_improvement, metric=run.metric,
                        compare_model=run.compare_model, not_before=run.not_before, error=run.error,
                        max_score_stdev=run.max_score_stdev, max_latency_p95=run.max_latency_p95,
                        safety_examples=run.safety_examples, figures=figures,
                        candidate_model=run.candidate_model, checkpoint_figures=others)

    def _batch_kind(self, row: Job, run: Evaluation) -> str | None:
        """The kind of the provider that answers in batches, where one does (ray)."""
        for name in {row.provider, run.compare_provider or row.provider}:
            section = self.config.providers.get(name)
            if section is not None and KINDS[section.kind].chat_batches:
                return section.kind
        return None

    def _safety(self, conf: Any) -> tuple[str | None, list[SafetyPrompt]]:
        if not getattr(conf, "safety_file", None):
            return None, []
        return load_safety_file(self.config.resolve(conf.safety_file))

    def _new_gate(self, row: Job, conf: Any, rehome: Rehome | None = None) -> GateView:
        path = conf.file if conf.file.startswith(GOLDEN) else str(self.config.resolve(conf.file))
        try:
            digest, examples = self._examples(path)
        except EvalFileError as exc:
            return GateView(row.id, problem=str(exc))
        compare, compare_provider = self._compare_with(row, conf, rehome)
        if compare.startswith("@") or not row.fine_tuned_model:
            return GateView(row.id, problem=f"no model to compare with ({compare})")
        for name in (row.provider, compare_provider):
            if name is not None and name not in self.config.providers:
                return GateView(row.id, problem=f"provider {name!r} is not in the config")
        try:
            safety_hash, safety = self._safety(conf)
        except EvalFileError as exc:
            return GateView(row.id, problem=str(exc))
        kind = self.config.providers[row.provider].kind
        checkpoints: list = []
        if getattr(conf, "checkpoints", "last") == "best" and KINDS[kind].checkpoint_models:
            try:
                checkpoints = self._checkpoints(row)
            except Exception as exc:  # noqa: BLE001 - the provider did not answer: the next tick asks again
                return GateView(row.id, pending=f"the job's checkpoints could not be listed "
                                                f"({getattr(exc, 'message', None) or exc.__class__.__name__})")
        # a provider that answers in batches (ray) answers each question once: no repeats
        batches = any(KINDS[self.config.providers[n].kind].chat_batches for n in {row.provider, compare_provider}
                      if n is not None)
        repeats = 1 if batches else conf.repeats
        key = (digest, kind, row.fine_tuned_model, conf.max_tokens, compare_provider, repeats, safety_hash,
               len(checkpoints))
        estimates = self._eval_estimates
        if key not in estimates:  # a candidate waiting for money is not counted again every tick
            if len(estimates) > 256:
                estimates.clear()
            sides = [(row.provider, row.fine_tuned_model), (compare_provider or row.provider, compare)]
            asked = sum(weight * eval_estimate(examples, self.config.providers[name].kind, model,
                                               self.config.price_overrides, conf.max_tokens,
                                               self.config.providers[name], repeats=repeats)
                        for (name, model), weight in zip(sides, (1 + len(checkpoints), 1))) / 2
            asked += (1 + len(checkpoints)) * safety_estimate(safety, kind, row.fine_tuned_model,
                                                              self.config.price_overrides, conf.max_tokens,
                                                              self.config.providers[row.provider])
            estimates[key] = round(asked, 4)
        estimate = estimates[key]
        start = {"metric": conf.metric, "file": path, "file_hash": digest, "examples": len(examples),
                 "candidate_model": row.fine_tuned_model, "compare_model": compare,
                 "compare_provider": compare_provider, "min_improvement": conf.min_improvement,
                 "repeats": repeats, "temperature": getattr(conf, "temperature", None),
                 "max_score_stdev": getattr(conf, "max_score_stdev", None),
                 "max_latency_p95": getattr(conf, "max_latency_p95", None),
                 "safety_file": str(self.config.resolve(conf.safety_file)) if safety_hash else None,
                 "safety_hash": safety_hash, "safety_examples": len(safety), "checkpoints": checkpoints or None}
        total = total_questions(len(examples), repeats, len(safety), 1 + len(checkpoints))
        return GateView(row.id, estimate=estimate, examples=len(examples), total=total, start=start)

    def _checkpoints(self, row: Job) -> list[list]:
        """[step, model] of each checkpoint of the job but its last (the final
        model itself), by step; asked of the provider once a job."""
        found = self._eval_checkpoints.get(row.id)
        if found is None:
            listed = sorted(self.provider(row.provider).checkpoints(row.provider_job_id))
            found = [[step, model] for step, model in listed[:-1] if model and model != row.fine_tuned_model]
            if len(self._eval_checkpoints) > 256:
                self._eval_checkpoints.clear()
            self._eval_checkpoints[row.id] = found
        return found

    def _compare_with(self, row: Job, conf: Any, rehome: Rehome | None) -> tuple[str, str | None]:
        """(the model the candidate is compared with, the provider it answers
        on where that is not the job's): the base, a model id, or the agent's
        promoted model (a re-home's: the one it replaces) on its own provider."""
        if rehome is not None:
            return rehome.from_model, (rehome.from_provider if rehome.from_provider != row.provider else None)
        if conf.compare_to == "base":
            return row.base_model or row.model, None
        if conf.compare_to != "promoted":
            return conf.compare_to, None
        promoted = self.store.promoted_jobs().get(row.agent)
        if promoted is None or promoted.id == row.id:  # the agent's first model: compared with its base
            return row.base_model or row.model, None
        return promoted.fine_tuned_model, (promoted.provider if promoted.provider != row.provider else None)

    # -- a slice of questions ----------------------------------------------------------

    def _evaluate(self, row: Job, now: datetime) -> None:
        conf = self._job_gate(row, self.store.rehomes([row.id]).get(row.id))
        run = self.store.evaluations([row.id]).get(row.id)
        if conf is None or run is None:
            return
        if run.metric == "command" and not conf.command:  # the config changed under it
            self.store.update_evaluation(run.id, error="metric \"command\" has no scorer in the config any more")
            return
        try:
            digest, examples = self._examples(run.file)
        except EvalFileError as exc:
            self.store.update_evaluation(run.id, error=str(exc))
            return
        try:
            safety_hash, safety = (load_safety_file(Path(run.safety_file)) if run.safety_file else (None, []))
        except EvalFileError as exc:
            self.store.update_evaluation(run.id, error=str(exc))
            return
        if (digest, safety_hash) != (run.file_hash, run.safety_hash):
            # changed under a running evaluation: start over, on the new files
            self.store.reset_evaluation(run.id, file_hash=digest, examples=len(examples), safety_hash=safety_hash,
                                        safety_examples=len(safety))
            self.log.warning("eval file changed; evaluation started over", job_id=row.id, agent=row.agent,
                             provider=row.provider, state=row.state)
            run = self.store.evaluations([row.id])[row.id]
        checkpoints = run.checkpoints or []
        total = total_questions(len(examples), run.repeats, len(safety), 1 + len(checkpoints))
        sides = {"candidate": row.provider, "compare": run.compare_provider or row.provider}
        quiet = max((q for q in (self._chat_quiet().get(n) for n in set(sides.values())) if q is not None),
                    default=None)
        if quiet is not None and self.clock() < quiet:
            self.store.update_evaluation(run.id, not_before=quiet)
            note_many(self.store, [Note(row.id, "succeeded", Reason("eval_backoff", {
                "until": quiet.isoformat(), "why": run.last_error or "the provider asked to wait"}).stored())], now)
            return
        answered = {(a.part, a.example, a.role, a.repeat) for a in self.store.eval_answers(run.id)}
        # a model on a cluster that answers in batches (ray) answers there; the other, on a provider
        # that chats, in this tick's slice (a model re-homed onto ray, compared with its promoted one)
        batched = tuple(r for r in ROLES if KINDS[self.config.providers[sides[r]].kind].chat_batches)
        if batched:
            going = self._evaluate_batches(row, run, conf, examples, safety, answered, now, roles=batched,
                                           provider_name=sides[batched[0]])
            if not going or len(batched) == len(ROLES):
                return
            answered = {(a.part, a.example, a.role, a.repeat) for a in self.store.eval_answers(run.id)}
        # (part, example, role, repeat): every example per repeat by the comparison and each candidate
        # (the final model; with checkpoints = "best" each checkpoint, on the job's provider), then the
        # safety prompts of each candidate
        models = {"candidate": run.candidate_model, "compare": run.compare_model}
        for step, model in checkpoints:
            models[checkpoint_role(step)] = model
            sides[checkpoint_role(step)] = row.provider
        candidates = [r for r in models if r != "compare" and r not in batched]
        todo = [("eval", i, role, r) for r in range(run.repeats) for i in range(len(examples)) for role in models
                if role not in batched]
        todo += [("safety", i, role, 0) for role in candidates for i in range(len(safety))]
        todo = [q for q in todo if q not in answered]
        try:  # each model answers on its own provider
            providers = {role: self.provider(name) for role, name in sides.items()}
            for provider in providers.values():  # what the SDK loads on first use is not the model's latency
                getattr(provider, "warm_chat", lambda: None)()
        except Exception as exc:  # noqa: BLE001 - no client (a key gone, an SDK missing): later, not a failed tick
            self._after_slice(row, run, self._as_provider_error(exc), len(answered), total, now)
            return
        options = {"max_tokens": conf.max_tokens}
        if run.temperature is not None:
            options["temperature"] = run.temperature

        def ask(part: str, i: int, role: str, repeat: int) -> tuple:
            messages = [dict(m) for m in (examples[i].prompt if part == "eval" else safety[i].prompt)]
            began = time.monotonic()
            try:
                answer = providers[role].complete(models[role], messages, **options)
            except ProviderError as exc:
                exc.provider_name = sides[role]  # whose Retry-After it is
                raise
            seconds = round(time.monotonic() - began, 4)
            return part, i, role, repeat, answer, self._score(run, conf, examples, safety, part, i, answer), seconds

        stop: Exception | None = None
        deadline = self._eval_deadline()
        if time.monotonic() >= deadline:
            return  # this tick's time for questions is spent: the next one goes on
        stored = len(answered)
        queue = iter(todo)
        with ThreadPoolExecutor(max_workers=conf.concurrency, thread_name_prefix="ftctl-eval") as pool:
            pending: set = set()
            while True:
                while (stop is None and len(pending) < conf.concurrency and time.monotonic() < deadline
                       and not self.should_stop()):
                    nxt = next(queue, None)
                    if nxt is None:
                        break
                    pending.add(pool.submit(ask, *nxt))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                batch = []
                for future in done:
                    try:
                        batch.append(future.result())
                    except (ProviderError, ScorerError) as exc:
                        stop = _worse(stop, exc)
                    except Exception as exc:  # noqa: BLE001 - a surprise in a client: retried later
                        stop = _worse(stop, self._as_provider_error(exc))
                if batch:
                    self.store.add_eval_answers(run.id, batch, self.clock())
                    stored += len(batch)
        self._after_slice(row, run, stop, stored, total, now)

    def _after_slice(self, row: Job, run: Evaluation, stop: Exception | None, stored: int, total: int,
                     now: datetime) -> None:
        reason = Reason("evaluating", {"done": stored, "total": total})
        if isinstance(stop, (ScorerError, PermanentError, NotFoundError)):
            message = stop.message if isinstance(stop, ProviderError) else str(stop)
            self.store.update_evaluation(run.id, error=message)
        elif stop is not None:
            failures = run.failures + 1
            wait_for = stop.retry_after if getattr(stop, "retry_after", None) is not None else \
                backoff_seconds(failures, self.policy, self.rng)
            until = self.clock() + timedelta(seconds=wait_for)
            if getattr(stop, "retry_after", None) is not None:
                self._chat_quiet()[getattr(stop, "provider_name", None) or row.provider] = until
            self.store.update_evaluation(run.id, not_before=until, failures=failures, last_error=stop.message)
            reason = Reason("eval_backoff", {"until": until.isoformat(), "why": stop.message})
            self.log.warning("evaluation paused", job_id=row.id, agent=row.agent, provider=row.provider,
                             state=row.state, error=stop.message, retry_after=wait_for)
        elif run.not_before is not None or run.last_error is not None:
            self.store.update_evaluation(run.id, not_before=None, last_error=None)
        if (row.reason_code, row.reason_args) != (reason.code, dict(reason.args)):
            note_many(self.store, [Note(row.id, "succeeded", reason.stored())], now)


def _worse(current: Exception | None, new: Exception) -> Exception:
    """Of two errors in one slice, the one that decides: one that ends the
    evaluation, else the longest Retry-After."""
    if current is None:
        return new
    final = (ScorerError, PermanentError, NotFoundError)
    if isinstance(current, final):
        return current
    if isinstance(new, final):
        return new
    return new if (getattr(new, "retry_after", None) or 0) > (getattr(current, "retry_after", None) or 0) else current
