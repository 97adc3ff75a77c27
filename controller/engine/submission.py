"""The crash-safe submission part of the shell: upload, store the intent,
create, store the provider's id, each step guarded by the daemon lock.

What follows each provider call is decided in `engine.outcomes`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ftctl.controller.engine import decide as rc
from ftctl.controller.engine.jobs import note_many
from ftctl.controller.ledger.creation import new_client_token
from ftctl.controller.ledger.files import file_sha256
from ftctl.controller.ledger.reasons import Reason
from ftctl.models import Job
from ftctl.providers.base import CapacityError, JobSpec, NotFoundError, Provider, ProviderError, ProviderJob

if TYPE_CHECKING:  # pragma: no cover
    pass


class Submission:
    """Mixed into the Ticker: the methods that hand a job to its provider."""

    def _submit(self, row: Job, d: rc.Submit, now: datetime) -> None:
        """Upload, store the intent, create, store the provider's id.

        A new submission stores its client token with the move to `queued`
        right before the create call; whenever the process dies after that,
        the next ticks find the job by its token in the provider's listing,
        and create it again only once a listing read after the call could
        have landed shows nothing.
        """
        token = d.client_token
        view = rc.JobView.of(row)
        provider = self.provider(row.provider)
        if token is None:
            files = self._upload_all(provider, view, row, now, record=False)
            if files is None:
                return
            token = new_client_token(row.agent)
            self.guard()
            # the provider's id of the job's own training file rides on the move to queued
            primary = next((fid for (path, _, _), (fid, _) in zip(self._training_files(row), files)
                            if path == Path(row.training_file)), None)
            if self._transition(rc.begin_submit(view, token, self.clock(), d.base_model,
                                                primary if primary != row.provider_file_id else None),
                                now) is None:
                return
        else:
            files = self._uploaded(row)
            # creating again: ask for the token itself first, the last guard against a twin
            try:
                found = provider.find_by_token(token)
            except Exception as exc:  # noqa: BLE001
                err = self._as_provider_error(exc)
                self.log.warning("lookup by token failed", job_id=row.id, agent=row.agent, provider=row.provider,
                                 state=row.state, error=err.message)
                return
            if found:
                pj = max(found, key=lambda j: j.created_at or datetime.min)
                note_many(self.store, [rc.Note(row.id, row.state, {
                    "provider_job_id": pj.id, "provider_status": pj.raw_status,
                    **Reason("queued_at", {"status": pj.raw_status}).stored()}, expect_token=token,
                    event=("found", f"found at the provider by its token as {pj.id}"))], now)
                return
            if files is None:
                files = self._upload_all(provider, view, row, now, expect_state=row.state)
                if files is None:
                    return
            self.guard()
            note_many(self.store, [rc.Note(row.id, row.state, {"intent_at": self.clock()}, expect_token=token)], now)
        sent_at = self.clock()
        # a downstream job names its upstream job's fine-tuned model, never "@agent"
        model = d.base_model or row.base_model or row.model
        spec = JobSpec(agent=row.agent, model=model, training_files=files, hyperparameters=dict(row.hyperparameters),
                       client_token=token, upstream_job_id=d.upstream_ref, job_id=row.id)
        self.guard()
        try:
            outcome: ProviderJob | ProviderError = provider.create_job(spec)
        except Exception as exc:  # noqa: BLE001 - whatever happened, the outcome decides
            outcome = self._as_provider_error(exc)
        arrived_at = self.clock()
        active = self._active_at(row.provider, provider) if isinstance(outcome, CapacityError) else None
        if isinstance(outcome, NotFoundError) and row.training_files:  # a weighted file was lost: each again
            for _, digest, _ in self._training_files(row):
                self.store.forget_upload(row.provider, digest)
        if isinstance(outcome, ProviderError):
            if self._result is not None:
                self._result.errors.append((row.provider, outcome.kind))
            self.log.warning("create at provider failed", job_id=row.id, agent=row.agent, provider=row.provider,
                             state="queued", error_class=outcome.kind, error=outcome.message,
                             ambiguous=outcome.ambiguous)
        else:
            self.log.info("created at provider", job_id=row.id, agent=row.agent, provider=row.provider,
                          state="queued", provider_job_id=outcome.id, client_token=token)
            self._created_at(row.provider)
        queued = view._replace(state="queued", attempt=view.attempt + (1 if row.client_token != token else 0),
                         client_token=token)
        self._apply_all(rc.after_create(queued, token, outcome, sent_at=sent_at, arrived_at=arrived_at,
                                        content_hash=row.content_hash, policy=self.policy, rng=self.rng,
                                        settle=self.settle(row.provider), active_at_provider=active),
                        {row.id: row}, now)

    def _active_at(self, name: str, provider: Provider) -> int | None:
        """How many jobs `name` runs right now, ours and others' (never quote
        jobs): read once a tick, after a create it refused for capacity."""
        from ftctl.controller.engine.observe import LISTING_MARGIN, LISTING_WINDOW

        if name not in self._active:
            since = self._floors.get(name, self.clock() - LISTING_WINDOW) - LISTING_MARGIN
            try:
                listing = provider.list_jobs(created_after=since)
            except Exception:  # noqa: BLE001 - nothing is learned this time
                return None
            quotes = set(self.store.quote_ids(name))
            self._active[name] = sum(1 for pj in listing if pj.active and pj.id not in quotes)
        return self._active[name]

    def _training_files(self, job: Job) -> list[tuple[Path, str, float]]:
        """(path, content hash, weight) of each of the job's training files."""
        if job.training_files:
            return [(Path(f["file"]), f["hash"], float(f["weight"])) for f in job.training_files]
        return [(Path(job.training_file), job.content_hash, 1.0)]

    def _uploaded(self, job: Job) -> tuple[tuple[str, float], ...] | None:
        """The provider's file ids of every training file, if all were uploaded."""
        out = []
        for _, digest, weight in self._training_files(job):
            file_id = self.store.uploaded_file(job.provider, digest)
            if file_id is None:
                return None
            out.append((file_id, weight))
        return tuple(out)

    def _upload_all(self, provider: Provider, view: rc.JobView, job: Job, now: datetime,
                    expect_state: str = "prepared", record: bool = True) -> tuple[tuple[str, float], ...] | None:
        out = []
        for path, digest, weight in self._training_files(job):
            file_id = self._upload(provider, view, job, now, expect_state, path, digest, record=record)
            if file_id is None:
                return None
            out.append((file_id, weight))
        return tuple(out)

    def _upload(self, provider: Provider, view: rc.JobView, job: Job, now: datetime,
                expect_state: str = "prepared", path: Path | None = None,
                expected: str | None = None, record: bool = True) -> str | None:
        """The provider's id of a training file (the job's own by default),
        uploaded once per content hash; `record`: note the job's own on the
        job here (else the caller's next write carries it)."""
        path = Path(path or job.training_file)
        expected = expected or job.content_hash
        try:
            digest = file_sha256(path)
        except OSError as exc:
            problem = Reason("file_unreadable", {"path": str(path), "error": exc.__class__.__name__})
            self._transition(replace(rc.file_problem(view, problem), expect=expect_state), now)
            return None
        if digest != expected:
            problem = Reason("file_changed", {"path": str(path)})
            self._transition(replace(rc.file_problem(view, problem), expect=expect_state), now)
            return None
        file_id = self.store.uploaded_file(job.provider, digest)
        if file_id is None:
            self.guard()
            try:
                file_id = provider.upload_file(path, digest)
            except Exception as exc:  # noqa: BLE001
                err = self._as_provider_error(exc)
                self.log.warning("upload failed", job_id=job.id, agent=job.agent, provider=job.provider,
                                 state=job.state, error_class=err.kind, error=err.message)
                self._apply_all(rc.after_upload_error(view, err, arrived_at=self.clock(), policy=self.policy,
                                                      rng=self.rng), {job.id: job}, now)
                return None
            self.store.remember_upload(job.provider, digest, file_id)
        if record and job.provider_file_id != file_id and path == Path(job.training_file):
            note_many(self.store, [rc.Note(job.id, job.state, {"provider_file_id": file_id})], now)
        return file_id
