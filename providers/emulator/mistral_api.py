"""The Mistral wire format over the simulated engine (mistralai 2.5.1's models
are the contract: every answer here must parse with them)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from ftctl.providers.emulator.server import Emulator, Request
from ftctl.providers.simulated.engine import ServiceError, SimEngine
from ftctl.providers.simulated.metrics import points

_HYPERPARAMETERS = ("training_steps", "learning_rate", "weight_decay", "warmup_fraction", "epochs", "seq_len",
                    "fim_ratio")


def _file(row: dict[str, Any], *, deleted: bool | None = None) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": int(row["created_at"]),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "sample_type": "instruct",
        "source": "upload",
        "num_lines": row["lines"],
        "mimetype": "application/jsonl",
    }
    if deleted is not None:
        out["deleted"] = deleted
    return out


def checkpoints_json(job: dict[str, Any], engine: SimEngine) -> list[dict[str, Any]]:
    """A checkpoint every fifth of the run, newest first, as Mistral lists them."""
    done = [p for p in points(job, engine.clock(), engine.settings.train_time) if p["checkpoint"]]
    return [{"metrics": {k: p.get(k) for k in ("train_loss", "valid_loss", "valid_mean_token_accuracy")},
             "step_number": p["step"], "created_at": int(p["at"])} for p in reversed(done)]


def job_json(job: dict[str, Any], *, details: bool = False, engine: SimEngine | None = None) -> dict[str, Any]:
    hp = {k: job["hyperparameters"][k] for k in _HYPERPARAMETERS if k in job["hyperparameters"]}
    hp.setdefault("learning_rate", 0.0001)
    meta = job["metadata"]
    out = {
        "id": job["id"],
        "object": "job",
        "job_type": "completion",
        "auto_start": job["auto_start"],
        "model": job["model"],
        "status": job["status"],
        "created_at": int(job["created_at"]),
        "modified_at": int(job["modified_at"]),
        "training_files": job["training_files"],
        "validation_files": [],
        "hyperparameters": hp,
        "fine_tuned_model": job["fine_tuned_model"],
        "suffix": job["suffix"],
        "integrations": [],
        "trained_tokens": job["trained_tokens"],
        "metadata": {k: meta.get(k) for k in ("expected_duration_seconds", "cost", "cost_currency",
                                              "train_tokens_per_step", "train_tokens", "data_tokens",
                                              "estimated_start_time")},
        "repositories": [],
    }
    if details:
        out["events"] = job["events"]
        out["checkpoints"] = checkpoints_json(job, engine) if engine is not None else []
    return out


class MistralEmulator(Emulator):
    kind = "mistral"

    missing_file_status = 422
    # a service whose listing pages are at most this long: it answers a
    # shorter page, or with `refuse_big_pages` a 422 (None: any size)
    max_page_size: int | None = None
    refuse_big_pages = False

    def routes(self) -> None:
        super().routes()
        self.route("POST", "/v1/fine_tuning/jobs/{job_id}/start", self.start_job)

    def file_json(self, row: dict[str, Any]) -> Any:
        return _file(row)

    def error_body(self, status: int, message: str) -> Any:
        if status == 422:
            return {"object": "error", "message": {"detail": [{"msg": message, "type": "value_error"}]},
                    "type": "invalid_request_error", "param": None, "code": None}
        return {"object": "error", "message": message, "type": "invalid_request_error", "param": None,
                "code": str(status)}

    # files
    def list_files(self, req: Request) -> Any:
        rows = self.engine.list_files()
        return {"data": [_file(r) for r in rows], "object": "list", "total": len(rows)}

    def get_file(self, req: Request) -> Any:
        return _file(self.engine.get_file(req.params["file_id"]), deleted=False)

    # jobs
    def create_job(self, req: Request) -> Any:
        body = req.json()
        files = [f["file_id"] if isinstance(f, dict) else f for f in body.get("training_files") or []]
        hp = body.get("hyperparameters") or {}
        if not isinstance(hp, dict) or (hp.get("learning_rate") is not None and hp["learning_rate"] <= 0):
            raise ServiceError(422, "hyperparameters.learning_rate must be greater than 0")
        auto_start = body.get("auto_start")
        # the weight each file was sent with, kept for inspection (`_emulator/state`, tests)
        weights = [float(f.get("weight", 1.0)) if isinstance(f, dict) else 1.0
                   for f in body.get("training_files") or []]
        job = self.engine.create_job(model=body.get("model", ""), training_files=files, hyperparameters=hp,
                                     suffix=body.get("suffix"), auto_start=True if auto_start is None else auto_start,
                                     metadata={"training_file_weights": weights})
        return job_json(job)

    def list_jobs(self, req: Request) -> Any:
        q = req.query
        created_after = None
        if q.get("created_after"):
            try:
                created_after = datetime.fromisoformat(q["created_after"]).replace(
                    tzinfo=datetime.fromisoformat(q["created_after"]).tzinfo or timezone.utc).timestamp()
            except ValueError:
                raise ServiceError(422, "created_after must be a date-time") from None
        size = int(q.get("page_size", 100))
        if self.max_page_size is not None and size > self.max_page_size:
            if self.refuse_big_pages:
                raise ServiceError(422, f"page_size: ensure this value is less than or equal to {self.max_page_size}")
            size = self.max_page_size
        rows, total = self.engine.list_jobs(page=int(q.get("page", 0)), page_size=size,
                                            created_after=created_after, status=q.get("status"),
                                            suffix=q.get("suffix"))
        return {"total": total, "data": [job_json(r) for r in rows], "object": "list"}

    def get_job(self, req: Request) -> Any:
        return job_json(self.engine.get_job(req.params["job_id"]), details=True, engine=self.engine)

    def cancel_job(self, req: Request) -> Any:
        return job_json(self.engine.cancel_job(req.params["job_id"]), details=True, engine=self.engine)

    def start_job(self, req: Request) -> Any:
        return job_json(self.engine.start_job(req.params["job_id"]), details=True, engine=self.engine)

    # models and a smoke test of a fine-tuned model
    def get_model(self, req: Request) -> Any:
        model_id = req.params["model_id"]
        caps = {"completion_chat": True, "completion_fim": False, "function_calling": True,
                "fine_tuning": not model_id.startswith("ft:"), "vision": False, "classification": False}
        job = self.fine_tuned_job(model_id)
        if job is not None:
            return {"id": model_id, "object": "model", "created": int(job["modified_at"]), "owned_by": "emulator",
                    "root": job["model"], "job": job["id"], "archived": False, "type": "fine-tuned",
                    "capabilities": caps, "max_context_length": 32768}
        if model_id.startswith("ft:"):
            raise ServiceError(404, f"model {model_id} not found")
        return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "mistralai",
                "type": "base", "capabilities": caps, "max_context_length": 32768}

    def chat(self, req: Request) -> Any:
        body = req.json()
        model = body.get("model", "")
        messages = body.get("messages") or []
        # a fine-tuned model answers what it was trained on (simulated.recall)
        text = self.engine.chat(model, messages)
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict))
        return {"id": f"cmpl-{int(time.time() * 1000)}", "object": "chat.completion", "model": model,
                "created": int(time.time()),
                "usage": {"prompt_tokens": prompt, "completion_tokens": len(text.split()),
                          "total_tokens": prompt + len(text.split())},
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}]}
