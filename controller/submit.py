"""`ftctl submit`: check everything first, then store `prepared` jobs.

Nothing is written unless every requested job passed its checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.config import Config
from controller.jobs import create_job, file_sha256
from controller.lifecycle import CANCELLED, FAILED
from models import Store


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


@dataclass(frozen=True)
class Result:
    agent: str
    provider: str
    model: str
    job_id: int | None
    created: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"agent": self.agent, "provider": self.provider, "model": self.model, "job_id": self.job_id,
                "created": self.created, "note": self.note or None}


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


def plan_submissions(config: Config, names: list[str], *, all_agents: bool = False, adhoc: bool = False,
                     agent: str | None = None, file: Path | None = None, model: str | None = None,
                     provider: str | None = None, hyperparameters: dict[str, Any] | None = None) -> list[Plan]:
    if adhoc:
        if names or all_agents:
            raise SubmitError("give either agent names / --all, or --agent --file --model --provider, not both")
        missing = [flag for flag, v in (("--agent", agent), ("--file", file), ("--model", model),
                                        ("--provider", provider)) if not v]
        if missing:
            raise SubmitError(f"an ad hoc job needs {', '.join(missing)}")
        if provider not in config.providers:
            known = ", ".join(sorted(config.providers)) or "none"
            raise SubmitError(f"--provider: unknown provider {provider!r} (configured: {known})")
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
    plans = []
    for name in dict.fromkeys(names):
        conf = config.agents.get(name)
        if conf is None:
            known = ", ".join(sorted(config.agents)) or "none"
            raise SubmitError(f"unknown agent {name!r} (agents in {config.path}: {known})")
        path = config.resolve(conf.training_file).resolve()
        digest = _check_file(path, f"agents.{name}.training_file")
        plans.append(Plan(name, conf.provider, conf.model, path, digest, dict(conf.hyperparameters)))
    return plans


def _same(job: Any, plan: Plan) -> bool:
    return (job.provider == plan.provider and job.model == plan.model and job.content_hash == plan.content_hash
            and dict(job.hyperparameters) == plan.hyperparameters)


def store_submissions(store: Store, plans: list[Plan], *, force: bool = False) -> list[Result]:
    """A job identical to one that is running or succeeded is skipped (never
    pay twice for the same job) unless `force`."""
    results = []
    for plan in plans:
        if not force:
            twin = next((j for j in reversed(store.list_jobs(agent=plan.agent))
                         if j.state not in (FAILED, CANCELLED) and _same(j, plan)), None)
            if twin is not None:
                results.append(Result(plan.agent, plan.provider, plan.model, twin.id, False,
                                      f"job {twin.id} has the same data and settings and is {twin.state} "
                                      f"(--force submits it again)"))
                continue
        job = create_job(store, agent=plan.agent, provider=plan.provider, model=plan.model,
                         training_file=plan.training_file, content_hash=plan.content_hash,
                         hyperparameters=plan.hyperparameters)
        results.append(Result(plan.agent, plan.provider, plan.model, job.id, True))
    return results
