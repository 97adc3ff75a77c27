"""OpenAI, through the official `openai` SDK (pip install 'ftctl[openai]').

The client token travels in the job's `metadata` (and as its `suffix`, so it
shows in the model name); `jobs.list(metadata=...)` finds it again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

from ftctl.providers.base import deleted
from ftctl.providers.base import (
    FAIL_CAPACITY,
    FAIL_DATA,
    FAIL_TRAINING,
    P_CANCELLED,
    P_FAILED,
    P_QUEUED,
    P_RUNNING,
    P_SUCCEEDED,
    JobSpec,
    LogEntry,
    ProviderError,
    ProviderJob,
    TransientError,
    Unreachable,
    WebhookEvent,
    WebhookRejected,
    error_from_status,
    is_concurrency_limit_message,
    message_from_body,
    parse_json,
    retry_after_seconds,
)
from ftctl.providers.keys import clip, redact
from ftctl.providers.lifecycle import OPENAI as OPENAI_LIFECYCLE
from ftctl.providers.kind import BuildEnv, ProviderKind, RemoteSection

TOKEN_KEY = "ftctl_token"
PAGE_SIZE = 100
STATUS = {
    "validating_files": P_QUEUED,
    "queued": P_QUEUED,
    "running": P_RUNNING,
    "succeeded": P_SUCCEEDED,
    "failed": P_FAILED,
    "cancelled": P_CANCELLED,
}
# our hyperparameter names -> OpenAI's supervised ones
HYPERPARAMETERS = {"epochs": "n_epochs", "n_epochs": "n_epochs", "batch_size": "batch_size",
                   "learning_rate_multiplier": "learning_rate_multiplier"}


def _utc(ts: float | int | None) -> datetime | None:
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None) if ts is not None else None


def _numbers(data: Any, skip: tuple[str, ...] = ("step", "total_steps")) -> dict[str, float]:
    items = data.items() if isinstance(data, dict) else []
    return {k: float(v) for k, v in items if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _data_error(code: str | None, message: str | None) -> bool:
    text = f"{code or ''} {message or ''}".lower()
    return (code or "").startswith("invalid") or "training file" in text or "invalid file" in text


class OpenAIProvider:
    def __init__(self, name: str, api_key: str, base_url: str | None = None, timeout: float = 30.0,
                 clock: Callable[[], float] | None = None):
        from openai import OpenAI

        self.name = name
        # retries are the controller's business (and must never create twice)
        self.client = OpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        # the newest event id read per job: the next read stops there
        self._newest_event: dict[str, str] = {}

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import openai

        try:
            return fn(*args, **kwargs)
        except openai.APIStatusError as exc:
            retry_after = retry_after_seconds(exc.response.headers.get("retry-after"))
            body = exc.response.text if exc.response is not None else None
            message = redact(message_from_body(body) or exc.message)
            code = exc.code if isinstance(getattr(exc, "code", None), str) else None
            if code == "insufficient_quota" and "quota" not in message.lower():
                message += " (insufficient_quota)"
            raise error_from_status(exc.status_code, f"HTTP {exc.status_code}: {message}", retry_after) from None
        except openai.APITimeoutError:
            raise TransientError("timed out waiting for OpenAI") from None
        except openai.APIConnectionError as exc:
            import httpx

            cause = exc.__cause__
            never_sent = isinstance(cause, httpx.ConnectError)
            raise (Unreachable if never_sent else TransientError)(
                redact(f"cannot reach OpenAI: {(cause or exc).__class__.__name__}")) from None
        except ProviderError:
            raise
        except openai.OpenAIError as exc:
            raise TransientError(redact(f"unexpected answer from OpenAI: {exc.__class__.__name__}: "
                                        f"{str(exc)[:200]}")) from None

    def upload_file(self, path: Path, content_hash: str) -> str:
        with open(path, "rb") as fh:
            res = self._call(self.client.files.create, file=(Path(path).name, fh), purpose="fine-tune")
        return res.id

    def create_job(self, spec: JobSpec) -> ProviderJob:
        hp = KIND.provider_hyperparameters(spec.hyperparameters)
        kwargs: dict[str, Any] = {}
        if hp:
            kwargs["method"] = {"type": "supervised", "supervised": {"hyperparameters": hp}}
        job = self._call(self.client.fine_tuning.jobs.create, model=spec.model,
                         training_file=spec.training_file_id, suffix=spec.client_token,
                         metadata={TOKEN_KEY: spec.client_token}, **kwargs)
        return self._to_job(job)

    def list_jobs(self, created_after: datetime | None = None,
                  enough: Callable[[list[ProviderJob]], bool] | None = None) -> list[ProviderJob]:
        """Newest first, page by page, back to `created_after`, or to the page
        after which `enough` says the caller has what it needs. The pages are
        read as raw JSON (the SDK's `with_raw_response`): only the fields
        ftctl needs are parsed."""
        floor = created_after.replace(tzinfo=timezone.utc).timestamp() if created_after else None
        out: list[ProviderJob] = []
        after: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE}
            if after:
                kwargs["after"] = after
            raw = self._call(self.client.fine_tuning.jobs.with_raw_response.list, **kwargs)
            try:
                page = parse_json(raw.http_response.content)
                data = list(page.get("data") or [])
                jobs, older = [], False
                for job in data:
                    if floor is not None and job["created_at"] < floor:
                        older = True  # newest first: the rest are older still
                        break
                    jobs.append(self._to_job(job))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise TransientError(f"unexpected answer from OpenAI: {exc.__class__.__name__}") from None
            out.extend(jobs)
            if older or not data or not page.get("has_more") or (enough is not None and enough(jobs)):
                return out
            after = data[-1]["id"]

    def get_job(self, job_id: str) -> ProviderJob:
        return self._to_job(self._call(self.client.fine_tuning.jobs.retrieve, job_id))

    def cancel_job(self, job_id: str) -> ProviderJob:
        return self._to_job(self._call(self.client.fine_tuning.jobs.cancel, job_id))

    def warm_chat(self) -> None:
        """Load the SDK's chat resource (imported on first use, a fraction of
        a second) before the gate times its answers."""
        self.client.chat.completions  # noqa: B018

    def complete(self, model: str, messages: list[dict[str, Any]], *, max_tokens: int | None = None,
                 temperature: float | None = None) -> str:
        """One answer from `model` (`chat.completions.create`), for the evaluation gate."""
        kwargs = {"max_tokens": max_tokens} if max_tokens else {}
        if temperature is not None:
            kwargs["temperature"] = temperature
        reply = self._call(self.client.chat.completions.create, model=model, messages=messages, **kwargs)
        return (reply.choices[0].message.content if reply.choices else None) or ""

    def delete_model(self, model: str) -> bool:
        return deleted(lambda: self._call(self.client.models.delete, model))

    def delete_file(self, file_id: str) -> bool:
        return deleted(lambda: self._call(self.client.files.delete, file_id))

    def find_by_token(self, token: str) -> list[ProviderJob]:
        page = self._call(self.client.fine_tuning.jobs.list, metadata={TOKEN_KEY: token}, limit=PAGE_SIZE)
        return [self._to_job(j) for j in page.data]

    def training_log(self, job_id: str) -> list[LogEntry]:
        """The job's events (messages, and metrics per step) newer than the
        last read, newest first page by page; and its checkpoints' metrics."""
        out: list[LogEntry] = []
        known, newest, after = self._newest_event.get(job_id), None, None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE, **({"after": after} if after else {})}
            page = self._call(self.client.fine_tuning.jobs.list_events, job_id, **kwargs)
            data = list(page.data)
            newest = newest or (data[0].id if data else None)
            ids = [e.id for e in data]
            fresh = data[:ids.index(known)] if known in ids else data
            for e in fresh:
                metrics = _numbers(e.data) if e.type == "metrics" else None
                step = (e.data or {}).get("step") if isinstance(e.data, dict) else None
                out.append(LogEntry(f"event:{e.id}", _utc(e.created_at), "metric" if metrics else "event",
                                    int(step) if isinstance(step, (int, float)) else None, redact(e.message),
                                    metrics or None))
            if len(fresh) < len(data) or not data or not page.has_more:
                break
            after = data[-1].id
        if newest:
            self._newest_event[job_id] = newest
        page = self._call(self.client.fine_tuning.jobs.checkpoints.list, job_id, limit=PAGE_SIZE)
        for c in page.data:
            out.append(LogEntry(f"checkpoint:{c.id}", _utc(c.created_at), "checkpoint", c.step_number,
                                c.fine_tuned_model_checkpoint, _numbers(c.metrics.model_dump()) or None))
        return out

    def checkpoints(self, job_id: str) -> list[tuple[int, str]]:
        """(step, model) of each checkpoint the job kept, by step: each a model
        the chat API answers with (OpenAI keeps the last three epochs')."""
        page = self._call(self.client.fine_tuning.jobs.checkpoints.list, job_id, limit=PAGE_SIZE)
        return sorted((c.step_number, c.fine_tuned_model_checkpoint) for c in page.data)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass

    def _to_job(self, job: Any) -> ProviderJob:
        """From the SDK's model or from the raw JSON of a listing (a dict)."""
        get = job.get if isinstance(job, dict) else (lambda key: getattr(job, key, None))
        status = STATUS.get(get("status"), P_QUEUED)
        failure, message = None, None
        if status == P_FAILED:
            err = get("error")
            err_get = err.get if isinstance(err, dict) else (lambda key: getattr(err, key, None))
            code = err_get("code") if err else None
            message = (err_get("message") if err else None) or code or "failed"
            if is_concurrency_limit_message(message):
                failure = FAIL_CAPACITY
            elif _data_error(code, message):
                failure = FAIL_DATA
            else:
                failure = FAIL_TRAINING
        metadata = get("metadata") or {}
        return ProviderJob(
            id=get("id"),
            status=status,
            raw_status=get("status"),
            client_token=metadata.get(TOKEN_KEY),
            model=get("model"),
            fine_tuned_model=get("fine_tuned_model"),
            failure=failure,
            message=clip(message) if message else None,
            created_at=datetime.fromtimestamp(get("created_at"), timezone.utc).replace(tzinfo=None),
            trained_tokens=get("trained_tokens"),
        )


# -- the descriptor -----------------------------------------------------------------


class OpenAISection(RemoteSection):
    kind: Literal["openai"]
    default_key_env: ClassVar[str] = "OPENAI_API_KEY"


_verifiers: dict[str, Any] = {}


class OpenAIKind(ProviderKind):
    kind = "openai"
    section = OpenAISection
    hyperparameters = HYPERPARAMETERS
    value_types = {"epochs": "count"}  # n_epochs: a whole number of epochs, or "auto"
    value_words = frozenset({"auto"})
    price_key = "openai"
    training_log = True
    webhooks = True
    # what OpenAI says about fine-tuning jobs; a batch's, an eval's or a response's event is not ours
    webhook_types = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
    roles = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
    example_keys = frozenset({"messages", "tools", "parallel_tool_calls", "functions"})
    chat = True
    checkpoint_models = True  # ft:...:ckpt-step-N answers chat like the final model
    deletes_models = True
    deletes_files = True
    sdk = "openai"
    install_hint = "pip install '.[openai]' from a checkout"
    lifecycle = OPENAI_LIFECYCLE

    def client(self, name: str, section: OpenAISection, env: BuildEnv) -> OpenAIProvider:
        return OpenAIProvider(name, section.api_key(name), base_url=section.base_url, timeout=section.timeout)

    def verify_webhook(self, body: bytes, headers: dict[str, str], secret: str) -> WebhookEvent:
        """`fine_tuning.job.*` and the rest, verified with the SDK's
        `webhooks.unwrap` (signature, and a timestamp within 5 minutes)."""
        import openai

        client = _verifiers.get(secret)
        if client is None:
            client = _verifiers[secret] = openai.OpenAI(api_key="webhooks-only", webhook_secret=secret,
                                                        max_retries=0)
        try:
            event = client.webhooks.unwrap(body, headers)
        except openai.InvalidWebhookSignatureError as exc:
            if "timestamp" in str(exc).lower():
                raise WebhookRejected("webhook-timestamp is more than 5 minutes off", status=400) from None
            raise WebhookRejected("the signature does not match", status=401) from None
        except ValueError as exc:  # a header missing, a body that is not JSON
            raise WebhookRejected(clip(f"malformed webhook: {exc}", 200), status=400) from None
        # signed; the SDK makes an event of any JSON: what it is about is read here
        import json

        try:
            data = json.loads(body)
        except ValueError:
            raise WebhookRejected("malformed webhook: the body is not JSON", status=400) from None
        if not isinstance(data, dict):
            raise WebhookRejected(f"malformed webhook: the body is a JSON {type(data).__name__}, not an event object",
                                  status=400)
        job_id = data["data"].get("id") if isinstance(data.get("data"), dict) else None
        wid = next((v for k, v in headers.items() if k.lower() == "webhook-id"), "")
        return WebhookEvent(id=wid, type=str(data.get("type") or "unknown"),
                            job_id=job_id if isinstance(job_id, str) and job_id else None)

    def default_epochs(self, examples: int) -> tuple[float, str]:
        """OpenAI's own choice when n_epochs is "auto" (the cookbook's chat
        fine-tuning data-prep rule): 3 epochs, raised so that examples x
        epochs reaches 100, lowered so that it stays within 25,000, and kept
        within 1 to 25."""
        target, low, high = 3, 100, 25_000
        epochs = target
        if examples and examples * target < low:
            epochs = min(25, low // examples)
        elif examples * target > high:
            epochs = max(1, high // examples)
        return float(epochs), (f"epochs not given: {epochs} by OpenAI's auto rule for {examples:,} examples "
                               f"(3, kept within {low:,} to {high:,} examples x epochs and 1 to 25 epochs)")

    def claims(self, model: str) -> bool:
        from ftctl.providers.tokenizers import OPENAI_ENCODINGS, prefix_lookup

        return prefix_lookup(OPENAI_ENCODINGS, self.base_model(model)) is not None

    def counter(self, model: str):
        from ftctl.providers.tokenizers import openai_counter

        return openai_counter(self.base_model(model))


KIND = OpenAIKind()
