"""The `ray` provider against a real local Ray head, with ftctl's real
trainer on a tiny model built from a config (nothing is downloaded): the
daemon SIGKILLed mid-campaign, a trainer killed mid-run that resumes from
its checkpoint, permanent failures with the trainer's message, cancel, the
head unreachable, and the gate on both sides."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

import ftctl
from tests.conftest import Daemon, run_ftctl, states, submit_jobs, wait_until
from ftctl.providers.trainer.protocol import parse as protocol_lines
from tests.providers.ray_support import Proxy, ray_config, ray_head, ray_jobs, tiny_base  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

def rows(config: Path) -> dict[str, dict]:
    db = sqlite3.connect(config.parent / "ftctl.db")
    db.row_factory = sqlite3.Row
    try:
        return {r["agent"]: dict(r) for r in db.execute("select * from jobs")}
    finally:
        db.close()


def line_where(daemon: Daemon, pred, timeout: float = 120.0) -> dict | None:
    return wait_until(lambda: next((ln for ln in list(daemon.lines) if pred(ln)), None), timeout=timeout)


def train_jobs(address: str) -> list:
    return [j for j in ray_jobs(address) if (j.metadata or {}).get("ftctl_kind") == "train"]


def test_campaign_with_daemon_kills_one_ray_job_per_job_and_the_gate_on_both_sides(tmp_path, ray_head, tiny_base):
    """The Ray demo's three agents (a gated full fine-tune that is promoted,
    a gated LoRA run that is rejected, a pipeline stage on the first), run
    by a daemon SIGKILLed at up to three moments (the third at the gate,
    unless a busy machine's slow start-ups let the second daemon finish the
    gates first); then `ftctl demo --provider ray`
    on the same folder finds every job done and trains nothing again."""
    from ftctl.controller.demo.ray_demo import write_ray_demo

    site = tmp_path / "site"
    site.mkdir()
    config = write_ray_demo(site, ray_head.address, base=tiny_base)
    before = len(train_jobs(ray_head.address))
    submit_jobs(config)
    rng = random.Random(19)
    kills = []

    def unfinished(found: dict) -> bool:  # some job, or some gate, is not finished yet
        return any(st != "succeeded" or pr in ("candidate", "evaluating") for st, pr in found.values())

    # each kill follows a readiness signal of the campaign, a random moment after it
    for signal_of in (lambda ln: ln.get("event") == "created at provider",
                      lambda ln: ln.get("event") == "transition" and ln.get("state") == "running",
                      # the gate: a batch started or a verdict; or, where a busy machine's slow start-ups let
                      # the last daemon finish the gates, the pipeline stage's own success
                      lambda ln: ln.get("event") in ("evaluation batch started", "promotion") or (
                          ln.get("event") == "transition" and ln.get("agent") == "conversation"
                          and ln.get("state") == "succeeded")):
        if not unfinished({a: (j["state"], j["promotion"]) for a, j in rows(config).items()}):
            break  # the campaign ran out before this kill: nothing left to land in
        d = Daemon(config)
        seen = line_where(d, signal_of, timeout=180)
        assert seen, d.stderr[-3000:]
        time.sleep(rng.uniform(0.0, 0.4))
        d.kill()
        kills.append(({a: (j["state"], j["promotion"]) for a, j in rows(config).items()}, seen["event"]))
    # every kill landed mid-campaign, the one at the gate too; only one that followed the campaign's
    # last success (the gates already done) may find nothing left
    assert len(kills) >= 2 and all(unfinished(k) for k, event in kills if event != "transition"), kills
    assert unfinished(kills[0][0]) and unfinished(kills[1][0]), kills
    final = Daemon(config, "--until-done")
    assert final.wait(timeout=300) == 0, final.stderr[-3000:]
    jobs = rows(config)
    assert {a: j["state"] for a, j in jobs.items()} == dict.fromkeys(("qa", "legal", "conversation"), "succeeded")
    assert jobs["qa"]["promotion"] == "promoted" and jobs["legal"]["promotion"] == "rejected"
    assert jobs["conversation"]["promotion"] == "promoted"  # no gate of its own
    # exactly one Ray job per attempt of each ftctl job, whatever moment the daemon died
    per_job = Counter(j.metadata["ftctl_job_id"] for j in train_jobs(ray_head.address) if str(site) in j.entrypoint)
    assert per_job == {str(j["id"]): j["attempt"] for j in jobs.values()}, per_job
    assert all(j["attempt"] == 1 for j in jobs.values())
    # the artifacts: a manifest that matches each job; a pipeline stage trained on its upstream's model
    for agent, job in jobs.items():
        manifest = json.loads((Path(job["fine_tuned_model"]) / "manifest.json").read_text())
        assert (manifest["job_id"], manifest["agent"], manifest["token"]) == (job["id"], agent, job["provider_job_id"])
        assert manifest["steps"] == json.loads(job["hyperparameters"])["training_steps"]
    conv = json.loads((Path(jobs["conversation"]["fine_tuned_model"]) / "manifest.json").read_text())
    assert conv["base_model"] == jobs["qa"]["fine_tuned_model"] and conv["root_model"] == str(tiny_base)
    # the log shows the loss falling, step by step
    with ftctl.open(config) as ft:
        losses = [p["metrics"]["train_loss"] for p in ft.logs(jobs["qa"]["id"])["points"] if p["kind"] == "metric"]
    assert len(losses) == 60 and losses[-1] < losses[0] / 5, losses
    out = run_ftctl("show", str(jobs["qa"]["id"]), config=config)
    assert "promoted: improvement +1.00" in out.stdout, out.stdout
    # the demo on this folder: the same jobs are twins of the succeeded ones, nothing is trained again
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "ftctl", "demo", "--provider", "ray", "--address", ray_head.address,
                        "--dir", str(site)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    assert "3/3 agents succeeded on Ray" in p.stdout and "gate: promoted: improvement +1.00" in p.stdout
    assert "gate: rejected: improvement +0.00" in p.stdout and "pipeline: conversation trained on" in p.stdout
    assert len(train_jobs(ray_head.address)) == before + 3
    down = subprocess.run([sys.executable, "-m", "ftctl", "demo", "--provider", "ray", "--address",
                           "http://127.0.0.1:9", "--dir", str(tmp_path / "other")], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert down.returncode == 2 and "no Ray dashboard answers there" in down.stderr, down


def _trainer_pids(token: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ftctl.providers.trainer" in cmd and any(token.encode() in part for part in cmd):
            found.append(int(pid))
    return found


def test_a_trainer_killed_mid_run_is_retried_and_resumes_from_its_checkpoint(tmp_path, ray_head, tiny_base):
    config = ray_config(tmp_path / "site", ray_head.address, tiny_base, """
        [agents.qa]
        provider = "gpu"
        model = "BASE"
        training_file = "data/qa.jsonl"
        hyperparameters = { training_steps = 80, checkpoint_steps = 10, learning_rate = 0.001, batch_size = 5 }
        """)
    submit_jobs(config)
    d = Daemon(config, "--until-done")
    checkpoints = config.parent / "artifacts" / "qa" / "job-1" / "checkpoints"
    try:
        # the kill follows the trainer's first complete checkpoint (its marker is written last)
        assert wait_until(lambda: list(checkpoints.glob("checkpoint-*/ftctl-complete")), timeout=240,
                          step=0.005), d.stderr[-2000:]
        token = rows(config)["qa"]["client_token"]
        pids = _trainer_pids(token)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert d.wait(timeout=300) == 0, d.stderr[-3000:]
    finally:
        d.kill()
    job = rows(config)["qa"]
    assert job["state"] == "succeeded" and job["attempt"] == 2, job
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(ray_head.address)
    mine = [j for j in train_jobs(ray_head.address) if str(config.parent) in j.entrypoint]
    first, second = sorted(mine, key=lambda j: j.start_time)
    assert first.submission_id == token and first.status.value == "FAILED"
    logs = protocol_lines(client.get_job_logs(second.submission_id))
    steps_before = [ln["step"] for ln in protocol_lines(client.get_job_logs(token)) if ln["kind"] == "metric"]
    resumed = next(ln for ln in logs if ln["kind"] == "event")
    assert resumed["message"].startswith("resumed from checkpoint-"), resumed
    k = resumed["step"]
    steps = [ln["step"] for ln in logs if ln["kind"] == "metric"]
    # killed mid-run: it had not finished; the retry goes on from the checkpoint, not from 0
    assert k >= 10 and max(steps_before) < 80 and steps[0] == k + 1 and steps[-1] == 80, (k, steps_before, steps)
    manifest = json.loads((Path(job["fine_tuned_model"]) / "manifest.json").read_text())
    assert manifest["steps"] == 80 and manifest["token"] == second.submission_id


def test_bad_data_and_an_unknown_base_fail_with_the_trainers_message_and_are_not_retried(tmp_path, ray_head,
                                                                                         tiny_base):
    config = ray_config(tmp_path / "site", ray_head.address, tiny_base, """
        [agents.qa]
        provider = "gpu"
        model = "BASE"
        training_file = "data/qa.jsonl"
        hyperparameters = { training_steps = 5 }

        [agents.legal]
        provider = "gpu"
        model = "/nonexistent/models/base-7b"
        training_file = "data/legal.jsonl"
        hyperparameters = { training_steps = 5 }
        """)
    # the copy on the cluster's shared folder is damaged: same size, not JSON
    from ftctl.controller.ledger.files import file_sha256

    data = config.parent / "data" / "qa.jsonl"
    copy = config.parent / "artifacts" / "files" / f"{file_sha256(data)}.jsonl"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"#" * data.stat().st_size)
    submit_jobs(config)
    d = Daemon(config, "--until-done")
    assert d.wait(timeout=240) == 0, d.stderr[-3000:]
    jobs = rows(config)
    assert jobs["qa"]["state"] == "failed" and jobs["qa"]["attempt"] == 1
    assert "line 1: invalid JSON" in jobs["qa"]["last_error"], jobs["qa"]["last_error"]
    assert jobs["legal"]["state"] == "failed" and jobs["legal"]["attempt"] == 1
    assert "base model '/nonexistent/models/base-7b'" in jobs["legal"]["last_error"]
    out = run_ftctl("status", config=config)
    assert "invalid JSON" in out.stdout and "/nonexistent/models/base-7b" in out.stdout


def test_cancel_stops_the_ray_job_and_an_unreachable_head_keeps_states(tmp_path, ray_head, tiny_base):
    proxy = Proxy(int(ray_head.address.rsplit(":", 1)[1]))
    config = ray_config(tmp_path / "site", f"http://127.0.0.1:{proxy.port}", tiny_base, """
        [agents.qa]
        provider = "gpu"
        model = "BASE"
        training_file = "data/qa.jsonl"
        hyperparameters = { training_steps = 400, checkpoint_steps = 100, learning_rate = 0.001, batch_size = 5 }

        [agents.legal]
        provider = "gpu"
        model = "BASE"
        training_file = "data/legal.jsonl"
        hyperparameters = { training_steps = 20, checkpoint_steps = 100, batch_size = 3 }
        """)
    submit_jobs(config)
    d = Daemon(config)
    try:
        assert wait_until(lambda: set(states(config)) == {"running"}, timeout=180), states(config)
        proxy.down()
        with ftctl.open(config) as ft:
            assert wait_until(lambda: all((j["reason"] or "").startswith("provider unreachable")
                                          for j in ft.status()), timeout=30), ft.status()
            assert states(config) == ["running", "running"]
            jobs = rows(config)
            # the cluster trains on while the controller cannot see it
            from ray.job_submission import JobSubmissionClient

            ray = JobSubmissionClient(ray_head.address)
            assert wait_until(lambda: ray.get_job_status(jobs["legal"]["provider_job_id"]).value == "SUCCEEDED",
                              timeout=120)
            assert states(config) == ["running", "running"]
            proxy.up()
            assert wait_until(lambda: rows(config)["legal"]["state"] == "succeeded", timeout=60)
            ft.cancel(jobs["qa"]["id"])
            assert wait_until(lambda: rows(config)["qa"]["state"] == "cancelled" and
                              not rows(config)["qa"]["cancel_pending"], timeout=60), rows(config)["qa"]
            # Ray's stop: SIGTERM to the trainer, which saves a checkpoint and ends
            assert wait_until(lambda: ray.get_job_status(jobs["qa"]["provider_job_id"]).value == "STOPPED",
                              timeout=60), ray.get_job_status(jobs["qa"]["provider_job_id"])
    finally:
        d.kill()
        proxy.down()


def test_a_job_no_node_can_run_is_refused_at_submit_in_one_line(tmp_path, ray_head, tiny_base):
    config = ray_config(tmp_path / "site", ray_head.address, tiny_base, """
        [agents.qa]
        provider = "gpu"
        model = "BASE"
        training_file = "data/qa.jsonl"
        hyperparameters = { training_steps = 5 }
        """)
    config.write_text(config.read_text().replace("gpus_per_job = 0", "gpus_per_job = 1"))
    out = run_ftctl("submit", "qa", config=config)
    assert out.returncode == 2, out
    line = out.stderr.strip()
    assert "\n" not in line and "a job needs 1 GPU and the largest node of the Ray cluster" in line, line
    assert "has 0 (providers.gpu.gpus_per_job)" in line
    assert not (config.parent / "ftctl.db").exists() or states(config) == []


def test_rehome_onto_ray_promotes_on_parity_with_the_model_it_replaces(tmp_path, ray_head, tiny_base):
    """A model promoted on a hosted provider (the simulated one) re-homed
    onto the cluster: the gate asks the candidate on Ray (a batch job) and the
    promoted model on its own provider (chat), and the export switches only
    once the new model is promoted."""
    config = ray_config(tmp_path / "site", ray_head.address, tiny_base, """
        [providers.sim]
        kind = "simulated"
        queue_time = "0.1s"
        validate_time = "0.1s"
        train_time = "0.3s"

        [export]
        path = "agents/models.toml"

        [agents.qa]
        provider = "sim"
        model = "open-mistral-7b"
        training_file = "data/qa.jsonl"
        hyperparameters = { training_steps = 60, learning_rate = 0.003 }

        [agents.qa.eval]
        file = "data/qa.jsonl"
        compare_to = "promoted"
        metric = "exact"
        min_improvement = -0.4
        max_tokens = 12
        """)
    submit_jobs(config)
    assert Daemon(config, "--until-done").wait(timeout=120) == 0
    export = config.parent / "agents" / "models.toml"
    old = rows(config)["qa"]["fine_tuned_model"]
    assert old.startswith("ft:") and old in export.read_text()
    # LoRA on a tiny random model memorises unreliably: full fine-tuning, set for the new provider
    out = run_ftctl("rehome", "qa", "--to", "gpu", "--model", str(tiny_base), "--hp", "lora=false", "--hp",
                    "batch_size=5", config=config)
    assert "set lora = False, batch_size = 5 (--hp)" in out.stdout, out.stdout
    assert out.returncode == 0, out.stderr
    d = Daemon(config, "--until-done")
    assert d.wait(timeout=240) == 0, d.stderr[-3000:]
    db = sqlite3.connect(config.parent / "ftctl.db")
    db.row_factory = sqlite3.Row
    new = dict(db.execute("select * from jobs where provider = 'gpu'").fetchone())
    db.close()
    assert new["state"] == "succeeded" and new["promotion"] == "promoted", (new["reason_code"], new["reason_args"])
    assert new["fine_tuned_model"] in export.read_text() and old not in export.read_text()
    shown = run_ftctl("show", str(new["id"]), config=config)
    assert "promoted: improvement" in shown.stdout and f"for {old}" in shown.stdout, (shown.stdout, shown.stderr)
