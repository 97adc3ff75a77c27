"""Mistral, through the official `mistralai` SDK (2.5.1: the last release
with the fine-tuning jobs API).

The client token travels as the job's `suffix` (the fine-tuned model's name
carries it, and `jobs.list(suffix=...)` finds it again).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
import secrets
from typing import Any, ClassVar, Literal

from ftctl.providers.base import deleted
from ftctl.providers.base import (
    FAIL_CAPACITY,
    FAIL_DATA,
    FAIL_TRAINING,
    MISTRAL_STATUS,
    JobSpec,
    LogEntry,
    PermanentError,
    ProviderError,
    ProviderJob,
    Quote,
    TransientError,
    Unreachable,
    error_from_status,
    is_concurrency_limit_message,
    message_from_body,
    parse_json,
    retry_after_seconds,
)
from ftctl.providers.keys import clip, redact
from ftctl.providers.lifecycle import MISTRAL as MISTRAL_LIFECYCLE
from ftctl.providers.kind import BuildEnv, ProviderKind, RemoteSection

HYPERPARAMETERS = {k: k for k in ("training_steps", "learning_rate", "weight_decay", "warmup_fraction", "epochs",
                                  "seq_len", "fim_ratio")}

PAGE_SIZE = 100  # Mistral's default page
BIG_PAGE = 1000  # what a listing asks for first (see list_jobs)
_FAILED = ("FAILED", "FAILED_VALIDATION")
_MESSAGE_KEYS = ("error", "message", "reason", "detail", "error_message", "failure_reason")


def _strings(value: Any) -> list[str]:
    """Every string inside a JSON-ish value (a message may sit at any depth)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        preferred = [value[k] for k in _MESSAGE_KEYS if k in value]
        rest = [v for k, v in value.items() if k not in _MESSAGE_KEYS]
        return [s for v in preferred + rest for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _get(obj: Any, key: str) -> Any:
    """A field of the SDK's model or of the raw JSON (a dict)."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def failure_message(job: Any) -> str | None:
    """Where Mistral puts a failure's message is not documented: look in the
    events' data (newest first), then any error/message field on the job."""
    texts: list[str] = []
    events = list(_get(job, "events") or [])
    for event in reversed(events):
        data = _get(event, "data")
        if isinstance(data, dict):
            texts += [s for k in _MESSAGE_KEYS if k in data for s in _strings(data[k])]
    extra = job if isinstance(job, dict) else (getattr(job, "model_extra", None) or {})
    for key in _MESSAGE_KEYS:
        for source in (extra.get(key), None if isinstance(job, dict) else getattr(job, key, None)):
            texts += _strings(source) if not callable(source) else []
    for event in reversed(events):
        data = _get(event, "data")
        texts += [s for s in _strings(data) if s not in MISTRAL_STATUS]
    for text in texts:
        if is_concurrency_limit_message(text):
            return text
    return texts[0] if texts else None


def _failure(raw: str, job: Any) -> tuple[str | None, str | None]:
    message = failure_message(job)
    if is_concurrency_limit_message(message):
        return FAIL_CAPACITY, message
    return (FAIL_DATA if raw == "FAILED_VALIDATION" else FAIL_TRAINING), message


_EPOCH = datetime(1970, 1, 1)


def job_from_listing(data: dict[str, Any]) -> ProviderJob:
    """A job of the listing's raw JSON: only the fields ftctl reads. The
    listing carries no events, so a failed job comes without its details
    unless the answer had them."""
    raw = data["status"]
    get = data.get
    failure = message = None
    detailed = True
    if raw in _FAILED:
        if get("events"):
            failure, message = _failure(raw, data)
            message = clip(message) if message else None
        else:
            detailed = False
    meta = get("metadata")
    created = get("created_at")
    at = _CREATED.get(created) if created is not None else None
    if at is None and created is not None:
        if len(_CREATED) >= _CREATED_KEPT:
            _CREATED.clear()
        at = _CREATED[created] = _EPOCH + timedelta(seconds=created)
    return ProviderJob(
        data["id"], MISTRAL_STATUS.get(raw, "queued"), raw, get("suffix"), get("model"), get("fine_tuned_model"),
        failure, message, at, get("trained_tokens"), meta.get("cost") if type(meta) is dict else None, detailed,
    )


# a creation time (epoch seconds) as a datetime, kept from one listing to the
# next: the same jobs are listed every tick, and their times were half of
# reading a listed job (issue 18.8); bounded, started afresh when full
_CREATED: dict[Any, datetime] = {}
_CREATED_KEPT = 200_000


def _unset(value: Any) -> Any:
    return None if value is None or type(value).__name__ == "Unset" else value


def _utc(ts: float | int | None) -> datetime | None:
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None) if ts is not None else None


class MistralProvider:
    def __init__(self, name: str, api_key: str, base_url: str | None = None, timeout: float = 30.0,
                 clock: Callable[[], float] | None = None):
        from mistralai.client import Mistral

        self.name = name
        self.client = Mistral(api_key=api_key, server_url=base_url, timeout_ms=int(timeout * 1000))
        # failed jobs do not change any more: their details are read once
        self._details: dict[str, ProviderJob] = {}
        self._page_size = BIG_PAGE

    # -- errors ------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import httpx
        from mistralai.client.errors import MistralError, NoResponseError, ResponseValidationError

        try:
            return fn(*args, **kwargs)
        except ResponseValidationError as exc:
            # answered 200, but not in the shape the SDK expects: the call may
            # have taken effect, so it is treated as ambiguous (transient)
            raise TransientError(f"unexpected answer from Mistral: {str(exc).splitlines()[0]}") from None
        except MistralError as exc:
            retry_after = retry_after_seconds(exc.headers.get("retry-after")) if exc.headers is not None else None
            message = redact(message_from_body(exc.body) or "error")
            raise error_from_status(exc.status_code, f"HTTP {exc.status_code}: {message}", retry_after) from None
        except NoResponseError:
            raise TransientError("no response from Mistral") from None
        except httpx.TimeoutException:
            raise TransientError("timed out waiting for Mistral") from None
        except httpx.ConnectError as exc:
            raise Unreachable(redact(f"cannot reach Mistral: {exc.__class__.__name__}: {exc}")) from None
        except httpx.TransportError as exc:
            raise TransientError(redact(f"cannot reach Mistral: {exc.__class__.__name__}: {exc}")) from None
        except ProviderError:
            raise
        except Exception as exc:  # a response the SDK could not parse, and the like
            raise TransientError(redact(f"unexpected answer from Mistral: {exc.__class__.__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''}")) from None

    # -- the interface ---------------------------------------------------------------

    def upload_file(self, path: Path, content_hash: str) -> str:
        with open(path, "rb") as fh:
            res = self._call(self.client.files.upload, file={"file_name": Path(path).name, "content": fh},
                             purpose="fine-tune")
        return res.id

    def create_job(self, spec: JobSpec) -> ProviderJob:
        job = self._call(
            self.client.fine_tuning.jobs.create,
            model=spec.model,
            training_files=[{"file_id": file_id, "weight": float(weight)} for file_id, weight in spec.training_files],
            hyperparameters=KIND.provider_hyperparameters(spec.hyperparameters),
            suffix=spec.client_token,
            auto_start=spec.auto_start,
        )
        return self._to_job(job)

    def list_jobs(self, created_after: datetime | None = None,
                  enough: Callable[[list[ProviderJob]], bool] | None = None) -> list[ProviderJob]:
        """Newest first, back to `created_after` (the API filters), or to the
        page after which `enough` says the caller has what it needs: no detail
        call here; a failed job comes back `detailed` False, and get_job
        reads why it failed for the jobs the caller owns.

        Pages of BIG_PAGE jobs are asked for (a call costs far more than the
        jobs in it); a service that pages smaller says so by a shorter first
        page, or refuses the size, and the listing follows its size."""
        after = created_after.replace(tzinfo=timezone.utc) if created_after else None
        size = self._page_size
        fetch = self._call(self._pages, after, size)
        out: list[ProviderJob] = []
        page = 0
        while True:
            try:
                res = self._call(fetch, page)
            except PermanentError:
                if page or size <= PAGE_SIZE:
                    raise
                size = self._page_size = PAGE_SIZE  # the size was refused: Mistral's own default
                fetch = self._call(self._pages, after, size)
                continue
            data = res.get("data") or []
            known = self._details  # failed jobs whose details were read: those, as read
            try:  # every job on the key holds a slot, whatever its job_type
                jobs = [(known.get(d["id"]) if known else None) or job_from_listing(d) for d in data]
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise TransientError(f"unexpected answer from Mistral: a listed job without {exc}") from None
            out.extend(jobs)
            if enough is not None and enough(jobs):
                return out
            total = res.get("total") or 0
            if page == 0 and 0 < len(data) < min(size, total):
                # fewer than asked and more to come: the service's pages are this long
                size = self._page_size = len(data)
                fetch = self._call(self._pages, after, size)
            page += 1
            if len(data) < size or page * size >= total:
                return out

    def _pages(self, created_after: datetime | None, size: int) -> Callable[[int], dict[str, Any]]:
        """page -> that page of `jobs.list` as its raw JSON. The SDK builds,
        signs and sends the request (its hooks and errors included), once:
        later pages change only `page`. What is left out of the listing's
        hot path is the SDK's parsing (a pydantic model built each call and
        a deep copy a job) and its query encoding (type hints each call)."""
        import re

        import httpx

        jobs = self.client.fine_tuning.jobs
        try:
            from mistralai.client import errors, models, utils
            from mistralai.client._hooks import HookContext
            from mistralai.client.utils import get_security_from_env
        except ImportError:  # another SDK layout: its own parsing, then the same fields
            def parsed(page: int) -> dict[str, Any]:
                res = jobs.list(page=page, page_size=size, created_after=created_after)
                return {"total": res.total, "data": [j.model_dump(mode="json") for j in res.data or []
                                                     if not getattr(j, "is_unknown", False)]}
            return parsed
        config = jobs.sdk_configuration
        base_url = jobs._get_url(None, None)
        first = jobs._build_request(
            method="GET", path="/v1/fine_tuning/jobs", base_url=base_url, url_variables=None,
            request=models.JobsAPIRoutesFineTuningGetFineTuningJobsRequest(page=0, page_size=size,
                                                                           created_after=created_after),
            request_body_required=False, request_has_path_params=False, request_has_query_params=True,
            user_agent_header="user-agent", accept_header_value="application/json", http_headers=None,
            security=config.security, allow_empty_value=None, timeout_ms=config.timeout_ms or 300000)
        context = HookContext(config=config, base_url=base_url or "",
                              operation_id="jobs_api_routes_fine_tuning_get_fine_tuning_jobs", oauth2_scopes=None,
                              security_source=get_security_from_env(config.security, models.Security))

        url = str(first.url)
        if not re.search(r"[?&]page=0(&|$)", url):
            raise TransientError("the SDK built a listing request without a page")

        def fetch(page: int) -> dict[str, Any]:
            request = first if page == 0 else httpx.Request(
                "GET", re.sub(r"([?&])page=0(&|$)", rf"\g<1>page={page}\g<2>", url, count=1), headers=first.headers,
                extensions=dict(first.extensions))
            res = jobs.do_request(hook_ctx=context, request=request, retry_config=None,
                                  is_error_status_code=lambda c: utils.match_status_codes(["4XX", "5XX"], c))
            if not utils.match_response(res, "200", "application/json"):
                raise errors.SDKError("API error occurred", res, utils.stream_to_text(res))
            try:
                body = parse_json(res.content)
                if not isinstance(body, dict) or not isinstance(body.get("data", []), list):
                    raise ValueError("not a list of jobs")
            except ValueError as exc:
                raise TransientError(f"unexpected answer from Mistral: {exc}") from None
            return body

        return fetch

    def get_job(self, job_id: str) -> ProviderJob:
        if job_id in self._details:
            return self._details[job_id]
        job = self._to_job(self._call(self.client.fine_tuning.jobs.get, job_id=job_id))
        if job.status == "failed":
            self._details[job_id] = job
        return job

    def cancel_job(self, job_id: str) -> ProviderJob:
        return self._to_job(self._call(self.client.fine_tuning.jobs.cancel, job_id=job_id))

    def quote(self, file_id: str, model: str, hyperparameters: dict[str, Any]) -> Quote:
        """Mistral's own price: a job created with auto_start=False carries its
        token count and cost; it is cancelled right after reading them (the
        caller records it, and the daemon cancels it again until confirmed)."""
        job = self._call(self.client.fine_tuning.jobs.create, model=model,
                         training_files=[{"file_id": file_id, "weight": 1.0}],
                         hyperparameters=KIND.provider_hyperparameters(hyperparameters),
                         suffix=f"quote-{secrets.token_hex(4)}", auto_start=False)
        settled = True
        try:
            self._call(self.client.fine_tuning.jobs.cancel, job_id=job.id)
        except ProviderError:
            settled = False
        meta = _unset(job.metadata)
        return Quote(_unset(meta.cost) if meta is not None else None, job.id, settled)

    def training_log(self, job_id: str) -> list[LogEntry]:
        """The job's events and checkpoints (train_loss, valid_loss,
        valid_mean_token_accuracy by step), from one `jobs.get`."""
        job = self._call(self.client.fine_tuning.jobs.get, job_id=job_id)
        out: list[LogEntry] = []
        for i, ev in enumerate(_unset(getattr(job, "events", None)) or []):
            data = _unset(ev.data) or {}
            detail = data.get("status") if isinstance(data, dict) and isinstance(data.get("status"), str) else None
            text = redact(f"{ev.name}: {detail}" if detail else ev.name)
            out.append(LogEntry(f"event:{ev.created_at}:{i}:{ev.name}", _utc(ev.created_at), "event", None, text))
        for c in _unset(getattr(job, "checkpoints", None)) or []:
            metrics = {k: float(v) for k in ("train_loss", "valid_loss", "valid_mean_token_accuracy")
                       if isinstance(v := _unset(getattr(c.metrics, k, None)), (int, float))}
            out.append(LogEntry(f"checkpoint:{c.step_number}", _utc(c.created_at), "checkpoint", c.step_number,
                                None, metrics or None))
        return out

    def warm_chat(self) -> None:
        """Load the SDK's chat resource (imported on first use, a fraction of
        a second) before the gate times its answers."""
        self.client.chat  # noqa: B018

    def complete(self, model: str, messages: list[dict[str, Any]], *, max_tokens: int | None = None,
                 temperature: float | None = None) -> str:
        """One answer from `model` (`client.chat.complete`), for the evaluation gate."""
        kwargs = {"max_tokens": max_tokens} if max_tokens else {}
        if temperature is not None:
            kwargs["temperature"] = temperature
        res = self._call(self.client.chat.complete, model=model, messages=messages, **kwargs)
        content = res.choices[0].message.content if res.choices else None
        if isinstance(content, list):  # text chunks
            content = "".join(getattr(c, "text", "") or "" for c in content)
        return content or ""

    def delete_model(self, model: str) -> bool:
        return deleted(lambda: self._call(self.client.models.delete, model_id=model))

    def delete_file(self, file_id: str) -> bool:
        return deleted(lambda: self._call(self.client.files.delete, file_id=file_id))

    def find_by_token(self, token: str) -> list[ProviderJob]:
        res = self._call(self.client.fine_tuning.jobs.list, suffix=token, page_size=PAGE_SIZE)
        return [self._to_job(j) for j in (res.data or []) if not getattr(j, "is_unknown", False)]

    def close(self) -> None:
        try:
            self.client.__exit__(None, None, None)
        except Exception:
            pass

    # -- mapping -------------------------------------------------------------------------

    def _to_job(self, job: Any) -> ProviderJob:
        raw = str(job.status)
        failure, message = _failure(raw, job) if raw in _FAILED else (None, None)
        meta = _unset(getattr(job, "metadata", None))
        return ProviderJob(
            id=job.id,
            status=MISTRAL_STATUS.get(raw, "queued"),
            raw_status=raw,
            client_token=_unset(job.suffix),
            model=job.model,
            fine_tuned_model=_unset(job.fine_tuned_model),
            failure=failure,
            message=clip(message) if message else None,
            created_at=datetime.fromtimestamp(job.created_at, timezone.utc).replace(tzinfo=None),
            trained_tokens=_unset(job.trained_tokens),
            cost=_unset(getattr(meta, "cost", None)) if meta is not None else None,
        )


# -- the descriptor -----------------------------------------------------------------


class MistralSection(RemoteSection):
    kind: Literal["mistral"]
    default_key_env: ClassVar[str] = "MISTRAL_API_KEY"


class MistralKind(ProviderKind):
    kind = "mistral"
    section = MistralSection
    hyperparameters = HYPERPARAMETERS
    price_key = "mistral"
    quotes = True
    file_weights = True
    training_log = True
    chat = True
    deletes_models = True
    deletes_files = True
    sdk = "mistralai"
    lifecycle = MISTRAL_LIFECYCLE
    install_hint = "pip install . from a checkout"

    def client(self, name: str, section: MistralSection, env: BuildEnv) -> MistralProvider:
        return MistralProvider(name, section.api_key(name), base_url=section.base_url, timeout=section.timeout)

    def claims(self, model: str) -> bool:
        from ftctl.providers.tokenizers import MISTRAL_TOKENIZERS, prefix_lookup

        return prefix_lookup(MISTRAL_TOKENIZERS, self.base_model(model)) is not None

    def counter(self, model: str):
        from ftctl.providers.tokenizers import mistral_counter

        return mistral_counter(self.base_model(model))


KIND = MistralKind()
