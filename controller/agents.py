"""[agents.NAME] and [export]: what each agent trains, on what, after whom,
the gate its model must pass, and where promoted models are delivered; and
the rules between agents (known upstream agents, no cycle, "@other" only
with depends_on), each broken rule one line that names its key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ftctl.providers.settings import Duration, Section

Scalar = bool | int | float | str


# an agent's name becomes a file name (the export, Ray's artifacts), a key in
# the hooks' payloads and an environment variable's value: one rule, checked
# wherever a name comes in (config keys, depends_on, "@x", submit --agent, the API)
AGENT_NAME_RULE = "[A-Za-z0-9][A-Za-z0-9._-]{0,62}"
_AGENT_NAME = re.compile(AGENT_NAME_RULE)


def agent_name_error(name: Any, where: str) -> str | None:
    """None for a good agent name; else the one line that says why not,
    naming `where` it came from and the rule."""
    if isinstance(name, str) and _AGENT_NAME.fullmatch(name):
        return None
    shown = repr(name[:70] + "..." if isinstance(name, str) and len(name) > 70 else name)
    return (f"{where}: {shown} is not an agent name: names match {AGENT_NAME_RULE} (a letter or digit, "
            f"then up to 62 letters, digits, '.', '_' or '-')")


def check_agent_name(name: Any, where: str) -> str:
    """`name`, when it is a good agent name; else ValueError (agent_name_error)."""
    problem = agent_name_error(name, where)
    if problem:
        raise ValueError(problem)
    return name


class TrainingFileRef(Section):
    """One of an agent's weighted training files (Mistral's `training_files`)."""

    file: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0, le=1000)


class EvalConfig(Section):
    """[agents.NAME.eval]: the gate a succeeded job's model must pass."""

    # held-out examples in the training format; the last assistant message
    # of each is the expected answer
    file: str = Field(min_length=1)
    metric: Literal["exact", "contains", "json", "command"] = "exact"
    # metric = "command": the scorer, run once an answer (the example as JSON
    # on stdin; a score from 0 to 1 on stdout)
    command: list[str] | None = None
    # the candidate's score minus the comparison's, at least (0.08: 8 points)
    min_improvement: float = Field(default=0.01, ge=-1, le=1)
    # "base": the model the job trained from; "promoted": the agent's promoted
    # model, asked on its own provider (what `ftctl rehome` proves parity
    # with; min_improvement = -0.02: at most 2 points worse); or a model id
    compare_to: str = Field(default="base", min_length=1)
    concurrency: int = Field(default=4, ge=1, le=64)
    max_tokens: int = Field(default=512, ge=1, le=32768)
    # the other criteria; each must pass too. Each example asked `repeats`
    # times by both models (at `temperature`; the provider's default where unset)
    repeats: int = Field(default=1, ge=1, le=20)
    temperature: float | None = Field(default=None, ge=0, le=2)
    # consistency: the standard deviation across repeats of the candidate's score, at most
    max_score_stdev: float | None = Field(default=None, ge=0, le=1)
    # latency: the p95 of the candidate's answer times, at most ("2s")
    max_latency_p95: Duration | None = None
    # safety: prompts whose answers must not contain what each line names, or
    # must refuse (ledger.eval_files.load_safety_file); one failure rejects
    safety_file: str | None = Field(default=None, min_length=1)
    # "best": each checkpoint of the job is a candidate too (where the
    # provider's checkpoints are models: OpenAI); the best that passes
    # every criterion is promoted. "last": the final model only
    checkpoints: Literal["last", "best"] = "last"

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: Any) -> Any:
        if isinstance(value, str):
            import shlex

            return shlex.split(value)
        return value

    @model_validator(mode="after")
    def _scorer(self) -> "EvalConfig":
        if self.metric == "command" and not self.command:
            raise ValueError('command: required with metric = "command" (the scorer to run, e.g. '
                             '"python3 score.py")')
        if self.metric != "command" and self.command:
            raise ValueError(f'command: only used with metric = "command" (metric is {self.metric!r})')
        if self.max_score_stdev is not None and self.repeats < 2:
            raise ValueError(f"max_score_stdev: the spread is measured across repeats: set repeats = 2 or more "
                             f"(repeats is {self.repeats})")
        return self


class Fallback(Section):
    """A provider an agent's job moves to when the ones before it in
    `provider = [...]` are closed to it (what the first one has in AgentConfig)."""

    provider: str
    model: str = Field(min_length=1)
    hyperparameters: dict[str, Scalar] = Field(default_factory=dict)


def _routed(data: Any) -> Any:
    """`provider = ["openai", "gpu"]`, `model = { openai = "...", gpu = "..." }`
    and hyperparameters per provider (`{ epochs = 3, gpu = { lora = true } }`:
    the plain keys for every provider, a provider's table over them) become
    the first provider's plain settings and the others' `fallbacks`."""
    if not isinstance(data, dict):
        return data
    if "fallbacks" in data:
        raise ValueError(".fallbacks: unknown key (list the providers in provider = [...])")
    provider = data.get("provider")
    if isinstance(provider, list):
        if not provider or not all(isinstance(p, str) and p for p in provider):
            raise ValueError('.provider: a provider name, or a list of them in the order tried: ["openai", "gpu"]')
        if len(set(provider)) != len(provider):
            raise ValueError(".provider: a provider is named twice")
    names = provider if isinstance(provider, list) else [provider]
    if not all(isinstance(p, str) for p in names):
        return data  # pydantic says what is wrong
    model = data.get("model")
    if isinstance(model, dict):
        for key in model:
            if key not in names:
                raise ValueError(f".model.{key}: not one of this agent's providers ({', '.join(names)})")
        for name in names:
            if name not in model:
                raise ValueError(f".model.{name}: required key is missing (a model for each provider)")
        models = model
    else:
        models = {name: model for name in names}
    hp = data.get("hyperparameters", {})
    hps = {name: hp for name in names}
    if isinstance(hp, dict) and any(isinstance(v, dict) for v in hp.values()):
        for key, value in hp.items():
            if isinstance(value, dict) and key not in names:
                raise ValueError(f".hyperparameters.{key}: a table names one of this agent's providers "
                                 f"({', '.join(names)})")
        common = {k: v for k, v in hp.items() if not isinstance(v, dict)}
        hps = {name: {**common, **(hp.get(name) or {})} for name in names}
    if len(names) == 1 and data.get("fallback_after") is not None:
        raise ValueError('.fallback_after: only with a list of providers (provider = ["openai", "gpu"])')
    if "model" not in data:
        return {**data, "provider": names[0]}  # "model: required key is missing", as for any agent
    out = {**data, "provider": names[0], "model": models[names[0]],
           "fallbacks": [{"provider": n, "model": models[n], "hyperparameters": hps[n]} for n in names[1:]]}
    if "hyperparameters" in data:
        out["hyperparameters"] = hps[names[0]]
    return out


class AgentConfig(Section):
    provider: str
    # a base model, or "@other": the fine-tuned model of agent other's job
    model: str = Field(min_length=1)
    training_file: str | None = Field(default=None, min_length=1)
    training_files: list[TrainingFileRef] | None = Field(default=None, min_length=1)
    # numbers, switches (lora = true) and names (training_method = "dpo");
    # each provider's descriptor says which it knows
    hyperparameters: dict[str, Scalar] = Field(default_factory=dict)
    # agents whose jobs must succeed before this one's is admitted
    depends_on: list[str] = Field(default_factory=list)
    evaluation: EvalConfig | None = Field(default=None, alias="eval")
    # provider = [first, then ...]: the providers after the first, in order
    fallbacks: list[Fallback] = Field(default_factory=list)
    # paused for auth or quota this long: the job moves to the next provider
    fallback_after: Duration | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _routes(cls, data: Any) -> Any:
        return _routed(data)

    def route(self) -> list[Fallback]:
        """Each provider this agent may train on, in order, with its model and hyperparameters."""
        first = Fallback(provider=self.provider, model=self.model, hyperparameters=dict(self.hyperparameters))
        return [first, *self.fallbacks]

    @property
    def upstream_model(self) -> str | None:
        """`other` for model = "@other"."""
        return self.model[1:] if self.model.startswith("@") else None

    @property
    def files(self) -> list[tuple[str, float]]:
        """(path as written, weight) of each training file."""
        if self.training_files:
            return [(f.file, f.weight) for f in self.training_files]
        return [(self.training_file or "", 1.0)]


class ExportSection(Section):
    """[export]: where each agent's newest promoted model id is written."""

    path: str = Field(min_length=1)
    format: Literal["toml", "json", "env"] | None = None

    @model_validator(mode="after")
    def _format(self) -> "ExportSection":
        if self.format is None and Path(self.path).suffix not in (".toml", ".json", ".env"):
            raise ValueError(f"export.path: cannot tell the format of {self.path!r} from its suffix: name it "
                             f".toml, .json or .env, or set export.format")
        return self

    @property
    def fmt(self) -> str:
        return self.format or Path(self.path).suffix[1:]


def check_agent(config: Any, name: str, agent: AgentConfig) -> None:
    """One agent's files, upstream agents and evaluation, each in one line."""
    from ftctl.providers.registry import kind as kind_of

    if agent.training_file and agent.training_files:
        raise ValueError(f"agents.{name}.training_files: give training_file or training_files, not both")
    if not agent.training_file and not agent.training_files:
        raise ValueError(f"agents.{name}.training_file: required key is missing (or training_files)")
    known = ", ".join(sorted(config.agents))
    for other in agent.depends_on:
        check_agent_name(other, f"agents.{name}.depends_on")
        if other == name:
            raise ValueError(f"agents.{name}.depends_on: an agent cannot depend on itself")
        if other not in config.agents:
            raise ValueError(f"agents.{name}.depends_on: unknown agent {other!r} (agents: {known})")
    if len(set(agent.depends_on)) != len(agent.depends_on):
        raise ValueError(f"agents.{name}.depends_on: an agent is named twice")
    route = agent.route()
    for step in route[1:]:
        if step.provider not in config.providers:
            known = ", ".join(sorted(config.providers)) or "none"
            raise ValueError(f"agents.{name}.provider: unknown provider {step.provider!r} (configured: {known})")
    for step in route:
        where = f"agents.{name}.model" + (f".{step.provider}" if len(route) > 1 else "")
        upstream = step.model[1:] if step.model.startswith("@") else None
        if upstream is None:
            continue
        check_agent_name(upstream, where)
        if upstream not in agent.depends_on:
            raise ValueError(f"{where}: {step.model!r} trains on {upstream}'s model, so "
                             f"depends_on must name it: depends_on = [\"{upstream}\"]")
        theirs = [s.provider for s in config.agents[upstream].route()]
        if step.provider not in theirs:
            raise ValueError(f"{where}: {step.model!r} is trained on provider "
                             f"{' or '.join(repr(p) for p in theirs)}, not {step.provider!r}: a fine-tuned model "
                             f"stays with the provider that made it")
    for step in route:
        descriptor = kind_of(config.providers[step.provider].kind)
        if agent.evaluation is not None and not (descriptor.chat or descriptor.chat_batches):
            raise ValueError(f"agents.{name}.eval: provider {step.provider!r} cannot answer chat, so its models "
                             f"cannot be evaluated")


def check_cycles(agents: dict[str, AgentConfig]) -> None:
    """depends_on must not come back to where it started; the cycle is named."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = path[path.index(name):] + [name]
            raise ValueError(f"agents.{cycle[0]}.depends_on: a cycle: {' -> '.join(cycle)}")
        if name in done:
            return
        for other in agents[name].depends_on:
            visit(other, path + [name])
        done.add(name)

    for name in agents:
        visit(name, [])


def upstream_closure(config: Any, names: list[str]) -> list[str]:
    """`names` and every agent they depend on, upstream agents first."""
    order: list[str] = []

    def visit(name: str) -> None:
        for other in config.agents[name].depends_on:
            visit(other)
        if name not in order:
            order.append(name)

    for name in names:
        visit(name)
    return order


def _model_on(conf: AgentConfig, provider: str | None) -> str:
    if provider is None:
        return conf.model
    return next((s.model for s in conf.route() if s.provider == provider), conf.model)


def root_model(config: Any, agent: str, provider: str | None = None) -> str:
    """The base model at the root of an agent's chain ("@x" followed back,
    on `provider`: the agent's first by default): what its tokens are
    counted and its price looked up with at submit."""
    model = _model_on(config.agents[agent], provider)
    seen = {agent}
    while model.startswith("@") and model[1:] in config.agents and model[1:] not in seen:
        seen.add(model[1:])
        model = _model_on(config.agents[model[1:]], provider)
    return model


def route_of(config: Any, agent: str) -> list[tuple[str, str]]:
    """(provider, root base model) of each provider `agent` may train on, in order."""
    return [(s.provider, root_model(config, agent, s.provider)) for s in config.agents[agent].route()]


def unfollowed(config: Any, agent: str) -> list[str]:
    """One line for each provider in a pipeline stage's list where it trains
    from a base model, not from its upstream's (a fine-tuned model stays
    with the provider that made it: a Mistral `ft:` model is no Ray base)."""
    conf = config.agents[agent]
    route = conf.route()
    followed = [s for s in route if s.model.startswith("@")]
    if not followed:
        return []
    up = followed[0].model[1:]
    return [f"agents.{agent}: on {s.provider} it trains from {s.model}, not from {up}'s model (a model "
            f"{up} makes on {followed[0].provider} cannot be a base on {s.provider})"
            for s in route if not s.model.startswith("@")]
