"""The one interface every provider implements, and the error classes the
failure policy is written against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
import json
from typing import Any, NamedTuple, Protocol

from ftctl.providers.keys import clip

# normalised provider states
P_QUEUED = "queued"
P_RUNNING = "running"
P_SUCCEEDED = "succeeded"
P_FAILED = "failed"
P_CANCELLED = "cancelled"
ACTIVE = frozenset({P_QUEUED, P_RUNNING})

# why a provider job failed
FAIL_CAPACITY = "capacity"  # over the provider's concurrency limit
FAIL_DATA = "data"  # the data was rejected: permanent
FAIL_TRAINING = "training"  # training itself failed: retry, limited

CONCURRENCY_LIMIT_MESSAGE = "You have reached the maximum number of jobs you can run concurrently."


# what a provider answers when fine-tuning is over: for the account (OpenAI's
# wind-down: a 403 "fine-tuning is not available ..."), or for a model
# (Mistral's 422 "Model not available for this type of fine-tuning")
_ENDED = ("not available", "no longer available", "no longer accept", "not accepting", "no longer support",
          "wound down", "winding down", "discontinued", "has ended", "not enabled")


def is_closed_message(message: str | None) -> bool:
    """Whether an error's text says fine-tuning is not (any longer) open."""
    lowered = (message or "").lower().replace("fine tun", "fine-tun").replace("finetun", "fine-tun")
    return "fine-tun" in lowered and any(phrase in lowered for phrase in _ENDED)


def is_concurrency_limit_message(message: str | None) -> bool:
    if not message:
        return False
    lowered = message.lower()
    return "maximum number of" in lowered and "concurrent" in lowered


# Mistral's statuses (the simulated engine speaks them too)
MISTRAL_STATUS = {
    "QUEUED": P_QUEUED,
    "STARTED": P_QUEUED,
    "VALIDATING": P_QUEUED,
    "VALIDATED": P_QUEUED,
    "RUNNING": P_RUNNING,
    "FAILED_VALIDATION": P_FAILED,
    "FAILED": P_FAILED,
    "SUCCESS": P_SUCCEEDED,
    "CANCELLATION_REQUESTED": P_RUNNING,
    "CANCELLED": P_CANCELLED,
}


def parse_json(body: bytes) -> Any:
    """A provider's JSON answer: orjson (several times faster on a listing of
    thousands of jobs), else the standard library for what orjson refuses
    and json takes (a lone surrogate escape in some job's message)."""
    import orjson

    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        import json

        return json.loads(body)


class ProviderJob(NamedTuple):
    """What a provider says about one of its jobs, normalised (a NamedTuple:
    a listing makes thousands of them a tick)."""

    id: str
    status: str  # one of P_*
    raw_status: str
    client_token: str | None = None
    model: str | None = None
    fine_tuned_model: str | None = None
    failure: str | None = None  # FAIL_* when status is failed
    message: str | None = None
    created_at: datetime | None = None
    trained_tokens: int | None = None
    cost: float | None = None
    # False: a failed job as a listing shows it, without the details that tell
    # why (`failure`, `message`); `get_job` reads them
    detailed: bool = True

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(frozen=True)
class JobSpec:
    """What the controller asks a provider to train."""

    agent: str
    model: str
    # (provider file id, weight) of each training file; providers without
    # file weights (descriptor.file_weights False) get exactly one
    training_files: tuple[tuple[str, float], ...]
    hyperparameters: dict[str, Any]
    client_token: str
    auto_start: bool = True
    # the provider job whose model `model` is, when training continues from
    # an upstream stage (Together's from_checkpoint)
    upstream_job_id: str | None = None
    # ftctl's own id of the job (a self-hosted provider keys its artifacts by it)
    job_id: int | None = None

    @property
    def training_file_id(self) -> str:
        return self.training_files[0][0]


@dataclass(frozen=True)
class LogEntry:
    """One point of a job's training log: an event, a metric or a checkpoint.
    `key` is stable across calls, so the caller stores each point once."""

    key: str
    at: datetime | None
    kind: str  # "event", "metric" or "checkpoint"
    step: int | None = None
    message: str | None = None
    metrics: dict[str, float] | None = None  # e.g. train_loss, valid_loss


@dataclass(frozen=True)
class WebhookEvent:
    """A provider's webhook, verified: only a hint that one of its jobs
    changed (the job's state is still read from the provider's API)."""

    id: str  # the `webhook-id`: the same on every retry of one delivery
    type: str  # e.g. fine_tuning.job.succeeded
    job_id: str | None = None


class WebhookRejected(Exception):
    """A webhook that is not the provider's, or too old: answered with
    `status` (4xx) and acted on in no way."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Quote:
    """The provider's own price for a job. Mistral's comes from a job created
    with auto_start=False (`job_id`; `settled`: the provider confirmed it
    cancelled); Together's from a price call that creates no job (`job_id`
    None, nothing to settle)."""

    cost: float | None
    job_id: str | None
    settled: bool


class ProviderError(Exception):
    """An error from a provider call, classified for the failure policy: the
    engine decides on the class, never on the message text.

    `ambiguous`: the call may have taken effect at the provider although it
    failed here (a timeout, a reset connection, a 5xx). After an ambiguous
    create, nothing is created again until a listing read after the call
    could still land shows no job with its token.
    """

    kind = "error"
    ambiguous = False

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None,
                 ambiguous: bool | None = None):
        # every error text is masked, then cut: a key a provider echoes back
        # never survives in part
        message = clip(message)
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        if ambiguous is not None:
            self.ambiguous = ambiguous


class TransientError(ProviderError):
    """5xx, timeouts, resets: retry after a while (ambiguous by default)."""

    kind = "transient"
    ambiguous = True


class RateLimited(TransientError):
    """429: refused before any work was done; retry after Retry-After."""

    ambiguous = False


class Unreachable(TransientError):
    """The connection was never made: the call did nothing."""

    ambiguous = False


class AuthError(ProviderError):
    """401/403: pause the whole provider."""

    kind = "auth"


class ProviderUnavailable(AuthError):
    """The provider cannot be set up here: its key or its SDK is missing."""


class QuotaError(ProviderError):
    """Quota or billing exhausted: pause the provider, never a retry storm."""

    kind = "quota"


class PermanentError(ProviderError):
    """400/422, data rejected: the job fails with the provider's message."""

    kind = "permanent"


class ProviderClosed(ProviderError):
    """Fine-tuning is no longer open to this account (a wind-down, a
    deprecation): never a retry, never counted against the job; a job with
    a fallback provider moves on."""

    kind = "closed"


class ModelClosed(PermanentError):
    """The provider no longer fine-tunes this model: permanent for the job
    on this provider; a job with a fallback provider moves on."""

    kind = "model_closed"


class CapacityError(ProviderError):
    """The provider refused because its concurrency limit is reached."""

    kind = "capacity"


class NotFoundError(ProviderError):
    kind = "not_found"


class Provider(Protocol):
    name: str

    def upload_file(self, path: Path, content_hash: str) -> str:
        """Upload a training file; return the provider's file id."""

    def create_job(self, spec: JobSpec) -> ProviderJob:
        """Create a fine-tuning job that carries spec.client_token."""

    def list_jobs(self, created_after: datetime | None = None,
                  enough: Callable[[list[ProviderJob]], bool] | None = None) -> list[ProviderJob]:
        """Jobs created after the given time (all pages), newest first. A
        failed job may come without its details (`detailed` False): the
        caller reads them with `get_job`, for its own jobs only. A client
        that pages may take `enough`: called with each page's jobs as read,
        and when it returns True no further page is asked for (the caller
        has seen every job that can still change)."""

    def get_job(self, job_id: str) -> ProviderJob:
        """One job; NotFoundError if the provider does not know it."""

    def find_by_token(self, token: str) -> list[ProviderJob]:
        """The jobs carrying a client token (asked right before creating again)."""

    def cancel_job(self, job_id: str) -> ProviderJob:
        """Ask the provider to cancel a job."""

    def close(self) -> None:
        """Release connections."""

    # Optional, where the descriptor says the provider has them:

    def quote(self, file_id: str, model: str, hyperparameters: dict[str, Any]) -> Quote:
        """The provider's own price for a job (descriptor.quotes)."""

    def complete(self, model: str, messages: list[dict[str, Any]], *, max_tokens: int | None = None,
                 temperature: float | None = None) -> str:
        """One chat completion from `model` (used by the evaluation gate)."""

    def checkpoints(self, job_id: str) -> list[tuple[int, str]]:
        """(step, model) of each checkpoint of a succeeded job that its chat
        answers with, by step (descriptor.checkpoint_models)."""

    def training_log(self, job_id: str) -> list[LogEntry]:
        """The job's events, metrics and checkpoints as the provider reports
        them (descriptor.training_log); a client may return only what is new
        since its last call for that job: the caller stores points by key."""

    def delete_model(self, model: str) -> bool:
        """Delete a fine-tuned model (descriptor.deletes_models): True when
        deleted, False when the provider had no such model (gone already)."""

    def delete_file(self, file_id: str) -> bool:
        """Delete an uploaded file (descriptor.deletes_files); True/False as delete_model."""

    def prune_checkpoints(self, model: str) -> int:
        """Drop the checkpoints of the job that made `model`, but what the
        model itself is (descriptor.prunes_checkpoints); how many went."""


def deleted(call: Callable[[], Any]) -> bool:
    """A provider's delete: True when done, False when there was nothing to
    delete (a 404: an earlier call that took effect, or deleted by hand)."""
    try:
        call()
    except NotFoundError:
        return False
    return True


def error_from_status(status_code: int, message: str, retry_after: float | None = None) -> ProviderError:
    """Classify an HTTP-shaped error by the failure policy."""
    lowered = message.lower()
    if status_code in (400, 403, 404, 422) and is_closed_message(message):
        if status_code != 403 and "model" in lowered:
            return ModelClosed(message, status_code=status_code)
        return ProviderClosed(message, status_code=status_code)
    if status_code in (402, 429) and ("quota" in lowered or "billing" in lowered or "credit" in lowered):
        return QuotaError(message, status_code=status_code)
    if status_code in (409, 429) and is_concurrency_limit_message(message):
        return CapacityError(message, status_code=status_code)
    if status_code == 429:
        return RateLimited(message, status_code=status_code, retry_after=retry_after)
    if status_code >= 500:
        return TransientError(message, status_code=status_code, retry_after=retry_after)
    if status_code in (401, 403):
        return AuthError(message, status_code=status_code)
    if status_code == 402:
        return QuotaError(message, status_code=status_code)
    if status_code == 404:
        return NotFoundError(message, status_code=status_code)
    return PermanentError(message, status_code=status_code)


def message_from_body(body: str | bytes | None, limit: int = 100_000) -> str:
    """The human part of an HTTP error body (Mistral, OpenAI or FastAPI shapes),
    whole: it is masked before anything cuts it (ProviderError does both)."""
    if body is None:
        return ""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except ValueError:
        return " ".join(body.split())[:limit]
    found: Any = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            found = err.get("message") or err.get("code")
        found = found or (err if isinstance(err, str) else None) or data.get("message") or data.get("detail")
    if isinstance(found, list):  # FastAPI-style validation details
        found = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in found)
    if found is None:
        found = body
    return " ".join(str(found).split())[:limit]


def retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
