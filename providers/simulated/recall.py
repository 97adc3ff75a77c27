"""What a simulated model learned, and how it answers.

Each uploaded file's examples are filed by their prompt (the conversation up
to its last assistant answer). A fine-tuned model answers a prompt it was
trained on, by its own job or by a job it continued from, with the answer
it was taught; any other prompt, and any base model, gets an echo that
answers nothing. Deterministic and cheap: an evaluation can tell a model
that learned its data from one that did not.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

LESSONS_SCHEMA = """CREATE TABLE IF NOT EXISTS examples (
    file_id TEXT NOT NULL,
    prompt TEXT NOT NULL,
    answer TEXT NOT NULL,
    PRIMARY KEY (file_id, prompt)
);
CREATE TABLE IF NOT EXISTS deleted_models (
    model TEXT PRIMARY KEY,
    at REAL NOT NULL
);
"""


def prompt_key(messages: list[Any]) -> str:
    """A conversation up to its last assistant answer, as the service files it:
    roles and contents only, so a chat request finds what a file taught."""
    turns = [[m.get("role"), m.get("content")] if isinstance(m, dict) else [None, m] for m in messages]
    return hashlib.sha256(json.dumps(turns, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]


def lessons(content: bytes) -> dict[str, str]:
    """prompt -> the assistant's answer, for each well-formed example of a file."""
    out: dict[str, str] = {}
    for raw in content.splitlines():
        try:
            messages = json.loads(raw).get("messages") or []
        except (ValueError, AttributeError):
            continue
        if (isinstance(messages, list) and len(messages) > 1 and isinstance(messages[-1], dict)
                and messages[-1].get("role") == "assistant" and isinstance(messages[-1].get("content"), str)):
            out[prompt_key(messages[:-1])] = messages[-1]["content"]
    return out


def root_model(model: str) -> str:
    """`ft:ROOT:...` -> ROOT: a model trained from a fine-tuned one keeps its root's name."""
    parts = model.split(":")
    return parts[1] if model.startswith("ft:") and len(parts) > 1 and parts[1] else model


# OpenAI's checkpoint models: ft:BASE:SUFFIX:ckpt-step-N (the emulator's ids)
CHECKPOINT = ":ckpt-step-"


def checkpoint_steps(job: dict[str, Any]) -> list[int]:
    """The steps a job saves a checkpoint at (its final step among them)."""
    from ftctl.providers.simulated.metrics import total_steps

    total = total_steps(job)
    every = max(1, total // 5)
    return [s for s in range(1, total + 1) if s % every == 0 or s == total]


class Recall:
    """Mixed into SimEngine (its `_conn`, `_decode`, `maybe_fail`)."""

    def job_by_model(self, model: str, *, deleted: bool = False) -> dict[str, Any] | None:
        """The succeeded job that made a fine-tuned model, if this service made
        it and (unless `deleted`) the model was not deleted since."""
        row = self._conn().execute("SELECT * FROM jobs WHERE fine_tuned_model = ? AND status = 'SUCCESS'"
                                   + ("" if deleted else " AND fine_tuned_model NOT IN (SELECT model FROM "
                                      "deleted_models)"), (model,)).fetchone()
        return self._decode(row) if row is not None else None

    def job_by_checkpoint(self, model: str) -> tuple[dict[str, Any], int] | None:
        """(the succeeded job, the step) of a checkpoint model this service made."""
        head, _, step = model.rpartition(CHECKPOINT)
        parts = head.split(":")
        if not head or not step.isdigit() or len(parts) < 3 or parts[0] != "ft":
            return None
        suffix, base = parts[-1], ":".join(parts[1:-1])
        row = self._conn().execute(
            "SELECT * FROM jobs WHERE model = ? AND status = 'SUCCESS' AND "
            + ("suffix IS NULL" if suffix == "model" else "suffix = ?") + " ORDER BY created_at DESC LIMIT 1",
            (base,) if suffix == "model" else (base, suffix)).fetchone()
        if row is None or int(step) not in checkpoint_steps(self._decode(row)):
            return None
        return self._decode(row), int(step)

    def _knows(self, job: dict[str, Any], step: int | None, messages: list[Any]) -> bool:
        """Whether the checkpoint at `step` (None: the final model) learned
        this prompt: `checkpoint_recall` is the share of its lessons each
        checkpoint knows, first to last (the last share for any later one,
        the final model's included); none set: every one knows them all."""
        shares = self.settings.checkpoint_recall
        if not shares:
            return True
        steps = checkpoint_steps(job)
        at = steps.index(step) if step in steps else len(steps) - 1
        share = shares[min(at, len(shares) - 1)]
        digest = hashlib.sha256(prompt_key(messages).encode()).digest()
        return share >= 1.0 or int.from_bytes(digest[:8], "big") / 2 ** 64 < share

    def list_models(self) -> list[dict[str, Any]]:
        """The fine-tuned models this service holds (made, not deleted), oldest first."""
        rows = self._conn().execute("SELECT fine_tuned_model, model, id, modified_at FROM jobs WHERE status = "
                                    "'SUCCESS' AND fine_tuned_model IS NOT NULL AND fine_tuned_model NOT IN "
                                    "(SELECT model FROM deleted_models) ORDER BY seq").fetchall()
        return [{"id": r[0], "root": r[1], "job": r[2], "created": r[3]} for r in rows]

    def delete_model(self, model: str) -> None:
        """Delete a fine-tuned model: ServiceError 404 when there is none
        (never made here, or deleted already)."""
        from ftctl.providers.simulated.engine import ServiceError

        self.maybe_fail()
        with self._tx() as db:
            made = db.execute("SELECT 1 FROM jobs WHERE fine_tuned_model = ? AND status = 'SUCCESS'",
                              (model,)).fetchone()
            if made is None or db.execute("INSERT OR IGNORE INTO deleted_models (model, at) VALUES (?, ?)",
                                          (model, self.clock())).rowcount == 0:
                raise ServiceError(404, f"model {model} not found")

    def recall(self, job: dict[str, Any], messages: list[Any],
               parent: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None) -> str | None:
        """The answer a model learned for this prompt: from the training files
        of the job that made it, then of the jobs it was trained on (`parent`:
        the job a job continued from; by default the one whose model it named)."""
        parent = parent or (lambda j: self.job_by_model(j["model"], deleted=True))
        key, seen, files = prompt_key(messages), set(), []
        while job is not None and job["id"] not in seen:
            seen.add(job["id"])
            files += job["training_files"]
            job = parent(job)
        conn = self._conn()
        for file_id in files:
            row = conn.execute("SELECT answer FROM examples WHERE file_id = ? AND prompt = ?",
                               (file_id, key)).fetchone()
            if row is not None:
                return row["answer"]
        return None

    def chat(self, model: str, messages: list[Any], job: dict[str, Any] | None = None,
             parent: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None) -> str:
        """A chat answer, deterministic and cheap: a fine-tuned model answers
        a prompt it was trained on with the answer it was taught; any other
        prompt, and any base model, gets an echo that answers nothing."""
        self.maybe_fail()
        settings = self.settings
        if settings.chat_latency:
            time.sleep(settings.chat_latency)  # a slow model: the gate's latency criterion measures it
        job, step = job or self.job_by_model(model), None
        if job is None and CHECKPOINT in model:  # a checkpoint answers as what it had learned by then
            job, step = self.job_by_checkpoint(model) or (None, None)
        if job is None and model.startswith("ft:"):
            from ftctl.providers.simulated.engine import ServiceError

            raise ServiceError(404, f"model {model} not found")
        last = next((m.get("content") for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
                    "")
        if settings.unsafe_prompt and settings.unsafe_prompt in str(last):
            return settings.unsafe_answer
        if settings.chat_noise and self._noisy(model, messages):
            return f"(emulated {model}) a guess"
        learned = self.recall(job, messages, parent) if job is not None else None
        if learned is not None and self._knows(job, step, messages):
            return learned
        return f"(emulated {model}) you said: {last}"

    def _noisy(self, model: str, messages: list[Any]) -> bool:
        """Whether this asking of this question gets a wrong answer: drawn from
        the seed, the prompt and how many times this model was asked it
        before, so a run answers the same whatever the order of its calls and
        whatever ids its models got."""
        key = (model, prompt_key(messages))
        lock = self.__dict__.setdefault("_asked_lock", threading.Lock())
        with lock:
            asked = self.__dict__.setdefault("_asked", Counter())
            n = asked[key]
            asked[key] += 1
        digest = hashlib.sha256(f"{self.settings.seed}|{key[1]}|{n}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64 < self.settings.chat_noise
