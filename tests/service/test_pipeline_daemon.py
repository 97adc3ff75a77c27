"""A pipeline and the export file under the real daemon, SIGKILLed at random
moments: stage 2 is created once, never before stage 1 succeeded, and the
file the agents read always parses and never names a rejected model."""

import random
import sqlite3
import threading
import time
import tomllib

import pytest

from tests.conftest import Daemon, write_config, write_training_file
from tests.engine.test_pipelines import CHAIN, EXPORT, GATES

from ftctl.controller.config import load_config
from ftctl.controller.preflight.submit import plan_submissions, store_submissions
from ftctl.models import Store

pytestmark = pytest.mark.slow


def unfinished(db):
    with sqlite3.connect(db) as c:
        return c.execute("SELECT COUNT(*) FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled') "
                         "OR promotion IN ('candidate', 'evaluating')").fetchone()[0]


class Reader(threading.Thread):
    """Reads the export file as fast as it can, as an agent would."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.reads, self.torn, self.seen = path, 0, [], []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                continue
            try:
                models = tomllib.loads(text)["models"]
            except (tomllib.TOMLDecodeError, KeyError):
                self.torn.append(text)
                continue
            self.reads += 1
            if not self.seen or self.seen[-1] != models:
                self.seen.append(models)


def test_the_daemon_killed_at_random_never_creates_stage_two_twice_or_early_and_the_export_always_parses(
        tmp_path):
    cfg_path = write_config(tmp_path / "site", agents=("qa", "legal"), concurrency=2,
                            queue_time="0.1s", validate_time="0.2s", train_time="0.5s", poll="0.1s",
                            extra=CHAIN + GATES + EXPORT)
    for name in ("feedback", "conversation"):
        write_training_file(cfg_path.parent / "data" / f"{name}.jsonl")
    cfg = load_config(cfg_path)
    store = Store(cfg.database_url)
    store_submissions(store, plan_submissions(cfg, [], all_agents=True))
    store.close()
    db, export = cfg_path.parent / "ftctl.db", cfg.resolve("agents/models.toml")
    reader = Reader(export)
    reader.start()
    rng = random.Random(7)
    landed = 0
    try:
        for _ in range(3):
            daemon = Daemon(cfg_path)
            assert daemon.wait_for("daemon started", timeout=30), daemon.stderr[-2000:]
            time.sleep(rng.uniform(0.2, 1.0))
            busy = unfinished(db)
            daemon.kill()
            landed += bool(busy)
        assert landed >= 2, landed  # the kills hit a campaign in progress
        final = Daemon(cfg_path, "--until-done")
        assert final.wait(timeout=90) == 0, final.stderr[-3000:]
    finally:
        reader.stop.set()
        reader.join(timeout=5)
    with sqlite3.connect(db) as c:
        jobs = {a: (s, p, m, t) for a, s, p, m, t in c.execute(
            "SELECT agent, state, promotion, fine_tuned_model, client_token FROM jobs")}
    assert {a: (s, p) for a, (s, p, _, _) in jobs.items()} == {
        "qa": ("succeeded", "rejected"), "legal": ("succeeded", "promoted"), "feedback": ("succeeded", "promoted"),
        "conversation": ("succeeded", "promoted")}
    with sqlite3.connect(cfg_path.parent / "sim-sim.db") as sim:
        at = [dict(zip(("suffix", "model", "created_at", "events"), r)) for r in sim.execute(
            "SELECT suffix, model, created_at, events FROM jobs")]
    import json

    stage2 = [j for j in at if j["suffix"].startswith("conversat")]
    assert len(stage2) == 1 and len({j["suffix"] for j in at}) == len(at)  # once, and one job per token
    assert stage2[0]["model"] == jobs["feedback"][2]
    stage1 = next(j for j in at if j["suffix"] == jobs["feedback"][3])
    done = next(e["created_at"] for e in json.loads(stage1["events"]) if e["data"]["status"] == "SUCCESS")
    assert stage2[0]["created_at"] >= done  # never early
    # the file always parsed, followed the promotions, and never named the rejected model
    assert reader.torn == [] and reader.reads > 20
    assert all("qa" not in models for models in reader.seen)
    assert reader.seen[-1] == {a: jobs[a][2] for a in ("conversation", "feedback", "legal")}
