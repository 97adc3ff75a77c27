"""The evaluation gate's I/O: the eval file, its cost, the chat calls and
their stored answers. What follows is decided in `engine.gate`.

The chat calls run inside the tick in bounded slices: each tick asks the
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
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ftctl.controller.engine.decisions import GateView, Note
from ftctl.controller.engine.gate import ROLES, score
from ftctl.controller.engine.jobs import note_many
from ftctl.controller.engine.policy import backoff_seconds
from ftctl.controller.engine.reasons import Reason
from ftctl.controller.engine.states import CANDIDATE, EVALUATING
from ftctl.models import Evaluation, Job, Rehome
from ftctl.providers.base import NotFoundError, PermanentError, ProviderError
from ftctl.providers.registry import KINDS

SCORER_TIMEOUT = 60.0
# an evaluation whose examples are a re-home's golden set names it so (not a file)
GOLDEN = "golden:"


def golden_file(rehome_id: int) -> str:
    return f"{GOLDEN}{rehome_id}"


class EvalFileError(Exception):
    """One line naming the eval file, the line and the problem."""


class ScorerError(Exception):
    pass


@dataclass(frozen=True)
class EvalExample:
    prompt: tuple[dict[str, Any], ...]  # the conversation up to the expected answer: roles and contents
    expected: str


_CACHE: dict[tuple[str, int, int], tuple[str, list[EvalExample]]] = {}


def load_eval_file(path: Path) -> tuple[str, list[EvalExample]]:
    """(content hash, examples) of an eval file in the training format: the
    last assistant message of each line is the expected answer."""
    path = Path(path)
    try:
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key in _CACHE:
            return _CACHE[key]
        data = path.read_bytes()
    except FileNotFoundError:
        raise EvalFileError(f"eval file {path} does not exist") from None
    except OSError as exc:
        raise EvalFileError(f"eval file {path} cannot be read ({exc.__class__.__name__})") from None
    examples = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        examples.append(_example(path, number, raw))
    if not examples:
        raise EvalFileError(f"eval file {path} has no examples")
    found = (hashlib.sha256(data).hexdigest(), examples)
    _CACHE.clear()  # one file a gate; a few gates: keep it small
    _CACHE[key] = found
    return found


def _example(path: Path, number: int, raw: bytes) -> EvalExample:
    where = f"eval file {path} line {number}"
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise EvalFileError(f"{where}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages):
        raise EvalFileError(f"{where}: no conversation (\"messages\" with a prompt and the expected answer)")
    last = messages[-1]
    if last.get("role") != "assistant" or not isinstance(last.get("content"), str) or not last["content"].strip():
        raise EvalFileError(f"{where}: the last message must be the assistant's expected answer")
    prompt = tuple({"role": m.get("role"), "content": m.get("content")} for m in messages[:-1])
    if any(not isinstance(m["role"], str) or m["content"] in (None, "") for m in prompt):
        raise EvalFileError(f"{where}: a message has no role or no content")
    return EvalExample(prompt, last["content"])


def eval_estimate(examples: list[EvalExample], kind: str, model: str, overrides: dict | None,
                  max_tokens: int, section: Any = None) -> float:
    """What asking both models every example costs, at most: the prompts'
    tokens plus up to twice the expected answer's (within max_tokens), twice,
    at the model's chat price (its training price where none is known)."""
    from ftctl.controller.preflight.pricing import PriceUnknown, price_for
    from ftctl.providers.registry import kind as kind_of

    try:
        counter = kind_of(kind).counter(model)
    except Exception:  # noqa: BLE001 - no tokenizer here: about four characters a token
        counter = None
    tokens = 0
    for ex in examples:
        convo = [*ex.prompt, {"role": "assistant", "content": ex.expected}]
        try:
            whole = counter.count(convo) if counter else len(json.dumps(convo)) // 4
        except Exception:  # noqa: BLE001
            whole = len(json.dumps(convo)) // 4
        answer = max(1, len(ex.expected) // 4)
        tokens += whole + min(max_tokens, 2 * answer + 16)
    try:
        rate = price_for(kind, model, overrides, section=section).chat_rate
    except PriceUnknown:
        return 0.0
    return round(len(ROLES) * tokens / 1e6 * rate, 4)


def run_scorer(command: list[str], cwd: Path, example: EvalExample, answer: str) -> float:
    """metric = "command": the example and the answer as JSON on stdin, a score
    from 0 to 1 on stdout."""
    payload = json.dumps({"prompt": list(example.prompt), "expected": example.expected, "answer": answer})
    try:
        p = subprocess.run(command, input=payload, capture_output=True, text=True, timeout=SCORER_TIMEOUT, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScorerError(f"scorer {command[0]}: {exc.__class__.__name__}") from None
    if p.returncode != 0:
        raise ScorerError(f"scorer {command[0]} exited {p.returncode}")
    try:
        value = float(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ScorerError(f"scorer {command[0]} printed no score (a number from 0 to 1)") from None
    return min(1.0, max(0.0, value))


class Evaluations:
    """Mixed into the Ticker: what it knows of gates, and the slices it runs."""

    # seconds of chat calls one tick may spend, over all evaluations
    eval_slice: float = 2.0

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
        return GateView(row.id, estimate=run.estimated_cost, started=True, examples=run.examples,
                        answered=sum(n for n, _ in mine.values()), candidate_score=means["candidate"],
                        compare_score=means["compare"], min_improvement=run.min_improvement, metric=run.metric,
                        compare_model=run.compare_model, not_before=run.not_before, error=run.error)

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
        kind = self.config.providers[row.provider].kind
        key = (digest, kind, row.fine_tuned_model, conf.max_tokens, compare_provider)
        estimates = self._eval_estimates
        if key not in estimates:  # a candidate waiting for money is not counted again every tick
            if len(estimates) > 256:
                estimates.clear()
            sides = [(row.provider, row.fine_tuned_model), (compare_provider or row.provider, compare)]
            estimates[key] = round(sum(eval_estimate(examples, self.config.providers[name].kind, model,
                                                     self.config.price_overrides, conf.max_tokens,
                                                     self.config.providers[name]) for name, model in sides) / 2, 4)
        estimate = estimates[key]
        start = {"metric": conf.metric, "file": path, "file_hash": digest, "examples": len(examples),
                 "candidate_model": row.fine_tuned_model, "compare_model": compare,
                 "compare_provider": compare_provider, "min_improvement": conf.min_improvement}
        return GateView(row.id, estimate=estimate, examples=len(examples), start=start)

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
        if digest != run.file_hash:  # changed under a running evaluation: start over, on the new file
            self.store.reset_evaluation(run.id, file_hash=digest, examples=len(examples))
            self.log.warning("eval file changed; evaluation started over", job_id=row.id, agent=row.agent,
                             provider=row.provider, state=row.state)
        sides = {"candidate": row.provider, "compare": run.compare_provider or row.provider}
        quiet = max((q for q in (self._chat_quiet().get(n) for n in set(sides.values())) if q is not None),
                    default=None)
        if quiet is not None and self.clock() < quiet:
            self.store.update_evaluation(run.id, not_before=quiet)
            note_many(self.store, [Note(row.id, "succeeded", Reason("eval_backoff", {
                "until": quiet.isoformat(), "why": run.last_error or "the provider asked to wait"}).stored())], now)
            return
        answered = {(a.example, a.role) for a in self.store.eval_answers(run.id)}
        batches = [KINDS[self.config.providers[n].kind].chat_batches for n in set(sides.values())]
        if any(batches) and len(batches) > 1:
            self.store.update_evaluation(run.id, error=f"the comparison answers on {sides['compare']} and the "
                                         f"candidate on {row.provider}; a provider that answers in batches "
                                         f"evaluates only both models on itself")
            return
        if any(batches):
            self._evaluate_batches(row, run, conf, examples, answered, now)
            return
        todo = [(i, role) for i in range(len(examples)) for role in ROLES if (i, role) not in answered]
        models = {"candidate": run.candidate_model, "compare": run.compare_model}
        try:  # each model answers on its own provider
            providers = {role: self.provider(name) for role, name in sides.items()}
        except Exception as exc:  # noqa: BLE001 - no client (a key gone, an SDK missing): later, not a failed tick
            self._after_slice(row, run, self._as_provider_error(exc), len(answered), len(examples), now)
            return

        def ask(i: int, role: str) -> tuple[int, str, str, float]:
            ex = examples[i]
            try:
                answer = providers[role].complete(models[role], [dict(m) for m in ex.prompt],
                                                  max_tokens=conf.max_tokens)
            except ProviderError as exc:
                exc.provider_name = sides[role]  # whose Retry-After it is
                raise
            if run.metric == "command":
                return i, role, answer, run_scorer(conf.command, self.config.base_dir, ex, answer)
            return i, role, answer, score(run.metric, ex.expected, answer)

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
        self._after_slice(row, run, stop, stored, len(examples), now)

    def _after_slice(self, row: Job, run: Evaluation, stop: Exception | None, stored: int, n: int,
                     now: datetime) -> None:
        total = len(ROLES) * n
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
