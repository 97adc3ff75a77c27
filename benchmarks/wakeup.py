"""Submit -> create call at the provider, with poll_interval = "5m".

A real daemon process against the Mistral emulator (real SDK, real HTTP),
on SQLite and on PostgreSQL. Jobs are submitted one at a time, a few
hundred ms apart, through the Python API the CLI is built on (so the same
wake-up a `ftctl submit` sends). The latency of one job runs from the
moment it was stored (its created_at, taken before the commit) to the
moment the emulator made it (the create call's arrival). Without the
wake-up it would be up to 5 minutes.

    .venv/bin/python benchmarks/wakeup.py [--n 40] [--db sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import FAKE_KEY, KEY_ENV, DaemonProcess, env, summary, temp_postgres, training_file  # noqa: E402


def run(database: str | None, n: int, work: Path) -> list[float]:
    import ftctl
    from ftctl.providers.emulator import make_emulator
    from ftctl.providers.simulated.engine import EngineSettings

    settings = EngineSettings(limit=10_000, queue_time=3600, validate_time=3600, train_time=3600)
    server = make_emulator("mistral", work / "emulator.db", settings, api_key=FAKE_KEY).serve()
    data = training_file(work)
    db = database or f"sqlite:///{work / 'ftctl.db'}"
    config = work / "controller.toml"
    config.write_text(f"""
[controller]
database = "{db}"
poll_interval = "5m"

[providers.mistral]
kind = "mistral"
concurrency = 1000
base_url = "{server.url}"
api_key_env = "{KEY_ENV}"

[agents.bench]
provider = "mistral"
model = "open-mistral-7b"
training_file = "{data}"
hyperparameters = {{ training_steps = 10 }}
""")
    daemon = DaemonProcess(config, env())
    rng = random.Random(0)
    try:
        daemon.wait_for("daemon started")
        time.sleep(1.0)  # past the first tick
        import os

        os.environ[KEY_ENV] = FAKE_KEY
        with ftctl.open(config) as ft:
            for _ in range(n):
                ft.submit(["bench"], force=True)
                time.sleep(rng.uniform(0.2, 0.5))
            end = time.monotonic() + 60
            while len(server.emulator.engine.all_jobs()) < n and time.monotonic() < end:
                time.sleep(0.05)
            stored = {j.client_token: j.created_at.replace(tzinfo=timezone.utc).timestamp()
                      for j in ft.jobs() if j.client_token}
    finally:
        daemon.stop()
    made = {j["suffix"]: j["created_at"] for j in server.emulator.engine.all_jobs()}
    server.stop()
    missing = n - len(made)
    if missing:
        raise SystemExit(f"{missing} of {n} jobs were not created within a minute")
    return [made[token] - stored[token] for token in made]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="jobs submitted per database")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    print(f'submit -> create call at the provider, poll_interval = "5m", {args.n} jobs each')
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as d:
            print(summary("  SQLite     (unix datagram wake-up)", run(None, args.n, Path(d))))
    if args.db in ("postgres", "both"):
        with tempfile.TemporaryDirectory() as d, temp_postgres() as url:
            print(summary("  PostgreSQL (LISTEN/NOTIFY wake-up) ", run(url, args.n, Path(d))))


if __name__ == "__main__":
    main()
