"""What the controller and the trainer say to each other: the job spec, the
lines the trainer logs, its exit codes and where things lie in the
artifacts folder. Importing this is cheap: no torch, no Ray."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

# exit codes: a permanent failure is never retried; anything else is
EXIT_USAGE = 64  # a spec the trainer cannot read
EXIT_DATA = 65  # the training data is bad
EXIT_MODEL = 66  # the base model cannot be loaded (unknown id, no such path)
EXIT_OOM = 67  # out of memory: the same job runs out again
EXIT_PREEMPTED = 75  # SIGTERM (a preemption, a stop): saved a checkpoint, retry resumes
PERMANENT = {EXIT_USAGE: "bad spec", EXIT_DATA: "bad data", EXIT_MODEL: "unknown base model", EXIT_OOM: "out of memory"}

# the Ray job's metadata keys
META_TOKEN, META_JOB, META_AGENT, META_KIND, META_RUN = "ftctl_token", "ftctl_job_id", "ftctl_agent", "ftctl_kind", \
    "ftctl_run"
KIND_TRAIN, KIND_ANSWER = "train", "answer"

LINE_PREFIX = "ftctl-log "
MANIFEST = "manifest.json"
COMPLETE_MARKER = "ftctl-complete"


@dataclass
class TrainSpec:
    """One training job: what the trainer needs, nothing of the controller's."""

    job_id: int
    agent: str
    token: str
    base_model: str  # a local path, an ftctl artifact folder or a Hugging Face id
    files: list[tuple[str, float]]  # (path or URI, weight)
    output: str  # the artifact folder of this job (path or fsspec URI)
    method: str = "sft"
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    data_hash: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainSpec":
        data = json.loads(text)
        data["files"] = [(str(p), float(w)) for p, w in data.get("files", [])]
        return cls(**data)


@dataclass
class AnswerSpec:
    """One eval batch: prompts for each model, answered greedily."""

    models: dict[str, str]  # role -> model (path, artifact or HF id)
    questions: list[dict[str, Any]]  # {"key": str, "role": str, "messages": [...]}
    max_tokens: int = 64

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AnswerSpec":
        return cls(**json.loads(text))


def job_dir(artifacts: str, agent: str, job_id: int) -> str:
    return f"{artifacts.rstrip('/')}/{agent}/job-{job_id}"


def model_dir(artifacts: str, agent: str, job_id: int) -> str:
    return job_dir(artifacts, agent, job_id) + "/model"


def file_uri(artifacts: str, content_hash: str) -> str:
    return f"{artifacts.rstrip('/')}/files/{content_hash}.jsonl"


def emit(kind: str, **fields: Any) -> None:
    """One line the controller reads back from the job's log."""
    sys.stdout.write(LINE_PREFIX + json.dumps({"kind": kind, **fields}, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def parse(log_text: str) -> list[dict[str, Any]]:
    """The trainer's lines in a job's log, in order (anything else skipped)."""
    out = []
    for line in log_text.splitlines():
        at = line.find(LINE_PREFIX)
        if at < 0:
            continue
        try:
            value = json.loads(line[at + len(LINE_PREFIX):])
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("kind"), str):
            out.append(value)
    return out
