"""The `ray` provider's client: Ray Jobs through `JobSubmissionClient`.

Every call is bounded by the section's timeout (the SDK's own requests
have none) and classified for the failure policy: a refused connection did
nothing (Unreachable); a timeout may have (ambiguous); Ray's 500 "already
exists" on a create means the job with that submission id exists, and is
read back as such, never retried under a new id.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ftctl.providers.base import (FAIL_DATA, FAIL_TRAINING, P_CANCELLED, P_FAILED, P_QUEUED, P_RUNNING, P_SUCCEEDED,
                                  JobSpec, LogEntry, NotFoundError, PermanentError, ProviderError, ProviderJob,
                                  TransientError, Unreachable, error_from_status)
from ftctl.providers.keys import redact
from ftctl.providers.ray import KIND, RaySection
from ftctl.providers.trainer import protocol as proto
from ftctl.providers.trainer import storage

STATUS = {"PENDING": P_QUEUED, "RUNNING": P_RUNNING, "SUCCEEDED": P_SUCCEEDED, "STOPPED": P_CANCELLED,
          "FAILED": P_FAILED}
_STATUS_CODE = ("status code ", ":")


@dataclass(frozen=True)
class Room:
    """How many more jobs the cluster's free resources take now, what one
    needs, and whether one fits on any node at all."""

    jobs: int
    need: str
    short: str | None = None  # why no node can ever run one


def _utc_ms(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromtimestamp(float(value) / 1000.0, timezone.utc).replace(tzinfo=None)


def _status_code(text: str) -> int | None:
    at = text.find(_STATUS_CODE[0])
    if at < 0:
        return None
    digits = text[at + len(_STATUS_CODE[0]):at + len(_STATUS_CODE[0]) + 3]
    return int(digits) if digits.isdigit() else None


class RayProvider:
    def __init__(self, name: str, section: RaySection):
        self.name = name
        self.section = section
        self._client: Any = None
        self._logs: dict[str, str] = {}  # a finished job's log, read once
        self._fits: tuple[float, str | None] | None = None

    # -- the SDK, bounded and classified --------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._call(self._connect)
        return self._client

    def _connect(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        timeout = self.section.timeout

        class Bounded(JobSubmissionClient):
            # every request, the constructor's version check included, goes through here
            def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
                kwargs.setdefault("timeout", timeout)
                return super()._do_request(method, endpoint, **kwargs)

        return Bounded(self.section.address)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return fn(*args, **kwargs)
        except ProviderError:
            raise
        except requests.exceptions.ConnectionError as exc:
            if isinstance(exc, requests.exceptions.ConnectTimeout) or "refused" in str(exc).lower() \
                    or "Failed to establish" in str(exc):
                raise Unreachable(f"cannot reach Ray at {self.section.address}") from None
            raise TransientError(f"connection to Ray at {self.section.address} broken") from None
        except requests.exceptions.Timeout:
            raise TransientError(f"timed out after {self.section.timeout:g}s waiting for Ray") from None
        except ConnectionError as exc:  # the SDK's own, from its version check
            raise Unreachable(f"cannot reach Ray at {self.section.address}: {str(exc).splitlines()[0][:120]}") \
                from None
        except RuntimeError as exc:
            text = redact(" ".join(str(exc).split()))[:400]
            code = _status_code(text)
            if code is None:
                raise TransientError(f"unexpected answer from Ray: {text}") from None
            raise error_from_status(code, f"Ray: {text}") from None
        except (ValueError, TypeError) as exc:
            raise PermanentError(redact(f"Ray SDK: {str(exc).splitlines()[0][:300]}")) from None

    # -- files ----------------------------------------------------------------------------

    def upload_file(self, path: Path, content_hash: str) -> str:
        """Into the artifacts folder, once per content hash: its URI is the file id."""
        uri = proto.file_uri(self.section.artifacts, content_hash)
        try:
            if not storage.exists(uri) or storage.size(uri) != Path(path).stat().st_size:
                storage.copy_in(Path(path), uri)
        except OSError as exc:
            raise TransientError(f"cannot write to the artifacts folder {self.section.artifacts}: "
                                 f"{exc.__class__.__name__}") from None
        return uri

    # -- what [retention] deletes: the artifacts folder's own parts, never anything outside it

    def _job_dir(self, model: str) -> str:
        root = self.section.artifacts.rstrip("/") + "/"
        folder = model[:-len("/model")] if model.endswith("/model") else ""
        name = folder.rsplit("/", 1)[-1]
        if not folder.startswith(root) or not name.startswith("job-") or not name[4:].isdigit():
            raise PermanentError(f"{model} is not a model in the artifacts folder {self.section.artifacts}")
        return folder

    def _storage(self, action: Any, *args: Any) -> Any:
        try:
            return action(*args)
        except OSError as exc:
            raise TransientError(f"cannot change the artifacts folder {self.section.artifacts}: "
                                 f"{exc.__class__.__name__}") from None

    def delete_model(self, model: str) -> bool:
        """The job's whole folder: artifacts/<agent>/job-<id>/ (model, checkpoints, logs)."""
        return self._storage(storage.remove, self._job_dir(model))

    def delete_file(self, file_id: str) -> bool:
        if not file_id.startswith(self.section.artifacts.rstrip("/") + "/files/"):
            raise PermanentError(f"{file_id} is not a training file in the artifacts folder")
        return self._storage(storage.remove, file_id)

    def prune_checkpoints(self, model: str) -> int:
        """Every checkpoint-* of the job but one its model is (the model folder stays)."""
        gone = 0
        for uri in self._storage(storage.children, self._job_dir(model) + "/checkpoints"):
            if uri.rsplit("/", 1)[-1].startswith("checkpoint-") and not model.startswith(uri.rstrip("/") + "/"):
                gone += bool(self._storage(storage.remove, uri))
        return gone

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(self, spec: JobSpec) -> ProviderJob:
        hp = KIND.provider_hyperparameters(spec.hyperparameters)
        method = KIND.training_method(spec.hyperparameters)
        hp.pop("training_method", None)
        if spec.job_id is None:
            raise PermanentError("a Ray job needs ftctl's job id (its artifact folder)")
        data_hash = hashlib.sha256(json.dumps(spec.training_files).encode()).hexdigest()
        train = proto.TrainSpec(job_id=spec.job_id, agent=spec.agent, token=spec.client_token,
                                base_model=spec.model, files=[(f, w) for f, w in spec.training_files],
                                output=proto.job_dir(self.section.artifacts, spec.agent, spec.job_id),
                                method=method, hyperparameters=hp, data_hash=data_hash)
        metadata = {proto.META_TOKEN: spec.client_token, proto.META_JOB: str(spec.job_id),
                    proto.META_AGENT: spec.agent, proto.META_KIND: proto.KIND_TRAIN}
        self._submit(spec.client_token, "train", train.to_json(), metadata)
        return self.get_job(spec.client_token)

    def _submit(self, submission_id: str, verb: str, payload: str, metadata: dict[str, str]) -> None:
        entrypoint = f"{shlex.quote(self.section.python)} -m ftctl.providers.trainer {verb} {shlex.quote(payload)}"
        kwargs: dict[str, Any] = {"entrypoint_num_cpus": self.section.cpus_per_job}
        if self.section.gpus_per_job:
            kwargs["entrypoint_num_gpus"] = self.section.gpus_per_job
        if self.section.runtime_env:
            kwargs["runtime_env"] = dict(self.section.runtime_env)
        try:
            self._call(self.client.submit_job, entrypoint=entrypoint, submission_id=submission_id,
                       metadata=metadata, **kwargs)
        except ProviderError as exc:
            if "already exists" not in exc.message:
                raise
            # Ray refuses a second job under one submission id: that job is ours

    def list_jobs(self, created_after: datetime | None = None) -> list[ProviderJob]:
        """ftctl's training jobs on the cluster (Ray's listing has no paging
        and no filter), newest first."""
        jobs = [self._to_job(d, detailed=False) for d in self._call(self.client.list_jobs)
                if (d.metadata or {}).get(proto.META_KIND) == proto.KIND_TRAIN]
        if created_after is not None:
            jobs = [j for j in jobs if j.created_at is None or j.created_at > created_after]
        return sorted(jobs, key=lambda j: j.created_at or datetime.min, reverse=True)

    def get_job(self, job_id: str) -> ProviderJob:
        return self._to_job(self._info(job_id), detailed=True)

    def _info(self, job_id: str) -> Any:
        try:
            return self._call(self.client.get_job_info, job_id)
        except ProviderError as exc:
            if exc.status_code == 404 or "does not exist" in exc.message:
                raise NotFoundError(f"Ray knows no job {job_id}", status_code=404) from None
            raise

    def find_by_token(self, token: str) -> list[ProviderJob]:
        try:
            return [self.get_job(token)]
        except NotFoundError:
            return []

    def cancel_job(self, job_id: str) -> ProviderJob:
        self._call(self.client.stop_job, job_id)
        return self.get_job(job_id)

    def close(self) -> None:
        self._client = None

    # -- what the trainer said ----------------------------------------------------------

    def _lines(self, job_id: str, final: bool) -> list[dict[str, Any]]:
        text = self._logs.get(job_id)
        if text is None:
            text = self._call(self.client.get_job_logs, job_id) or ""
            if final:
                self._logs[job_id] = text
        return proto.parse(text)

    def training_log(self, job_id: str) -> list[LogEntry]:
        info = self._info(job_id)
        final = STATUS.get(str(info.status.value if hasattr(info.status, "value") else info.status)) \
            not in (P_QUEUED, P_RUNNING)
        out: list[LogEntry] = []
        for i, line in enumerate(self._lines(job_id, final)):
            kind, step = line["kind"], line.get("step")
            if kind == "metric" and isinstance(step, int):
                metrics = {"train_loss": float(line["loss"])}
                for key in ("learning_rate", "epoch"):
                    if isinstance(line.get(key), (int, float)):
                        metrics[key] = float(line[key])
                out.append(LogEntry(f"metric:{step}", None, "metric", step, metrics=metrics))
            elif kind == "checkpoint" and isinstance(step, int):
                out.append(LogEntry(f"checkpoint:{step}", None, "checkpoint", step, f"saved {line.get('path')}"))
            elif kind in ("event", "error"):
                out.append(LogEntry(f"event:{i}", None, "event", step if isinstance(step, int) else None,
                                    redact(str(line.get("message", "")))))
        return out

    # -- free resources -------------------------------------------------------------------

    def room(self, listing: list[ProviderJob]) -> Room:
        """Jobs the cluster's free GPUs and CPUs take now, less ours still
        pending (they hold nothing yet, but will)."""
        usage = self._get("/api/cluster_status").get("data", {}).get("clusterStatus", {}) \
            .get("loadMetricsReport", {}).get("usage", {}) or {}
        free = {r: float(v[1]) - float(v[0]) for r, v in usage.items() if isinstance(v, list) and len(v) == 2}
        pending = sum(1 for j in listing if j.status == P_QUEUED)
        needs = {"CPU": self.section.cpus_per_job, "GPU": self.section.gpus_per_job}
        fits = [int(free.get(r, 0.0) // n) for r, n in needs.items() if n]
        return Room(max(0, min(fits) - pending), self.section.need, self.fits())

    def fits(self) -> str | None:
        """Why no node of the cluster can ever run one job, or None (the
        nodes' totals are read once a minute: they change when nodes come and go)."""
        if self._fits is not None and time.monotonic() - self._fits[0] < 60.0:
            return self._fits[1]
        found = self._fits_now()
        self._fits = (time.monotonic(), found)
        return found

    def _fits_now(self) -> str | None:
        nodes = self._get("/api/v0/nodes").get("data", {}).get("result", {}).get("result", []) or []
        best = {"CPU": 0.0, "GPU": 0.0}
        for node in nodes:
            if node.get("state", "ALIVE") != "ALIVE":
                continue
            total = node.get("resources_total") or {}
            for r in best:
                best[r] = max(best[r], float(total.get(r, 0.0)))
        for r, n in (("GPU", self.section.gpus_per_job), ("CPU", self.section.cpus_per_job)):
            if n and best[r] < n:
                return (f"a job needs {n:g} {r}{'s' if n != 1 else ''} and the largest node of the Ray cluster at "
                        f"{self.section.address} has {best[r]:g}")
        return None

    def _get(self, endpoint: str) -> dict[str, Any]:
        response = self._call(self.client._do_request, "GET", endpoint)
        if response.status_code != 200:
            raise error_from_status(response.status_code, f"Ray {endpoint}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise TransientError(f"unexpected answer from Ray {endpoint}") from None

    # -- the evaluation gate's batches ------------------------------------------------

    def start_answers(self, key: str, models: dict[str, str], questions: list[dict[str, Any]],
                      max_tokens: int) -> None:
        """An answer job on the cluster under submission id `key` (at most one)."""
        spec = proto.AnswerSpec(models=models, questions=questions, max_tokens=max_tokens)
        self._submit(key, "answer", spec.to_json(), {proto.META_KIND: proto.KIND_ANSWER, proto.META_RUN: key})

    def answers(self, key: str) -> tuple[str, dict[str, str], str | None]:
        """(status, {question key: answer} so far, why it failed)."""
        info = self._info(key)
        job = self._to_job(info, detailed=True)
        got = {line["key"]: str(line.get("answer", "")) for line in self._lines(key, not job.active)
               if line["kind"] == "answer" and isinstance(line.get("key"), str)}
        return job.status, got, job.message if job.status == P_FAILED else None

    def answer_failure(self, key: str) -> str | None:
        """Set when the batch failed for good (the model cannot be loaded)."""
        job = self.get_job(key)
        return job.message if job.status == P_FAILED and job.failure == FAIL_DATA else None

    # -- mapping -----------------------------------------------------------------------

    def _to_job(self, info: Any, *, detailed: bool) -> ProviderJob:
        raw = str(info.status.value if hasattr(info.status, "value") else info.status)
        status = STATUS.get(raw, P_QUEUED)
        meta = info.metadata or {}
        created = _utc_ms(info.start_time)
        message, failure, model, cost = None, None, None, None
        if status == P_QUEUED:
            message = f"waiting for {self.section.need} on the Ray cluster"
        if status == P_SUCCEEDED and meta.get(proto.META_JOB, "").isdigit():
            model = proto.model_dir(self.section.artifacts, meta.get(proto.META_AGENT, ""), int(meta[proto.META_JOB]))
        if info.start_time and status != P_QUEUED:
            end = float(info.end_time) if info.end_time else time.time() * 1000.0
            cost = round(max(0.0, end - float(info.start_time)) / 3.6e6 * self.section.hour_price, 4)
        if status == P_FAILED:
            if not detailed:
                return ProviderJob(info.submission_id, status, raw, meta.get(proto.META_TOKEN), None, None,
                                   created_at=created, cost=cost, detailed=False)
            failure, message = self._failure(info)
        return ProviderJob(id=info.submission_id, status=status, raw_status=raw, client_token=meta.get(proto.META_TOKEN),
                           model=None, fine_tuned_model=model, failure=failure, message=message,
                           created_at=created, cost=cost)

    def _failure(self, info: Any) -> tuple[str, str]:
        """Permanent (the trainer's own exit code for bad data, an unknown
        model, out of memory) with its message; anything else (a node or
        worker that died, a preemption, a kill) is training trouble: retried."""
        code = info.driver_exit_code
        errors = [line for line in self._lines(info.submission_id, True) if line["kind"] == "error"]
        said = redact(str(errors[-1].get("message"))) if errors else None
        if code in proto.PERMANENT:
            return FAIL_DATA, said or proto.PERMANENT[code]
        why = said or redact(" ".join(str(info.message or info.error_type or "the job failed").split()))[:300]
        if code == proto.EXIT_PREEMPTED:
            why = f"stopped (preempted) after a checkpoint: {why}"
        elif code is not None:
            why = f"trainer exited {code}: {why}"
        return FAIL_TRAINING, why
