"""A chain feedback -> conversation (model = "@feedback") and the evaluation
gate through the real Mistral, OpenAI and Together SDKs against the
emulators: real HTTP, a real clock, the real provider classes."""

import random
import time
from collections import Counter

import pytest

from tests.conftest import FAKE_KEY, KEY_ENV, start_emulator, write_remote_config, write_training_file

from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import Store

MODEL = {"mistral": "open-mistral-7b", "openai": "gpt-4o-mini-2024-07-18",
         "together": "mistralai/Mistral-7B-Instruct-v0.2"}
HP = {"mistral": "{ training_steps = 10 }", "openai": "{ epochs = 1 }", "together": "{ epochs = 1 }"}


def chain(kind):
    files = ('training_files = [{ file = "data/feedback.jsonl", weight = 1.0 }, '
             '{ file = "data/feedback-extra.jsonl", weight = 2.5 }]' if kind == "mistral"
             else 'training_file = "data/feedback.jsonl"')
    return f"""
[agents.feedback]
provider = "{kind}"
model = "{MODEL[kind]}"
{files}
hyperparameters = {HP[kind]}

[agents.conversation]
provider = "{kind}"
model = "@feedback"
depends_on = ["feedback"]
training_file = "data/conversation.jsonl"
hyperparameters = {HP[kind]}

[agents.conversation.eval]
file = "data/conversation.jsonl"
min_improvement = 0.5
concurrency = {1 if kind == "mistral" else 4}

[agents.qa.eval]
file = "data/conversation.jsonl"
concurrency = {1 if kind == "mistral" else 4}
"""


@pytest.mark.parametrize("kind", ["mistral", "openai", "together"])
def test_a_chain_and_the_gate_through_the_real_sdk(kind, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with start_emulator(kind, tmp_path, limit=2, queue_time=0.05, validate_time=0.05, train_time=0.15) as srv:
        # OpenAI's price, at a figure no default matches: what a job reported no cost for is charged by it
        price = '\n[prices."openai/gpt-4o-mini-2024-07-18"]\ntrain_per_m = 10000.0\n' if kind == "openai" else ""
        cfg_path = write_remote_config(tmp_path / "site", kind, srv.url, agents=("qa",), extra=chain(kind) + price)
        for name in ("feedback", "feedback-extra", "conversation"):
            write_training_file(cfg_path.parent / "data" / f"{name}.jsonl", 3)
        if kind == "mistral":  # the gate's first question is refused once, with a Retry-After that every
            # evaluation on the provider honours (one question at a time, so none is out when it comes)
            srv.emulator.faults.add(method="POST", path="/v1/chat/completions", status=429, retry_after=0.3,
                                    times=1)
        cfg = load_config(cfg_path)
        store = Store(cfg.database_url)
        store_submissions(store, plan_submissions(cfg, [], all_agents=True))
        rec = Ticker(cfg, store, rng=random.Random(1))
        end = time.monotonic() + 40
        while not rec.tick().all_terminal:
            assert time.monotonic() < end, [(j.agent, j.state, j.promotion, j.reason_code) for j in store.list_jobs()]
            time.sleep(0.05)
        rec.close()
        jobs = {j.agent: j for j in store.list_jobs()}
        at = {j["suffix"]: j for j in srv.emulator.engine.all_jobs()}
        assert len(at) == 3 and set(Counter(j["suffix"] for j in srv.emulator.engine.all_jobs()).values()) == {1}
        stage1, stage2 = at[jobs["feedback"].client_token], at[jobs["conversation"].client_token]
        assert jobs["conversation"].base_model == jobs["feedback"].fine_tuned_model
        if kind == "together":  # continued from stage 1's final checkpoint
            assert stage2["hyperparameters"]["from_checkpoint"] == jobs["feedback"].provider_job_id
        else:  # the create named stage 1's model
            assert stage2["model"] == jobs["feedback"].fine_tuned_model
        done = next(e["created_at"] for e in stage1["events"] if e["data"]["status"] == "SUCCESS")
        assert stage2["created_at"] >= done
        # the gate asked through the SDK's chat call: conversation learned its data, qa did not
        assert {a: j.promotion for a, j in jobs.items()} == {"qa": "rejected", "feedback": "promoted",
                                                             "conversation": "promoted"}
        chats = srv.emulator.calls["POST /v1/chat/completions"]
        assert chats == 2 * 2 * 3 + (1 if kind == "mistral" else 0)
        if kind == "openai":  # OpenAI reports trained tokens and no cost: priced at controller.toml's price
            for j in jobs.values():
                tokens = at[j.client_token]["trained_tokens"]
                assert j.actual_cost == round(tokens / 1e6 * 10_000.0, 2) > 0
        if kind == "mistral":  # Mistral's weighted training files, each with its weight
            assert stage1["metadata"]["training_file_weights"] == [1.0, 2.5]
            gated = [store.evaluations([jobs[a].id])[jobs[a].id] for a in ("qa", "conversation")]
            assert sorted(r.failures for r in gated) == [0, 1]
            asks = [(at, status) for at, name, status in srv.emulator.requests if name == "POST /v1/chat/completions"]
            refused = next(i for i, (_, status) in enumerate(asks) if status == 429)
            assert asks[refused + 1][0] - asks[refused][0] >= 0.3  # not asked again before Retry-After
        store.close()


def test_the_simulated_service_answers_what_a_model_learned_and_nothing_else(tmp_path):
    import json

    from ftctl.providers.simulated.engine import EngineSettings, SimEngine

    now = [1_000_000.0]
    engine = SimEngine(tmp_path / "sim.db", EngineSettings(queue_time=1, validate_time=1, train_time=1),
                       clock=lambda: now[0])

    def trained(model, lesson):
        q, a = lesson
        content = json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        file_id = engine.upload_file("d.jsonl", content.encode())["id"]
        job = engine.create_job(model=model, training_files=[file_id], suffix=q[:5])
        now[0] += 10
        return engine.get_job(job["id"])["fine_tuned_model"]

    stage1 = trained("open-mistral-7b", ("ping?", "pong"))
    stage2 = trained(stage1, ("marco?", "polo"))
    other = trained("open-mistral-7b", ("else?", "nothing"))
    ask = lambda model, q: engine.chat(model, [{"role": "user", "content": q}])  # noqa: E731
    assert stage2.startswith("ft:open-mistral-7b:")  # named for its root
    assert (ask(stage1, "ping?"), ask(stage2, "marco?"), ask(stage2, "ping?")) == ("pong", "polo", "pong")
    assert "pong" not in ask(other, "ping?") and "pong" not in ask("open-mistral-7b", "ping?")
    assert "polo" not in ask(stage1, "marco?")
