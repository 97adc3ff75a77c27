"""The tick's provider listing after a bulk campaign (issue 18.7): it stops
at the page holding the last job that can still change, not at a time
window, so the campaign's finished jobs are not read again every tick; and
what can still change is never missed (someone else's old active job, a
create whose job id is not known yet). Pages are counted at the service."""

import random

from ftctl.controller.config import load_config
from ftctl.controller.engine.tick import Ticker
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import Store
from ftctl.providers import build_provider
from ftctl.providers.simulated.provider import PAGE_SIZE


def _site(make_config, clock, jobs: int = 210):
    cfg = load_config(make_config(agents=("qa", "legal", "support"), concurrency=60, max_concurrent=61,
                                  queue_time="1s", validate_time="1s", train_time="4s"))
    store = Store(cfg.database_url)
    sim = build_provider("sim", cfg.providers["sim"], cfg.provider_env(clock.epoch))
    pages: list[int] = []
    inner = sim.engine.list_jobs

    def counted(**kw):
        pages.append(kw.get("page", 0))
        return inner(**kw)
    sim.engine.list_jobs = counted
    gets = sim.gets = []
    get = sim.engine.get_job
    sim.engine.get_job = lambda job_id: gets.append(job_id) or get(job_id)
    # someone else's job on the same key, created before the campaign and active all along
    line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    file_id = sim.engine.upload_file("x.jsonl", line)["id"]
    other = sim.engine.create_job(model="open-mistral-7b", training_files=[file_id], suffix="someone-else",
                                  auto_start=False)["id"]
    clock.advance(60)
    plans = plan_submissions(cfg, [], all_agents=True)
    for _ in range(jobs // len(plans)):
        store_submissions(store, plans, force=True)
    ticker = Ticker(cfg, store, {"sim": sim}, clock=clock, rng=random.Random(0))
    for _ in range(200):
        result = ticker.tick()
        if result.states.get("succeeded", 0) == jobs:
            break
        clock.advance(2)
    assert result.states == {"succeeded": jobs}, result.states
    return cfg, store, ticker, plans, pages, other


def _running(ticker, store, plans, clock, pages):
    """Three more jobs, ticked until they run."""
    store_submissions(store, plans, force=True)
    for _ in range(4):
        ticker.tick()
        clock.advance(1)
    assert ticker.tick().states["running"] == 3


def test_a_tick_after_a_bulk_campaign_reads_one_page(make_config, clock):
    cfg, store, ticker, plans, pages, other = _site(make_config, clock)
    _running(ticker, store, plans, clock, pages)
    window = 210 // PAGE_SIZE + 1  # what the window holds: the campaign, minutes old
    del pages[:]
    gets = ticker.providers["sim"].gets
    del gets[:]
    for _ in range(3):
        result = ticker.tick()
        assert result.states["running"] == 3
    assert pages == [0, 0, 0], pages  # one page a tick, not the window's
    assert window >= 3  # the window is several pages; a tick reads one
    # someone else's job, older than the whole campaign, still active: read by its id, not by 3 more pages
    assert gets == [other] * 3
    assert other in ticker._live["sim"]
    # a restart has no memory of the others' active jobs: its first listing reads the window
    fresh = Ticker(cfg, store, {"sim": ticker.providers["sim"]}, clock=clock, rng=random.Random(0))
    del pages[:]
    fresh.tick()
    assert len(pages) >= window
    del pages[:]
    fresh.tick()
    assert pages == [0]
    assert other in {pj.id for pj in ticker.providers["sim"].list_jobs() if pj.active}
    # and it holds a slot: with 4 allowed (3 running + it), a new job waits
    cfg = load_config(make_config(agents=("qa", "legal", "support"), concurrency=4, max_concurrent=61,
                                  queue_time="1s", validate_time="1s", train_time="4s"))
    fresh.reload(cfg)
    fresh.tick()  # a new config: its first listing reads the window again
    store_submissions(store, plans[:1], force=True)
    del pages[:]
    result = fresh.tick()
    assert result.states["prepared"] == 1 and result.waiting_for_slot == 1, result.summary()
    store.close()


def test_a_create_whose_job_id_is_unknown_reads_back_to_its_time(make_config, clock):
    from ftctl.controller.engine.jobs import fire

    cfg, store, ticker, plans, pages, _ = _site(make_config, clock, jobs=240)
    ticker.tick()
    # a create that went out just before the campaign's last jobs, its outcome unknown (no job id)
    sent = ticker.providers["sim"].get_job(store.list_jobs()[-120].provider_job_id).created_at
    store_submissions(store, plans[:1], force=True)
    job = store.list_jobs()[-1]
    fire(store, job.id, "submit", updates={"client_token": "qa-ambiguous", "intent_at": sent}, now=clock.now)
    del pages[:]
    ticker.tick()
    assert len(pages) >= 2, pages  # back past its intent (and the margin), not one page
    store.close()
