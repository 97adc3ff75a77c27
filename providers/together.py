"""Together AI, through the official `together` SDK 3.x (pip install '.[together]').

The client token travels as the job's `suffix` (Together allows 40
characters; it becomes part of the output model's name) and the listing
finds it again. Together's jobs listing has no paging and no filters: one
call returns every job, and `list_jobs` sorts (newest first) and filters
(`created_after`) here. Together quotes a job before it exists
(`fine_tuning.estimate_price`), so a quote leaves no job to cancel.

A create at Together is three calls: the model's limits (read once per
model here and handed to the SDK, so a failure there is never ambiguous),
the SDK's own price estimate, then the create itself.
"""

from __future__ import annotations

import hashlib
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
from ftctl.providers.keys import redact
from ftctl.providers.kind import BuildEnv, ProviderKind, RemoteSection

SUFFIX_MAX = 40
# our hyperparameter names -> the create call's
HYPERPARAMETERS = {"epochs": "n_epochs", "learning_rate": "learning_rate", "batch_size": "batch_size",
                   "lora": "lora", "lora_r": "lora_r", "lora_alpha": "lora_alpha", "warmup_ratio": "warmup_ratio",
                   "n_checkpoints": "n_checkpoints", "training_method": "training_method"}
_INTEGERS = ("n_epochs", "n_checkpoints", "lora_r")
STATUS = {
    "pending": P_QUEUED,
    "queued": P_QUEUED,
    "running": P_RUNNING,
    "compressing": P_RUNNING,
    "uploading": P_RUNNING,
    "cancel_requested": P_RUNNING,
    "completed": P_SUCCEEDED,
    "cancelled": P_CANCELLED,
    "error": P_FAILED,
    "user_error": P_FAILED,
}
# Mistral-family models on Together -> mistral-common's tokenizer file for them
MISTRAL_FAMILY = {
    "mistralai/Mistral-7B-Instruct-v0.1": ("tokenizer.model.v1", "v1 SentencePiece"),
    "mistralai/Mistral-7B-Instruct-v0.2": ("tokenizer.model.v1", "v1 SentencePiece"),
    "mistralai/Mistral-7B-v0.1": ("tokenizer.model.v1", "v1 SentencePiece"),
    "mistralai/Mixtral-8x7B": ("tokenizer.model.v1", "v1 SentencePiece"),
    "mistralai/Mistral-7B-Instruct-v0.3": ("mistral_instruct_tokenizer_240323.model.v3", "v3 SentencePiece"),
    "mistralai/Mistral-Nemo": ("tekken_240718.json", "v3 tekken"),
}
# base models Together fine-tunes (to find the root of a fine-tuned model's name)
BASE_MODELS = (*MISTRAL_FAMILY, "meta-llama/Meta-Llama-3.1-8B-Instruct-Reference",
               "meta-llama/Meta-Llama-3.1-8B-Reference", "meta-llama/Meta-Llama-3.1-70B-Instruct-Reference",
               "meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.3-70B-Instruct-Reference",
               "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-72B-Instruct")


def _naive_utc(value: Any) -> datetime | None:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        return None
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def _field(obj: Any, *names: str) -> Any:
    """The first field set among `names` (the SDK's models name some fields
    differently in different answers; unknown ones land in model_extra)."""
    if isinstance(obj, dict):  # the raw JSON of a listing
        value = next((obj[n] for n in names if obj.get(n) is not None), None)
        return value
    extra = getattr(obj, "model_extra", None) or {}
    for name in names:
        value = getattr(obj, name, None)
        if value is None:
            value = extra.get(name)
        if value is not None:
            return getattr(value, "value", value)
    return None


class TogetherProvider:
    def __init__(self, name: str, api_key: str, base_url: str | None = None, timeout: float = 30.0,
                 clock: Callable[[], float] | None = None):
        from together import Together

        self.name = name
        # retries are the controller's business (and must never create twice)
        self.client = Together(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0)
        self._limits: dict[str, Any] = {}  # a model's fine-tuning limits, read once
        self._events: dict[str, list[Any]] = {}  # a failed job's events, read once

    # -- errors ------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import httpx
        import pydantic
        import together
        from together.lib.types.error import FileTypeError

        try:
            return fn(*args, **kwargs)
        except together.APIStatusError as exc:
            response = exc.response
            retry_after = retry_after_seconds(response.headers.get("retry-after")) if response is not None else None
            body = response.text if response is not None else None
            message = redact(message_from_body(body) or str(exc.message).splitlines()[0])[:300]
            raise error_from_status(exc.status_code, f"HTTP {exc.status_code}: {message}", retry_after) from None
        except together.APITimeoutError:
            raise TransientError("timed out waiting for Together") from None
        except together.APIConnectionError as exc:
            cause = exc.__cause__
            raise (Unreachable if isinstance(cause, httpx.ConnectError) else TransientError)(
                redact(f"cannot reach Together: {(cause or exc).__class__.__name__}")) from None
        except httpx.TimeoutException:  # the upload's PUT goes through the bare HTTP client
            raise TransientError("timed out waiting for Together") from None
        except httpx.ConnectError as exc:
            raise Unreachable(redact(f"cannot reach Together: {exc.__class__.__name__}")) from None
        except httpx.TransportError as exc:
            raise TransientError(redact(f"cannot reach Together: {exc.__class__.__name__}")) from None
        except ProviderError:
            raise
        except pydantic.ValidationError as exc:  # an answer the SDK could not read: it may have taken effect
            raise TransientError(redact(f"unexpected answer from Together: {str(exc).splitlines()[0]}")) from None
        except (FileTypeError, ValueError, TypeError) as exc:  # the SDK refused before sending anything
            raise PermanentError(redact(f"Together SDK: {str(exc).splitlines()[0] if str(exc) else exc}")[:300]) \
                from None
        except together.TogetherError as exc:
            raise TransientError(redact(f"unexpected answer from Together: {exc.__class__.__name__}: "
                                        f"{str(exc)[:200]}")) from None

    # -- the interface ---------------------------------------------------------------

    def upload_file(self, path: Path, content_hash: str) -> str:
        # the caller uploads once per content hash; the SDK's own local check
        # is a subset of preflight's
        return self._call(self.client.files.upload, Path(path), purpose="fine-tune", check=False).id

    def create_job(self, spec: JobSpec) -> ProviderJob:
        if len(spec.client_token) > SUFFIX_MAX:
            raise PermanentError(f"client token {spec.client_token!r} is longer than Together's suffix "
                                 f"({SUFFIX_MAX} characters)")
        kwargs = self._training_kwargs(spec.hyperparameters)
        if spec.upstream_job_id:  # continue from the upstream job's final checkpoint
            kwargs["from_checkpoint"] = spec.upstream_job_id
        else:
            kwargs["model"] = spec.model
        kwargs["model_limits"] = self._model_limits(KIND.base_model(spec.model))
        job = self._call(self.client.fine_tuning.create, training_file=spec.training_file_id,
                         suffix=spec.client_token, **kwargs)
        return self._to_job(job)

    def list_jobs(self, created_after: datetime | None = None) -> list[ProviderJob]:
        """Every job (Together's listing has no paging and no filters), read
        as raw JSON (the SDK's `with_raw_response`) and parsed for the fields
        ftctl needs. A failed job comes without its events (`detailed`
        False): get_job reads them, for the caller's own jobs only."""
        raw = self._call(self.client.fine_tuning.with_raw_response.list)
        try:
            data = parse_json(raw.http_response.content).get("data") or []
            jobs = [self._to_job(j, events=False) for j in data]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TransientError(f"unexpected answer from Together: {exc.__class__.__name__}") from None
        if created_after is not None:
            jobs = [j for j in jobs if j.created_at is None or j.created_at > created_after]
        return sorted(jobs, key=lambda j: j.created_at or datetime.min, reverse=True)

    def get_job(self, job_id: str) -> ProviderJob:
        return self._to_job(self._call(self.client.fine_tuning.retrieve, job_id))

    def cancel_job(self, job_id: str) -> ProviderJob:
        return self._to_job(self._call(self.client.fine_tuning.cancel, job_id))

    def delete_file(self, file_id: str) -> bool:
        # Together's SDK deletes files; a fine-tuned model has no delete of its own there
        return deleted(lambda: self._call(self.client.files.delete, file_id))

    def find_by_token(self, token: str) -> list[ProviderJob]:
        return [j for j in self.list_jobs() if j.client_token == token]

    def quote(self, file_id: str, model: str, hyperparameters: dict[str, Any]) -> Quote:
        """Together's own price, before any job exists (nothing to cancel after)."""
        hp = KIND.provider_hyperparameters(hyperparameters)
        method = KIND.training_method(hyperparameters)
        kwargs: dict[str, Any] = {"training_method": {"method": method, **({"train_on_inputs": "auto"}
                                                                             if method == "sft" else {})}}
        if hp.get("n_epochs") is not None:
            kwargs["n_epochs"] = int(hp["n_epochs"])
        if hp.get("lora") is False:
            kwargs["training_type"] = {"type": "Full"}
        elif hp.get("lora_r") is not None:
            r = int(hp["lora_r"])
            kwargs["training_type"] = {"type": "Lora", "lora_r": r, "lora_alpha": int(hp.get("lora_alpha") or 2 * r)}
        got = self._call(self.client.fine_tuning.estimate_price, training_file=file_id, model=model, **kwargs)
        cost = _field(got, "estimated_total_price") if _field(got, "estimation_available") else None
        return Quote(float(cost) if cost is not None else None, None, True)

    def warm_chat(self) -> None:
        """Load the SDK's chat resource (imported on first use, a fraction of
        a second) before the gate times its answers."""
        self.client.chat.completions  # noqa: B018

    def complete(self, model: str, messages: list[dict[str, Any]], *, max_tokens: int | None = None,
                 temperature: float | None = None) -> str:
        kwargs = {"max_tokens": max_tokens} if max_tokens else {}
        if temperature is not None:
            kwargs["temperature"] = temperature
        reply = self._call(self.client.chat.completions.create, model=model, messages=messages, **kwargs)
        return reply.choices[0].message.content or ""

    def training_log(self, job_id: str) -> list[LogEntry]:
        """Events, checkpoints and metrics, each with a key that stays the same
        from one call to the next."""
        out: list[LogEntry] = []
        for e in self._call(self.client.fine_tuning.list_events, job_id).data:
            text = redact(e.message or "")
            digest = hashlib.sha256(f"{e.created_at}|{e.type}|{text}".encode()).hexdigest()[:12]
            out.append(LogEntry(f"event:{digest}", _naive_utc(e.created_at), "event", e.step, f"{e.type}: {text}"))
        for c in self._call(self.client.fine_tuning.list_checkpoints, job_id).data:
            out.append(LogEntry(f"checkpoint:{c.step}", _naive_utc(c.created_at), "checkpoint", c.step,
                                f"{c.checkpoint_type}: {c.path}"))
        for point in self._call(self.client.fine_tuning.list_metrics, job_id).metrics or []:
            raw_step = point.get("global_step", point.get("step"))
            step = int(raw_step) if isinstance(raw_step, (int, float)) else None
            values = {k: float(v) for k, v in point.items()
                      if k not in ("global_step", "step") and isinstance(v, (int, float))}
            out.append(LogEntry(f"metric:{step}", None, "metric", step, metrics=values))
        return out

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass

    # -- mapping -------------------------------------------------------------------------

    def _training_kwargs(self, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        hp = KIND.provider_hyperparameters(hyperparameters)
        method = KIND.training_method(hyperparameters)
        for key in _INTEGERS:
            if isinstance(hp.get(key), float) and hp[key].is_integer():
                hp[key] = int(hp[key])
        if "lora" in hp:
            hp["lora"] = bool(hp["lora"])
        hp["training_method"] = method
        if method == "sft":
            hp["train_on_inputs"] = "auto"  # Together's default, said out loud (the SDK warns otherwise)
        return hp

    def _model_limits(self, model: str) -> Any:
        if model not in self._limits:
            try:
                self._limits[model] = self._call(self.client.fine_tuning.model_limits, model_name=model)
            except ProviderError as exc:
                exc.ambiguous = False  # nothing was created: the create itself was never sent
                raise
        return self._limits[model]

    def _failure(self, job: Any, raw: str) -> tuple[str, str]:
        """(failure class, message) of a failed job: from its events, newest
        first (a listing carries none: they are read once per failed job)."""
        events = _field(job, "events")
        if events is None:
            job_id = _field(job, "id")
            if job_id not in self._events:
                self._events[job_id] = list(self._call(self.client.fine_tuning.list_events, job_id).data)
            events = self._events[job_id]
        texts = [_field(e, "message") for e in reversed(list(events))
                 if str(_field(e, "type") or "").lower() in ("job_error", "job_user_error")
                 or str(_field(e, "level") or "").lower() == "error"]
        message = next((t for t in texts if t), None) or raw
        if is_concurrency_limit_message(message):
            return FAIL_CAPACITY, message
        return (FAIL_DATA if raw == "user_error" else FAIL_TRAINING), message

    def _to_job(self, job: Any, *, events: bool = True) -> ProviderJob:
        """`events` False: a failed job's events are not read here (a listing)."""
        raw = str(_field(job, "status") or "pending")
        status = STATUS.get(raw, P_QUEUED)
        failure, message, detailed = None, None, True
        if status == P_FAILED and (events or _field(job, "events") is not None):
            failure, message = self._failure(job, raw)
        elif status == P_FAILED:
            detailed = False
        price = _field(job, "total_price")  # nanodollars
        return ProviderJob(
            id=_field(job, "id"),
            status=status,
            raw_status=raw,
            client_token=_field(job, "suffix"),
            model=_field(job, "model"),
            fine_tuned_model=_field(job, "x_model_output_name", "output_name", "model_output_name")
            if status == P_SUCCEEDED else None,
            failure=failure,
            message=redact(message) if message else None,
            created_at=_naive_utc(_field(job, "created_at")),
            trained_tokens=_field(job, "token_count"),
            cost=round(price / 1e9, 4) if price else None,
            detailed=detailed,
        )


# -- the descriptor -----------------------------------------------------------------


class TogetherSection(RemoteSection):
    kind: Literal["together"]
    default_key_env: ClassVar[str] = "TOGETHER_API_KEY"


class TogetherKind(ProviderKind):
    kind = "together"
    section = TogetherSection
    hyperparameters = HYPERPARAMETERS
    value_types = {"epochs": "count"}  # n_epochs is a whole number
    price_key = "together"
    roles = frozenset({"system", "user", "assistant", "tool"})
    example_keys = frozenset({"messages", "tools"})
    quotes = True
    chat = True
    training_log = True
    chaining = True
    deletes_files = True
    methods = ("sft", "dpo")
    method_key = "training_method"
    sdk = "together"
    install_hint = "pip install '.[together]' from a checkout"

    def client(self, name: str, section: TogetherSection, env: BuildEnv) -> TogetherProvider:
        return TogetherProvider(name, section.api_key(name), base_url=section.base_url, timeout=section.timeout)

    def claims(self, model: str) -> bool:
        # Together names models as organisation/model (Hugging Face style)
        return "/" in model and not model.startswith("ft:")

    def base_model(self, model: str) -> str:
        """A fine-tuned model is named ACCOUNT/<base model's name>-<suffix>-<hash>:
        its root is the known base model whose name starts it."""
        if model in BASE_MODELS or "/" not in model:
            return model
        tail = model.split("/", 1)[1]
        roots = [b for b in BASE_MODELS if tail.startswith(b.split("/", 1)[1] + "-")]
        return max(roots, key=len) if roots else model

    def counter(self, model: str):
        from ftctl.providers.tokenizers import approximate_counter, mistral_file_counter, prefix_lookup

        root = self.base_model(model)
        found = prefix_lookup(MISTRAL_FAMILY, root)
        if found is not None:
            return mistral_file_counter(self.kind, root, *found)
        return approximate_counter(self.kind, root)


KIND = TogetherKind()
