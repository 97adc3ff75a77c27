"""`ftctl doctor`: what is wrong with this installation, one line each.

It never prints a key: for credentials it says where a key was found, and
for providers it makes one harmless listing call.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ftctl.controller.config import Config, ConfigError, find_config, load_config
from ftctl.providers.base import ProviderError
from ftctl.providers.keys import redact
from ftctl.providers.kind import RemoteSection

UNIT_PATHS = (Path("/etc/systemd/system/ftctl.service"), Path("/lib/systemd/system/ftctl.service"),
              Path("/usr/lib/systemd/system/ftctl.service"))


@dataclass
class Check:
    level: str  # ok, warn, fail
    name: str
    detail: str


def _config(explicit: str | None) -> tuple[Config | None, Check]:
    try:
        path = find_config(explicit)
        config = load_config(path)
    except ConfigError as exc:
        return None, Check("fail", "config", str(exc))
    return config, Check("ok", "config", f"{path} ({len(config.providers)} providers, {len(config.agents)} agents)")


def _database(config: Config) -> Check:
    from ftctl.models import Store, StoreError

    url = config.database_url
    if config.sqlite_file is not None and not config.sqlite_file.exists():
        return Check("warn", "database", f"{config.sqlite_file} does not exist yet (the first submit creates it)")
    try:
        store = Store(url, create=False)
    except StoreError as exc:
        return Check("fail", "database", str(exc))
    try:
        counts = store.count_by_state()
        where = str(store.sqlite_path) if store.sqlite_path else url.split("@")[-1]
        return Check("ok", "database", f"{where}: schema current, {sum(counts.values())} jobs")
    finally:
        store.close()


def _credentials(config: Config) -> list[Check]:
    out = []
    for name, conf in sorted(config.providers.items()):
        if not isinstance(conf, RemoteSection):
            continue
        try:
            conf.api_key(name)
        except ProviderError as exc:
            out.append(Check("fail", f"key {name}", exc.message))
            continue
        out.append(Check("ok", f"key {name}", f"present ({conf.key_source()}); not shown"))
    return out


def _providers(config: Config) -> list[Check]:
    from ftctl.providers import build_provider
    from ftctl.providers.base import ProviderError

    out = []
    for name, conf in sorted(config.providers.items()):
        try:
            provider = build_provider(name, conf, config.provider_env())
        except ProviderError as exc:
            out.append(Check("fail", f"provider {name}", redact(exc.message)))
            continue
        try:
            jobs = provider.list_jobs()
            active = sum(1 for j in jobs if j.active)
            where = (conf.base_url or "default") if isinstance(conf, RemoteSection) else "local state file"
            out.append(Check("ok", f"provider {name}", f"{conf.kind} at {where}: reachable, "
                                                         f"{active} active job(s) on the key"))
        except ProviderError as exc:
            out.append(Check("fail", f"provider {name}", f"{exc.kind} error: {redact(exc.message)}"))
        finally:
            provider.close()
    return out


def _quotes(config: Config) -> Check | None:
    """Quote jobs (auto_start=False) whose cancel the provider has not confirmed."""
    from ftctl.models import Store, StoreError

    if config.sqlite_file is not None and not config.sqlite_file.exists():
        return None
    try:
        store = Store(config.database_url, create=False)
    except StoreError:
        return None
    try:
        pending = store.pending_quotes()
    finally:
        store.close()
    if not pending:
        return Check("ok", "quote jobs", "none left at the providers")
    listed = "; ".join(f"{name}: {', '.join(ids)}" for name, ids in sorted(pending.items()))
    count = sum(len(ids) for ids in pending.values())
    return Check("warn", "quote jobs", f"{count} not yet confirmed cancelled ({listed}); the daemon cancels them "
                                       f"and never counts them as slots")


def _webhooks(config: Config) -> Check | None:
    conf = config.webhooks
    if not conf.listen:
        return None
    from ftctl.providers.keys import SecretError
    from ftctl.providers.registry import KINDS

    try:
        conf.secret("webhooks")
    except SecretError as exc:
        return Check("fail", "webhooks", str(exc))
    names = sorted(n for n, p in config.providers.items() if KINDS[p.kind].webhooks)
    where = ", ".join(f"/webhooks/{n}" for n in names) or "no provider here sends webhooks"
    return Check("ok", "webhooks", f"{conf.listen}: {where}; secret present ({conf.secret_source()}); not shown")


def _hooks(config: Config) -> list[Check]:
    import os

    from ftctl.providers.keys import SecretError

    out = []
    for i, hook in enumerate(config.hooks):
        name = f"hook {hook.label}"
        if hook.command is not None:
            program = hook.command[0]
            path = config.resolve(program) if "/" in program else shutil.which(program)
            if path is None or not os.access(path, os.X_OK) or os.path.isdir(path):
                out.append(Check("fail", name, f"hooks[{i}].command: {program} is not an executable file here"))
                continue
            out.append(Check("ok", name, f"runs {path} on {', '.join(hook.on)} (timeout {hook.timeout:g}s)"))
            continue
        try:
            signed = f"signed ({hook.secret_source()}; not shown)" if hook.has_secret else "unsigned"
            if hook.has_secret:
                hook.secret(f"hooks[{i}]")
        except SecretError as exc:
            out.append(Check("fail", name, str(exc)))
            continue
        out.append(Check("ok", name, f"POST to {hook.label} on {', '.join(hook.on)}, {signed}"))
    return out


def _outbox(config: Config) -> Check | None:
    """Events owed to the hooks."""
    import ftctl

    if not config.hooks or (config.sqlite_file is not None and not config.sqlite_file.exists()):
        return None
    try:
        ft = ftctl.Ftctl(config)
        try:
            owed = ft.undelivered()
        finally:
            ft.close()
    except ftctl.FtctlError:
        return None
    if not owed["pending"] and not owed["gave_up"]:
        return Check("ok", "events", "every event the hooks asked for was delivered")
    from ftctl.models import utcnow
    from ftctl.controller.records import undelivered_text

    return Check("warn", "events", undelivered_text(owed, utcnow()).removeprefix("hooks: "))


def _unit() -> Check:
    installed = next((p for p in UNIT_PATHS if p.exists()), None)
    if installed is None:
        return Check("warn", "systemd unit", "not installed (ftctl service-unit > /etc/systemd/system/ftctl.service)")
    detail = f"installed at {installed}"
    if shutil.which("systemctl"):
        try:
            state = subprocess.run(["systemctl", "is-active", "ftctl"], capture_output=True, text=True,
                                   timeout=5).stdout.strip()
            detail += f", {state or 'unknown'}"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return Check("ok", "systemd unit", detail)


def _gates(config: Config) -> list[Check]:
    """Each [agents.NAME.eval] file readable and well formed, before a job's
    model needs it."""
    from ftctl.controller.ledger.eval_files import EvalFileError, load_eval_file, load_safety_file

    out = []
    for name, agent in sorted(config.agents.items()):
        if agent.evaluation is None:
            continue
        try:
            _, examples = load_eval_file(config.resolve(agent.evaluation.file))
            if agent.evaluation.safety_file:
                load_safety_file(config.resolve(agent.evaluation.safety_file))
        except EvalFileError as exc:
            out.append(Check("fail", f"eval {name}", str(exc)))
            continue
        out.append(Check("ok", f"eval {name}", f"{len(examples)} examples, {agent.evaluation.metric}, at least "
                                               f"{agent.evaluation.min_improvement:+g} over "
                                               f"{agent.evaluation.compare_to}"))
    return out
def _endings(config: Config) -> list[Check]:
    """What is known about the end of each configured provider's fine-tuning
    and its base models in use (providers.lifecycle): a warning when it ends
    within 30 days or ended, or is deprecated without a date."""
    from datetime import timedelta

    from ftctl.controller.ledger.closing import WARN_DAYS, endings, today

    on = today()
    out = []
    for e in endings(config):
        soon = e.closes_on is None or e.closes_on <= on + timedelta(days=WARN_DAYS)
        name = f"end {e.provider}" + (f" {e.model}" if e.model else "")
        out.append(Check("warn" if soon and (e.agents or e.closes_on is None) else "ok", name, e.line(on)))
    return out


def _unit_paths(config: Config) -> Check:
    """What the unit's sandbox would hide from the service (ProtectHome=, PrivateTmp=)."""
    from ftctl.controller.service.unit import hidden_paths, installed_paths

    problems = hidden_paths(installed_paths(Path(config.path or "controller.toml").resolve()))
    if problems:
        return Check("warn", "unit paths", "; ".join(problems))
    return Check("ok", "unit paths", "the executable, the interpreter, ftctl's code and the config are visible "
                                     "to the hardened unit")


def run_checks(explicit_config: str | None) -> list[Check]:
    config, check = _config(explicit_config)
    results = [check]
    if config is None:
        return results
    results.append(_database(config))
    results.extend(_credentials(config))
    results.extend(_providers(config))
    results.extend(_gates(config))
    results.extend(_endings(config))
    quotes = _quotes(config)
    if quotes is not None:
        results.append(quotes)
    results.extend(c for c in (_webhooks(config), *_hooks(config), _outbox(config)) if c is not None)
    results.append(_unit())
    results.append(_unit_paths(config))
    return results
