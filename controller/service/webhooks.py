"""Webhooks in: `[webhooks] listen = "127.0.0.1:9465"` serves
`POST /webhooks/<provider name>` for every configured provider whose kind
signs webhooks about its jobs (OpenAI).

A request is verified with the provider's own SDK (through its descriptor,
`verify_webhook`): a forged signature, a timestamp more than 5 minutes off,
a body over `max_body`, an unknown provider or a missing header gets a 4xx
and changes nothing. A verified event gets a 2xx and wakes the daemon for an
immediate reconcile of that provider: the event is only a hint, the job's
state is still read from the provider's API. A `webhook-id` seen before (the
sender retried a delivery whose answer it lost) gets a 2xx and is not acted
on twice. The server runs on its own threads; a request never holds the
reconcile loop (it writes one small row and sets a flag).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

from ftctl.controller.config import Config, ConfigError
from ftctl.models import Store, utcnow
from ftctl.providers.base import WebhookRejected
from ftctl.providers.keys import SecretError, clip
from ftctl.providers.registry import KINDS

_PATH = re.compile(r"^/webhooks/([A-Za-z0-9_.-]{1,100})/?$")
# a slow sender does not keep a thread forever
READ_TIMEOUT = 10.0


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
                 logger: Any = None):
        self.store = store
        self.on_event = on_event
        self.log = logger or structlog.get_logger("ftctl")
        self.update(config, secret)
        self.listen = config.webhooks.listen
        host, _, port = self.listen.rpartition(":")
        handler = type("Handler", (_Handler,), {"server_side": self, "timeout": READ_TIMEOUT})
        try:
            self.httpd = ThreadingHTTPServer((host.strip("[]"), int(port)), handler)
        except OSError as exc:
            raise WebhookUnavailable(f"webhooks.listen {self.listen}: {exc.strerror or exc}") from None
        self.httpd.daemon_threads = True
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
            return 404, {"error": "not found: webhooks are served at POST /webhooks/<provider name>"}
        name = match.group(1)
        config, secret = self.config, self.secret
        section = config.providers.get(name)
        if section is None or not KINDS[section.kind].webhooks:
            self.log.warning("webhook refused", provider=name, status=404, why="no such provider takes webhooks")
            return 404, {"error": f"no provider {name!r} takes webhooks here"}
        if method != "POST":
            return 405, {"error": "POST only"}
        if length is None:
            return 411, {"error": "a Content-Length is required"}
        if length > config.webhooks.max_body:
            self.log.warning("webhook refused", provider=name, status=413, bytes=length)
            return 413, {"error": f"body over {config.webhooks.max_body} bytes"}
        body = read(length)
        try:
            event = KINDS[section.kind].verify_webhook(body, headers, secret)
        except WebhookRejected as exc:
            self.log.warning("webhook refused", provider=name, status=exc.status, why=exc.message)
            return exc.status, {"error": exc.message}
        except Exception as exc:  # noqa: BLE001 - the SDK missing or broken: the sender will retry
            self.log.error("webhook verification failed", provider=name, error=clip(f"{exc.__class__.__name__}: "
                                                                                   f"{exc}", 200))
            return 503, {"error": "cannot verify webhooks now"}
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


class _Handler(BaseHTTPRequestHandler):
    server_side: WebhookServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # the daemon logs what matters
        pass

    def _any(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        raw = headers.get("content-length")
        length = int(raw) if raw is not None and raw.isdigit() else None
        consumed: list[int] = []

        def read(n: int) -> bytes:
            consumed.append(n)
            return self.rfile.read(n)

        try:
            status, payload = self.server_side.handle(self.command, self.path, headers, length, read)
        except Exception as exc:  # noqa: BLE001 - never a hung sender
            status, payload = 500, {"error": exc.__class__.__name__}
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if not consumed:  # a body not read: this connection cannot carry another request
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any
