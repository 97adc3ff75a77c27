"""Together AI through its real SDK (together 3.x), over real HTTP, against the
Together emulator: the client, campaigns with capacity refusals and faults,
SFT and DPO preflight, quotes, error classes, the daemon killed mid-campaign,
and a missing SDK."""

import io
import json
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from ftctl.controller.cli import app
from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import SubmitError, plan_submissions, store_submissions
from ftctl.controller.service.logs import configure
from ftctl.models import Store
from ftctl.providers.base import CapacityError, JobSpec
from ftctl.providers.together import KIND, TogetherProvider
from tests.conftest import FAKE_KEY, KEY_ENV, ftctl_env, key_pieces, reason_of, start_emulator, write_remote_config, \
    write_training_file

MODEL = "mistralai/Mistral-7B-Instruct-v0.2"
CREATE = "POST /v1/fine-tunes"
LIST = "GET /v1/fine-tunes"
# the whole key, its escaped forms, and every 6-character piece of them
PIECES = key_pieces(FAKE_KEY)


def leaked(text) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return sorted(p for p in PIECES if p in text)


def cli(*args, config=None):
    """One ftctl command in this process: (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, (["--config", str(config)] if config else []) + [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def wait_until(pred, timeout=20.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise AssertionError("timed out")


def write_dpo(path: Path, broken_line: int | None = None) -> Path:
    with open(path, "w") as fh:
        for i in range(1, 5):
            record = {"input": {"messages": [{"role": "system", "content": "Answer kindly."},
                                             {"role": "user", "content": f"Question number {i}?"}]},
                      "preferred_output": [{"role": "assistant", "content": f"A kind answer {i}."}],
                      "non_preferred_output": [{"role": "assistant", "content": f"A rude answer {i}."}]}
            if i == broken_line:  # the same answer twice: no preference at all
                record["non_preferred_output"] = record["preferred_output"]
            fh.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)


@pytest.fixture
def emulator(tmp_path):
    # allows 2 jobs at once; a job takes about 0.35 s
    server = start_emulator("together", tmp_path, queue_time=0.05, validate_time=0.1, train_time=0.2)
    yield server
    server.stop()


@pytest.fixture
def log():
    stream = io.StringIO()
    configure("debug", stream=stream, json=True)
    yield stream
    configure("warning")


def tokens_at(server) -> Counter:
    return Counter(j["suffix"] for j in server.emulator.engine.all_jobs())


def run_ticks(rec, store, until=None, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = rec.tick()
        if (until or (lambda r: r.all_terminal))(result):
            return result
        time.sleep(0.05)
    raise AssertionError(f"not done: {Counter(j.state for j in store.list_jobs())}")


# -- the client ------------------------------------------------------------------------------


def test_the_client_through_the_real_sdk(emulator, tmp_path):
    from together.types import FinetuneModelLimits, FinetuneResponse
    from together.types.fine_tuning_estimate_price_response import AvailableEstimate
    from together.types.fine_tuning_list_checkpoints_response import FineTuningListCheckpointsResponse
    from together.types.fine_tuning_list_events_response import FineTuningListEventsResponse
    from together.types.fine_tuning_list_response import FineTuningListResponse

    p = TogetherProvider("together", FAKE_KEY, base_url=emulator.url, timeout=5)
    file_id = p.upload_file(write_training_file(tmp_path / "qa.jsonl"), "sha")
    quote = p.quote(file_id, MODEL, {"epochs": 2})
    assert quote.cost > 0 and quote.job_id is None  # a price, and no job made for it
    assert emulator.emulator.calls[CREATE] == 0

    spec = lambda token, hp=None, **kw: JobSpec("qa", kw.pop("model", MODEL), ((file_id, 1.0),),  # noqa: E731
                                                hp or {"epochs": 2, "lora": True, "lora_r": 8}, token, **kw)
    first, second = p.create_job(spec("qa-1")), p.create_job(spec("qa-2"))
    with pytest.raises(CapacityError, match="maximum number of concurrent"):
        p.create_job(spec("qa-3"))  # over the limit of 2: refused at the door
    assert [j.id for j in p.list_jobs()] == [second.id, first.id]  # newest first
    assert p.list_jobs(created_after=second.created_at) == []
    assert [j.id for j in p.find_by_token("qa-2")] == [second.id]
    done = wait_until(lambda: all(p.get_job(j.id).status == "succeeded" for j in (first, second)))
    assert done
    one = p.get_job(first.id)
    assert one.fine_tuned_model.startswith("ftctl-emulator/Mistral-7B-Instruct-v0.2-qa-1-")
    assert KIND.base_model(one.fine_tuned_model) == MODEL and one.trained_tokens and one.cost
    log = p.training_log(first.id)
    assert {e.kind for e in log} == {"event", "checkpoint", "metric"}
    assert [e.key for e in log] == [e.key for e in p.training_log(first.id)]  # stable keys
    assert "you said: ping" in p.complete(one.fine_tuned_model, [{"role": "user", "content": "ping"}])
    # a second stage continues from the first job's final checkpoint
    chained = p.create_job(spec("qa-dpo", {"training_method": "dpo"}, model=one.fine_tuned_model,
                                upstream_job_id=first.id))
    at = next(j for j in emulator.emulator.engine.all_jobs() if j["suffix"] == "qa-dpo")
    assert at["hyperparameters"]["from_checkpoint"] == first.id and chained.model == MODEL
    assert at["hyperparameters"]["training_method"]["method"] == "dpo"

    # the answers read with the SDK's own models, validated
    get = lambda path, **kw: httpx.request(kw.pop("method", "GET"), emulator.url + path,  # noqa: E731
                                           headers={"Authorization": f"Bearer {FAKE_KEY}"}, **kw).json()
    FinetuneResponse.model_validate(get(f"/v1/fine-tunes/{first.id}"))
    FineTuningListResponse.model_validate(get("/v1/fine-tunes"))
    FineTuningListEventsResponse.model_validate(get(f"/v1/fine-tunes/{first.id}/events"))
    FineTuningListCheckpointsResponse.model_validate(get(f"/v1/fine-tunes/{first.id}/checkpoints"))
    FinetuneModelLimits.model_validate(get(f"/v1/fine-tunes/models/limits?model_name={MODEL}"))
    AvailableEstimate.model_validate(get("/v1/fine-tunes/estimate-price", method="POST",
                                         json={"training_file": file_id, "model": MODEL}))
    p.close()


# -- campaigns --------------------------------------------------------------------------------


@pytest.fixture
def busy_emulator(tmp_path):
    # jobs that outlast a tick's creates, so that the limit of 2 binds
    server = start_emulator("together", tmp_path, queue_time=0.1, validate_time=0.2, train_time=0.5)
    yield server
    server.stop()


def test_five_agents_absorb_capacity_refusals_and_faults(busy_emulator, tmp_path, log):
    """Limit 2 at Together, ftctl told 5: every agent ends with a model id,
    one job per submission, the limit learned, and the key nowhere."""
    emulator = busy_emulator
    cfg = write_remote_config(tmp_path / "site", "together", emulator.url, concurrency=5, timeout="1s")
    faults = emulator.emulator.faults
    faults.add(method="POST", path="/v1/fine-tunes", exact=True, status=429, retry_after=0.3, times=2)
    faults.add(method="GET", path="/v1/fine-tunes", exact=True, status=500, times=2)
    # a create that goes through, answered after the client gave up
    faults.add(method="POST", path="/v1/fine-tunes", exact=True, delay=1.2, after=True, times=1)
    faults.add(method="POST", path="/v1/files", exact=True, status=503, times=1)
    # a provider that echoes the key back in an error
    faults.add(method="GET", path="/v1/fine-tunes", exact=True, status=401, times=1,
               body={"error": {"message": f"Invalid API key provided: {FAKE_KEY}", "type": "invalid_api_key"}})
    config = load_config(cfg)
    store = Store(config.database_url)
    store_submissions(store, plan_submissions(config, [], all_agents=True))
    rec = Ticker(config, store, rng=random.Random(1))
    try:
        run_ticks(rec, store, timeout=60)
    finally:
        rec.close()
    jobs = store.list_jobs()
    assert [j.state for j in jobs] == ["succeeded"] * 5
    at = {f"ft-{j['id']}": j for j in emulator.emulator.engine.all_jobs()}
    from ftctl.providers.emulator.together_api import output_name

    assert all(output_name(at[j.provider_job_id]) == j.fine_tuned_model for j in jobs)
    assert set(tokens_at(emulator).values()) == {1}  # never two jobs for one submission
    assert len(at) == 5 and all(j["status"] == "SUCCESS" for j in at.values())
    assert all(j.attempt == 1 for j in jobs)  # capacity refusals are not attempts
    events = [e for j in jobs for e in store.events(j.id)]
    assert any(e.trigger == "create-failed" and "429" in e.reason for e in events)
    assert any(e.trigger == "create-failed" and "timed out" in e.reason for e in events)
    refusals = [a for j in jobs for a in store.attempts(j.id) if a.outcome == "capacity"]
    assert 1 <= len(refusals) <= 6  # learned at the first refusals, not asked again every tick
    assert store.provider_states()["together"].learned_limit == 2
    # the key: not in the log (masked where the provider echoed it), the database or the CLI
    assert "***" in log.getvalue() and not leaked(log.getvalue())
    assert not leaked(b"".join(f.read_bytes() for f in (tmp_path / "site").glob("ftctl.db*")))
    for args in (["status"], ["status", "--json"], ["show", "1"], ["show", "2", "--json"], ["models"]):
        code, out, err = cli(*args, config=cfg)
        assert code == 0 and not leaked(out + err), args
    store.close()


@pytest.mark.slow
def test_daemon_killed_mid_campaign_never_creates_a_job_twice(emulator, tmp_path):
    # a create cut off by the kill may still land for timeout + margin: keep that short here
    cfg = write_remote_config(tmp_path / "site", "together", emulator.url, concurrency=5, timeout="1s",
                              create_margin="0.5s")
    config = load_config(cfg)
    store = Store(config.database_url)
    store_submissions(store, plan_submissions(config, [], all_agents=True))
    db = cfg.parent / "ftctl.db"
    env = ftctl_env(**{KEY_ENV: FAKE_KEY})

    def states():
        with sqlite3.connect(db) as c:
            return [r[0] for r in c.execute("SELECT state FROM jobs ORDER BY id")]

    def daemon(*args, log_file):
        return subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(cfg), "daemon", *args],
                                stdout=subprocess.DEVNULL, stderr=open(log_file, "w"), cwd=tempfile.gettempdir(),
                                env=env)

    # ready once it made its first job; killed as the next create goes out (its intent stored)
    first, killed_log = daemon(log_file=tmp_path / "killed.log"), tmp_path / "killed.log"
    wait_until(lambda: "created at provider" in killed_log.read_text(), timeout=30, step=0.01)
    wait_until(lambda: killed_log.read_text().count("submitting to the provider") >= 2, timeout=10, step=0.005)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    at_kill, made = states(), sum(tokens_at(emulator).values())
    assert made >= 1 and at_kill.count("succeeded") < 5 and "queued" in at_kill, at_kill  # mid-campaign
    final = daemon("--until-done", log_file=tmp_path / "final.log")
    assert final.wait(timeout=60) == 0, (tmp_path / "final.log").read_text()[-2000:]
    assert states() == ["succeeded"] * 5
    per_token = tokens_at(emulator)
    assert set(per_token.values()) == {1}, per_token  # one provider job per client token
    with sqlite3.connect(db) as c:
        tokens = {r[0] for r in c.execute("SELECT client_token FROM attempts WHERE outcome != 'capacity'")}
    assert tokens == set(per_token)  # every job at the provider is one of ours, and bound
    for f in tmp_path.glob("*.log"):
        text = f.read_text()
        assert "Traceback" not in text and not leaked(text)
    store.close()


# -- errors -------------------------------------------------------------------------------------


def two_providers(tmp_path, url) -> Path:
    """qa on Together, legal on the simulated provider."""
    sim = ('\n[providers.sim]\nkind = "simulated"\nconcurrency = 1\nqueue_time = "0.1s"\nvalidate_time = "0.1s"\n'
           'train_time = "0.2s"\n\n[agents.legal]\nprovider = "sim"\nmodel = "open-mistral-7b"\n'
           'training_file = "data/legal.jsonl"\nhyperparameters = { training_steps = 1 }\n')
    cfg = write_remote_config(tmp_path / "site", "together", url, agents=("qa",), extra=sim)
    write_training_file(cfg.parent / "data" / "legal.jsonl")
    return cfg


def test_401_pauses_only_together_and_it_resumes(emulator, tmp_path):
    config = load_config(two_providers(tmp_path, emulator.url))
    store = Store(config.database_url)
    store_submissions(store, plan_submissions(config, [], all_agents=True))
    rec = Ticker(config, store, rng=random.Random(1))
    emulator.emulator.auth_failing = True
    by_agent = lambda: {j.agent: j for j in store.list_jobs()}  # noqa: E731
    run_ticks(rec, store, until=lambda r: by_agent()["legal"].state == "succeeded")
    qa = by_agent()["qa"]
    assert qa.state == "prepared" and reason_of(qa).startswith("provider auth failing: HTTP 401")
    assert store.provider_states()["together"].paused_why == "auth"
    emulator.emulator.auth_failing = False
    run_ticks(rec, store)
    assert by_agent()["qa"].state == "succeeded" and store.provider_states()["together"].paused_why is None
    rec.close()
    store.close()


def test_retry_after_on_the_listing_is_honoured(emulator, tmp_path):
    config = load_config(write_remote_config(tmp_path / "site", "together", emulator.url, agents=("qa",)))
    store = Store(config.database_url)
    store_submissions(store, plan_submissions(config, [], all_agents=True))
    rec = Ticker(config, store, rng=random.Random(1))
    emulator.emulator.faults.add(method="GET", path="/v1/fine-tunes", exact=True, status=429, retry_after=0.5,
                                 times=1)
    rec.tick()
    (job,) = store.list_jobs()
    assert reason_of(job).startswith("provider unreachable: HTTP 429")
    before = emulator.emulator.calls[LIST]
    rec.tick()
    assert emulator.emulator.calls[LIST] == before  # not asked again before Retry-After
    time.sleep(0.55)
    rec.tick()
    assert emulator.emulator.calls[LIST] > before
    rec.close()
    store.close()


@pytest.mark.slow
def test_a_missing_sdk_pauses_only_together(emulator, tmp_path):
    cfg = two_providers(tmp_path, emulator.url)
    blocker = tmp_path / "no-together"
    blocker.mkdir()
    # the SDK is installed here: make its import fail, as where it is not
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['together'] = None\n")
    env = ftctl_env(**{KEY_ENV: FAKE_KEY, "PYTHONPATH": str(blocker)})
    config = load_config(cfg)
    store = Store(config.database_url)
    store_submissions(store, plan_submissions(config, [], all_agents=True))  # preflight needs no SDK
    daemon = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(cfg), "daemon"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=tempfile.gettempdir(), env=env)
    try:
        wait_until(lambda: {j.agent: j.state for j in store.list_jobs()}.get("legal") == "succeeded", timeout=30)
    finally:
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=10)
    assert daemon.returncode == 0
    hint = "the together SDK is not installed (pip install '.[together]' from a checkout)"
    qa = next(j for j in store.list_jobs() if j.agent == "qa")
    assert qa.state == "prepared" and reason_of(qa) == f"provider unavailable: providers.together: {hint}"
    assert store.provider_states()["together"].paused_why == "unavailable"
    assert hint in err and "Traceback" not in out + err
    code, status, status_err = cli("status", config=cfg)
    assert code == 0 and hint in status and "Traceback" not in status + status_err
    assert emulator.emulator.calls[CREATE] == 0
    store.close()


# -- preflight, before anything is created -------------------------------------------------------


def test_dpo_pairs_and_hyperparameters_are_checked_before_anything(emulator, tmp_path):
    agents = ('\n[agents.prefs]\nprovider = "together"\nmodel = "mistralai/Mistral-7B-Instruct-v0.2"\n'
              'training_file = "prefs.jsonl"\nhyperparameters = { training_method = "dpo", epochs = 1 }\n'
              '\n[agents.typo]\nprovider = "together"\nmodel = "mistralai/Mistral-7B-Instruct-v0.2"\n'
              'training_file = "data/qa.jsonl"\nhyperparameters = { epochs = 1, warmup_steps = 3 }\n')
    cfg = write_remote_config(tmp_path / "site", "together", emulator.url, agents=("qa",), extra=agents)
    broken = write_dpo(cfg.parent / "prefs.jsonl", broken_line=3)
    good = write_dpo(tmp_path / "good.jsonl")

    code, out, _ = cli("validate", broken, "--provider", "together", "--method", "dpo", config=cfg)
    assert code == 1 and "broken preference pair" in out and "line 3 " in out
    code, out, _ = cli("validate", good, "--provider", "together", "--model", MODEL, "--method", "dpo", "--json",
                       config=cfg)
    report = json.loads(out)
    assert code == 0 and report["training_method"] == "dpo" and report["data_tokens"] > 0
    code, out, _ = cli("validate", good, "--provider", "together", config=cfg)  # a DPO file is not an SFT file
    assert code == 1 and "missing or empty messages" in out

    code, _, err = cli("submit", "prefs", config=cfg)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"agents.prefs.training_file: {broken} line 3: " in err and "are the same: no preference" in err
    code, _, err = cli("submit", "typo", config=cfg)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("ftctl: error: agents.typo.hyperparameters: warmup_steps not known to together")
    with pytest.raises(SubmitError, match="training_method 'ppo' is not known to together"):
        plan_submissions(load_config(cfg), [], adhoc=True, agent="x", file=good, model=MODEL,
                         provider="together", hyperparameters={"training_method": "ppo"})
    # nothing stored, nothing sent
    assert not (cfg.parent / "ftctl.db").exists()
    assert sum(emulator.emulator.calls.values()) == 0


def test_estimate_and_submit_quote_with_estimate_price(emulator, tmp_path):
    cfg = write_remote_config(tmp_path / "site", "together", emulator.url, agents=("qa",))
    data = cfg.parent / "data" / "qa.jsonl"
    code, out, err = cli("estimate", data, "--provider", "together", "--model", MODEL, "--epochs", "2", "--quote",
                         "--json", config=cfg)
    assert code == 0, err
    est = json.loads(out)
    expected = round(data.stat().st_size // 4 * 2 / 1e6 * 0.48, 6)  # the emulator's own price
    assert est["provider_quote"] == pytest.approx(expected) and est["quote_error"] is None
    assert "together.ai/pricing" in est["price_source"]
    code, out, err = cli("submit", "qa", "--quote", "--json", config=cfg)
    assert code == 0 and json.loads(out)[0]["created"], err
    calls = emulator.emulator.calls
    assert calls["POST /v1/fine-tunes/estimate-price"] == 2 and calls[CREATE] == 0
    assert calls["POST /v1/files"] == 1  # uploaded once for both, by its content hash
    with sqlite3.connect(cfg.parent / "ftctl.db") as c:
        assert c.execute("SELECT COUNT(*) FROM quote_jobs").fetchone()[0] == 0  # nothing to cancel later


def test_ftctl_emulator_kind_together_serves_the_sdk(tmp_path):
    import re

    from ftctl.providers.base import TransientError

    emu = subprocess.Popen([sys.executable, "-m", "ftctl", "emulator", "--kind", "together", "--port", "0",
                            "--queue-time", "0.1s", "--state-file", str(tmp_path / "emu.db")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
                           env=ftctl_env())
    try:
        url = re.search(r"on (http://127\.0\.0\.1:\d+)", emu.stdout.readline()).group(1)
        assert f'kind = "together", base_url = "{url}"' in emu.stdout.readline()
        p = TogetherProvider("together", FAKE_KEY, base_url=url, timeout=5)
        file_id = p.upload_file(write_training_file(tmp_path / "qa.jsonl"), "sha")
        job = p.create_job(JobSpec("qa", MODEL, ((file_id, 1.0),), {"epochs": 1}, "qa-cli"))
        assert [j.id for j in p.find_by_token("qa-cli")] == [job.id]
        # faults over HTTP, as for the other emulators
        httpx.post(url + "/_emulator/faults", json={"add": [{"method": "GET", "path": "/v1/fine-tunes",
                                                             "exact": True, "status": 503, "times": 1}]})
        with pytest.raises(TransientError, match="HTTP 503"):
            p.list_jobs()
        assert [j.id for j in p.list_jobs()] == [job.id]
        p.close()
    finally:
        emu.send_signal(signal.SIGTERM)
        assert emu.wait(timeout=10) == 0
