"""The OpenAI wire format over the simulated engine (the openai SDK's models
are the contract: every answer here must validate against them)."""

from __future__ import annotations

import time
from typing import Any

from ftctl.providers.base import is_concurrency_limit_message
from ftctl.providers.emulator.server import Emulator, Request
from ftctl.providers.simulated.engine import ServiceError, SimEngine
from ftctl.providers.simulated.metrics import points, total_steps

STATUS = {
    "QUEUED": "validating_files",
    "STARTED": "queued",
    "VALIDATING": "queued",
    "VALIDATED": "queued",
    "RUNNING": "running",
    "SUCCESS": "succeeded",
    "FAILED": "failed",
    "FAILED_VALIDATION": "failed",
    "CANCELLATION_REQUESTED": "cancelled",
    "CANCELLED": "cancelled",
}


def _file(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": int(row["created_at"]),
            "filename": row["filename"], "purpose": row["purpose"],
            "status": "error" if row["problem"] else "processed", "status_details": row["problem"]}


def _error(job: dict[str, Any]) -> dict[str, Any] | None:
    if job["status"] == "FAILED_VALIDATION":
        message = job["message"] or "validation failed"
        if is_concurrency_limit_message(message):
            return {"code": "rate_limit_exceeded", "message": message, "param": None}
        return {"code": "invalid_training_file", "message": message, "param": "training_file"}
    if job["status"] == "FAILED":
        return {"code": "server_error", "message": job["message"] or "training failed", "param": None}
    return None


def job_json(job: dict[str, Any]) -> dict[str, Any]:
    hp = job["hyperparameters"]
    status = STATUS.get(job["status"], "queued")
    finished = int(job["modified_at"]) if status in ("succeeded", "failed", "cancelled") else None
    epochs = hp.get("n_epochs", "auto")
    return {
        "id": job["id"],
        "object": "fine_tuning.job",
        "created_at": int(job["created_at"]),
        "error": _error(job),
        "fine_tuned_model": job["fine_tuned_model"],
        "finished_at": finished,
        "hyperparameters": {"batch_size": hp.get("batch_size", "auto"),
                            "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto"),
                            "n_epochs": epochs},
        "model": job["model"],
        "organization_id": "org-emulator",
        "result_files": [],
        "seed": int(hp.get("seed", 0)),
        "status": status,
        "trained_tokens": job["trained_tokens"],
        "training_file": job["training_files"][0],
        "validation_file": None,
        "estimated_finish": None,
        "integrations": [],
        "metadata": job["metadata"].get("user") or None,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {
            "batch_size": hp.get("batch_size", "auto"), "n_epochs": epochs,
            "learning_rate_multiplier": hp.get("learning_rate_multiplier", "auto")}}},
        "suffix": job["suffix"],
    }


MESSAGES = {"QUEUED": "Validating training file", "VALIDATING": "Files validated, moving job to queued state",
            "RUNNING": "Fine-tuning job started", "SUCCESS": "The job has successfully completed",
            "FAILED": "The job failed", "FAILED_VALIDATION": "The job failed", "CANCELLED": "The job was cancelled"}


def events_json(job: dict[str, Any], engine: SimEngine) -> list[dict[str, Any]]:
    """Status messages and one `metrics` event a step, newest first (as OpenAI lists them)."""
    tag = job["id"][:8]
    out = []
    for i, ev in enumerate(job["events"]):
        status = ev["data"].get("status")
        text = MESSAGES.get(status, status or "update")
        if ev["data"].get("error"):
            text += f": {ev['data']['error']}"
        out.append({"id": f"ftevent-{tag}-s{i}", "object": "fine_tuning.job.event", "created_at": int(ev["created_at"]),
                    "level": "error" if status in ("FAILED", "FAILED_VALIDATION") else "info", "message": text,
                    "data": {}, "type": "message", "_order": (ev["created_at"], 0, i)})
    total = total_steps(job)
    for p in points(job, engine.clock(), engine.settings.train_time):
        out.append({"id": f"ftevent-{tag}-m{p['step']}", "object": "fine_tuning.job.event", "created_at": int(p["at"]),
                    "level": "info", "message": f"Step {p['step']}/{total}: training loss={p['train_loss']:.4f}",
                    "data": {"step": p["step"], "train_loss": p["train_loss"], "total_steps": total},
                    "type": "metrics", "_order": (p["at"], 1, p["step"])})
    out.sort(key=lambda e: e.pop("_order"), reverse=True)
    return out


def checkpoints_json(job: dict[str, Any], engine: SimEngine) -> list[dict[str, Any]]:
    done = [p for p in points(job, engine.clock(), engine.settings.train_time) if p["checkpoint"]]
    return [{"id": f"ftckpt-{job['id'][:8]}-{p['step']}", "object": "fine_tuning.job.checkpoint",
             "created_at": int(p["at"]), "fine_tuning_job_id": job["id"], "step_number": p["step"],
             "fine_tuned_model_checkpoint": f"ft:{job['model']}:{job['suffix'] or 'model'}:ckpt-step-{p['step']}",
             "metrics": {"step": p["step"], "train_loss": p["train_loss"], "valid_loss": p["valid_loss"],
                         "valid_mean_token_accuracy": p["valid_mean_token_accuracy"]}} for p in reversed(done)]


def _page(rows: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    limit = int(query.get("limit", 20))
    if query.get("after"):
        ids = [r["id"] for r in rows]
        rows = rows[ids.index(query["after"]) + 1:] if query["after"] in ids else []
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}


class OpenAIEmulator(Emulator):
    kind = "openai"
    base_path = "/v1"
    # it can deliver signed webhooks (providers.emulator.webhooks)
    webhook_kind = "openai"
    # set (close_fine_tuning): every create is refused as an account that
    # fine-tuning is closed to is refused, while listings, reads and chat go on
    closed: str | None = None

    def close_fine_tuning(self, message: str | None = None) -> None:
        """From now on refuse creates as OpenAI refuses an organisation after
        its self-serve fine-tuning wound down: a 403 (no documented code)."""
        self.closed = message or ("Fine-tuning is not available for your organization: OpenAI no longer accepts "
                                  "new self-serve fine-tuning jobs.")

    def _control(self, req: Request) -> Any:
        # POST /_emulator/close {"message": ...} closes fine-tuning; {"open": true} opens it again
        if req.path == "/_emulator/close" and req.method == "POST":
            data = req.json()
            if data.get("open"):
                self.closed = None
            else:
                self.close_fine_tuning(data.get("message"))
            return 200, {"closed": self.closed}, {}
        return super()._control(req)

    def routes(self) -> None:
        super().routes()
        self.route("GET", "/v1/fine_tuning/jobs/{job_id}/events", self.list_events)
        self.route("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints", self.list_checkpoints)

    def list_events(self, req: Request) -> Any:
        return _page(events_json(self.engine.get_job(req.params["job_id"]), self.engine), req.query)

    def list_checkpoints(self, req: Request) -> Any:
        return _page(checkpoints_json(self.engine.get_job(req.params["job_id"]), self.engine), req.query)

    def file_json(self, row: dict[str, Any]) -> Any:
        return _file(row)

    def error_body(self, status: int, message: str) -> Any:
        kind = {401: "invalid_request_error", 429: "rate_limit_exceeded", 404: "invalid_request_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error")
        code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def unauthorized(self, key: str) -> tuple[int, Any]:
        # OpenAI's own 401 echoes the key's first characters and its last four
        shown = f"{key[:8]}{'*' * max(0, len(key) - 12)}{key[-4:]}" if len(key) > 12 else "***"
        return 401, self.error_body(401, f"Incorrect API key provided: {shown}. You can find your API key at "
                                         "https://platform.openai.com/account/api-keys.")

    def list_files(self, req: Request) -> Any:
        return {"object": "list", "data": [_file(r) for r in self.engine.list_files()], "has_more": False}

    def get_file(self, req: Request) -> Any:
        return _file(self.engine.get_file(req.params["file_id"]))

    def create_job(self, req: Request) -> Any:
        if self.closed:
            raise ServiceError(403, self.closed)
        body = req.json()
        if not body.get("training_file"):
            raise ServiceError(400, "training_file is required")
        hp = dict(body.get("hyperparameters") or {})
        method = body.get("method") or {}
        hp.update(((method.get("supervised") or {}).get("hyperparameters")) or {})
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict) or any(not isinstance(v, str) for v in metadata.values()):
            raise ServiceError(400, "metadata values must be strings")
        job = self.engine.create_job(model=body.get("model", ""), training_files=[body["training_file"]],
                                     hyperparameters=hp, suffix=body.get("suffix"),
                                     metadata={"user": metadata} if metadata else None)
        return job_json(job)

    def list_jobs(self, req: Request) -> Any:
        q = req.query
        limit = int(q.get("limit", 20))
        wanted = {k[len("metadata["):-1]: v for k, v in q.items() if k.startswith("metadata[")}
        rows, _ = self.engine.list_jobs(page=0, page_size=1_000_000)
        if wanted:
            rows = [r for r in rows if all((r["metadata"].get("user") or {}).get(k) == v for k, v in wanted.items())]
        if q.get("after"):
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(q["after"]) + 1:] if q["after"] in ids else []
        page = rows[:limit]
        return {"object": "list", "data": [job_json(r) for r in page], "has_more": len(rows) > limit}

    def get_job(self, req: Request) -> Any:
        return job_json(self.engine.get_job(req.params["job_id"]))

    def cancel_job(self, req: Request) -> Any:
        return job_json(self.engine.cancel_job(req.params["job_id"]))

    def get_model(self, req: Request) -> Any:
        model_id = req.params["model_id"]
        if model_id.startswith("ft:") and self.fine_tuned_job(model_id) is None:
            raise ServiceError(404, f"The model '{model_id}' does not exist")
        return {"id": model_id, "object": "model", "created": 1700000000,
                "owned_by": "user-emulator" if model_id.startswith("ft:") else "system"}

    def chat(self, req: Request) -> Any:
        body = req.json()
        model = body.get("model", "")
        try:  # a fine-tuned model answers what it was trained on (simulated.recall)
            text = self.engine.chat(model, body.get("messages") or [])
        except ServiceError as exc:
            if exc.status_code == 404:
                raise ServiceError(404, f"The model '{model}' does not exist") from None
            raise
        return {"id": f"chatcmpl-{int(time.time() * 1000)}", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": text, "refusal": None}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()),
                          "total_tokens": 1 + len(text.split())}}
