"""One broken provider must not stop the others: a `kind = "openai"`
provider whose SDK is missing (the Quickstart's `pip install .` has none)
pauses alone, with the install command in its reason, while a job on the
simulated provider finishes; no traceback anywhere."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.conftest import FAKE_KEY, KEY_ENV, Daemon, ftctl_env, run_ftctl, run_ftctl_many, write_config

pytestmark = pytest.mark.slow

OPENAI = f"""
[providers.openai]
kind = "openai"
concurrency = 2
api_key_env = "{KEY_ENV}"

[agents.triage]
provider = "openai"
model = "gpt-4o-mini-2024-07-18"
training_file = "data/qa.jsonl"
hyperparameters = {{ epochs = 2 }}
"""


def test_a_provider_without_its_sdk_pauses_alone(tmp_path):
    cfg = write_config(tmp_path / "site", agents=("qa",), queue_time="0.2s", validate_time="0.2s",
                       train_time="0.5s", poll="0.2s", extra=OPENAI)
    blocker = tmp_path / "no-openai"
    blocker.mkdir()
    # the SDK is installed here: make its import fail, as where it is not
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['openai'] = None\n")
    env = ftctl_env(**{KEY_ENV: FAKE_KEY, "PYTHONPATH": str(blocker)})
    assert run_ftctl("submit", "--all", config=cfg, env=env).returncode == 0  # preflight needs no SDK
    daemon = Daemon(cfg, env=env)
    try:
        end = time.monotonic() + 40
        jobs = {}
        while time.monotonic() < end:
            jobs = {j["agent"]: j for j in json.loads(run_ftctl("status", "--json", config=cfg, env=env).stdout)}
            if jobs.get("qa", {}).get("state") == "succeeded" and jobs["triage"]["reason_code"] == "paused":
                break
            time.sleep(0.3)
        assert jobs["qa"]["state"] == "succeeded", jobs
        hint = "the openai SDK is not installed (pip install '.[openai]' from a checkout)"
        assert jobs["triage"]["state"] == "prepared"
        assert jobs["triage"]["reason"] == f"provider unavailable: providers.openai: {hint}"
    finally:
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
    outputs = run_ftctl_many(["status"], ["doctor"], ["tick"], config=cfg, env=env)
    status, doctor, tick = outputs
    assert hint in status.stdout
    assert doctor.returncode == 1 and hint in doctor.stdout
    assert "OK" in doctor.stdout and "provider sim" in doctor.stdout  # the other provider checks out
    assert tick.returncode == 0
    for p in outputs:
        assert "Traceback" not in p.stdout + p.stderr
    assert "Traceback" not in daemon.stderr
