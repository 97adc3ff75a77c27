"""`ftctl submit`: check everything first, then store `prepared` jobs.

Nothing is written unless every requested job passed its checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hashlib
import json

from ftctl.controller.agents import agent_name_error
from ftctl.controller.config import Config, root_model, upstream_closure
from ftctl.controller.ledger.creation import Twin, create_job
from ftctl.controller.ledger.eval_files import EvalFileError, load_eval_file, load_safety_file
from ftctl.controller.ledger.files import file_sha256
from ftctl.controller.ledger.pricing import estimate
from ftctl.models import Store


class SubmitError(Exception):
    pass


@dataclass(frozen=True)
class Plan:
    agent: str
    provider: str
    model: str
    training_file: Path
    content_hash: str
    hyperparameters: dict[str, Any]
    estimated_cost: float | None = None
    data_tokens: int | None = None
    examples: int | None = None
    storage_per_month: float = 0.0  # keeping the model, a month (Mistral's storage fee)
    # several weighted files: (path, weight, content hash) each
    training_files: tuple[tuple[Path, float, str], ...] = ()
    # a pipeline: the agents this job waits for, and whether it was asked
    # for by name (an upstream agent comes along, reusing an identical job)
    depends_on: tuple[str, ...] = ()
    named: bool = True
    # provider = [...]: each provider after this one, checked and priced as
    # this one was (dicts: provider, model, hyperparameters, estimated_cost,
    # data_tokens, storage_per_month), and how long a pause lasts before the
    # job moves on
    fallbacks: tuple[dict[str, Any], ...] = ()
    fallback_after: float | None = None
    # what ends soon (providers.lifecycle), and the providers skipped as closed
    warnings: tuple[str, ...] = ()

    @property
    def upstream_model(self) -> str | None:
        return self.model[1:] if self.model.startswith("@") else None


@dataclass(frozen=True)
class Result:
    agent: str
    provider: str
    model: str
    job_id: int | None
    created: bool
    note: str = ""

    estimated_cost: float | None = None
    warnings: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()  # the providers it may move to, in order

    def as_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "provider": self.provider, "model": self.model, "job_id": self.job_id,
                "created": self.created, "estimated_cost": self.estimated_cost, "note": self.note or None,
                "fallbacks": list(self.fallbacks), "warnings": list(self.warnings)}


def _check_file(path: Path, where: str) -> str:
    if not path.exists():
        raise SubmitError(f"{where}: training file {path} does not exist")
    if not path.is_file():
        raise SubmitError(f"{where}: training file {path} is not a file")
    try:
        if path.stat().st_size == 0:
            raise SubmitError(f"{where}: training file {path} is empty")
        return file_sha256(path)
    except PermissionError:
        raise SubmitError(f"{where}: training file {path} is not readable") from None


def _preflight(config: Config, plan: Plan, where: str, *, allow_pii: bool, quote: bool,
               phone_region: str | None) -> Plan:
    """Data checked, tokens counted, cost estimated and within the per-job cap."""
    from dataclasses import replace

    from ftctl.controller.preflight import check as preflight
    from ftctl.providers.registry import kind as kind_of

    kind = config.providers[plan.provider].kind
    descriptor = kind_of(kind)
    # a model trained on an upstream agent's: counted and priced as the chain's root
    model = (root_model(config, plan.agent, plan.provider) if plan.upstream_model and plan.agent in config.agents
             else plan.model)
    unknown = descriptor.unknown_hyperparameters(plan.hyperparameters)
    hp_where = "--hp" if where == "--file" else f"agents.{plan.agent}.hyperparameters"
    if unknown:
        raise SubmitError(f"{hp_where}: {', '.join(unknown)} not known to {kind} "
                          f"(known: {', '.join(sorted(descriptor.hyperparameters))})")
    bad = descriptor.bad_hyperparameter(plan.hyperparameters)
    if bad:
        name, why = bad
        raise SubmitError(f"{hp_where} {name}: {why}" if where == "--file" else f"{hp_where}.{name}: {why}")
    try:
        # the training method picks the data format (SFT conversations, DPO pairs) and the price
        method = descriptor.training_method(plan.hyperparameters)
    except ValueError as exc:
        raise SubmitError(f"{hp_where}: {exc}") from None
    _check_eval(config, plan.agent)
    epochs, steps = preflight.epochs_and_steps(plan.hyperparameters)
    files = [p for p, _, _ in plan.training_files] or [plan.training_file]
    data_tokens = examples = 0
    for path in files:
        checked = _check_data(config, plan, path, where, kind=kind, model=model, method=method, epochs=epochs,
                              steps=steps, allow_pii=allow_pii, phone_region=phone_region)
        data_tokens += checked.report.data_tokens
        examples += checked.report.examples
    est = checked.estimate
    if len(files) > 1:  # one job over every file: the price of their tokens together
        est = estimate(est.price, data_tokens, examples, epochs=epochs, training_steps=steps)
    if quote and len(files) == 1:
        from ftctl.providers.base import ProviderError

        try:
            est.quote = preflight.quote(config, plan.provider, plan.training_file, model, plan.hyperparameters)
        except ProviderError as exc:
            raise SubmitError(f"{where}: the provider's quote failed: {exc.message}") from None
    cost = round(est.total, 2)
    caps = config.budget
    if caps.per_job is not None and cost > caps.per_job:
        raise SubmitError(f"{where}: estimate ${cost:.2f} exceeds budget.per_job ${caps.per_job:.2f} "
                          f"({est.trained_tokens:,} trained tokens at ${est.price.train_per_m:g}/M)")
    # budget.total is not checked here: the reconcile step holds a job that
    # does not fit what is left in `prepared`, saying so, until the budget allows
    return replace(plan, estimated_cost=cost, data_tokens=data_tokens, examples=examples,
                   storage_per_month=est.price.storage_per_month)


def _check_eval(config: Config, agent: str) -> None:
    """The agent's eval file, read whole now: the gate must not find it
    missing or broken only after the money for training is spent."""
    conf = config.agents.get(agent)
    if conf is None or conf.evaluation is None:
        return

    try:
        load_eval_file(config.resolve(conf.evaluation.file))
    except EvalFileError as exc:
        raise SubmitError(f"agents.{agent}.eval.file: {exc}") from None
    if conf.evaluation.checkpoints == "best":
        from ftctl.providers.registry import KINDS

        kind = config.providers[conf.provider].kind
        if not KINDS[kind].checkpoint_models:
            able = ", ".join(sorted(k for k, d in KINDS.items() if d.checkpoint_models))
            raise SubmitError(f"agents.{agent}.eval.checkpoints: \"best\" needs checkpoints that are models, and "
                              f"provider {conf.provider!r} ({kind}) has none (only: {able})")
    if conf.evaluation.safety_file:
        try:
            load_safety_file(config.resolve(conf.evaluation.safety_file))
        except EvalFileError as exc:
            raise SubmitError(f"agents.{agent}.eval.safety_file: {exc}") from None


def _check_data(config: Config, plan: Plan, path: Path, where: str, *, kind: str, model: str, method: str,
                epochs: float | None, steps: int | None, allow_pii: bool, phone_region: str | None) -> Any:
    """One training file checked, counted and priced; SubmitError at its first problem."""
    from ftctl.controller.preflight import check as preflight
    from ftctl.controller.preflight.pii import describe
    from ftctl.providers.registry import kind as kind_of

    descriptor = kind_of(kind)
    try:
        result = preflight.run(path, kind=kind, model=model, config=config, epochs=epochs,
                               training_steps=steps, method=method, region=phone_region, provider=plan.provider,
                               hyperparameters=plan.hyperparameters)
    except preflight.PreflightError as exc:
        raise SubmitError(f"{where}: {exc}") from None
    report = result.report
    hint = (f" (see `ftctl validate {path} --provider {plan.provider} --model {model}"
            + (f" --method {method}`)" if method != descriptor.methods[0] else "`)"))
    if report.problem_count:
        more = report.problem_count - 1
        raise SubmitError(f"{where}: {path} {report.first_problem()}"
                          + (f" (+{more} more problem{'s' if more > 1 else ''})" if more else "") + hint)
    if report.secret_count:
        raise SubmitError(f"{where}: {path} holds {describe('secret', report.secret_count)} "
                          f"(API keys, tokens or private keys; first at line {report.secrets.lines[0]}), never "
                          f"allowed in training data, not even with --allow-pii: remove them, or write a copy "
                          f"with `ftctl prepare --scrub-pii`" + hint)
    if report.pii_count and not allow_pii:
        kinds = ", ".join(f"{f.count} {k}" for k, f in report.pii.items())
        first = min(f.lines[0] for f in report.pii.values())
        raise SubmitError(f"{where}: {path} holds personal data ({kinds}; first at line {first}); "
                          f"scrub it with `ftctl prepare --scrub-pii` or pass --allow-pii")
    if report.examples == 0:
        raise SubmitError(f"{where}: {path} has no examples")
    return result


def plan_submissions(config: Config, names: list[str], *, all_agents: bool = False, adhoc: bool = False,
                     agent: str | None = None, file: Path | None = None, model: str | None = None,
                     provider: str | None = None, hyperparameters: dict[str, Any] | None = None,
                     allow_pii: bool = False, quote: bool = False, phone_region: str | None = None,
                     force: bool = False) -> list[Plan]:
    """Every job checked and priced on each provider it may train on; one
    whose providers are all closed (providers.lifecycle) refused, unless `force`."""
    from ftctl.controller.preflight.routes import route_plans

    plans = _plan(config, names, all_agents=all_agents, adhoc=adhoc, agent=agent, file=file, model=model,
                  provider=provider, hyperparameters=hyperparameters)
    checked = [route_plans(config, p, lambda q: _preflight(config, q, _where(q, adhoc), allow_pii=allow_pii,
                                                           quote=quote, phone_region=phone_region),
                           force=force, adhoc=adhoc)
               for p in plans]
    for name in dict.fromkeys(p.provider for p in checked):
        _check_fits(config, name, next(p for p in checked if p.provider == name))
    return checked


def _check_fits(config: Config, name: str, plan: Plan) -> None:
    """A self-hosted cluster none of whose nodes can run one job refuses it
    now, not after it waited forever (unreachable now: the daemon says so later)."""
    from ftctl.providers import build_provider
    from ftctl.providers.base import ProviderError
    from ftctl.providers.registry import kind as kind_of

    section = config.providers[name]
    if not kind_of(section.kind).resources:
        return
    try:
        provider = build_provider(name, section, config.provider_env())
    except ProviderError as exc:
        raise SubmitError(f"providers.{name}: {exc.message}") from None
    try:
        short = provider.fits()
    except ProviderError:
        return
    finally:
        provider.close()
    if short:
        raise SubmitError(f"agents.{plan.agent}: provider {name!r} cannot run it: {short} (providers.{name}."
                          f"{'gpus_per_job' if section.gpus_per_job else 'cpus_per_job'})")


def _where(plan: Plan, adhoc: bool) -> str:
    if adhoc:
        return "--file"
    return f"agents.{plan.agent}.training_files" if plan.training_files else f"agents.{plan.agent}.training_file"


def _plan(config: Config, names: list[str], *, all_agents: bool, adhoc: bool, agent: str | None,
          file: Path | None, model: str | None, provider: str | None,
          hyperparameters: dict[str, Any] | None) -> list[Plan]:
    if adhoc:
        if names or all_agents:
            raise SubmitError("give either agent names / --all, or --agent --file --model --provider, not both")
        if agent is not None and agent_name_error(agent, "--agent"):
            raise SubmitError(agent_name_error(agent, "--agent"))
        missing = [flag for flag, v in (("--agent", agent), ("--file", file), ("--model", model),
                                        ("--provider", provider)) if not v]
        if missing:
            raise SubmitError(f"an ad hoc job needs {', '.join(missing)}")
        if provider not in config.providers:
            known = ", ".join(sorted(config.providers)) or "none"
            raise SubmitError(f"--provider: unknown provider {provider!r} (configured: {known})")
        if model.startswith("@"):
            raise SubmitError(f"--model {model}: a model from an upstream agent works only for an agent in the "
                              f"config (model = \"{model}\" with depends_on)")
        path = Path(file).expanduser().resolve()
        return [Plan(agent, provider, model, path, _check_file(path, "--file"), dict(hyperparameters or {}))]
    if all_agents and names:
        raise SubmitError("give agent names or --all, not both")
    if all_agents:
        names = list(config.agents)
        if not names:
            raise SubmitError(f"{config.path}: no [agents.*] to submit")
    if not names:
        raise SubmitError("name the agents to submit, or pass --all (see `ftctl submit --help`)")
    for name in dict.fromkeys(names):
        if agent_name_error(name, "agents"):
            raise SubmitError(agent_name_error(name, "agents"))
        if name not in config.agents:
            known = ", ".join(sorted(config.agents)) or "none"
            raise SubmitError(f"unknown agent {name!r} (agents in {config.path}: {known})")
    # upstream agents come first, and come along
    return [_agent_plan(config, name, named=name in names) for name in upstream_closure(config, list(names))]


def _agent_plan(config: Config, name: str, *, named: bool) -> Plan:
    from ftctl.providers.registry import KINDS, kind as kind_of

    conf = config.agents[name]
    if not conf.training_files:
        path = config.resolve(conf.training_file).resolve()
        digest = _check_file(path, f"agents.{name}.training_file")
        return Plan(name, conf.provider, conf.model, path, digest, dict(conf.hyperparameters),
                    depends_on=tuple(conf.depends_on), named=named)
    where = f"agents.{name}.training_files"
    kind = config.providers[conf.provider].kind
    if not kind_of(kind).file_weights and (len(conf.training_files) > 1 or conf.training_files[0].weight != 1.0):
        raise SubmitError(f"{where}: provider {conf.provider!r} ({kind}) takes one training file without a "
                          f"weight; give training_file, or use a provider with weighted files "
                          f"({', '.join(sorted(k for k, d in KINDS.items() if d.file_weights))})")
    files = []
    for ref in conf.training_files:
        path = config.resolve(ref.file).resolve()
        files.append((path, float(ref.weight), _check_file(path, where)))
    # what the files are together: the identity of the job's data
    combined = hashlib.sha256(json.dumps([[h, w] for _, w, h in files]).encode()).hexdigest()
    return Plan(name, conf.provider, conf.model, files[0][0], combined, dict(conf.hyperparameters),
                training_files=tuple(files), depends_on=tuple(conf.depends_on), named=named)


def store_submissions(store: Store, plans: list[Plan], *, force: bool = False) -> list[Result]:
    """A job identical to one that is waiting, running or succeeded is
    skipped (never pay twice for the same job) unless `force`; the database
    holds that rule even against concurrent submits. An upstream agent that
    came along (not named) reuses its identical job, whatever `force` says,
    and a downstream job is stored with the ids of the jobs it waits for."""
    results = []
    ids: dict[str, int] = {}
    for plan in plans:
        upstream = [ids[a] for a in plan.depends_on if a in ids]
        files = [{"file": str(p), "weight": w, "hash": h} for p, w, h in plan.training_files] or None
        try:
            job = create_job(store, agent=plan.agent, provider=plan.provider, model=plan.model,
                             training_file=plan.training_file, content_hash=plan.content_hash,
                             hyperparameters=plan.hyperparameters, estimated_cost=plan.estimated_cost,
                             data_tokens=plan.data_tokens, force=force and plan.named,
                             upstream_job_ids=upstream or None, training_files=files,
                             model_job_id=ids.get(plan.upstream_model or ""),
                             storage_per_month=plan.storage_per_month, fallbacks=_upstream_ids(plan, ids),
                             fallback_after=plan.fallback_after)
        except Twin as twin:
            ids[plan.agent] = twin.job_id
            note = (f"{twin} (--force submits it again)" if plan.named else
                    f"upstream: uses job {twin.job_id} ({twin.state}), which has the same data and settings")
            results.append(Result(plan.agent, plan.provider, plan.model, twin.job_id, False, note,
                                  warnings=plan.warnings))
            continue
        ids[plan.agent] = job.id
        note = "" if plan.named else "upstream of " + ", ".join(p.agent for p in plans if plan.agent in p.depends_on)
        results.append(Result(plan.agent, plan.provider, plan.model, job.id, True, note,
                              estimated_cost=plan.estimated_cost, warnings=plan.warnings,
                              fallbacks=tuple(f["provider"] for f in plan.fallbacks)))
    return results


def _upstream_ids(plan: Plan, ids: dict[str, int]) -> list[dict[str, Any]] | None:
    """The plan's fallbacks, each trained on an upstream's model ("@x") naming
    that upstream's job (a move to it trains on that job's model)."""
    out = [{**f, "model_job_id": ids.get(f["model"][1:]) if f["model"].startswith("@") else None}
           for f in plan.fallbacks]
    return out or None
