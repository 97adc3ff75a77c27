"""`[retention]`'s rules: what may be deleted at the providers, and when.

A pure function of (what the store knows, the rules, now) -> what goes, so
it is tested on a virtual clock; the service around it (service.gc) reads
the facts, records each deletion's intent and asks the provider.

Never deleted, whatever the rules say: an agent's exported model (its newest
promoted), a model that a pipeline stage not done yet trains on, a model
whose promotion is still open, and a file a job that may still run or retry
needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from ftctl.controller.ledger.states import PROMOTED, REJECTED


@dataclass(frozen=True)
class Rules:
    rejected_after: float | None = None  # seconds
    superseded_after: float | None = None
    files_after: float | None = None
    checkpoints_best: bool = False

    @classmethod
    def of(cls, section) -> "Rules | None":
        """The rules of a `[retention]` section; None without one."""
        if section is None:
            return None
        return cls(section.rejected_after, section.superseded_after, section.files_after,
                   section.checkpoints == "best")


@dataclass(frozen=True)
class ModelFact:
    """A succeeded job's fine-tuned model, as the store knows it."""

    job_id: int
    agent: str
    provider: str
    model: str
    promotion: str | None
    # rejected: when it was rejected; promoted: when a newer promotion of its
    # agent replaced it (None: it is the agent's newest, the exported one)
    since: datetime | None
    exported: bool
    base_of_live_job: bool  # a pipeline stage not done yet trains on it
    fee_per_month: float = 0.0
    deletes: bool = True  # the provider can delete a model (descriptor.deletes_models)
    prunes: bool = False  # the provider keeps checkpoints ftctl can drop (descriptor.prunes_checkpoints)
    pruned: bool = False  # its checkpoints went already


@dataclass(frozen=True)
class FileFact:
    """A file uploaded to a provider for training."""

    provider: str
    file_id: str
    content_hash: str
    job_id: int  # the last job that used it (its history tells of the deletion)
    last_used: datetime  # when the last job that used it finished (or the upload, if none did)
    needed: bool  # a job that may still run or retry uses it
    deletes: bool = True  # descriptor.deletes_files


@dataclass(frozen=True)
class Doomed:
    """One thing to delete, and why."""

    kind: str  # model, file, checkpoints
    provider: str
    target: str
    job_id: int
    rule: str  # rejected, superseded, files, checkpoints
    fee_per_month: float = 0.0
    content_hash: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.provider, self.target


def protected(m: ModelFact) -> str | None:
    """Why a model is never deleted, or None."""
    if m.exported:
        return "exported"
    if m.base_of_live_job:
        return "a pipeline stage trains on it"
    if m.promotion not in (PROMOTED, REJECTED):
        return "its promotion is open"
    return None


def _due(since: datetime | None, after: float | None, now: datetime) -> bool:
    return after is not None and since is not None and since + timedelta(seconds=after) <= now


def decide(rules: Rules | None, models: list[ModelFact], files: list[FileFact], now: datetime) -> list[Doomed]:
    """What goes at `now`: models, then checkpoints, then files, by job id."""
    if rules is None:
        return []
    out: list[Doomed] = []
    for m in sorted(models, key=lambda m: m.job_id):
        if protected(m) is None and m.deletes:
            after = rules.rejected_after if m.promotion == REJECTED else rules.superseded_after
            if _due(m.since, after, now):
                out.append(Doomed("model", m.provider, m.model, m.job_id,
                                  "rejected" if m.promotion == REJECTED else "superseded", m.fee_per_month))
                continue
        if rules.checkpoints_best and m.prunes and not m.pruned and m.promotion == PROMOTED:
            out.append(Doomed("checkpoints", m.provider, m.model, m.job_id, "checkpoints"))
    for f in sorted(files, key=lambda f: (f.provider, f.file_id)):
        if f.deletes and not f.needed and _due(f.last_used, rules.files_after, now):
            out.append(Doomed("file", f.provider, f.file_id, f.job_id, "files", content_hash=f.content_hash))
    return out
