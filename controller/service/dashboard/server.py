"""Serving the dashboard: `[dashboard] listen` in the daemon (leader or
standby alike), or `ftctl dashboard --serve` from the database alone.

Read-only: GET only, any other method gets 405 (the one exception, POST
/login, only sets a cookie, and only when a token is configured). A
configured token (required off loopback) is asked of every request: an
`Authorization: Bearer` header, or the cookie the login form sets (an HMAC
of the token, never the token). /events streams the jobs that changed as
server-sent events, read from the events stream (job_events) in the
database, so it works the same on a standby and without a daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from ftctl.controller.service.dashboard import pages
from ftctl.controller.service.dashboard.html import login_page
from ftctl.providers.keys import clip, redact

COOKIE = "ftctl_dashboard"
# how often the events stream is read for new events, and a keep-alive comment
STREAM_POLL = 0.5
STREAM_PING = 15.0
READ_TIMEOUT = 10.0
# open event streams at once (each holds a thread and a database connection)
MAX_STREAMS = 32


class DashboardUnavailable(Exception):
    """The dashboard cannot listen (one line)."""


class DashboardServer:
    def __init__(self, config: Any, token: str | None, *, listen: str | None = None, logger: Any = None):
        self.config = config
        self.token = token
        self.cookie = hmac.new(token.encode(), b"ftctl dashboard", hashlib.sha256).hexdigest() if token else None
        self.log = logger or structlog.get_logger("ftctl")
        self.stopping = threading.Event()
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.listen = listen or config.dashboard.listen
        host, _, port = self.listen.rpartition(":")
        handler = type("Handler", (_Handler,), {"side": self, "timeout": READ_TIMEOUT})
        try:
            self.httpd = _Server((host.strip("[]"), int(port)), handler)
        except OSError as exc:
            raise DashboardUnavailable(f"dashboard.listen {self.listen}: {exc.strerror or exc}") from None
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="dashboard", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def misnamed(self, headers: Any) -> bool:
        """Without a token (loopback), a request must name a loopback host: a
        web page that rebinds its own name to 127.0.0.1 is refused."""
        from ftctl.controller.service.settings import is_loopback

        return self.token is None and not is_loopback(urlsplit("//" + headers.get("Host", "")).hostname or "")

    def allowed(self, headers: Any) -> bool:
        if self.token is None:
            return True
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer ") and hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
            return True
        for part in headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.cookie.encode()):
                return True
        return False

    def api(self) -> Any:
        from ftctl.controller.api.core import Ftctl

        return Ftctl(self.config)

    def render(self, path: str, params: dict[str, list[str]], nonce: str) -> tuple[int, str]:
        with contextlib.closing(self.api()) as ft:
            if path == "/":
                return pages.jobs_page(ft, pages.Query(params), nonce)
            if path.startswith("/jobs/") and path[6:].isdigit():
                return pages.job_page(ft, int(path[6:]), nonce)
            if path == "/pipelines":
                return pages.pipelines_page(ft, nonce)
            if path == "/spend":
                return pages.spend_page(ft, nonce)
            if path == "/providers":
                return pages.providers_page(ft, nonce)
        from ftctl.controller.service.dashboard.html import esc, page

        return 404, page("Not found", f'<p class="err">No page {esc(path)}.</p>', active="", nonce=nonce)

    def stream(self, handler: "_Handler", params: dict[str, list[str]]) -> None:
        """The jobs that changed since `after`, as `event: job` (the row's
        HTML, or `remove` when it no longer matches the filters)."""
        q = pages.Query(params)
        try:
            after = int(params.get("after", ["0"])[0])
        except ValueError:
            after = 0
        handler.start(200, "text/event-stream", extra={"X-Accel-Buffering": "no"})
        handler.wfile.write(b"retry: 2000\n\n")
        handler.wfile.flush()
        quiet = 0.0
        with contextlib.closing(self.api()) as ft:
            while not self.stopping.is_set():
                reads = ft.reads()
                changed = reads.events_since(after) if reads is not None else []
                if changed:
                    after = changed[-1][0]
                    live, now = ft.live(), pages.utcnow()
                    for job_id in dict.fromkeys(j for _, j in changed):
                        job = reads.job(job_id)
                        if job is None:
                            continue
                        data = ({"id": job.id, "state": job.state, "html": pages.job_row(job, now, live)}
                                if q.matches(job) else {"id": job.id, "remove": True})
                        handler.wfile.write(f"id: {after}\nevent: job\ndata: {json.dumps(data)}\n\n".encode())
                    handler.wfile.flush()
                    quiet = 0.0
                elif quiet >= STREAM_PING:
                    handler.wfile.write(b": ping\n\n")
                    handler.wfile.flush()
                    quiet = 0.0
                if _gone(handler.connection, STREAM_POLL):
                    return
                quiet += STREAM_POLL


def _gone(sock: Any, seconds: float) -> bool:
    """Waits up to `seconds`; True once the client has closed its side (a
    stream's slot comes back at once, not at the next write)."""
    import select

    try:
        readable, _, _ = select.select([sock], [], [], seconds)
        # anything a client sends after its request means nothing: read and dropped
        return bool(readable) and sock.recv(4096) == b""
    except (OSError, ValueError):
        return True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:  # a broken connection: no traceback
        pass


class _Handler(BaseHTTPRequestHandler):
    side: DashboardServer
    server_version = "ftctl-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # pages are not logged line by line
        pass

    def start(self, status: int, content_type: str, *, length: int | None = None,
              extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        csp = f"default-src 'none'; img-src 'self' data:; connect-src 'self'; form-action 'self'; " \
              f"frame-ancestors 'none'; base-uri 'none'"
        nonce = getattr(self, "nonce", None)
        if nonce:
            csp += f"; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'"
        self.send_header("Content-Security-Policy", csp)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def answer(self, status: int, body: str, *, content_type: str = "text/html",
               extra: dict[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self.start(status, content_type, length=len(data), extra=extra)
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:
        self.nonce = secrets.token_urlsafe(16)
        parts = urlsplit(self.path)
        params = parse_qs(parts.query)
        try:
            if self.side.misnamed(self.headers):
                self.answer(403, "open the dashboard by a loopback address (http://127.0.0.1:PORT/)\n",
                            content_type="text/plain")
                return
            if not self.side.allowed(self.headers):
                if parts.path == "/events":
                    self.answer(401, "a token is needed\n", content_type="text/plain",
                                extra={"WWW-Authenticate": "Bearer"})
                else:
                    self.answer(401, login_page(self.nonce), extra={"WWW-Authenticate": "Bearer"})
                return
            if parts.path == "/events":
                if not self.side.streams.acquire(blocking=False):
                    self.answer(503, f"at most {MAX_STREAMS} event streams at once\n", content_type="text/plain",
                                extra={"Retry-After": "10"})
                    return
                try:
                    self.side.stream(self, params)
                finally:
                    self.side.streams.release()
                return
            status, body = self.side.render(parts.path, params, self.nonce)
            self.answer(status, body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - one line in the log, one line on the page
            why = clip(redact(f"{exc.__class__.__name__}: {exc}"), 200)
            self.side.log.warning("dashboard page failed", path=clip(parts.path, 100), error=why)
            from ftctl.controller.service.dashboard.html import esc, page

            with contextlib.suppress(OSError):
                self.answer(503, page("Unavailable", f'<p class="err">{esc(why)}</p>', active="", nonce=self.nonce))

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/login" or self.side.token is None:
            self._not_allowed()
            return
        self.nonce = secrets.token_urlsafe(16)
        raw = self.headers.get("Content-Length", "")
        length = int(raw) if raw.isdigit() else -1
        if not 0 <= length <= 4096:
            self.answer(413 if length > 4096 else 411, "a login form is at most 4096 bytes\n",
                        content_type="text/plain")
            return
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        given = form.get("token", [""])[0].strip()
        if not hmac.compare_digest(given.encode(), self.side.token.encode()):
            self.side.log.warning("dashboard login refused", client=self.client_address[0])
            self.answer(401, login_page(self.nonce, wrong=True))
            return
        self.send_response(303)
        self.send_header("Location", "/")
        self.send_header("Set-Cookie", f"{COOKIE}={self.side.cookie}; HttpOnly; SameSite=Strict; Path=/")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _not_allowed(self) -> None:
        self.nonce = None
        self.answer(405, "the dashboard is read-only: GET only\n", content_type="text/plain",
                    extra={"Allow": "GET"})

    def __getattr__(self, name: str) -> Any:
        # every other method (HEAD, PUT, DELETE, PATCH, OPTIONS, any made-up one): 405
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)


def start_dashboard(config: Any, *, listen: str | None = None, logger: Any = None) -> DashboardServer | None:
    """The dashboard `[dashboard] listen` (or `listen`) asks for, serving; None
    when neither names an address. ConfigError (one line) for a token that
    cannot be had or an address that cannot listen."""
    from ftctl.controller.config import ConfigError
    from ftctl.controller.service.settings import is_loopback
    from ftctl.providers.keys import SecretError

    listen = listen or config.dashboard.listen
    if not listen:
        return None
    try:
        token = config.dashboard.token()
    except SecretError as exc:
        raise ConfigError(f"{config.path}: {exc}") from None
    if token is None and not is_loopback(listen.rpartition(":")[0]):
        raise ConfigError(f"dashboard: {listen} is not a loopback address: a token is needed "
                          "([dashboard] token_env, token_file or token_credential)")
    for name, section in config.providers.items():  # keys the providers' texts might echo: masked on every page
        with contextlib.suppress(Exception):
            if getattr(section, "key_env", None) or getattr(section, "api_key_file", None):
                section.api_key(name)
    try:
        server = DashboardServer(config, token, listen=listen, logger=logger)
    except DashboardUnavailable as exc:
        raise ConfigError(str(exc)) from None
    server.log.info("dashboard serving", url=server.url, token=token is not None)
    return server
