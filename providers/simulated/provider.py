"""The `simulated` provider: the interface over an in-process SimEngine."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from ftctl.providers.base import deleted
from ftctl.providers.base import (
    FAIL_CAPACITY,
    FAIL_DATA,
    FAIL_TRAINING,
    MISTRAL_STATUS,
    JobSpec,
    LogEntry,
    ProviderError,
    ProviderJob,
    Quote,
    error_from_status,
    is_concurrency_limit_message,
)
from ftctl.providers.simulated import KIND
from ftctl.providers.simulated.engine import EngineSettings, ServiceError, SimEngine
from ftctl.providers.simulated.metrics import points

PAGE_SIZE = 100


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)


def job_from_engine(raw: dict) -> ProviderJob:
    status = MISTRAL_STATUS.get(raw["status"], "queued")
    failure = None
    if raw["status"] == "FAILED_VALIDATION":
        failure = FAIL_CAPACITY if is_concurrency_limit_message(raw.get("message")) else FAIL_DATA
    elif raw["status"] == "FAILED":
        failure = FAIL_TRAINING
    return ProviderJob(
        id=raw["id"],
        status=status,
        raw_status=raw["status"],
        client_token=raw.get("suffix"),
        model=raw["model"],
        fine_tuned_model=raw.get("fine_tuned_model"),
        failure=failure,
        message=raw.get("message"),
        created_at=datetime.fromtimestamp(raw["created_at"], timezone.utc).replace(tzinfo=None),
        trained_tokens=raw.get("trained_tokens"),
        cost=raw.get("cost"),
    )


class SimulatedProvider:
    def __init__(self, name: str, state_file: Path, settings: EngineSettings,
                 clock: Callable[[], float] = time.time):
        self.name = name
        self.engine = SimEngine(state_file, settings, clock=clock)

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ServiceError as exc:
            raise error_from_status(exc.status_code, exc.message, exc.retry_after) from None

    def upload_file(self, path: Path, content_hash: str) -> str:
        content = Path(path).read_bytes()
        return self._call(self.engine.upload_file, Path(path).name, content)["id"]

    def create_job(self, spec: JobSpec) -> ProviderJob:
        raw = self._call(
            self.engine.create_job,
            model=spec.model,
            training_files=[file_id for file_id, _ in spec.training_files],
            hyperparameters=KIND.provider_hyperparameters(spec.hyperparameters),
            suffix=spec.client_token,
            auto_start=spec.auto_start,
        )
        return job_from_engine(raw)

    def list_jobs(self, created_after: datetime | None = None,
                  enough: Callable[[list[ProviderJob]], bool] | None = None) -> list[ProviderJob]:
        after = created_after.replace(tzinfo=timezone.utc).timestamp() if created_after else None
        out: list[ProviderJob] = []
        page = 0
        while True:
            rows, total = self._call(self.engine.list_jobs, page=page, page_size=PAGE_SIZE, created_after=after)
            jobs = [job_from_engine(r) for r in rows]
            out.extend(jobs)
            page += 1
            if not rows or page * PAGE_SIZE >= total or (enough is not None and enough(jobs)):
                return out

    def get_job(self, job_id: str) -> ProviderJob:
        return job_from_engine(self._call(self.engine.get_job, job_id))

    def quote(self, file_id: str, model: str, hyperparameters: dict) -> Quote:
        """Like Mistral: create with auto_start=False, read the cost, cancel."""
        raw = self._call(self.engine.create_job, model=model, training_files=[file_id],
                         hyperparameters=KIND.provider_hyperparameters(hyperparameters),
                         suffix=f"quote-{secrets.token_hex(4)}", auto_start=False)
        settled = True
        try:
            self._call(self.engine.cancel_job, raw["id"])
        except ProviderError:
            settled = False
        return Quote(raw["metadata"].get("cost"), raw["id"], settled)

    def find_by_token(self, token: str) -> list[ProviderJob]:
        rows, _ = self._call(self.engine.list_jobs, suffix=token)
        return [job_from_engine(r) for r in rows]

    def cancel_job(self, job_id: str) -> ProviderJob:
        return job_from_engine(self._call(self.engine.cancel_job, job_id))

    def training_log(self, job_id: str) -> list[LogEntry]:
        """Its status changes, and a train_loss a step (valid_loss too at checkpoints)."""
        raw = self._call(self.engine.get_job, job_id)
        out = []
        for i, ev in enumerate(raw["events"]):
            error = ev["data"].get("error")
            text = f"status {ev['data'].get('status')}" + (f": {error}" if error else "")
            out.append(LogEntry(f"event:{i}", _utc(ev["created_at"]), "event", None, text))
        for p in points(raw, self.engine.clock(), self.engine.settings.train_time):
            metrics = {k: p[k] for k in ("train_loss", "valid_loss", "valid_mean_token_accuracy") if k in p}
            out.append(LogEntry(f"step:{p['step']}", _utc(p["at"]), "checkpoint" if p["checkpoint"] else "metric",
                                p["step"], None, metrics))
        return out

    def delete_model(self, model: str) -> bool:
        return deleted(lambda: self._call(self.engine.delete_model, model))

    def delete_file(self, file_id: str) -> bool:
        return deleted(lambda: self._call(self.engine.delete_file, file_id))

    def complete(self, model: str, messages: list[dict], *, max_tokens: int | None = None,
                 temperature: float | None = None) -> str:
        """A fine-tuned model answers what it was trained on (simulated.recall)."""
        return self._call(self.engine.chat, model, messages)

    def close(self) -> None:
        self.engine.close()
