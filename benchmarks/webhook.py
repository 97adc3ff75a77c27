"""A signed webhook delivered by the emulator -> `succeeded` in the database.

A real daemon process with poll_interval = "5m" and [webhooks] listening,
against the OpenAI emulator (real SDK, real HTTP), which POSTs a signed
fine_tuning.job.succeeded when a job finishes. Jobs are submitted a few
hundred ms apart and train for a second. For each job: from the moment the
emulator sent its webhook to the moment this script, reading the database
every 10 ms, first saw the job `succeeded`. Also shown: from the moment the
job succeeded at the provider (the emulator notices within its 50 ms scan).
Without the webhook it would be up to 5 minutes.

    .venv/bin/python benchmarks/webhook.py [--n 30] [--db sqlite|postgres]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import FAKE_KEY, KEY_ENV, DaemonProcess, env, summary, temp_postgres, training_file  # noqa: E402


def run(database: str | None, n: int, work: Path) -> tuple[list[float], list[float]]:
    import ftctl
    from ftctl.providers.emulator import make_emulator
    from ftctl.providers.signing import new_secret
    from ftctl.providers.simulated.engine import EngineSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = new_secret()
    settings = EngineSettings(limit=10_000, queue_time=0.1, validate_time=0.1, train_time=1.0)
    emulator = make_emulator("openai", work / "emulator.db", settings, api_key=FAKE_KEY,
                             webhook_url=f"http://127.0.0.1:{port}/webhooks/openai", webhook_secret=secret)
    server = emulator.serve()
    data = training_file(work)
    db = database or f"sqlite:///{work / 'ftctl.db'}"
    config = work / "controller.toml"
    config.write_text(f"""
[controller]
database = "{db}"
poll_interval = "5m"

[webhooks]
listen = "127.0.0.1:{port}"
secret_env = "BENCH_WEBHOOK_SECRET"

[logs]
enabled = false

[providers.openai]
kind = "openai"
concurrency = 1000
base_url = "{server.url}/v1"
api_key_env = "{KEY_ENV}"

[agents.bench]
provider = "openai"
model = "gpt-4o-mini-2024-07-18"
training_file = "{data}"
hyperparameters = {{ epochs = 1 }}
""")
    daemon = DaemonProcess(config, env(BENCH_WEBHOOK_SECRET=secret))
    seen: dict[str, float] = {}
    try:
        daemon.wait_for("daemon started")
        time.sleep(1.0)
        os.environ[KEY_ENV] = FAKE_KEY
        with ftctl.open(config) as ft:
            submitted = 0
            next_submit = time.monotonic()
            end = time.monotonic() + 120
            while time.monotonic() < end:
                if submitted < n and time.monotonic() >= next_submit:
                    ft.submit(["bench"], force=True)
                    submitted += 1
                    next_submit = time.monotonic() + 0.3
                for job in ft.jobs():
                    if job.state == "succeeded" and job.provider_job_id not in seen:
                        seen[job.provider_job_id] = time.time()
                if len(seen) == n:
                    break
                time.sleep(0.01)
    finally:
        daemon.stop()
        server.stop()
    if len(seen) < n:
        raise SystemExit(f"only {len(seen)} of {n} jobs succeeded within 2 minutes")
    sent = {}
    for delivery in emulator.webhooks.sent:
        if delivery["status"] == 200:
            sent.setdefault(delivery["job_id"], delivery["sent_at"])
    finished = {j["id"]: j["modified_at"] for j in emulator.engine.all_jobs()}
    return [seen[i] - sent[i] for i in seen], [seen[i] - finished[i] for i in seen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="jobs")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    print(f'signed webhook -> succeeded in the database, poll_interval = "5m", {args.n} jobs, {args.db}')
    with tempfile.TemporaryDirectory() as d, (temp_postgres() if args.db == "postgres" else nullcontext()) as url:
        from_webhook, from_success = run(url, args.n, Path(d))
    print(summary("  webhook sent -> succeeded         ", from_webhook))
    print(summary("  success at provider -> succeeded  ", from_success))


if __name__ == "__main__":
    main()
