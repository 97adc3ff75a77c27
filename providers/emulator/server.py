"""A small HTTP server for provider emulators, with faults on request.

Each emulator (Mistral, OpenAI) is a thin wire facade: a table of routes
over one SimEngine. This module owns what they share: routing, JSON and
multipart bodies, the bearer-key check, and fault injection.

Faults are rules matched against each request, set in process
(`server.faults.add(...)`) or over HTTP (`POST /_emulator/faults`):

    {"method": "POST", "path": "/v1/fine_tuning/jobs", "status": 429,
     "retry_after": 1, "times": 2}
    {"path": "/v1/fine_tuning/jobs", "delay": 3}             # slow answer
    {"method": "POST", "path": "/v1/fine_tuning/jobs", "delay": 3,
     "after": true}                                        # done, then slow
    {"status": 422, "body": {...}, "times": 1}             # the provider's error body
    {"method": "POST", "path": "/v1/fine_tuning/jobs", "delay": [3, 5],
     "chance": 0.2}                                        # a fifth of creates land 3-5 s late

`POST /_emulator/auth {"fail": true}` answers 401 to everything until
`{"fail": false}`; `POST /_emulator/reject {"marker": "TEXT"}` makes the
service refuse (FAILED_VALIDATION) files that contain TEXT.

`times` (default: forever) counts matching requests; `path` is a prefix
(`"exact": true`: that path only); `delay` is seconds or a [low, high] range
drawn per request; `chance` (0..1, seeded) makes a rule apply to only that
share of matching requests.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ftctl.providers.simulated.engine import ServiceError, SimEngine


@dataclass
class Fault:
    method: str | None = None
    path: str = ""
    status: int | None = None
    body: Any = None
    retry_after: float | None = None
    delay: float | list[float] = 0.0
    after: bool = False  # do the work, then delay the answer (a client timeout that took effect)
    times: int | None = None
    chance: float = 1.0
    exact: bool = False  # the path itself, not every path under it
    hits: int = 0

    def seconds(self, rng: random.Random) -> float:
        if isinstance(self.delay, (list, tuple)):
            low, high = self.delay
            return rng.uniform(float(low), float(high))
        return float(self.delay or 0.0)

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        if not (path == self.path if self.exact else path.startswith(self.path)):
            return False
        return self.times is None or self.hits < self.times


class Faults:
    def __init__(self, seed: int = 0) -> None:
        self._rules: list[Fault] = []
        self._lock = threading.Lock()
        self.rng = random.Random(seed)

    def add(self, **rule: Any) -> Fault:
        fault = Fault(**rule)
        with self._lock:
            self._rules.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path):
                    if rule.chance < 1.0 and self.rng.random() >= rule.chance:
                        continue
                    rule.hits += 1
                    return rule
        return None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Any
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError:
            raise ServiceError(400, "request body is not valid JSON") from None

    def multipart(self) -> dict[str, tuple[str | None, bytes]]:
        """name -> (filename, content) of a multipart/form-data body."""
        ctype = self.headers.get("content-type", "")
        if "multipart/form-data" not in ctype:
            raise ServiceError(400, "expected multipart/form-data")
        raw = f"Content-Type: {ctype}\r\nMIME-Version: 1.0\r\n\r\n".encode() + self.body
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
        parts: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            parts[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
        return parts


@dataclass
class Reply:
    """What a handler returns when 200 and a JSON body will not do (a redirect)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Any]


class Emulator:
    """Routes, key check and faults; subclasses add the provider's routes."""

    kind = "generic"
    # what a client's base_url adds to the server's address
    base_path = ""
    # the provider whose signed webhooks it can deliver (None: it sends none)
    webhook_kind: str | None = None

    def __init__(self, engine: SimEngine, api_key: str | None = None):
        self.engine = engine
        self.api_key = api_key  # None: any non-empty bearer key is accepted
        self.auth_failing = False
        self.faults = Faults()
        self.calls: Counter = Counter()
        # (wall time the request arrived, "METHOD /route", answer status), newest last
        self.requests: deque = deque(maxlen=10_000)
        self._routes: list[tuple[str, re.Pattern, Handler]] = []
        self._lock = threading.Lock()
        self.webhooks: Any = None  # a started emulator.webhooks.WebhookSender, when asked for
        self.routes()

    # -- routing ------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        self._routes.append((method, regex, handler))

    # both providers' fine-tuning APIs share these paths; the facades give
    # the handlers and the JSON shapes
    missing_file_status = 400

    def routes(self) -> None:
        self.route("POST", "/v1/files", self.upload_file)
        self.route("GET", "/v1/files", self.list_files)
        self.route("GET", "/v1/files/{file_id}", self.get_file)
        self.route("DELETE", "/v1/files/{file_id}", self.delete_file)
        self.route("POST", "/v1/fine_tuning/jobs", self.create_job)
        self.route("GET", "/v1/fine_tuning/jobs", self.list_jobs)
        self.route("GET", "/v1/fine_tuning/jobs/{job_id}", self.get_job)
        self.route("POST", "/v1/fine_tuning/jobs/{job_id}/cancel", self.cancel_job)
        self.route("GET", "/v1/models/{model_id}", self.get_model)
        # the models list and a fine-tuned model's delete: Mistral's and OpenAI's paths alike
        self.route("GET", "/v1/models", self.list_models)
        self.route("DELETE", "/v1/models/{model_id}", self.delete_model)
        self.route("POST", "/v1/chat/completions", self.chat)

    def file_json(self, row: dict[str, Any]) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def upload_file(self, req: Request) -> Any:
        parts = req.multipart()
        if "file" not in parts:
            raise ServiceError(self.missing_file_status, "file is required")
        filename, content = parts["file"]
        purpose = parts.get("purpose", (None, b"fine-tune"))[1].decode() or "fine-tune"
        return self.file_json(self.engine.upload_file(filename or "upload.jsonl", content, purpose))

    def delete_file(self, req: Request) -> Any:
        self.engine.delete_file(req.params["file_id"])
        return {"id": req.params["file_id"], "object": "file", "deleted": True}

    def list_models(self, req: Request) -> Any:
        """The fine-tuned models this service holds (a base model list is not emulated)."""
        return {"object": "list", "data": [{"id": m["id"], "object": "model", "created": int(m["created"]),
                                            "owned_by": "emulator", "root": m["root"]}
                                           for m in self.engine.list_models()]}

    def delete_model(self, req: Request) -> Any:
        self.engine.delete_model(req.params["model_id"])
        return {"id": req.params["model_id"], "object": "model", "deleted": True}

    def fine_tuned_job(self, model_id: str) -> dict[str, Any] | None:
        """The job that produced a fine-tuned model, if this service made it
        and it was not deleted since."""
        return self.engine.job_by_model(model_id)

    def error_body(self, status: int, message: str) -> Any:
        return {"object": "error", "message": message, "type": "invalid_request_error", "code": str(status)}

    def unauthorized(self, key: str) -> tuple[int, Any]:
        """The 401 for a refused bearer `key` (what the service echoes of it)."""
        return 401, self.error_body(401, "Unauthorized")

    @staticmethod
    def bearer(req: Request) -> str:
        header = req.headers.get("authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else ""

    # -- dispatch -------------------------------------------------------------------

    def handle(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        if req.path.startswith("/_emulator/"):
            return self._control(req)
        name = f"{req.method} {self._route_name(req)}"
        self.calls[name] += 1
        arrived = time.time()
        status, payload, headers = self._handle(req)
        self.requests.append((arrived, name, status))
        return status, payload, headers

    def _handle(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        fault = self.faults.take(req.method, req.path)
        delay = fault.seconds(self.faults.rng) if fault else 0.0
        if delay and not fault.after:
            time.sleep(delay)
        if fault and fault.status:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            body = fault.body if fault.body is not None else self.error_body(fault.status, f"injected {fault.status}")
            return fault.status, body, headers
        if not self._authorized(req):
            status, body = self.unauthorized(self.bearer(req))
            return status, body, {}
        for method, regex, handler in self._routes:
            match = regex.match(req.path)
            if match and method == req.method:
                req.params = match.groupdict()
                try:
                    result = handler(req)
                except ServiceError as exc:
                    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else {}
                    return exc.status_code, self.error_body(exc.status_code, exc.message), headers
                if delay and fault.after:
                    time.sleep(delay)
                if isinstance(result, Reply):
                    return result.status, result.body, result.headers
                return 200, result, {}
        return 404, self.error_body(404, f"no route for {req.method} {req.path}"), {}

    def _route_name(self, req: Request) -> str:
        for method, regex, _ in self._routes:
            if method == req.method and regex.match(req.path):
                return re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", regex.pattern.strip("^$"))
        return req.path

    def _authorized(self, req: Request) -> bool:
        if self.auth_failing:
            return False
        key = self.bearer(req)
        return bool(key) and (self.api_key is None or key == self.api_key)

    def _control(self, req: Request) -> tuple[int, Any, dict[str, str]]:
        if req.path == "/_emulator/state" and req.method == "GET":
            return 200, {"kind": self.kind, "calls": dict(self.calls), "jobs": self.engine.all_jobs(),
                         "requests": list(self.requests),
                         "webhooks": list(self.webhooks.sent) if self.webhooks is not None else []}, {}
        if req.path == "/_emulator/calls" and req.method == "GET":  # the counts alone: cheap at any size
            return 200, {"kind": self.kind, "calls": dict(self.calls)}, {}
        if req.path == "/_emulator/faults" and req.method == "POST":
            data = req.json()
            if data.get("clear"):
                self.faults.clear()
            for rule in data.get("add", []):
                self.faults.add(**rule)
            return 200, {"ok": True}, {}
        if req.path == "/_emulator/reject" and req.method == "POST":
            self.engine.settings.reject_marker = req.json().get("marker") or None
            return 200, {"reject_marker": self.engine.settings.reject_marker}, {}
        if req.path == "/_emulator/auth" and req.method == "POST":
            self.auth_failing = bool(req.json().get("fail"))
            return 200, {"auth_failing": self.auth_failing}, {}
        return 404, {"message": "unknown control path"}, {}

    # -- serving ----------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> "RunningServer":
        return RunningServer(self, host, port)


class _HTTPHandler(BaseHTTPRequestHandler):
    emulator: Emulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(self.command, parts.path, dict(parse_qsl(parts.query)), self.headers, body)
        try:
            status, payload, headers = self.emulator.handle(req)
        except Exception as exc:  # an emulator bug must look like a 500, not a hang
            status, payload, headers = 500, {"message": f"emulator error: {exc.__class__.__name__}"}, {}
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout we caused on purpose)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _dispatch


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a client that went away (a killed daemon): nothing to report
        super().handle_error(request, client_address)


class RunningServer:
    def __init__(self, emulator: Emulator, host: str, port: int):
        handler = type("Handler", (_HTTPHandler,), {"emulator": emulator})
        self.emulator = emulator
        self.httpd = _Server((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = self.httpd.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        # a short poll: stop() returns in 50 ms, not the default 500
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name=f"{emulator.kind}-emulator", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.emulator.webhooks is not None:
            self.emulator.webhooks.stop()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.emulator.engine.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
