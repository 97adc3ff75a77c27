"""`ftctl rehome AGENT --to PROVIDER`: the agent's promoted spec trained on
another provider, promoted only on parity with the model it replaces.

Planning reads the database and the descriptors only (`--plan` stops
there); recording a golden set asks the promoted model on its own provider;
storing writes each job with its re-home (and its golden set) in one
transaction. Nothing is stored unless every move passed its checks.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from ftctl.controller.config import Config
from ftctl.controller.ledger.creation import new_job_row
from ftctl.controller.ledger.events import record
from ftctl.controller.ledger.files import file_sha256
from ftctl.controller.ledger.pricing import PriceUnknown, price_for
from ftctl.controller.preflight.submit import Plan, SubmitError, _preflight

# how long the gate's answers may be when a golden set is recorded
GOLDEN_MAX_TOKENS = 512


@dataclass
class Move:
    """One agent's promoted model, and where and how it would move."""

    agent: str
    from_job: int
    from_provider: str
    from_model: str  # the promoted fine-tuned model
    to_provider: str
    to_model: str = ""  # the base model trained on there
    mapping: str = ""  # one line: the hyperparameters kept, renamed, dropped
    metric: str = "exact"
    min_improvement: float = 0.0
    eval_file: str | None = None  # the agent's; None: a golden set
    golden: int | None = None  # how many prompts a golden set asks
    estimated_cost: float | None = None
    duration: float | None = None  # seconds, and how that was found
    duration_source: str = ""
    ends: date | None = None  # when the promoted model stops answering
    ends_source: str | None = None
    skip: str | None = None  # why it does not move
    plan: Plan | None = None
    prompts: list[list[dict[str, Any]]] = field(default_factory=list)  # a golden set's prompts
    answers: list[str] = field(default_factory=list)  # ... and the promoted model's answers

    @property
    def gate(self) -> str:
        worse = (f"at most {abs(self.min_improvement) * 100:g} points worse" if self.min_improvement < 0 else
                 "as good" if self.min_improvement == 0 else f"at least {self.min_improvement * 100:g} points better")
        on = f"{self.eval_file}" if self.eval_file else f"a golden set of {self.golden} prompts from its training data"
        return f"parity with {self.from_model} on {on} ({self.metric}, {worse})"

    @property
    def end_text(self) -> str:
        if self.ends is None:
            return "no known end date"
        return f"stops answering on {self.ends.isoformat()}" + (f" ({self.ends_source})" if self.ends_source else "")

    def as_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "from_job": self.from_job, "from_provider": self.from_provider,
                "from_model": self.from_model, "to_provider": self.to_provider, "to_model": self.to_model or None,
                "hyperparameters": dict(self.plan.hyperparameters) if self.plan else None,
                "mapping": self.mapping or None, "gate": self.gate if not self.skip else None,
                "metric": self.metric, "min_improvement": self.min_improvement, "eval_file": self.eval_file,
                "golden": self.golden, "estimated_cost": self.estimated_cost, "estimated_seconds": self.duration,
                "estimated_seconds_source": self.duration_source or None,
                "ends": self.ends.isoformat() if self.ends else None, "ends_source": self.ends_source,
                "skip": self.skip}


def plan_rehomes(config: Config, store: Any, names: list[str], *, all_agents: bool, to: str | None,
                 model: str | None = None, golden: int | None = None, min_improvement: float | None = None,
                 metric: str | None = None, allow_pii: bool = False,
                 hyperparameters: dict[str, Any] | None = None) -> list[Move]:
    """Each named agent's (or, with `all_agents`, every agent's) promoted
    model and its move to `to`; SubmitError, in one line, at the first problem."""
    from ftctl.controller.agents import agent_name_error
    from ftctl.providers.registry import kind as kind_of

    if not to:
        raise SubmitError("--to: name the provider to move to (see `ftctl rehome --help`)")
    if to not in config.providers:
        known = ", ".join(sorted(config.providers)) or "none"
        raise SubmitError(f"--to: unknown provider {to!r} (configured: {known})")
    target = kind_of(config.providers[to].kind)
    if not (target.chat or target.chat_batches):
        raise SubmitError(f"--to {to}: its models cannot answer chat, so parity cannot be proved there")
    if golden is not None and golden < 1:
        raise SubmitError(f"--golden {golden}: ask at least 1 prompt")
    if metric is not None and metric not in ("exact", "contains", "json"):
        raise SubmitError(f"--metric {metric!r}: exact, contains or json")
    if min_improvement is not None and not -1 <= min_improvement <= 1:
        raise SubmitError(f"--min-improvement {min_improvement}: from -1 to 1 (-0.02: at most 2 points worse)")
    if all_agents and names:
        raise SubmitError("give agent names or --all, not both")
    promoted = store.promoted_jobs() if store is not None else {}
    if not names and not all_agents:
        raise SubmitError("name the agents to re-home, or pass --all (see `ftctl rehome --help`)")
    for name in dict.fromkeys(names):
        if agent_name_error(name, "agents"):
            raise SubmitError(agent_name_error(name, "agents"))
        if name not in promoted:
            raise SubmitError(f"agent {name!r} has no promoted model to re-home (see `ftctl models`)")
    chosen = list(dict.fromkeys(names)) if names else sorted(promoted)
    moves = [_move(config, store, promoted[a], to, model=model, golden=golden, min_improvement=min_improvement,
                   metric=metric, allow_pii=allow_pii, overrides=hyperparameters) for a in chosen]
    return moves


def _move(config: Config, store: Any, job: Any, to: str, *, model: str | None, golden: int | None,
          min_improvement: float | None, metric: str | None, allow_pii: bool,
          overrides: dict[str, Any] | None = None) -> Move:
    from ftctl.providers.moves import map_hyperparameters, stops_answering
    from ftctl.providers.registry import kind as kind_of

    agent = job.agent
    move = Move(agent, job.id, job.provider, job.fine_tuned_model, to)
    source_section = config.providers.get(job.provider)
    if source_section is not None:
        move.ends, move.ends_source = stops_answering(kind_of(source_section.kind), job.model)
    if job.provider == to:
        move.skip = f"already on {to}"
        return move
    where = f"rehome {agent}"
    if source_section is None:
        raise SubmitError(f"{where}: its model is on provider {job.provider!r}, which is not in the config any more: "
                          f"the gate must ask it")
    source, target = kind_of(source_section.kind), kind_of(config.providers[to].kind)
    if not (source.chat or source.chat_batches):
        raise SubmitError(f"{where}: provider {job.provider!r} cannot answer chat, so parity cannot be proved")
    _gate(config, move, golden=golden, min_improvement=min_improvement, metric=metric)
    move.to_model = model or _same_model(config, job, to, where)
    hyperparameters, move.mapping = map_hyperparameters(source, target, dict(job.hyperparameters or {}))
    if overrides:  # --hp: what the new provider takes beyond the mapping (lora = false on a cluster, say)
        unknown = target.unknown_hyperparameters(overrides)
        if unknown:
            raise SubmitError(f"--hp: {', '.join(unknown)} not known to {target.kind} "
                              f"(known: {', '.join(sorted(target.hyperparameters))})")
        hyperparameters = {**hyperparameters, **overrides}
        move.mapping += f"; set {', '.join(f'{k} = {v!r}' for k, v in overrides.items())} (--hp)"
    move.plan = _spec(config, job, to, move.to_model, hyperparameters, where)
    move.plan = _preflight(config, move.plan, where, allow_pii=allow_pii, quote=False, phone_region=None)
    move.estimated_cost = move.plan.estimated_cost
    if move.golden and move.plan.examples is not None:  # a golden set is at most every example there is
        move.golden = min(move.golden, move.plan.examples)
    twin = store.live_twin(_identity(move.plan)) if store is not None else None
    if twin is not None:
        settled = f", its model {twin.promotion}" if twin.promotion else ""
        move.skip = f"already re-homed as job {twin.id} ({twin.state}{settled})"
    move.duration, move.duration_source = duration(config, store, to)
    return move


def _gate(config: Config, move: Move, *, golden: int | None, min_improvement: float | None,
          metric: str | None) -> None:
    conf = config.agents[move.agent].evaluation if move.agent in config.agents else None
    if golden is not None and (conf is None or conf.compare_to != "promoted"):
        move.golden, move.metric = golden, metric or "exact"
        move.min_improvement = min_improvement if min_improvement is not None else 0.0
        return
    if conf is None:
        raise SubmitError(f"rehome {move.agent}: no [agents.{move.agent}.eval] to prove parity on: pass --golden N "
                          f"to record the promoted model's answers to N prompts of its training data")
    if conf.compare_to != "promoted":
        raise SubmitError(f"agents.{move.agent}.eval.compare_to: is {conf.compare_to!r}; a re-home is promoted only "
                          f"on parity with the promoted model: set compare_to = \"promoted\" (min_improvement = "
                          f"-0.02: at most 2 points worse), or pass --golden N")
    if metric is not None and metric != conf.metric:
        raise SubmitError(f"--metric {metric}: agents.{move.agent}.eval.metric is {conf.metric!r}; --metric is for "
                          f"a golden set")
    move.eval_file, move.metric = conf.file, conf.metric
    move.min_improvement = min_improvement if min_improvement is not None else conf.min_improvement


def _same_model(config: Config, job: Any, to: str, where: str) -> str:
    """The base model the promoted job trained from, where the new provider
    can count and price it; else the one line that asks for --model."""
    from ftctl.providers.registry import kind as kind_of

    kind = config.providers[to].kind
    model = job.model
    if not model.startswith("@") and job.model_job_id is None:
        try:
            kind_of(kind).counter(model)
            price_for(kind, model, config.price_overrides, section=config.providers[to])
            return model
        except Exception:  # noqa: BLE001 - not a model this provider knows
            pass
    was = job.base_model or model
    raise SubmitError(f"--model: {where} trained {was} on {job.provider}, which {to} ({kind}) does not train; "
                      f"name the base model to train on {to}")


def _spec(config: Config, job: Any, to: str, model: str, hyperparameters: dict[str, Any], where: str) -> Plan:
    """The promoted job's data, checked to be the same bytes it trained on."""
    from ftctl.providers.registry import kind as kind_of

    files = job.training_files or [{"file": job.training_file, "weight": 1.0, "hash": job.content_hash}]
    if len(files) > 1 or float(files[0].get("weight", 1.0)) != 1.0:
        if not kind_of(config.providers[to].kind).file_weights:
            raise SubmitError(f"{where}: job {job.id} trained on weighted files; {to} takes one file without a weight")
    checked = []
    for f in files:
        path = Path(f["file"])
        try:
            digest = file_sha256(path)
        except OSError:
            raise SubmitError(f"{where}: training file {path} of job {job.id} cannot be read any more") from None
        if digest != f["hash"]:
            raise SubmitError(f"{where}: training file {path} changed since job {job.id} trained on it: a re-home "
                              f"trains the same data")
        checked.append((path, float(f.get("weight", 1.0)), digest))
    multi = tuple(checked) if job.training_files else ()
    return Plan(job.agent, to, model, checked[0][0], job.content_hash, hyperparameters, training_files=multi)


def _identity(plan: Plan) -> str:
    from ftctl.models.tables import job_identity

    return job_identity(plan.agent, plan.provider, plan.model, plan.content_hash, dict(plan.hyperparameters))


def duration(config: Config, store: Any, provider: str) -> tuple[float | None, str]:
    """About how long a job takes on `provider`: the median, submit to
    success, of its last jobs that succeeded; else what its section says."""
    found = store.durations(provider) if store is not None else []
    if found:
        return round(statistics.median(found)), f"median of the last {len(found)} jobs on {provider}"
    section = config.providers[provider]
    parts = [getattr(section, k, None) for k in ("queue_time", "validate_time", "train_time")]
    if all(isinstance(p, (int, float)) for p in parts):
        return round(sum(parts)), f"providers.{provider}'s queue, validate and train times"
    return None, f"unknown: no job has succeeded on {provider} yet"


def golden_prompts(move: Move) -> list[list[dict[str, Any]]]:
    """N prompts of the promoted job's training data, spread over it (the
    conversation up to each example's last assistant answer)."""
    assert move.plan is not None and move.golden
    prompts = []
    for path in [p for p, _, _ in move.plan.training_files] or [move.plan.training_file]:
        for raw in Path(path).read_bytes().splitlines():
            try:
                messages = json.loads(raw).get("messages")
            except (ValueError, AttributeError):
                continue
            if (isinstance(messages, list) and len(messages) > 1 and isinstance(messages[-1], dict)
                    and messages[-1].get("role") == "assistant"):
                prompts.append([{"role": m.get("role"), "content": m.get("content")} for m in messages[:-1]])
    if len(prompts) <= move.golden:
        return prompts
    step = len(prompts) / move.golden
    return [prompts[int(i * step)] for i in range(move.golden)]


def record_golden(config: Config, move: Move, provider: Any = None) -> Move:
    """The promoted model's answers to the golden set's prompts, asked on its own provider."""
    from ftctl.providers import build_provider
    from ftctl.providers.base import ProviderError

    prompts = golden_prompts(move)
    own = provider is None
    provider = provider or build_provider(move.from_provider, config.providers[move.from_provider],
                                          config.provider_env())
    try:
        answers = [provider.complete(move.from_model, [dict(m) for m in p], max_tokens=GOLDEN_MAX_TOKENS)
                   for p in prompts]
    except ProviderError as exc:
        raise SubmitError(f"rehome {move.agent}: recording the golden set on {move.from_provider} failed: "
                          f"{exc.message}") from None
    finally:
        if own:
            provider.close()
    return replace(move, prompts=prompts, answers=answers, golden=len(prompts))


def store_rehomes(store: Any, moves: list[Move]) -> list[tuple[Move, int | None, str]]:
    """Each move's job, its re-home and its golden set, in one transaction
    each; (move, job id, note). A live job with the same spec on the new
    provider is not stored twice."""
    from sqlmodel import select

    from ftctl.models import GoldenAnswer, Job, Rehome, utcnow
    from ftctl.models.schema import LIVE_STATES

    out = []
    for move in moves:
        if move.skip or move.plan is None:
            out.append((move, None, move.skip or ""))
            continue
        plan, now = move.plan, utcnow()
        files = [{"file": str(p), "weight": w, "hash": h} for p, w, h in plan.training_files] or None
        with store.write() as s:
            job = new_job_row(agent=plan.agent, provider=plan.provider, model=plan.model,
                              training_file=plan.training_file, content_hash=plan.content_hash,
                              hyperparameters=plan.hyperparameters, now=now, estimated_cost=plan.estimated_cost,
                              data_tokens=plan.data_tokens, training_files=files)
            job.storage_per_month = plan.storage_per_month or None
            twin = s.exec(select(Job).where(Job.identity == job.identity, Job.state.in_(LIVE_STATES))).first()
            if twin is not None:
                out.append((move, twin.id, f"already re-homed as job {twin.id} ({twin.state})"))
                continue
            s.add(job)
            s.flush()
            record(s, job, before=None, after="prepared", trigger="create", now=now,
                   reason=f"re-homes job {move.from_job} ({move.from_model} on {move.from_provider}); {move.mapping}")
            rehome = Rehome(job_id=job.id, agent=move.agent, from_job_id=move.from_job, from_model=move.from_model,
                            from_provider=move.from_provider, metric=move.metric,
                            min_improvement=move.min_improvement, golden=move.golden if move.prompts else None,
                            mapping=move.mapping, created_at=now)
            s.add(rehome)
            s.flush()
            for i, (prompt, answer) in enumerate(zip(move.prompts, move.answers)):
                s.add(GoldenAnswer(rehome_id=rehome.id, example=i, prompt=prompt, expected=answer))
            out.append((move, job.id, ""))
    return out
