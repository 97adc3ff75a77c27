"""Webhooks in: `[webhooks] listen = "127.0.0.1:9465"` serves
`POST /webhooks/<provider name>` for every configured provider whose kind
signs webhooks about its jobs (OpenAI).

A request is verified with the provider's own SDK (through its descriptor,
`verify_webhook`): a forged signature, a timestamp more than 5 minutes off,
a body over `max_body`, an unknown provider or a missing header gets a 4xx
and changes nothing. So does a signed delivery that means nothing here: a
body that is not an event object, an event type the provider's jobs do not
send, or a job that is none of ours (another ftctl install's, say). A
client gets `REQUEST_TIMEOUT` seconds for its whole request, headers and
body (a slow or idle one is cut off then); a refused, cut-off or broken
request is one JSON log line, never a traceback. A verified event about
one of our jobs gets a 2xx and wakes the daemon for an immediate reconcile
of that provider: the event is only a hint, the job's
state is still read from the provider's API. A `webhook-id` seen before (the
sender retried a delivery whose answer it lost) gets a 2xx and is not acted
on twice. The server runs on its own threads; a request never holds the
reconcile loop (it writes one small row and sets a flag).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from ftctl.controller.config import Config, ConfigError
from ftctl.models import Store, utcnow
from ftctl.providers.base import WebhookRejected
from ftctl.providers.keys import SecretError, clip, redact
from ftctl.providers.registry import KINDS

_PATH = re.compile(r"^/webhooks/([A-Za-z0-9_.-]{1,100})/?$")
# a slow sender does not keep a thread forever: the most one read may wait,
# and the most a whole request (its headers and its body) may take
READ_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0


class WebhookUnavailable(Exception):
    """The webhook endpoint cannot listen (one line)."""


def webhook_secret(config: Config) -> str | None:
    """The webhooks' secret when `[webhooks] listen` is set; ConfigError (one
    line naming the key) when it cannot be had."""
    if not config.webhooks.listen:
        return None
    try:
        return config.webhooks.secret("webhooks")
    except SecretError as exc:
        raise ConfigError(f"{config.path}: {exc}") from None


class WebhookServer:
    def __init__(self, config: Config, secret: str, store: Store, on_event: Callable[[str, str], None],
                 logger: Any = None, *, request_timeout: float = REQUEST_TIMEOUT):
        self.store = store
        self.on_event = on_event
        self.log = logger or structlog.get_logger("ftctl")
        self.request_timeout = request_timeout
        self.update(config, secret)
        self.listen = config.webhooks.listen
        host, _, port = self.listen.rpartition(":")
        handler = type("Handler", (_Handler,), {"server_side": self,
                                                "timeout": min(READ_TIMEOUT, request_timeout)})
        try:
            self.httpd = _Server((host.strip("[]"), int(port)), handler)
        except OSError as exc:
            raise WebhookUnavailable(f"webhooks.listen {self.listen}: {exc.strerror or exc}") from None
        self.httpd.side = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="webhooks", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def update(self, config: Config, secret: str) -> None:
        """A reload: new providers, a new secret, a new size limit."""
        self.config, self.secret = config, secret

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- one request ---------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], length: int | None,
               read: Callable[[int], bytes]) -> tuple[int, dict[str, Any]]:
        match = _PATH.match(path.split("?", 1)[0])
        if match is None:
            self.log.warning("webhook refused", path=clip(path, 100), status=404, why="not a webhook path")
            return 404, {"error": "not found: webhooks are served at POST /webhooks/<provider name>"}
        name = match.group(1)
        config, secret = self.config, self.secret
        section = config.providers.get(name)
        if section is None or not KINDS[section.kind].webhooks:
            self.log.warning("webhook refused", provider=name, status=404, why="no such provider takes webhooks")
            return 404, {"error": f"no provider {name!r} takes webhooks here"}
        if method != "POST":
            self.log.warning("webhook refused", provider=name, status=405, why=f"{clip(method, 20)}, not POST")
            return 405, {"error": "POST only"}
        if length is None:
            self.log.warning("webhook refused", provider=name, status=411, why="no Content-Length")
            return 411, {"error": "a Content-Length is required"}
        if length > config.webhooks.max_body:
            self.log.warning("webhook refused", provider=name, status=413, bytes=length)
            return 413, {"error": f"body over {config.webhooks.max_body} bytes"}
        body = read(length)
        if len(body) < length:
            raise _Incomplete(f"the body stopped at {len(body)} of {length} bytes")
        try:
            event = KINDS[section.kind].verify_webhook(body, headers, secret)
        except WebhookRejected as exc:
            self.log.warning("webhook refused", provider=name, status=exc.status, why=exc.message)
            return exc.status, {"error": exc.message}
        except Exception as exc:  # noqa: BLE001 - the SDK missing or broken: the sender will retry
            self.log.error("webhook verification failed", provider=name, error=clip(f"{exc.__class__.__name__}: "
                                                                                   f"{exc}", 200))
            return 503, {"error": "cannot verify webhooks now"}
        kind = KINDS[section.kind]
        why = None
        if event.type not in kind.webhook_types:
            why = clip(f"event type {event.type!r} means nothing here (ftctl acts on "
                       f"{', '.join(kind.webhook_types)})", 200)
        elif event.job_id is None:
            why = f"a {event.type} event without data.id (the job)"
        if why is not None:
            self.log.warning("webhook refused", provider=name, status=422, why=why, webhook_id=event.id)
            return 422, {"error": why}
        try:
            ours = self.store.knows_provider_job(name, event.job_id)
        except Exception as exc:  # noqa: BLE001 - the database is busy: the sender will retry
            self.log.error("webhook not recorded", provider=name, error=clip(f"{exc.__class__.__name__}: {exc}", 200))
            return 503, {"error": "try again later"}
        if not ours:
            why = clip(f"no job of this ftctl is {name} job {event.job_id!r} (another install's, or none)", 200)
            self.log.warning("webhook refused", provider=name, status=422, why=why, webhook_id=event.id,
                             type=event.type)
            return 422, {"error": why}
        try:
            new = self.store.remember_webhook(name, event.id, event.type, utcnow())
        except Exception as exc:  # noqa: BLE001 - the database is busy: the sender will retry
            self.log.error("webhook not recorded", provider=name, error=clip(f"{exc.__class__.__name__}: {exc}", 200))
            return 503, {"error": "try again later"}
        if not new:
            self.log.info("webhook seen before; not acted on again", provider=name, webhook_id=event.id,
                          type=event.type)
            return 200, {"ok": True, "duplicate": True}
        self.log.info("webhook", provider=name, webhook_id=event.id, type=event.type, provider_job_id=event.job_id)
        self.on_event(name, f"webhook {event.type}")
        return 200, {"ok": True}


class _Incomplete(Exception):
    """The client stopped sending before its body was whole."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a burst of connections waits in the kernel, not refused
    side: WebhookServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke (reset, a pipe closed): one log line, not
        socketserver's traceback on stderr."""
        exc = sys.exc_info()[1]
        self.side.log.warning("webhook request broken", client=_client(client_address),
                              error=redact(f"{exc.__class__.__name__}: {exc}")[:200])


def _client(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)


class _Handler(BaseHTTPRequestHandler):
    server_side: WebhookServer
    protocol_version = "HTTP/1.1"

    # -- the whole request in bounded time ---------------------------------------------

    def setup(self) -> None:
        super().setup()
        self._answered = self._logged = self._expired = False
        self._timer = threading.Timer(self.server_side.request_timeout, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        """Past the deadline: every read in flight returns now, empty."""
        self._expired = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError as exc:  # reset by the client, a pipe it closed, our own cut-off
            self._refused(f"took over {self.server_side.request_timeout:g}s; cut off" if self._expired
                          else f"the connection broke: {exc.__class__.__name__}")

    def finish(self) -> None:
        self._timer.cancel()
        with contextlib.suppress(OSError):
            super().finish()
        started = getattr(self, "raw_requestline", b"")
        if not self._answered and not self._logged and (self._expired or started):
            self._refused(f"took over {self.server_side.request_timeout:g}s; cut off" if self._expired
                          else "the client went away mid-request")

    def _refused(self, why: str, status: int | None = None) -> None:
        if self._logged:
            return
        self._logged = True
        self.server_side.log.warning("webhook request refused", client=_client(self.client_address),
                                     status=status, why=redact(why)[:200])

    def log_request(self, code: Any = "-", size: Any = "-") -> None:  # a request answered: handle() logs it
        pass

    def log_error(self, format: str, *args: Any) -> None:
        """What http.server refuses itself (a malformed request line, a read
        that timed out): one line."""
        self._refused(format % args if args else format)

    def log_message(self, format: str, *args: Any) -> None:  # the daemon logs what matters
        pass

    def _any(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        raw = headers.get("content-length")
        length = int(raw) if raw is not None and raw.isdigit() else None

        def read(n: int) -> bytes:
            return self.rfile.read(n)

        try:
            if self._expired:  # the headers stopped at the deadline: whatever came is not a request
                raise TimeoutError("cut off")
            status, payload = self.server_side.handle(self.command, self.path, headers, length, read)
        except (_Incomplete, TimeoutError, OSError) as exc:
            why = f"took over {self.server_side.request_timeout:g}s; cut off" if self._expired else (
                str(exc) if isinstance(exc, _Incomplete) else f"the body did not arrive: {exc.__class__.__name__}")
            self._refused(why, 408)
            status, payload = 408, {"error": why}
        except Exception as exc:  # noqa: BLE001 - never a hung sender
            self._refused(f"{exc.__class__.__name__}: {exc}", 500)
            status, payload = 500, {"error": exc.__class__.__name__}
        data = json.dumps(payload).encode()
        # one request a connection: the deadline is the request's
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass
        self._answered = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any
