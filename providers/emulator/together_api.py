"""Together AI's wire format over the simulated engine (the together 3.x SDK's
models are the contract: every answer here must read with them).

Files upload in three steps, as at Together: `POST /v1/files` names the file
and answers 302 with an upload URL and the file's id (X-Together-File-Id),
the bytes go to that URL with a PUT (no key: the URL carries its own
signature), then `POST /v1/files/{id}/preprocess` makes the file.

Concurrency: Together takes a job only while the account runs fewer jobs
than its limit. A create over it is refused before anything is made, with
HTTP 429 and a message naming the limit ("You have reached the maximum
number of concurrent fine-tuning jobs (2) ..."), which the client maps to a
capacity refusal (not a rate limit): the job waits for a slot, uncounted.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from ftctl.providers.base import is_concurrency_limit_message
from ftctl.providers.emulator.server import Emulator, Reply, Request
from ftctl.providers.simulated.engine import ServiceError

ORG = "ftctl-emulator"
PRICE_PER_M = {"sft": 0.48, "dpo": 1.20}  # USD per million trained tokens, LoRA, up to 16B
ACTIVE = ("QUEUED", "VALIDATING", "VALIDATED", "STARTED", "RUNNING", "CANCELLATION_REQUESTED")
CAPACITY_MESSAGE = ("You have reached the maximum number of concurrent fine-tuning jobs ({limit}) for your "
                    "account. Wait for a job to finish or cancel one, then try again.")
STATUS = {
    "QUEUED": "pending",
    "STARTED": "queued",
    "VALIDATING": "queued",
    "VALIDATED": "queued",
    "RUNNING": "running",
    "CANCELLATION_REQUESTED": "cancel_requested",
    "CANCELLED": "cancelled",
    "SUCCESS": "completed",
    "FAILED": "error",
    "FAILED_VALIDATION": "user_error",  # the data was refused
}
EVENTS = {
    "QUEUED": ("job_pending", "Fine-tuning request created"),
    "VALIDATING": ("job_start", "Job started; downloading the model and the training data"),
    "RUNNING": ("training_start", "Training started"),
    "SUCCESS": ("job_complete", "Fine-tuning job completed"),
    "CANCELLED": ("cancel_requested", "Job cancelled at the user's request"),
}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _eid(wire_id: str, prefix: str) -> str:
    return wire_id[len(prefix):] if wire_id.startswith(prefix) else wire_id


def output_name(job: dict[str, Any]) -> str:
    """ACCOUNT/<base model>-<suffix>-<hash>, as Together names a fine-tuned model."""
    suffix = f"-{job['suffix']}" if job["suffix"] else ""
    return f"{ORG}/{job['model'].split('/')[-1]}{suffix}-{hashlib.sha256(job['id'].encode()).hexdigest()[:8]}"


def _method(hp: dict[str, Any]) -> str:
    return (hp.get("training_method") or {}).get("method", "sft")


def _steps(job: dict[str, Any]) -> int:
    return 10 * int(job["hyperparameters"].get("n_epochs") or 1)


def _price(tokens: int, method: str) -> float:
    return round(tokens / 1e6 * PRICE_PER_M.get(method, PRICE_PER_M["sft"]), 6)


def _file(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"file-{row['id']}", "object": "file", "bytes": row["bytes"], "created_at": int(row["created_at"]),
            "filename": row["filename"], "FileType": "jsonl", "purpose": row["purpose"],
            "processing_status": "COMPLETED", "Processed": True, "LineCount": row["lines"]}


def events_json(job: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, ev in enumerate(job["events"]):
        status = ev["data"].get("status")
        error = ev["data"].get("error")
        if status in ("FAILED", "FAILED_VALIDATION"):
            kind, text, level = "job_error", error or "the job failed", "error"
        elif status in EVENTS:
            (kind, text), level = EVENTS[status], "info"
        else:
            continue
        if status == "SUCCESS":
            out.append({"object": "fine-tune-event", "created_at": _iso(ev["created_at"]), "level": "info",
                        "message": f"Checkpoint saved at step {_steps(job)}", "type": "checkpoint_save",
                        "step": _steps(job), "hash": f"{job['id'][:8]}-{i}-ckpt"})
        out.append({"object": "fine-tune-event", "created_at": _iso(ev["created_at"]), "level": level,
                    "message": text, "type": kind, "hash": f"{job['id'][:8]}-{i}"})
    return out


def job_json(job: dict[str, Any], *, events: bool) -> dict[str, Any]:
    hp = job["hyperparameters"]
    raw = job["status"]
    status = STATUS.get(raw, "queued")
    if raw == "FAILED_VALIDATION" and is_concurrency_limit_message(job["message"]):
        status = "error"
    done = raw == "SUCCESS"
    tokens = job["metadata"].get("train_tokens") if raw not in ("QUEUED",) else None
    out = {
        "id": f"ft-{job['id']}",
        "status": status,
        "created_at": _iso(job["created_at"]),
        "updated_at": _iso(job["modified_at"]),
        "started_at": _iso(job["phase_at"]),
        "user_id": "user-emulator",
        "owner_address": "owner@emulator.invalid",
        "model": job["model"],
        "model_output_name": output_name(job),
        "suffix": job["suffix"],
        "training_file": f"file-{job['training_files'][0]}",
        "validation_file": "",
        "n_epochs": int(hp.get("n_epochs") or 1),
        "n_checkpoints": int(hp.get("n_checkpoints") or 1),
        "n_evals": 0,
        "batch_size": hp["batch_size"] if isinstance(hp.get("batch_size"), int) else 8,
        "learning_rate": hp.get("learning_rate", 1e-5),
        "warmup_ratio": hp.get("warmup_ratio", 0.0),
        "weight_decay": hp.get("weight_decay", 0.0),
        "max_grad_norm": hp.get("max_grad_norm", 1.0),
        "training_method": hp.get("training_method") or {"method": "sft", "train_on_inputs": "auto"},
        "training_type": hp.get("training_type") or {"type": "Lora", "lora_r": 8, "lora_alpha": 16},
        "from_checkpoint": hp.get("from_checkpoint"),
        "token_count": tokens,
        "total_price": int(_price(tokens, _method(hp)) * 1e9) if done and tokens else None,
        "total_steps": _steps(job),
        "steps_completed": _steps(job) if done else 0,
        "queue_depth": 0,
    }
    if events:
        out["events"] = events_json(job)
    return out


class TogetherEmulator(Emulator):
    kind = "together"

    def __init__(self, *args: Any, **kwargs: Any):
        self._uploads: dict[str, dict[str, Any]] = {}  # announced, not yet preprocessed
        self._create_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def routes(self) -> None:
        self.route("POST", "/v1/files", self.request_upload)
        self.route("PUT", "/_uploads/{file_id}", self.put_upload)
        self.route("POST", "/v1/files/{file_id}/preprocess", self.preprocess)
        self.route("GET", "/v1/files", self.list_files)
        self.route("GET", "/v1/files/{file_id}", self.get_file)
        self.route("DELETE", "/v1/files/{file_id}", self.delete_file)
        self.route("GET", "/v1/fine-tunes/models/limits", self.model_limits)
        self.route("POST", "/v1/fine-tunes/estimate-price", self.estimate_price)
        self.route("POST", "/v1/fine-tunes", self.create_job)
        self.route("GET", "/v1/fine-tunes", self.list_jobs)
        self.route("GET", "/v1/fine-tunes/{job_id}", self.get_job)
        self.route("POST", "/v1/fine-tunes/{job_id}/cancel", self.cancel_job)
        self.route("GET", "/v1/fine-tunes/{job_id}/events", self.list_events)
        self.route("GET", "/v1/fine-tunes/{job_id}/checkpoints", self.list_checkpoints)
        self.route("GET", "/v1/fine-tunes/{job_id}/metrics", self.list_metrics)
        self.route("POST", "/v1/chat/completions", self.chat)

    def error_body(self, status: int, message: str) -> Any:
        kind = {401: "invalid_api_key", 402: "insufficient_balance", 404: "not_found", 429: "rate_limit"}.get(
            status, "invalid_request_error" if status < 500 else "server_error")
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    def _authorized(self, req: Request) -> bool:
        if req.method == "PUT" and req.path.startswith("/_uploads/"):  # a signed upload URL, no key
            pending = self._uploads.get(req.path.rsplit("/", 1)[-1])
            return pending is not None and secrets.compare_digest(req.query.get("sig", ""), pending["sig"])
        return super()._authorized(req)

    # -- files -----------------------------------------------------------------------

    def request_upload(self, req: Request) -> Any:
        parts = req.multipart()
        fields = {k: (v[1].decode() if v[1] else "") for k, v in parts.items()}
        if not fields.get("file_name"):
            raise ServiceError(400, "file_name is required")
        file_id, sig = str(uuid.uuid4()), secrets.token_hex(8)
        self._uploads[file_id] = {"file_name": fields["file_name"], "purpose": fields.get("purpose") or "fine-tune",
                                  "sig": sig, "content": None}
        host = req.headers.get("host", "127.0.0.1")
        return Reply(302, {"id": f"file-{file_id}"}, {"Location": f"http://{host}/_uploads/{file_id}?sig={sig}",
                                                      "X-Together-File-Id": f"file-{file_id}"})

    def put_upload(self, req: Request) -> Any:
        self._uploads[req.params["file_id"]]["content"] = req.body
        return {}

    def preprocess(self, req: Request) -> Any:
        file_id = _eid(req.params["file_id"], "file-")
        pending = self._uploads.get(file_id)
        if pending is None or pending["content"] is None:
            raise ServiceError(400, f"file {req.params['file_id']} has no uploaded content")
        row = self.engine.upload_file(pending["file_name"], pending["content"], pending["purpose"], file_id=file_id)
        self._uploads.pop(file_id, None)
        return _file(row)

    def list_files(self, req: Request) -> Any:
        return {"object": "list", "data": [_file(r) for r in self.engine.list_files()]}

    def get_file(self, req: Request) -> Any:
        return _file(self.engine.get_file(_eid(req.params["file_id"], "file-")))

    def delete_file(self, req: Request) -> Any:
        self.engine.delete_file(_eid(req.params["file_id"], "file-"))
        return {"id": req.params["file_id"], "object": "file", "deleted": True}

    # -- jobs ------------------------------------------------------------------------

    def model_limits(self, req: Request) -> Any:
        name = req.query.get("model_name") or ""
        return {"model_name": name, "default_gradient_accumulation_steps": 1, "max_learning_rate": 1.0,
                "min_learning_rate": 1e-8, "max_num_checkpoints": 10, "max_num_epochs": 20, "max_num_evals": 100,
                "max_seq_length_sft": 32768, "max_seq_length_dpo": 16384, "min_max_seq_length": 512,
                "merge_output_lora": True, "supports_full_training": True, "supports_reasoning": False,
                "supports_tools": True, "supports_vision": False,
                "lora_training": {"default_rank": 8, "max_rank": 64, "max_batch_size": 128,
                                  "max_batch_size_dpo": 64, "min_batch_size": 8,
                                  "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                "full_training": {"max_batch_size": 96, "max_batch_size_dpo": 48, "min_batch_size": 8}}

    def estimate_price(self, req: Request) -> Any:
        body = req.json()
        row = self.engine.get_file(_eid(body.get("training_file") or "", "file-"))
        if row["problem"]:
            return {"estimation_available": False, "unavailable_reason": "train_file_invalid"}
        tokens = max(1, row["bytes"] // 4) * int(body.get("n_epochs") or 1)
        method = (body.get("training_method") or {}).get("method", "sft")
        return {"estimation_available": True, "allowed_to_proceed": True, "user_limit": 1000.0,
                "estimated_train_token_count": float(tokens), "estimated_eval_token_count": 0.0,
                "estimated_total_price": _price(tokens, method)}

    def create_job(self, req: Request) -> Any:
        body = req.json()
        if not body.get("training_file"):
            raise ServiceError(400, "training_file is required")
        suffix = body.get("suffix")
        if suffix is not None and len(suffix) > 40:
            raise ServiceError(400, "suffix must be at most 40 characters")
        model = body.get("model")
        hp = {k: body[k] for k in ("n_epochs", "n_checkpoints", "batch_size", "learning_rate", "warmup_ratio",
                                   "weight_decay", "max_grad_norm", "training_method", "training_type",
                                   "from_checkpoint") if body.get(k) is not None}
        if body.get("from_checkpoint"):
            upstream = self._job_by_checkpoint(body["from_checkpoint"])
            model = model or upstream["model"]
        if not model:
            raise ServiceError(400, "model or from_checkpoint is required")
        if int(hp.get("n_epochs") or 1) < 1:
            raise ServiceError(400, "n_epochs must be at least 1")
        hp["epochs"] = int(hp.get("n_epochs") or 1)  # what the engine prices
        with self._create_lock:  # the limit is checked and the job made at once
            running = sum(1 for j in self.engine.all_jobs() if j["status"] in ACTIVE)
            if running >= self.engine.settings.limit:
                raise ServiceError(429, CAPACITY_MESSAGE.format(limit=self.engine.settings.limit))
            job = self.engine.create_job(model=model, training_files=[_eid(body["training_file"], "file-")],
                                         hyperparameters=hp, suffix=suffix)
        return job_json(job, events=False)

    def _job_by_checkpoint(self, ref: str) -> dict[str, Any]:
        name = ref.split(":")[0]
        for job in self.engine.all_jobs():
            if f"ft-{job['id']}" == name or output_name(job) == name:
                if job["status"] != "SUCCESS":
                    raise ServiceError(400, f"from_checkpoint: job {name} has no final checkpoint ({job['status']})")
                return job
        raise ServiceError(400, f"from_checkpoint: no job or model {name}")

    def _job(self, req: Request) -> dict[str, Any]:
        return self.engine.get_job(_eid(req.params["job_id"], "ft-"))

    def list_jobs(self, req: Request) -> Any:
        rows, _ = self.engine.list_jobs(page=0, page_size=1_000_000)
        return {"data": [job_json(r, events=False) for r in rows]}

    def get_job(self, req: Request) -> Any:
        return job_json(self._job(req), events=True)

    def cancel_job(self, req: Request) -> Any:
        return job_json(self.engine.cancel_job(_eid(req.params["job_id"], "ft-")), events=False)

    def list_events(self, req: Request) -> Any:
        return {"data": events_json(self._job(req))}

    def list_checkpoints(self, req: Request) -> Any:
        job = self._job(req)
        if job["status"] != "SUCCESS":
            return {"data": []}
        n, total = int(job["hyperparameters"].get("n_checkpoints") or 1), _steps(job)
        steps = sorted({max(1, total * (i + 1) // n) for i in range(n)}, reverse=True)
        return {"data": [{"checkpoint_type": "Final" if s == total else f"Intermediate (step {s})",
                          "created_at": _iso(job["modified_at"]), "path": f"s3://emulator/ft-{job['id']}/step-{s}",
                          "step": s, "checkpoint": "adapter"} for s in steps]}

    def list_metrics(self, req: Request) -> Any:
        job = self._job(req)
        done = {"RUNNING": _steps(job) // 2, "SUCCESS": _steps(job)}.get(job["status"], 0)
        lr = float(job["hyperparameters"].get("learning_rate") or 1e-5)
        return {"metrics": [{"global_step": s, "train_loss": round(2.0 / (1 + 0.3 * s), 4), "learning_rate": lr}
                            for s in range(1, done + 1)]}

    # -- inference -----------------------------------------------------------------------

    def chat(self, req: Request) -> Any:
        body = req.json()
        model = body.get("model", "")
        job = next((j for j in self.engine.all_jobs() if output_name(j) == model and j["status"] == "SUCCESS"), None)
        if model.startswith(f"{ORG}/") and job is None:
            raise ServiceError(404, f"model {model} not found")

        def parent(j: dict[str, Any]) -> dict[str, Any] | None:  # the job it continued from
            ref = j["hyperparameters"].get("from_checkpoint")
            return self._job_by_checkpoint(ref) if ref else None

        # a fine-tuned model answers what it was trained on (simulated.recall)
        text = self.engine.chat(model, body.get("messages") or [], job=job, parent=parent)
        return {"id": f"chat-{int(time.time() * 1000)}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "prompt": [],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": len(text.split()),
                          "total_tokens": 1 + len(text.split())}}
