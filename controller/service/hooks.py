"""Events out: `[[hooks]]` and the dispatcher that delivers the outbox.

Each transition or promotion leaves an outbox row in the transaction that
made it (ledger.events). The dispatcher, a thread of the daemon, hands every
due row to the hooks that ask for its event, and records which hooks have
it; one that fails is tried again after a capped exponential backoff with
jitter, until `give_up_after`. A row is marked delivered only after its
hooks answered, so a crash in between delivers it again: at least once,
normally once per event id (receivers dedupe on FTCTL_EVENT_ID, or on the
`webhook-id` header).

A command is exec'd without a shell, in the config file's folder, in a
clean environment built from an allow-list: its event (FTCTL_EVENT,
FTCTL_EVENT_ID, FTCTL_JOB_ID, FTCTL_AGENT, FTCTL_MODEL, FTCTL_REASON, ...),
PATH, HOME, LANG, LC_ALL, and the daemon's variables the hook's `env` names.
Never a key variable, never CREDENTIALS_DIRECTORY, never a value that holds
a registered key: a hook is a user's script. It must exit 0 within its
timeout, or its process group is killed and it is retried. A URL gets a JSON
POST with Standard Webhooks headers (signed when the hook names a secret)
and a `text` line, which is what a Slack incoming webhook shows; any 2xx
counts. Nothing here runs on the reconcile loop's thread: a hook that hangs
or fails never delays a tick.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import structlog

from ftctl.controller.config import Config, ConfigError
from ftctl.controller.service.settings import HookConfig
from ftctl.models import LockLost, OutboxEvent, Store, utcnow
from ftctl.providers.keys import SecretError, clip, holds_secret, redact, register_secret

# rows read per pass; webhook ids seen are kept this long (the outbox's
# settled rows: `[events] keep`)
BATCH = 50
KEEP_WEBHOOK_IDS = timedelta(days=7)

try:  # a hook dies with the daemon, even a SIGKILLed one (Linux)
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    if _prctl is not None:
        _prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class HookFailed(Exception):
    """One delivery failed (one line, masked)."""


# what a hook's command gets of the daemon's environment besides its event
# and what its `env` names
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL")


def _register_provider_keys(config: Config) -> None:
    """Every provider key that can be had is known to `redact` before any
    hook runs (a daemon just restarted delivers owed events before its first
    tick reads the keys); one that cannot be had is the tick's to report."""
    for name, provider in config.providers.items():
        if hasattr(provider, "api_key"):
            with contextlib.suppress(Exception):  # registered as it is read, even when refused
                provider.api_key(name)


def url_tokens(url: str) -> list[str]:
    """The parts of a hook's URL that are secrets (Slack's
    /services/T0123ABCD/B0123ABCD/<token>): path segments and query values
    that look like tokens. A word like `services` is not one: masked, every
    6 characters of it would go from every log line."""
    parts = urlsplit(url)
    pieces = parts.path.split("/") + [v for _, _, v in (q.partition("=") for q in parts.query.split("&"))]
    return [p for p in pieces if len(p) >= 20 or (len(p) >= 8 and not p.replace("-", "").replace("_", "").isalpha())]


def hook_secrets(config: Config) -> dict[str, str]:
    """The signing secret of every URL hook that names one, by hook key;
    ConfigError (one line naming the key) when one cannot be had."""
    _register_provider_keys(config)
    out = {}
    for i, hook in enumerate(config.hooks):
        if hook.url is not None:
            for token in url_tokens(hook.url):  # a Slack incoming-webhook URL is a secret itself
                register_secret(token)
        if hook.has_secret:
            try:
                out[hook.key] = hook.secret(f"hooks[{i}]")
            except SecretError as exc:
                raise ConfigError(f"{config.path}: {exc}") from None
    return out


def text_line(p: dict[str, Any]) -> str:
    """One readable line about an event (Slack shows it)."""
    head = f"ftctl: job {p['job_id']} ({p['agent']} on {p['provider']})"
    if p["event"] == "promoted":
        return f"{head}: {p['fine_tuned_model']} is now {p['agent']}'s model"
    line = f"{head} {p['event']}"
    if p["event"] == "succeeded" and p.get("fine_tuned_model"):
        return f"{line}: {p['fine_tuned_model']}"
    detail = p.get("error") or p.get("reason")
    return f"{line}: {detail}" if detail else line


def environment(p: dict[str, Any], names: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """A hook command's whole environment: PATH, HOME, LANG, LC_ALL and the
    variables `names` (the hook's `env`) where the daemon has them and they
    hold no registered secret, then the event. Nothing else of the daemon's."""
    env = {}
    for name in (*BASE_ENV, *names):
        value = os.environ.get(name)
        if value is not None and name != "CREDENTIALS_DIRECTORY" and not holds_secret(value):
            env[name] = value
    env.setdefault("PATH", os.defpath)
    env.update({
        "FTCTL_EVENT": p["event"], "FTCTL_EVENT_ID": p["id"], "FTCTL_JOB_ID": str(p["job_id"]),
        "FTCTL_AGENT": p["agent"], "FTCTL_PROVIDER": p["provider"], "FTCTL_MODEL": p.get("fine_tuned_model") or "",
        "FTCTL_BASE_MODEL": p["model"], "FTCTL_STATE": p["to"], "FTCTL_REASON": p.get("error") or p.get("reason") or "",
        "FTCTL_EVENT_AT": p["at"] or "", "FTCTL_EVENT_JSON": json.dumps(p, sort_keys=True),
    })
    return env


def body(p: dict[str, Any]) -> bytes:
    kind = "ftctl.model.promoted" if p["event"] == "promoted" else f"ftctl.job.{p['event']}"
    return json.dumps({"type": kind, "timestamp": p["at"], "data": p, "text": text_line(p)}).encode()


class Runner:
    """Runs one hook for one event; `stop()` kills a command in flight."""

    def __init__(self, cwd: str | None = None):
        self.cwd = cwd
        self._child: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def deliver(self, hook: HookConfig, p: dict[str, Any], secret: str | None) -> None:
        if hook.command is not None:
            self._command(hook, p)
        else:
            self._post(hook, p, secret)

    def _command(self, hook: HookConfig, p: dict[str, Any]) -> None:
        with tempfile.TemporaryFile() as out:
            try:
                child = subprocess.Popen(hook.command, env=environment(p, hook.env), cwd=self.cwd,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, process_group=0,
                                         preexec_fn=_die_with_parent)
            except OSError as exc:
                raise HookFailed(f"cannot run {hook.command[0]}: {exc.strerror or exc.__class__.__name__}") from None
            with self._lock:
                self._child = child
            try:
                code = child.wait(timeout=hook.timeout)
            except subprocess.TimeoutExpired:
                self._kill(child)
                raise HookFailed(f"timed out after {hook.timeout:g}s; killed") from None
            finally:
                with self._lock:
                    self._child = None
            if code != 0:
                out.seek(max(0, out.seek(0, os.SEEK_END) - 400))
                tail = " ".join(out.read().decode("utf-8", "replace").split())
                how = f"killed by signal {-code}" if code < 0 else f"exited {code}"
                raise HookFailed(clip(f"{how}: {tail}" if tail else how, 300))

    @staticmethod
    def _kill(child: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)

    def _post(self, hook: HookConfig, p: dict[str, Any], secret: str | None) -> None:
        import httpx

        from ftctl import __version__
        from ftctl.providers.signing import headers

        data = body(p)
        head = {"content-type": "application/json", "user-agent": f"ftctl/{__version__}",
                **headers(p["id"], data, secret)}
        try:
            reply = httpx.post(hook.url, content=data, headers=head, timeout=hook.timeout, follow_redirects=False)
        except httpx.TimeoutException:
            raise HookFailed(f"timed out after {hook.timeout:g}s") from None
        except httpx.HTTPError as exc:
            raise HookFailed(clip(f"{exc.__class__.__name__}: {exc}", 200)) from None
        if not 200 <= reply.status_code < 300:
            raise HookFailed(clip(f"HTTP {reply.status_code}: {' '.join(reply.text.split())}", 200))

    def stop(self) -> None:
        with self._lock:
            child = self._child
        if child is not None:
            self._kill(child)


class Dispatcher:
    """The outbox's delivery thread."""

    def __init__(self, store: Store, config: Config, secrets: dict[str, str], *,
                 guard: Callable[[], None] = lambda: None, on_lock_lost: Callable[[Exception], None] | None = None,
                 clock: Callable[[], datetime] = utcnow, rng: random.Random | None = None, logger: Any = None):
        self.store = store
        self.guard = guard
        self.on_lock_lost = on_lock_lost
        self.clock = clock
        self.rng = rng or random.Random()
        self.log = logger or structlog.get_logger("ftctl")
        self.runner = Runner()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned: datetime | None = None
        self.update(config, secrets)

    def update(self, config: Config, secrets: dict[str, str]) -> None:
        """New hooks (a reload); deliveries already made stay made."""
        self.hooks, self.secrets = tuple(config.hooks), dict(secrets)
        self.keep = timedelta(seconds=config.events.keep)
        self.runner.cwd = str(config.base_dir)

    @property
    def names(self) -> set[str]:
        """The events some hook asks for (what `status` counts as owed)."""
        from ftctl.controller.ledger.states import EVENTS

        return {e for e in EVENTS if any(h.wants(e) for h in self.hooks)}

    # -- the thread -----------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hooks", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._kick.set()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        self.runner.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            wait = 5.0
            try:
                if self.run_once() >= BATCH:
                    continue
                due = self.store.next_outbox_at()
                if due is not None:
                    wait = min(wait, max(0.05, (due - self.clock()).total_seconds()))
            except LockLost as exc:
                if self.on_lock_lost is not None:
                    self.on_lock_lost(exc)
                return
            except Exception as exc:  # noqa: BLE001 - the database hiccuped: try again soon
                self.log.error("hook delivery pass failed", error=redact(f"{exc.__class__.__name__}: {exc}"))
                wait = 1.0
            self._kick.wait(wait)
            self._kick.clear()

    # -- one pass -------------------------------------------------------------------------

    def run_once(self) -> int:
        """Deliver what is due; returns how many rows were looked at."""
        now = self.clock()
        rows = self.store.due_outbox(now, BATCH)
        hooks = self.hooks
        unwanted = [r.id for r in rows if not any(h.wants(r.name) for h in hooks)]
        self.store.outbox_settle(unwanted, now)
        for row in rows:
            if self._stop.is_set():
                break
            if row.id not in unwanted:
                self._deliver(row, [h for h in hooks if h.wants(row.name)])
        if self._pruned is None or now - self._pruned > timedelta(hours=1):
            self._pruned = now
            self.store.prune_outbox(now - self.keep)
            self.store.prune_webhooks(now - KEEP_WEBHOOK_IDS)
        return len(rows)

    def _deliver(self, row: OutboxEvent, hooks: list[HookConfig]) -> None:
        p = row.payload
        about = dict(job_id=p["job_id"], agent=p["agent"], provider=p["provider"], state=p["to"],
                     hook_event=row.name, event_id=row.event_id)
        done, failed, errors = list(row.done or []), [], []
        for hook in hooks:
            if hook.key in done:
                continue
            self.guard()  # LockLost: another process may own the outbox now
            try:
                self.runner.deliver(hook, p, self.secrets.get(hook.key))
            except HookFailed as exc:
                if self._stop.is_set():
                    return  # killed on the way out: the next daemon delivers it
                failed.append(hook)
                errors.append(f"{hook.label}: {exc}")
                self.log.warning("hook failed", hook=hook.label, attempt=row.attempts + 1, error=str(exc), **about)
                continue
            done.append(hook.key)
            self.log.info("hook delivered", hook=hook.label, **about)
        now = self.clock()
        if not failed:
            self.store.outbox_progress(row.id, done=done, now=now, delivered=True)
            return
        error = clip("; ".join(errors), 300)
        if all(now - row.created_at >= timedelta(seconds=h.give_up_after) for h in failed):
            self.log.error("hook delivery given up", attempts=row.attempts + 1, error=error, **about)
            self.store.outbox_progress(row.id, done=done, now=now, delivered=False, gave_up=True, error=error)
            return
        delay = min(min(h.backoff_max, h.backoff_initial * 2 ** min(row.attempts, 30)) for h in failed)
        delay *= self.rng.uniform(0.5, 1.0)
        self.store.outbox_progress(row.id, done=done, now=now, delivered=False, error=error,
                                   next_at=now + timedelta(seconds=delay))
