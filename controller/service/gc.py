"""`[retention]` applied: the daemon deletes at the providers what the rules
(engine.retention) say may go, on its own schedule beside the tick and
never during one; `ftctl gc` does the same at once (`--dry-run`: only says).

Each deletion is crash-safe: its intent (a `deletions` row) is written
before the provider is asked, and settled after, with a history row and an
event the hooks can ask for (model-deleted, file-deleted,
checkpoints-deleted). A pass first finishes the intents a killed process
left: what the rules still doom is asked for again (a 404 then means the
first call had landed: "gone"); what they protect now is left alone
("kept"). So nothing is forgotten, and nothing protected is deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from ftctl.controller.config import Config
from ftctl.controller.engine.retention import Doomed, FileFact, ModelFact, Rules, decide
from ftctl.controller.ledger.states import PROMOTED, REJECTED
from ftctl.models import Store, utcnow
from ftctl.providers.settings import duration_text

# at most this many deletions a pass: a pass stays short whatever the backlog
BATCH = 50
EVENT = {"model": "model-deleted", "file": "file-deleted", "checkpoints": "checkpoints-deleted"}
RULE_KEY = {"rejected": "rejected_after", "superseded": "superseded_after", "files": "files_after",
            "checkpoints": "checkpoints"}


def _no_guard() -> None:
    return None


def describe(d: Doomed) -> str:
    what = {"model": "model", "file": "training file", "checkpoints": "checkpoints (but the model's) of"}[d.kind]
    return f"{what} {d.target} at {d.provider} (job {d.job_id}, {d.rule})"


class Collector:
    def __init__(self, config: Config, store: Store, providers: dict[str, Any] | None = None, *,
                 clock: Callable[[], datetime] = utcnow, logger: Any = None, guard: Callable[[], None] = _no_guard):
        self.config = config
        self.store = store
        self.providers: dict[str, Any] = dict(providers or {})
        self.clock = clock
        self.guard = guard
        self.log = logger or structlog.get_logger("ftctl")
        self._kinds: dict[str, Any] = {}  # provider name -> its descriptor (None: no longer configured)

    def reload(self, config: Config) -> None:
        self.config = config
        self._kinds.clear()

    def close(self) -> None:
        for client in self.providers.values():
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self.providers.clear()

    def provider(self, name: str) -> Any:
        if name not in self.providers:
            from ftctl.providers import build_provider

            self.providers[name] = build_provider(name, self.config.providers[name], self.config.provider_env())
        return self.providers[name]

    def _kind(self, provider: str) -> Any:
        if provider not in self._kinds:
            from ftctl.providers.registry import KINDS

            section = self.config.providers.get(provider)
            self._kinds[provider] = KINDS.get(section.kind) if section is not None else None
        return self._kinds[provider]

    # -- the facts and the plan --------------------------------------------------------------

    def facts(self) -> tuple[list[ModelFact], list[FileFact]]:
        rows = self.store.retention_models()
        pruned = self.store.pruned_checkpoints()
        # each agent's promoted models, oldest first: the newest is exported (store.promoted_models),
        # each other one was superseded when the next one was promoted
        promoted: dict[str, list[Any]] = {}
        for r in rows:
            if r.promotion == PROMOTED and r.promoted_at is not None:
                promoted.setdefault(r.agent, []).append(r)
        replaced: dict[int, datetime | None] = {}
        for line in promoted.values():
            line.sort(key=lambda r: (r.promoted_at, r.job_id))
            for older, newer in zip(line, line[1:] + [None]):
                replaced[older.job_id] = newer.promoted_at if newer is not None else None
        models = []
        for r in rows:
            kind = self._kind(r.provider)
            exported = r.promotion == PROMOTED and replaced.get(r.job_id, None) is None
            since = (r.rejected_at or r.updated_at) if r.promotion == REJECTED else replaced.get(r.job_id)
            models.append(ModelFact(r.job_id, r.agent, r.provider, r.model, r.promotion, since, exported,
                                    r.base_of_live_job, r.fee, bool(kind and kind.deletes_models),
                                    bool(kind and kind.prunes_checkpoints), r.job_id in pruned))
        files = []
        for f in self.store.retention_files():
            if f.job_id is None:
                continue  # no job of ours used it: not ours to judge
            kind = self._kind(f.provider)
            files.append(FileFact(f.provider, f.file_id, f.content_hash, f.job_id, f.last_used or f.uploaded_at,
                                  f.needed, bool(kind and kind.deletes_files)))
        return models, files

    def plan(self, now: datetime | None = None) -> list[Doomed]:
        """What the rules doom now (nothing without `[retention]`)."""
        rules = Rules.of(self.config.retention)
        if rules is None:
            return []
        models, files = self.facts()
        return decide(rules, models, files, now or self.clock())

    # -- deleting ------------------------------------------------------------------------------

    def run_once(self, limit: int = BATCH) -> list[dict[str, Any]]:
        """One bounded pass: the intents a killed process left, then what the
        rules doom now. What was done, a record each."""
        if self.config.retention is None:
            return []
        now = self.clock()
        doomed = {d.key: d for d in self.plan(now)}
        done: list[dict[str, Any]] = []
        failing: set[str] = set()
        for row in self.store.open_deletions():
            d = doomed.pop((row.kind, row.provider, row.target), None)
            if d is None:
                self._settle(row.id, "kept", None, now)
                self.log.info("deletion dropped: the rules keep it now", kind=row.kind, provider=row.provider,
                              target=row.target, job_id=row.job_id)
                continue
            if len(done) < limit and row.provider not in failing:
                done.append(self._delete(row.id, d, failing))
        for d in doomed.values():
            if len(done) >= limit:
                break
            if d.provider not in failing:
                done.append(self._delete(self._intent(d, now), d, failing))
        return [r for r in done if r]

    def _intent(self, d: Doomed, now: datetime) -> int:
        from ftctl.models import Deletion

        with self.store.write() as s:
            row = Deletion(kind=d.kind, provider=d.provider, target=d.target, job_id=d.job_id,
                           content_hash=d.content_hash, rule=d.rule, fee_per_month=d.fee_per_month, intent_at=now)
            s.add(row)
            s.flush()
            return int(row.id)

    def _delete(self, row_id: int, d: Doomed, failing: set[str]) -> dict[str, Any]:
        from ftctl.providers.base import ProviderError

        self.log.info("deleting at the provider", kind=d.kind, provider=d.provider, target=d.target,
                      job_id=d.job_id, rule=d.rule, deletion=row_id)
        try:
            self.guard()
            client = self.provider(d.provider)
            if d.kind == "model":
                outcome = "deleted" if client.delete_model(d.target) else "gone"
            elif d.kind == "file":
                outcome = "deleted" if client.delete_file(d.target) else "gone"
            else:
                client.prune_checkpoints(d.target)
                outcome = "deleted"
        except ProviderError as exc:
            failing.add(d.provider)  # the rest of this provider's waits for the next pass
            self._failed(row_id, exc.message)
            self.log.warning("deletion failed; tried again next pass", kind=d.kind, provider=d.provider,
                             target=d.target, job_id=d.job_id, error_class=exc.kind, error=exc.message)
            return {}
        self._settle(row_id, outcome, d, self.clock())
        self.log.info("deleted at the provider", kind=d.kind, provider=d.provider, target=d.target,
                      job_id=d.job_id, outcome=outcome, saves_per_month=d.fee_per_month)
        return {"kind": d.kind, "provider": d.provider, "target": d.target, "job_id": d.job_id, "rule": d.rule,
                "outcome": outcome, "fee_per_month": d.fee_per_month}

    def _failed(self, row_id: int, message: str) -> None:
        from ftctl.models import Deletion

        with self.store.write() as s:
            row = s.get(Deletion, row_id)
            if row is not None:
                row.error = message
                s.add(row)

    def _settle(self, row_id: int, outcome: str, d: Doomed | None, now: datetime) -> None:
        """The deletion's outcome, and (when it went) the history row and the
        event, and a file's upload forgotten: one transaction."""
        from sqlmodel import delete

        from ftctl.controller.ledger.events import record
        from ftctl.models import Deletion, Job, UploadedFile

        with self.store.write() as s:
            row = s.get(Deletion, row_id)
            if row is None or row.done_at is not None:
                return
            row.done_at, row.outcome, row.error = now, outcome, None
            s.add(row)
            if d is None:
                return
            if d.kind == "file" and d.content_hash:
                s.exec(delete(UploadedFile).where(UploadedFile.provider == d.provider,
                                                  UploadedFile.content_hash == d.content_hash))
            job = s.get(Job, d.job_id)
            if job is not None:
                record(s, job, before=job.state, after=job.state, trigger=EVENT[d.kind], now=now,
                       name=EVENT[d.kind], reason=self.reason(d, outcome))

    def reason(self, d: Doomed, outcome: str) -> str:
        conf = self.config.retention
        key = RULE_KEY[d.rule]
        value = getattr(conf, key, None) if conf is not None else None
        rule = f'[retention] {key} = "{duration_text(value) if isinstance(value, float) else value}"'
        gone = " (it was gone already)" if outcome == "gone" else ""
        fee = f"; saves ${d.fee_per_month:,.2f} a month" if d.fee_per_month else ""
        return f"{describe(d)} deleted by {rule}{gone}{fee}"
