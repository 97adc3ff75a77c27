"""Preflight: dataset checks with line numbers, exact token counts, estimates,
prepare's stratified sample, and the budget guard."""

import json
import random
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from ftctl.controller.engine import decide as rc
from ftctl.controller.ledger.pricing import estimate, price_for
from ftctl.controller.preflight.dataset import validate
from ftctl.controller.preflight.pii import Detector
from ftctl.controller.preflight.prepare import allocate, prepare
from ftctl.providers.registry import kind as kind_of
from ftctl.providers.tokenizers import mistral_counter, openai_counter
from tests.conftest import reason_of, run_ftctl, run_ftctl_many

GOOD = {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]}


def ex(i, **extra):
    return {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": f"answer {i}"}], **extra}


def write_lines(path: Path, lines) -> Path:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


@pytest.fixture
def malformed(tmp_path):
    """One file with every problem at a known line."""
    huge = "lorem ipsum dolor sit amet " * 6000  # about 36k tokens: over the 32k context
    lines = [ex(1), ex(2), ex(3), ex(4), ex(5), ex(6),
             '{"messages": [{"role": "user", "content": "broken"}',                       # 7 invalid JSON
             {"messages": [{"role": "user", "content": "q"}]},                              # 8 ends with the user
             {"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]},  # 9 role
             {"messages": [{"role": "user", "content": huge}, {"role": "assistant", "content": "a"}]},  # 10 long
             ex(11, weight=0.5, source_agent="legal", target_agent="qa"),                  # 11 extra fields
             {"messages": [{"role": "user", "content": "mail jane.doe@example.com or +44 20 7946 0958"},
                           {"role": "assistant", "content": "ok, or bob@example.org"}]},   # 12 pii
             ex(1),                                                                         # 13 duplicate of 1
             {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]},  # 14 empty
             {"messages": []},                                                              # 15 no messages
             ]
    return write_lines(tmp_path / "bad.jsonl", lines)


def test_every_problem_is_reported_at_its_line(malformed):
    report = validate(malformed, provider="mistral", counter=mistral_counter("open-mistral-7b"), context=32768)
    at = {code: f.lines for code, f in report.problems.items()}
    assert at == {"invalid_json": [7], "not_assistant_last": [8], "unknown_role": [9], "too_long": [10],
                  "extra_field": [11], "duplicate": [13], "empty_content": [14], "missing_messages": [15]}
    assert report.problems["extra_field"].first_message == "fields source_agent, target_agent, weight rejected by mistral"
    assert report.extra_fields == {"weight": 1, "source_agent": 1, "target_agent": 1}
    assert report.pii["email"].count == 2 and report.pii["email"].lines == [12]
    assert report.pii["phone"].count == 1 and report.pii["phone"].lines == [12]
    assert report.examples == 7  # lines 1-6 and 12
    assert not report.clean()
    assert report.first_problem().startswith("line 7: invalid JSON")


def test_validate_cli_exit_codes_and_json(malformed, tmp_path):
    clean = write_lines(tmp_path / "ok.jsonl", [ex(i) for i in range(20)])
    p, j, ok = run_ftctl_many(["validate", str(malformed), "--provider", "mistral", "--model", "open-mistral-7b"],
                              ["validate", str(malformed), "--model", "open-mistral-7b", "--json"],
                              ["validate", str(clean), "--model", "open-mistral-7b"])
    assert p.returncode == 1
    assert "invalid JSON" in p.stdout and "line 7" in p.stdout and "NOT OK" in p.stdout
    assert "personal data: 2 email addresses (line 12); 1 phone number (line 12)" in p.stdout
    data = json.loads(j.stdout)
    assert j.returncode == 1 and data["problems"]["too_long"]["lines"] == [10]
    assert data["tokens_per_example"]["max"] > 32768
    assert ok.returncode == 0 and ok.stdout.strip().endswith("OK")


@pytest.mark.parametrize("problem,needle", [
    ('{"messages": [', "line 1: invalid JSON"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}]}), "line 1: the conversation ends with 'user'"),
    (json.dumps({"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}),
     "unknown role 'robot'"),
    (json.dumps(ex(0, weight=1, source_agent="legal")), "fields source_agent, weight rejected by simulated"),
])
def test_submit_of_a_malformed_file_stores_nothing(make_config, problem, needle):
    cfg = make_config(agents=("qa",))
    (cfg.parent / "data" / "qa.jsonl").write_text(problem + "\n")
    p = run_ftctl("submit", "qa", config=cfg)
    assert p.returncode == 2 and needle in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    assert not (cfg.parent / "ftctl.db").exists() or not sqlite3.connect(cfg.parent / "ftctl.db").execute(
        "SELECT COUNT(*) FROM jobs").fetchone()[0]


def test_submit_refuses_personal_data_unless_allowed(make_config):
    cfg = make_config(agents=("qa",))
    write_lines(cfg.parent / "data" / "qa.jsonl", [{"messages": [
        {"role": "user", "content": "call me on +1 (415) 555-0123"}, {"role": "assistant", "content": "ok"}]}])
    p, allowed = run_ftctl_many(["submit", "qa"], ["submit", "qa", "--allow-pii"], config=cfg)
    assert p.returncode == 2 and "personal data (1 phone; first at line 1)" in p.stderr
    assert allowed.returncode == 0


def test_mistral_counts_equal_mistral_common_in_finetuning_mode(tmp_path):
    import warnings

    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    rng = random.Random(3)
    words = ["fine", "tuning", "ñandú", "日本語", "emoji🙂", "code()", "\n", "  ", "42", "Paris"]
    examples = [{"messages": [{"role": "system", "content": " ".join(rng.choices(words, k=rng.randint(1, 30)))},
                              {"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(1, 60)))},
                              {"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(1, 60)))}]}
                for _ in range(40)]
    path = write_lines(tmp_path / "t.jsonl", examples)
    for model, filename in (("open-mistral-7b", "mistral_instruct_tokenizer_240323.model.v3"),
                            ("open-mistral-nemo", "tekken_240718.json"), ("ministral-8b-latest", "tekken_240718.json"),
                            ("mistral-small-2409", "tekken_240718.json")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = MistralTokenizer.from_file(str(MistralTokenizer._data_path() / filename),
                                                   mode=ValidationMode.finetuning)
        expected = [len(reference.encode_chat_completion(ChatCompletionRequest(**e)).tokens) for e in examples]
        counter = mistral_counter(model)
        assert [counter.count(e["messages"]) for e in examples] == expected
        report = validate(path, provider="mistral", counter=counter)
        assert report.data_tokens == sum(expected)


def test_openai_counts_use_the_models_encoding_and_chat_overhead():
    import bpe_openai

    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "general kenobi"}]
    for model, enc in (("gpt-4o-mini-2024-07-18", "o200k_base"), ("gpt-3.5-turbo-0125", "cl100k_base")):
        e = bpe_openai.get_encoding(enc)
        expected = 3 + sum(3 + len(e.encode(m["role"])) + len(e.encode(m["content"])) for m in msgs)
        assert openai_counter(model).count(msgs) == expected
    assert kind_of("openai").counter("gpt-4o-mini").name == "bpe-openai o200k_base"


def test_estimate_multiplies_tokens_by_epochs():
    price = price_for("openai", "gpt-4o-mini-2024-07-18")
    one = estimate(price, 6_000_000, 20_000, epochs=1)
    three = estimate(price, 6_000_000, 20_000, epochs=3)
    assert three.trained_tokens == 3 * one.trained_tokens == 18_000_000
    assert three.cost == pytest.approx(3 * one.cost) == pytest.approx(54.0)
    steps = estimate(price_for("mistral", "open-mistral-7b"), 1_000_000, 1000, training_steps=100)
    assert steps.trained_tokens == 100 * 131072 and steps.cost == pytest.approx(13.1072)
    tiny = estimate(price_for("mistral", "open-mistral-7b"), 10, 1, epochs=1)
    assert tiny.cost == 4.0 and "minimum fee" in " ".join(tiny.notes)
    over = price_for("mistral", "open-mistral-7b", {"mistral/open-mistral-7b": {"train_per_m": 2.5}})
    assert over.train_per_m == 2.5 and over.min_fee == 4.0 and "controller.toml" in over.source


def test_estimate_cli_for_5000_examples(tmp_path):
    path = write_lines(tmp_path / "big.jsonl", [ex(i) for i in range(5_000)])
    one, three = (json.loads(p.stdout) for p in run_ftctl_many(
        *[["estimate", str(path), "--provider", "openai", "--model", "gpt-4o-mini", "--epochs", n, "--json"]
          for n in ("1", "3")], timeout=180))
    assert one["examples"] == three["examples"] == 5_000
    assert three["trained_tokens"] == 3 * one["trained_tokens"] == 3 * three["data_tokens"]
    assert abs(three["total"] - 3 * one["total"]) <= 0.02  # both rounded to cents


def test_estimate_cli_shows_the_providers_quote(make_config):
    cfg = make_config(agents=("qa",))
    p = run_ftctl("estimate", str(cfg.parent / "data" / "qa.jsonl"), "--provider", "sim", "--model",
                  "open-mistral-7b", "--training-steps", "100", "--json", config=cfg)
    data = json.loads(p.stdout)
    assert data["provider_quote"] == pytest.approx(13.11) and data["total"] == pytest.approx(13.11)
    assert data["trained_tokens"] == 100 * 131072


def test_budget_keeps_an_expensive_job_out_of_the_provider(make_config, clock):
    from ftctl.controller.config import load_config
    from ftctl.controller.engine.tick import Ticker
    from ftctl.controller.preflight.submit import plan_submissions, store_submissions
    from ftctl.models import Store
    from ftctl.providers import build_provider

    from ftctl.models import utcnow

    clock.now = utcnow()  # `ftctl budget` below counts spending in the real current period
    extra = '\n[budget]\ntotal = 10.0\n'
    cfg = load_config(make_config(agents=("qa", "legal", "support"), concurrency=3, extra=extra))
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))  # $4.00 each (minimum fee)
    sim = build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))
    rec = Ticker(cfg, store, {"sim": sim}, clock=clock, rng=random.Random(0))
    rec.tick()
    jobs = {j.agent: j for j in store.list_jobs()}
    assert jobs["qa"].state == jobs["legal"].state == "queued"
    assert jobs["support"].state == "prepared"
    from ftctl.controller.records import live_facts

    assert reason_of(jobs["support"], live_facts(store, cfg)) == "over budget: estimate $4.00 > $2.00 left"
    for _ in range(60):
        clock.advance(1)
        rec.tick()
    assert reason_of(store.get_job(jobs["support"].id), live_facts(store, cfg)) == \
        "over budget: estimate $4.00 > $2.00 left"
    assert len(sim.engine.all_jobs()) == 2  # never reached the provider
    status, budget = run_ftctl_many(["status"], ["budget", "--json"], config=cfg.path)
    assert "over budget: estimate $4.00 > $2.00 left" in status.stdout
    budget = json.loads(budget.stdout)
    assert budget["spent"] == 8.0 and budget["remaining"] == 2.0 and budget["jobs_over_budget"] == [jobs["support"].id]


def test_submit_refuses_a_job_over_the_per_job_cap(make_config):
    cfg = make_config(agents=("qa",), extra='\n[budget]\nper_job = 3.0\n')
    p = run_ftctl("submit", "qa", config=cfg)
    assert p.returncode == 2
    assert "agents.qa.training_file: estimate $4.00 exceeds budget.per_job $3.00" in p.stderr
    assert not (cfg.parent / "ftctl.db").exists()  # checked before the database is even opened


def test_budget_reason_in_the_pure_step():
    jobs = [rc.JobView(id=i, agent="a", provider="sim", state="prepared", estimated_cost=6.10) for i in (1, 2)]
    pv = rc.ProviderView(name="sim", configured_limit=5, jobs=())
    from ftctl.controller.engine.policy import Budget, Policy
    from ftctl.controller.ledger.reasons import Live, render

    out = rc.decide(jobs, {"sim": pv}, __import__("datetime").datetime(2026, 1, 1), Policy(), random.Random(0),
                    Budget(total=10.0, spent=3.9))
    assert [d.job_id for d in out if isinstance(d, rc.Submit)] == [1]
    (note,) = [d for d in out if isinstance(d, rc.Note)]
    left = Budget(total=10.0, spent=3.9).left(6.10)
    assert render(note.updates["reason_code"], note.updates["reason_args"], Live(budget_left=left)) == \
        "over budget: estimate $6.10 > $0.00 left"


@pytest.fixture
def weighted(tmp_path):
    """A cross-agent set: weights 1.0/0.5/0.2 at 60/30/10%, three source agents."""
    rng = random.Random(11)
    rows = []
    for i in range(20_000):
        w = rng.choices([1.0, 0.5, 0.2], weights=[60, 30, 10])[0]
        agent = rng.choice(["legal", "qa", "support"])
        rows.append(ex(i, weight=w, source_agent=agent, target_agent="content"))
    return write_lines(tmp_path / "cross.jsonl", rows)


def shares(path, key):
    c = Counter(json.loads(l).get(key) for l in open(path))
    total = sum(c.values())
    return {k: 100 * v / total for k, v in c.items()}


def test_prepare_keeps_each_weights_share_and_is_reproducible(weighted, tmp_path):
    out_a, out_b, out_c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    res = prepare(weighted, out_a, provider="mistral", max_examples=5000, seed=7)
    prepare(weighted, out_b, provider="mistral", max_examples=5000, seed=7)
    prepare(weighted, out_c, provider="mistral", max_examples=5000, seed=8)
    assert res.kept == 5000 and sum(1 for _ in open(out_a)) == 5000
    assert out_a.read_bytes() == out_b.read_bytes()
    assert out_a.read_bytes() != out_c.read_bytes()
    for key in ("weight", "source_agent"):
        before, after = shares(weighted, key), shares(out_a, key)
        assert all(abs(before[k] - after[k]) <= 1.0 for k in before), (key, before, after)


def test_prepare_strips_scrubs_and_drops_bad_lines(tmp_path):
    src = write_lines(tmp_path / "raw.jsonl", [
        ex(1, weight=1, source_agent="qa"),
        {"messages": [{"role": "user", "content": "write to ann@corp.example or 020 7946 0958"},
                      {"role": "assistant", "content": "done"}], "weight": 1},
        "not json", ex(1, weight=1, source_agent="qa"),
        {"messages": [{"role": "user", "content": "q"}]},
    ])
    # 020 7946 0958 is a London number written without +44: found when the region is GB
    res = prepare(src, tmp_path / "out.jsonl", provider="mistral", strip_extra=True, scrub_pii=True, phone_region="GB")
    rows = [json.loads(l) for l in open(tmp_path / "out.jsonl")]
    assert res.kept == 2 and set(res.removed) == {"invalid_json", "duplicate", "not_assistant_last"}
    assert all(set(r) == {"messages"} for r in rows)
    assert rows[1]["messages"][0]["content"] == "write to [EMAIL] or [PHONE]"
    assert res.stripped == {"weight": 2, "source_agent": 1} and res.pii_replaced == 2
    assert validate(tmp_path / "out.jsonl", provider="mistral").clean()


def test_prepare_cli_with_a_cost_cap(weighted, tmp_path):
    out = tmp_path / "capped.jsonl"
    p = run_ftctl("prepare", str(weighted), str(out), "--max-cost", "0.05", "--provider", "openai", "--model",
                  "gpt-4o-mini", "--epochs", "1", "--strip-extra", "--seed", "3", "--json", timeout=120)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert 0 < data["kept"] < 20_000 and data["estimated_cost"] <= 0.05
    assert data["kept"] == sum(1 for _ in open(out))
    assert all(abs(data["weight_share_in"][k] - data["weight_share_out"][k]) <= 1.0 for k in data["weight_share_in"])


def test_allocation_sums_and_rounds_fairly():
    take = allocate({("a",): 600, ("b",): 300, ("c",): 100}, 7)
    assert sum(take.values()) == 7 and take == {("a",): 4, ("b",): 2, ("c",): 1}


def test_phone_detection_avoids_dates_and_plain_numbers():
    def phones(text):
        return [text[m.start:m.end] for m in Detector("US").find(text) if m.kind == "phone"]

    assert phones("call +44 20 7946 0958 now") == ["+44 20 7946 0958"]
    assert phones("(415) 555-0123") == ["(415) 555-0123"]
    assert phones("on 2026-11-27 12:30:45 revenue was 138000000") == []


def test_worker_processes_give_the_same_report(malformed, tmp_path, monkeypatch):
    import ftctl.controller.preflight.dataset as dataset

    monkeypatch.setattr(dataset, "CHUNK", 3)  # many chunks, out-of-order completion possible
    big = write_lines(tmp_path / "mix.jsonl", [ex(i % 50) for i in range(200)] + open(malformed).read().splitlines())
    counter = mistral_counter("open-mistral-7b")
    one = validate(big, provider="mistral", counter=counter, context=32768, jobs=1).as_dict()
    two = validate(big, provider="mistral", counter=counter, context=32768, jobs=2).as_dict()
    assert one == two
    # 150 repeats among the first 200, and 7 more from the malformed lines (ex(1)..ex(6), ex(1)); its
    # ex(11) names a target agent, which makes it another example than the plain ex(11)
    assert one["problems"]["duplicate"]["count"] == 157


def test_digest_set_finds_every_repeat_across_growth():
    from ftctl.controller.preflight.report import DigestSet

    rng = random.Random(5)
    values = [rng.getrandbits(64) for _ in range(50_000)] + [0]
    seen = DigestSet(capacity=8)
    assert all(seen.add(v) for v in values)
    assert not any(seen.add(v) for v in values[::7])
    assert len(seen) == len(values)


def test_examples_x_3_epochs_over_the_total_budget_stay_out_of_the_provider(tmp_path):
    from tests.conftest import write_config

    site = tmp_path / "site"
    # 2,000 long examples at $10 a million trained tokens: their tokens x 3 epochs, not the minimum
    # fee, put the job over the budget (the count is the same code at 20,000; the test checks the rule)
    cfg = write_config(site, agents=("qa",), extra='\n[budget]\ntotal = 5.0\n\n[prices."simulated/open-mistral-7b"]\n'
                                                   'train_per_m = 10.0\n')
    cfg.write_text(cfg.read_text().replace("{ training_steps = 10, learning_rate = 0.0001 }", "{ epochs = 3 }"))
    rows = [{"messages": [{"role": "user", "content": f"question {i}: " + "please explain the refund policy " * 20},
                          {"role": "assistant", "content": f"answer {i}: " + "refunds take five days " * 20}]}
            for i in range(2_000)]
    write_lines(site / "data" / "qa.jsonl", rows)
    est, sub, tick, status = run_ftctl_many(
        ["estimate", str(site / "data" / "qa.jsonl"), "--provider", "sim", "--model", "open-mistral-7b", "--epochs",
         "3", "--no-quote", "--json"], ["submit", "qa", "--json"], ["tick"], ["status", "--json"], config=cfg,
        timeout=240)
    est = json.loads(est.stdout)
    assert est["examples"] == 2_000 and est["trained_tokens"] == 3 * est["data_tokens"]
    assert est["total"] == pytest.approx(est["trained_tokens"] / 1e6 * 10.0, abs=0.01) and est["total"] > 5.0
    assert sub.returncode == 0, sub.stderr
    assert json.loads(sub.stdout)[0]["estimated_cost"] == pytest.approx(est["total"], abs=0.01)
    assert tick.returncode == 0
    (job,) = json.loads(status.stdout)
    assert job["state"] == "prepared"
    assert job["reason"] == f"over budget: estimate ${est['total']:.2f} > $5.00 left"
    assert not (site / "sim-sim.db").exists() or not sqlite3.connect(site / "sim-sim.db").execute(
        "SELECT COUNT(*) FROM jobs").fetchone()[0]
