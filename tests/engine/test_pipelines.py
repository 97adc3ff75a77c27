"""Pipelines, the evaluation gate and delivery, whole, in process: the real
store, the real simulated service, a virtual clock shared by both."""

import random

import pytest

from tests.conftest import reason_of, write_config, write_training_file

from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import Store
from ftctl.providers import build_provider
from ftctl.providers.base import RateLimited

CHAIN = """
[agents.feedback]
provider = "sim"
model = "open-mistral-7b"
training_file = "data/feedback.jsonl"
hyperparameters = { training_steps = 10 }

[agents.conversation]
provider = "sim"
model = "@feedback"
depends_on = ["feedback"]
training_file = "data/conversation.jsonl"
hyperparameters = { training_steps = 10 }
"""
# conversation is asked what it was trained on; qa is asked what feedback was
CONV_GATE = """
[agents.conversation.eval]
file = "data/conversation.jsonl"
min_improvement = 0.5
concurrency = 2
"""
GATES = CONV_GATE + """
[agents.qa.eval]
file = "data/feedback.jsonl"
"""
EXPORT = """
[export]
path = "agents/models.toml"
"""


class Crash(BaseException):
    """Stands for the process dying."""


class Chatty:
    """The simulated provider, counting (and failing on request) chat calls."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name
        self.asked: list[tuple[str, str]] = []
        self.fail_at: dict[int, BaseException] = {}  # call number -> raised before asking

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def complete(self, model, messages, *, max_tokens=None):
        number = len(self.asked) + 1 + sum(1 for k in self.fail_at if k < 0)
        err = self.fail_at.pop(number, None)
        if err is not None:
            self.fail_at[-number] = err  # keeps the numbering
            raise err
        self.asked.append((model, messages[-1]["content"]))
        return self.inner.complete(model, messages, max_tokens=max_tokens)


def site(tmp_path, clock, extra="", agents=("qa",), **kw):
    path = write_config(tmp_path / "site", agents=agents, extra=CHAIN + extra, **kw)
    for name in ("feedback", "conversation"):
        write_training_file(path.parent / "data" / f"{name}.jsonl")
    cfg = load_config(path)
    return cfg, Store(cfg.database_url)


def ticker(cfg, store, clock):
    sim = build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))
    chat = Chatty(sim)
    return Ticker(cfg, store, {"sim": chat}, clock=clock, rng=random.Random(0)), chat


def run(rec, clock, store, ticks=300, on_tick=None):
    for _ in range(ticks):
        result = rec.tick()
        if on_tick:
            on_tick()
        if result.all_terminal:
            return result
        clock.advance(1)
    raise AssertionError([(j.agent, j.state, j.promotion, reason_of(j)) for j in store.list_jobs()])


def test_a_two_stage_chain_trains_stage_two_on_stage_ones_model_only_after_it_succeeded(tmp_path, clock):
    cfg, store = site(tmp_path, clock, agents=())
    results = store_submissions(store, plan_submissions(cfg, ["conversation"]))
    assert [(r.agent, r.created, r.note) for r in results] == [("feedback", True, "upstream of conversation"),
                                                              ("conversation", True, "")]
    rec, chat = ticker(cfg, store, clock)
    seen = set()
    run(rec, clock, store, on_tick=lambda: seen.add(reason_of(store.get_job(2))))
    feedback, conversation = store.list_jobs()
    assert (feedback.state, conversation.state) == ("succeeded", "succeeded")
    assert {"waiting for feedback (job 1, queued)", "waiting for feedback (job 1, running)"} <= seen
    assert (conversation.upstream_job_ids, conversation.model_job_id) == ([1], 1)
    assert conversation.base_model == feedback.fine_tuned_model
    at_sim = {j["suffix"]: j for j in chat.inner.engine.all_jobs()}
    stage1, stage2 = at_sim[feedback.client_token], at_sim[conversation.client_token]
    assert len(at_sim) == 2 and stage2["model"] == feedback.fine_tuned_model
    done = next(e["created_at"] for e in stage1["events"] if e["data"]["status"] == "SUCCESS")
    assert stage2["created_at"] >= done
    # a stage-2 model keeps its root's name (a tokenizer and a price are found for it)
    assert conversation.fine_tuned_model.startswith("ft:open-mistral-7b:")
    # both promoted at once (no gate); submitting again pays for nothing
    assert (feedback.promotion, conversation.promotion) == ("promoted", "promoted")
    again = store_submissions(store, plan_submissions(cfg, ["conversation"]))
    assert [r.created for r in again] == [False, False]
    assert again[0].note.startswith("upstream: uses job 1 (succeeded)")


def test_a_failed_upstream_fails_the_chain_without_a_call_and_retry_brings_it_back(tmp_path, clock):
    from ftctl.controller.engine.jobs import user_transition

    cfg, store = site(tmp_path, clock, agents=(), fail_rate=1.0, max_attempts=1)
    store_submissions(store, plan_submissions(cfg, ["conversation"]))
    rec, chat = ticker(cfg, store, clock)
    run(rec, clock, store)
    feedback, conversation = store.list_jobs()
    assert (feedback.state, conversation.state) == ("failed", "failed")
    assert reason_of(conversation).startswith("upstream feedback (job 1) is failed; nothing was sent")
    assert len(chat.inner.engine.all_jobs()) == 1  # feedback's only
    chat.inner.engine.settings.fail_rate = 0.0
    user_transition(store, feedback.id, "retry")
    assert [j.state for j in store.list_jobs()] == ["prepared", "prepared"]
    assert store.events(conversation.id)[-1].reason == "retried with its upstream job 1"
    run(rec, clock, store)
    assert [j.state for j in store.list_jobs()] == ["succeeded", "succeeded"]


def test_the_gate_promotes_what_learned_its_data_and_rejects_and_never_exports_what_did_not(tmp_path, clock):
    import tomllib

    import ftctl

    cfg, store = site(tmp_path, clock, extra=GATES + EXPORT)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    rec, chat = ticker(cfg, store, clock)
    exported = []
    export = cfg.resolve("agents/models.toml")
    run(rec, clock, store, on_tick=lambda: exported.append(tomllib.loads(export.read_text())["models"]))
    jobs = {j.agent: j for j in store.list_jobs()}
    assert {a: j.promotion for a, j in jobs.items()} == {"qa": "rejected", "feedback": "promoted",
                                                         "conversation": "promoted"}
    assert reason_of(jobs["qa"]).startswith("rejected: improvement +0.00 < +0.01 (exact 0.00 vs 0.00 for "
                                            "open-mistral-7b, n=5)")
    assert reason_of(jobs["conversation"]) == (f"promoted: improvement +1.00 >= +0.50 (exact 1.00 vs 0.00 for "
                                               f"{jobs['feedback'].fine_tuned_model}, n=5)")
    assert all("qa" not in e for e in exported)
    assert exported[-1] == {"feedback": jobs["feedback"].fine_tuned_model,
                            "conversation": jobs["conversation"].fine_tuned_model}
    # each model asked each example once; the comparison is the model stage 2 trained from
    assert len(chat.asked) == len(set(chat.asked)) == 2 * 5 + 2 * 5
    with ftctl.open(cfg.path) as ft:
        shown = ft.show(jobs["conversation"].id)
        assert shown["promotion"] == "promoted"
        ev = shown["evaluation"]
        assert (ev["n"], ev["answered"], ev["candidate_score"], ev["compare_score"], ev["improvement"]) == (
            5, 10, 1.0, 0.0, 1.0)
        assert [e["trigger"] for e in shown["events"]][-3:] == ["succeed", "evaluate", "accept"]
        assert ft.models() == exported[-1]
        # a person overrides the gate, both ways; the export follows at once
        ft.promote(jobs["qa"].id)
        ft.reject(jobs["feedback"].id)
        assert tomllib.loads(export.read_text())["models"] == {
            "qa": jobs["qa"].fine_tuned_model, "conversation": jobs["conversation"].fine_tuned_model}
        assert [(e["trigger"], e["reason"]) for e in ft.show(jobs["qa"].id)["events"]][-1] == (
            "promote", "promoted by the user (gate overridden)")
        with pytest.raises(ftctl.Refused, match="cannot promote a promoted model"):
            ft.promote(jobs["qa"].id)


def test_a_killed_evaluation_resumes_without_asking_twice_and_honours_retry_after(tmp_path, clock):
    cfg, store = site(tmp_path, clock, extra=CONV_GATE, agents=())
    store_submissions(store, plan_submissions(cfg, ["conversation"]))
    rec, chat = ticker(cfg, store, clock)
    chat.fail_at = {4: Crash()}
    with pytest.raises(Crash):
        run(rec, clock, store)
    conversation = store.get_job(2)
    assert conversation.promotion == "evaluating"
    stored = store.eval_answers(store.evaluations([2])[2].id)
    # every answer is stored as it comes (one still in flight when the process died may be lost)
    assert 0 < len(stored) <= len(chat.asked) < 10
    # a new process: what was answered is never asked again
    rec2, chat2 = ticker(cfg, store, clock)
    chat2.fail_at = {2: RateLimited("HTTP 429: slow down", status_code=429, retry_after=30)}
    rec2.tick()
    run_ = store.evaluations([2])[2]
    assert (run_.not_before - clock.now).total_seconds() == 30
    assert reason_of(store.get_job(2)).startswith("evaluation paused until 09:")
    asked = len(chat2.asked)
    for _ in range(3):
        clock.advance(9)
        rec2.tick()
    assert len(chat2.asked) == asked  # nothing asked before Retry-After passed
    run(rec2, clock, store)
    assert store.get_job(2).promotion == "promoted"
    # what was stored before the kill is never asked again
    assert len(chat2.asked) == len(set(chat2.asked)) == 10 - len(stored)


def test_the_evaluation_is_priced_first_and_counted_in_the_budget(tmp_path, clock):
    # each training job costs its $4 minimum; the evaluation's estimate must fit what is left
    # (keeping the models is made free here, so that the $8 is all the training's)
    free_storage = '\n[prices."mistral/open-mistral-7b"]\nstorage_per_month = 0.0\n'
    cfg, store = site(tmp_path, clock, extra=CONV_GATE + "\n[budget]\ntotal = 8.0\n" + free_storage, agents=())
    store_submissions(store, plan_submissions(cfg, ["conversation"]))
    rec, chat = ticker(cfg, store, clock)
    for _ in range(60):
        rec.tick()
        clock.advance(1)
    conversation = store.get_job(2)
    assert (conversation.state, conversation.promotion) == ("succeeded", "candidate")
    assert reason_of(conversation).startswith("evaluation waits, over budget: estimate $")
    assert chat.asked == []
    import ftctl

    with ftctl.open(cfg.path) as ft:  # a person may still decide
        assert ft.promote(2)["promotion"] == "promoted"


def test_a_writer_killed_mid_write_leaves_the_previous_export_whole(tmp_path):
    """kill -9 between writing the new file and renaming it over the old one:
    a reader still finds the previous file, whole; the next writer clears
    the leftover."""
    import os
    import subprocess
    import sys
    import tomllib

    from ftctl.controller.engine.export import STALE_TEMP, sync

    path = tmp_path / "agents" / "models.toml"
    assert sync(path, "toml", {"qa": "ft:open-mistral-7b:qa-1:old"})
    assert not sync(path, "toml", {"qa": "ft:open-mistral-7b:qa-1:old"})  # the same set: no write
    killer = ("import os, signal, sys\n"
              "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
              "from ftctl.controller.engine.export import sync\n"
              "sync(sys.argv[1], 'toml', {f'agent{i}': 'ft:new:' + 'x' * 200 for i in range(500)})\n")
    p = subprocess.run([sys.executable, "-c", killer, str(path)], capture_output=True, timeout=60)
    assert p.returncode == -9
    assert tomllib.loads(path.read_text())["models"] == {"qa": "ft:open-mistral-7b:qa-1:old"}
    (leftover,) = path.parent.glob(".models.toml.*.tmp")
    os.utime(leftover, (0, 0))  # older than STALE_TEMP
    assert STALE_TEMP < 10**9 and sync(path, "toml", {"qa": "ft:open-mistral-7b:qa-2:new"})
    assert list(path.parent.glob(".models.toml.*.tmp")) == []


def test_a_command_scores_the_answers_and_a_failing_scorer_rejects(tmp_path, clock):
    import json
    import sys

    score = tmp_path / "score.py"
    score.write_text("import json, sys\nd = json.load(sys.stdin)\n"
                     "print(1 if d['answer'] == d['expected'] and d['prompt'][-1]['role'] == 'user' else 0)\n")
    gate = (f'\n[agents.conversation.eval]\nfile = "data/conversation.jsonl"\nmetric = "command"\n'
            f'command = {json.dumps([sys.executable, str(score)])}\nmin_improvement = 0.5\n')
    cfg, store = site(tmp_path, clock, extra=gate, agents=())
    store_submissions(store, plan_submissions(cfg, ["conversation"]))
    rec, chat = ticker(cfg, store, clock)
    run(rec, clock, store)
    assert store.get_job(2).promotion == "promoted"
    assert store.evaluations([2])[2].candidate_score == 1.0
    score.write_text("import sys\nsys.exit(3)\n")
    store_submissions(store, plan_submissions(cfg, ["conversation"]), force=True)
    run(rec, clock, store)
    (again,) = [j for j in store.list_jobs() if j.id > 2]
    assert again.promotion == "rejected"
    assert reason_of(again) == f"rejected: the evaluation could not run: scorer {sys.executable} exited 3"
    assert len(store.list_jobs()) == 3  # --force made a new conversation job, and reused feedback's


def test_each_tick_asks_for_a_bounded_time_only_and_the_next_goes_on(tmp_path, clock, monkeypatch):
    import itertools

    import ftctl.controller.engine.evaluation as evaluation

    class Ticking:  # a monotonic clock that moves one second each time it is read
        counter = itertools.count()

        @classmethod
        def monotonic(cls):
            return float(next(cls.counter))

    cfg, store = site(tmp_path, clock, extra=CONV_GATE, agents=())
    store_submissions(store, plan_submissions(cfg, ["conversation"]))
    rec, chat = ticker(cfg, store, clock)
    for _ in range(60):
        if store.get_job(2).promotion == "evaluating":
            break
        rec.tick()
        clock.advance(1)
    monkeypatch.setattr(evaluation, "time", Ticking)
    rec.eval_slice = 3.5  # a few readings of that clock: two questions a tick
    per_tick = []
    while store.get_job(2).promotion == "evaluating" and len(per_tick) < 30:
        before = len(chat.asked)
        rec.tick()
        per_tick.append(len(chat.asked) - before)
    assert max(per_tick) < 10 and sum(per_tick) == 10 and len(per_tick) > 2
    assert store.get_job(2).promotion == "promoted"
