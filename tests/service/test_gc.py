"""[retention] at the providers: the real Mistral and OpenAI SDKs against
the emulators' own delete endpoints, the store's history and events, `ftctl
gc`, `budget`'s storage fees, and a clock moved ahead 40 days."""

import json
import random
import time
from datetime import timedelta

import pytest

import ftctl
from tests.conftest import FAKE_KEY, KEY_ENV, run_ftctl, start_emulator, write_remote_config

from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.controller.service.gc import Collector
from ftctl.models import Store, utcnow
from ftctl.models.reads import open_reads

RETENTION = '\n[retention]\nrejected_after = "7d"\nsuperseded_after = "30d"\nfiles_after = "30d"\n'
FEES = '\n[prices."{kind}/{model}"]\nstorage_per_month = 2.0\n'
MODEL = {"mistral": "open-mistral-7b", "openai": "gpt-4o-mini-2024-07-18",
         "together": "mistralai/Mistral-7B-Instruct-v0.2"}


def run_to_end(cfg, store, agents, force=False):
    store_submissions(store, plan_submissions(cfg, agents), force=force)
    rec = Ticker(cfg, store, rng=random.Random(1))
    end = time.monotonic() + 40
    while not rec.tick().all_terminal or any(j.promotion not in ("promoted", "rejected", None)
                                              for j in store.list_jobs()):
        assert time.monotonic() < end, [(j.id, j.state, j.promotion) for j in store.list_jobs()]
        time.sleep(0.05)
    rec.close()


def site(tmp_path, srv, kind, retention=RETENTION):
    extra = FEES.format(kind=kind, model=MODEL[kind]) + retention
    return write_remote_config(tmp_path / "site", kind, srv.url, agents=("qa", "legal"), extra=extra)


def campaign(tmp_path, srv, kind, retention=RETENTION):
    """qa: three jobs promoted one after another (the first two superseded),
    the second then rejected by hand; legal: one. Returns the config and job ids."""
    cfg = load_config(site(tmp_path, srv, kind, retention))
    store = Store(cfg.database_url)
    run_to_end(cfg, store, ["qa", "legal"])
    run_to_end(cfg, store, ["qa"], force=True)
    run_to_end(cfg, store, ["qa"], force=True)
    jobs = {j.id: j for j in store.list_jobs()}
    qa = sorted(i for i, j in jobs.items() if j.agent == "qa")
    with ftctl.Ftctl(cfg) as ft:
        ft.reject(qa[1])
    store.close()
    return cfg, jobs, qa


def provider_models(srv):
    return {m["id"] for m in srv.emulator.engine.list_models()}


@pytest.mark.parametrize("kind", ["mistral", "openai", "together"])
def test_forty_days_on_only_the_exported_models_remain(kind, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with start_emulator(kind, tmp_path, queue_time=0.02, validate_time=0.02, train_time=0.05) as srv:
        cfg, jobs, qa = campaign(tmp_path, srv, kind)
        store = Store(cfg.database_url)
        exported = set(store.promoted_models().values())
        assert len(exported) == 2 and jobs[qa[2]].fine_tuned_model in exported
        made = provider_models(srv)  # (Together's emulator names its models its own way)
        assert len(made) == 4 and (kind == "together" or made == {j.fine_tuned_model for j in jobs.values()})
        files_before = {f["id"] for f in srv.emulator.engine.list_files()}
        assert files_before

        now = utcnow()
        gc = Collector(cfg, store, clock=lambda: now)
        assert gc.run_once() == []  # nothing is old enough yet
        gc.clock = lambda: now + timedelta(days=8)  # the rejected model goes after 7 days
        first = [(r["kind"], r["job_id"], r["rule"]) for r in gc.run_once()]
        gc.clock = lambda: now + timedelta(days=40)  # the superseded one and the files after 30
        done = gc.run_once()
        deleted_files = {r["target"] for r in done if r["kind"] == "file"}
        assert len(deleted_files) == len(files_before) and (kind == "together" or deleted_files == files_before)
        assert not {f["id"] for f in srv.emulator.engine.list_files()}
        assert store.uploaded_file(kind, jobs[qa[0]].content_hash) is None  # a later job uploads it again
        gc.close()
        if kind == "together":  # no fine-tuned model delete there: its models stay, and nothing says otherwise
            assert first == [] and not [r for r in done if r["kind"] == "model"]
            assert provider_models(srv) == made and store.storage_fees() == (8.0, 0.0)
            store.close()
            return
        assert first == [("model", qa[1], "rejected")]
        assert [(r["kind"], r["job_id"], r["rule"]) for r in done if r["kind"] == "model"] == [
            ("model", qa[0], "superseded")]
        # the provider's own model list: the exported models, nothing rejected or superseded
        assert provider_models(srv) == exported
        # each deletion once in the history, as an event a hook can ask for
        assert [e.name for e in store.events(qa[1])].count("model-deleted") == 1
        assert [e.name for e in store.events(qa[2])].count("model-deleted") == 0
        assert store.undelivered(["model-deleted"])["pending"] == 2  # in the outbox, for the hooks
        assert store.storage_fees() == (4.0, 4.0)
        # the budget counts each deleted model's fee until its deletion, the kept ones on: $2 a month each
        later = now + timedelta(days=60)
        expected = 2.0 * (8 + 40 + 60 + 60) / 30
        assert abs(store.storage_since(now - timedelta(days=1), later) - expected) < 0.01
        reads = open_reads(cfg.database_url)
        assert abs(reads.storage_since(now - timedelta(days=1), later) - expected) < 0.01
        assert reads.storage_fees() == (4.0, 4.0)
        reads.close()
        store.close()


def test_without_retention_nothing_is_ever_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with start_emulator("mistral", tmp_path, queue_time=0.02, validate_time=0.02, train_time=0.05) as srv:
        cfg, jobs, qa = campaign(tmp_path, srv, "mistral", retention="")
        store = Store(cfg.database_url)
        gc = Collector(cfg, store, clock=lambda: utcnow() + timedelta(days=4000))
        assert gc.plan() == [] and gc.run_once() == []
        assert provider_models(srv) == {j.fine_tuned_model for j in jobs.values()}
        assert srv.emulator.calls.get("DELETE /v1/models/{model_id}", 0) == 0
        store.close()
        r = run_ftctl("gc", "--dry-run", config=cfg.path)
        assert r.returncode == 3 and "no [retention] section" in r.stderr and len(r.stderr.splitlines()) == 1


def test_gc_dry_run_lists_and_gc_deletes(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    zero = '\n[retention]\nrejected_after = "0s"\nsuperseded_after = "0s"\n'
    with start_emulator("mistral", tmp_path, queue_time=0.02, validate_time=0.02, train_time=0.05) as srv:
        cfg, jobs, qa = campaign(tmp_path, srv, "mistral", retention=zero)
        env = {KEY_ENV: FAKE_KEY}
        r = run_ftctl("gc", "--dry-run", "--json", config=cfg.path, env=env)
        assert r.returncode == 0, r.stderr
        plan = json.loads(r.stdout)
        assert sorted((d["job_id"], d["rule"]) for d in plan["deletions"]) == [(qa[0], "superseded"),
                                                                               (qa[1], "rejected")]
        assert plan["saves_per_month"] == 4.0
        assert provider_models(srv) == {j.fine_tuned_model for j in jobs.values()}  # a dry run deletes nothing
        text = run_ftctl("gc", "--dry-run", config=cfg.path, env=env).stdout
        assert "2 to delete, saving $4.00 a month" in text

        r = run_ftctl("gc", config=cfg.path, env=env)
        assert r.returncode == 0, r.stderr
        assert "2 deleted, saving $4.00 a month" in r.stdout
        assert FAKE_KEY not in r.stdout + r.stderr
        assert provider_models(srv) == {jobs[qa[2]].fine_tuned_model,
                                        next(j.fine_tuned_model for j in jobs.values() if j.agent == "legal")}
        budget = json.loads(run_ftctl("budget", "--json", config=cfg.path).stdout)
        assert (budget["storage_per_month_kept"], budget["storage_per_month_saved"]) == (4.0, 4.0)
        assert "retention saves $4.00 a month" in run_ftctl("budget", config=cfg.path).stdout
        events = run_ftctl("events", "-o", "json", config=cfg.path).stdout
        assert events.count('"event": "model-deleted"') == 2
