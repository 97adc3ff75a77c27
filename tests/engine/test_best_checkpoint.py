"""checkpoints = "best": each checkpoint of the job is a candidate beside the
final model, and the best that passes every criterion is promoted (the
history says which); on the OpenAI emulator, whose checkpoints are models
(`ft:...:ckpt-step-N`) that differ in what they learned. Elsewhere submit
refuses it in one line."""

import json
import random
import textwrap
import time

import pytest

from tests.conftest import FAKE_KEY, KEY_ENV, reason_of, run_ftctl, start_emulator, states

from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import SubmitError, plan_submissions, store_submissions
from ftctl.models import Store

QUESTIONS = [(f"question {i}", f"answer {i}") for i in range(5)]


def jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def qa():
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QUESTIONS]


def write_site(d, provider_block, agents):
    jsonl(d / "data" / "team.jsonl", qa())
    text = '[controller]\ndatabase = "sqlite:///ftctl.db"\npoll_interval = "1s"\n' + textwrap.dedent(provider_block)
    for name, (provider, model, hp, checkpoints) in agents.items():
        text += textwrap.dedent(f"""
            [agents.{name}]
            provider = "{provider}"
            model = "{model}"
            training_file = "data/team.jsonl"
            hyperparameters = {hp}

            [agents.{name}.eval]
            file = "data/team.jsonl"
            min_improvement = 0.08
            checkpoints = "{checkpoints}"
            """)
    (d / "controller.toml").write_text(text)
    return d / "controller.toml"


def test_best_checkpoint_promotes_the_checkpoint_that_learned_most_and_the_history_says_which(
        tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    # ten steps, a checkpoint every two: steps 2, 4, 6, 8 and the final model (10); only step 6 learned it all
    with start_emulator("openai", tmp_path, queue_time=0.05, validate_time=0.05, train_time=0.15,
                        checkpoint_recall=(0.0, 0.0, 1.0, 0.0)) as srv:
        path = write_site(tmp_path / "site", f"""
            [providers.openai]
            kind = "openai"
            base_url = "{srv.url}/v1"
            api_key_env = "{KEY_ENV}"
            timeout = "5s"
            """, {"best": ("openai", "gpt-4o-mini-2024-07-18", "{ epochs = 1 }", "best"),
                  "last": ("openai", "gpt-4o-mini-2024-07-18", "{ epochs = 1 }", "last")})
        cfg = load_config(path)
        store = Store(cfg.database_url)
        store_submissions(store, plan_submissions(cfg, [], all_agents=True))
        rec = Ticker(cfg, store, rng=random.Random(1))
        end = time.monotonic() + 60
        while not rec.tick().all_terminal:
            assert time.monotonic() < end, [(j.agent, j.state, j.promotion, reason_of(j)) for j in store.list_jobs()]
            time.sleep(0.05)
        rec.close()
    jobs = {j.agent: j for j in store.list_jobs()}
    best, last = jobs["best"], jobs["last"]
    assert (last.promotion, best.promotion) == ("rejected", "promoted")  # the final model learned nothing
    run_ = store.evaluations([best.id])[best.id]
    steps = [step for step, _ in run_.checkpoints]
    assert steps == [2, 4, 6, 8]  # each checkpoint but the final step's, which is the final model
    chosen = dict(run_.checkpoints)[6]
    assert chosen.endswith(":ckpt-step-6") and best.fine_tuned_model == chosen == run_.chosen_model
    assert run_.candidate_model != chosen and (run_.candidate_score, run_.compare_score) == (1.0, 0.0)
    # each candidate asked each example once, the base once: 5 x (1 + 5)
    assert len(store.eval_answers(run_.id)) == 30
    history = [e.reason for e in store.events(best.id) if e.trigger == "accept"]
    assert history == [f"promoted checkpoint step 6 ({chosen}): improvement +1.00 >= +0.08 (exact 1.00 vs 0.00 "
                       f"for gpt-4o-mini-2024-07-18, n=5)"]
    assert store.evaluations([last.id])[last.id].checkpoints is None
    shown = run_ftctl("show", str(best.id), config=path)
    assert f"checkpoints  steps 2, 4, 6, 8 and the final model asked; chose checkpoint step 6 ({chosen})" in \
        shown.stdout, shown.stdout
    ev = json.loads(run_ftctl("show", str(best.id), "-o", "json", config=path).stdout)["evaluation"]
    assert (ev["answered"], ev["questions"], ev["chosen_model"]) == (30, 30, chosen)
    exported = run_ftctl("models", "-o", "json", config=path)
    assert chosen in exported.stdout


def test_best_checkpoint_where_checkpoints_are_no_models_is_refused_at_submit_in_one_line(tmp_path):
    path = write_site(tmp_path / "site", """
        [providers.sim]
        kind = "simulated"
        """, {"qa": ("sim", "open-mistral-7b", "{ training_steps = 10 }", "best")})
    with pytest.raises(SubmitError, match=r'agents.qa.eval.checkpoints: "best" needs checkpoints that are models, '
                                          r"and provider 'sim' \(simulated\) has none \(only: openai\)"):
        plan_submissions(load_config(path), ["qa"])
    result = run_ftctl("submit", "qa", config=path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert 'checkpoints: "best" needs checkpoints' in result.stderr
    db = path.parent / "ftctl.db"  # nothing stored
    assert not db.exists() or states(db) == []


@pytest.mark.parametrize("flags, message", [
    (("--checkpoint-recall", "a,b"), "--checkpoint-recall: 'a,b' is not shares like 0.2,1,0.6"),
    (("--checkpoint-recall", "0.5,2"), "--checkpoint-recall: each share is between 0 and 1"),
    (("--chat-noise", "2"), "--chat-noise are shares between 0 and 1")])
def test_the_emulators_chat_settings_refuse_bad_values_in_one_line(flags, message):
    result = run_ftctl("emulator", "--kind", "openai", *flags)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_checkpoints_the_provider_cannot_list_yet_make_the_gate_wait_then_go_on(tmp_path, clock, monkeypatch):
    from ftctl.providers import build_provider
    from ftctl.providers.base import TransientError
    from ftctl.providers.simulated import KIND

    monkeypatch.setattr(KIND, "checkpoint_models", True)
    path = write_site(tmp_path / "site", """
        [providers.sim]
        kind = "simulated"
        queue_time = "1s"
        validate_time = "1s"
        train_time = "5s"
        """, {"qa": ("sim", "open-mistral-7b", "{ training_steps = 10 }", "best")})
    cfg = load_config(path)
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, ["qa"]))
    inner = build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))
    listed = []

    class Listing:
        name = "sim"

        def __getattr__(self, name):
            return getattr(inner, name)

        def checkpoints(self, job_id):
            listed.append(job_id)
            if len(listed) == 1:
                raise TransientError("HTTP 503: try again")
            return [(10, "the final step: the final model itself")]

    rec = Ticker(cfg, store, {"sim": Listing()}, clock=clock, rng=random.Random(0))
    seen = []
    for _ in range(60):
        if rec.tick().all_terminal:
            break
        seen.append(reason_of(store.get_job(1)))
        clock.advance(1)
    assert "evaluation waits: the job's checkpoints could not be listed (HTTP 503: try again)" in seen
    job = store.get_job(1)
    assert job.promotion == "promoted" and len(listed) == 2  # asked again once, then remembered
    assert store.evaluations([1])[1].checkpoints is None  # nothing but the final model to ask
