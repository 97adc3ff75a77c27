"""Signed webhooks from an emulator, as OpenAI sends them.

`ftctl emulator --kind openai --webhook-url URL --webhook-secret-env NAME`
watches the job engine and, when a job finishes, POSTs
`fine_tuning.job.succeeded`, `.failed` or `.cancelled` to URL with
Standard Webhooks headers signed with the secret. A delivery that gets no
2xx is retried (same webhook-id, a fresh timestamp) with a backoff, as the
real sender does. `sent` records each attempt, for tests and benchmarks.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

from ftctl.providers.signing import headers
from ftctl.providers.simulated.engine import SimEngine

EVENT_TYPES = {"SUCCESS": "fine_tuning.job.succeeded", "FAILED": "fine_tuning.job.failed",
               "FAILED_VALIDATION": "fine_tuning.job.failed", "CANCELLED": "fine_tuning.job.cancelled"}
RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)


class WebhookSender:
    def __init__(self, engine: SimEngine, url: str, secret: str, *, interval: float = 0.05):
        self.engine = engine
        self.url = url
        self.secret = secret
        self.interval = interval
        self.sent: list[dict[str, Any]] = []  # one entry an attempt
        self._announced: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "WebhookSender":
        # what finished before we started was announced by whoever ran then
        self._announced = {j["id"] for j in self.engine.all_jobs() if j["status"] in EVENT_TYPES}
        self._thread = threading.Thread(target=self._watch, name="webhook-sender", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                jobs = self.engine.all_jobs()
            except Exception:  # noqa: BLE001 - the state file is busy: look again
                continue
            for job in jobs:
                kind = EVENT_TYPES.get(job["status"])
                if kind is None or job["id"] in self._announced:
                    continue
                self._announced.add(job["id"])
                event = {"id": f"evt_{secrets.token_hex(12)}", "object": "event",
                         "created_at": int(job["modified_at"]), "type": kind, "data": {"id": job["id"]}}
                threading.Thread(target=self._deliver, args=(f"wh_{secrets.token_hex(12)}", event),
                                 daemon=True).start()

    def _deliver(self, webhook_id: str, event: dict[str, Any]) -> None:
        import httpx

        body = json.dumps(event).encode()
        for wait in (0.0, *RETRIES):
            if wait and self._stop.wait(wait):
                return
            sent_at = time.time()
            try:
                status = httpx.post(self.url, content=body, timeout=10.0, headers={
                    "content-type": "application/json", **headers(webhook_id, body, self.secret)}).status_code
            except httpx.HTTPError as exc:
                status = f"{exc.__class__.__name__}"
            with self._lock:
                self.sent.append({"webhook_id": webhook_id, "type": event["type"], "job_id": event["data"]["id"],
                                  "sent_at": sent_at, "status": status})
            if isinstance(status, int) and 200 <= status < 300:
                return
