"""[retention] over a store whose history is written on a virtual clock:
what the store reads for the rules (rejection times from the history, which
promotion superseded which, the pipeline stages still training on a model),
an intent the rules protect by the time it is resumed, the events the hooks
get, Ray's artifacts, and the same on PostgreSQL."""

import json
import sys
from datetime import timedelta

import pytest

from ftctl.controller.config import load_config
from ftctl.controller.engine.jobs import fire, fire_promotion
from ftctl.controller.engine.retention import Doomed
from ftctl.controller.ledger.creation import create_job
from ftctl.controller.service.gc import Collector
from ftctl.controller.service.hooks import Dispatcher
from ftctl.models import Store
from ftctl.providers.ray.client import RayProvider

DAY = 86400


class Recorder:
    """The simulated provider's delete calls, recorded (what the collector asked for)."""

    def __init__(self):
        self.models, self.files = [], []

    def delete_model(self, model):
        self.models.append(model)
        return True

    def delete_file(self, file_id):
        self.files.append(file_id)
        return True

    def close(self):
        pass


def site(make_config, tmp_path, database):
    out = tmp_path / "hook.txt"
    dump = "import os, sys; open(sys.argv[1], 'a').write(os.environ['FTCTL_EVENT'] + ' ' + os.environ['FTCTL_JOB_ID'] + ' ' + os.environ['FTCTL_REASON'] + chr(10))"
    extra = (f'\n[providers.ray]\nkind = "ray"\nartifacts = "{tmp_path / "artifacts"}"\n'
             '\n[retention]\nrejected_after = "7d"\nsuperseded_after = "30d"\ncheckpoints = "best"\n'
             f'\n[[hooks]]\non = ["model-deleted", "checkpoints-deleted"]\n'
             f'command = [{json.dumps(sys.executable)}, "-c", {json.dumps(dump)}, "{out}"]\n')
    cfg = load_config(make_config(agents=("qa", "legal"), database=database, extra=extra))
    return cfg, out


def succeeded(store, clock, agent, provider, model, promotion="skip", model_job_id=None, job_file=None):
    job = create_job(store, agent=agent, provider=provider, model="open-mistral-7b", training_file=job_file,
                     content_hash="h-" + model, hyperparameters={}, now=clock(), model_job_id=model_job_id)
    fire(store, job.id, "submit", updates={"client_token": f"{agent}-{job.id}"}, now=clock())
    fire(store, job.id, "succeed", updates={"fine_tuned_model": model}, now=clock(), promotion=promotion)
    return job.id


def ray_model(root, agent, job_id):
    folder = root / agent / f"job-{job_id}"
    (folder / "model").mkdir(parents=True)
    for step in (5, 10):
        (folder / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    return str(folder / "model")


def run(make_config, tmp_path, clock, database):
    cfg, hook_out = site(make_config, tmp_path, database)
    store = Store(cfg.database_url)
    data = cfg.base_dir / "data" / "qa.jsonl"
    sim = Recorder()
    ray = RayProvider("ray", cfg.providers["ray"])
    gc = Collector(cfg, store, {"sim": sim, "ray": ray}, clock=clock)
    root = tmp_path / "artifacts"

    old = succeeded(store, clock, "qa", "sim", "ft:qa:old")                    # superseded on day 1
    clock.advance(DAY)
    base = succeeded(store, clock, "legal", "sim", "ft:legal:base", promotion=None)  # a candidate...
    fire_promotion(store, base, "reject", now=clock())                          # ... rejected by hand on day 1
    child = create_job(store, agent="legal", provider="sim", model="@legal", training_file=data,
                       content_hash="h-child", hyperparameters={}, now=clock(), model_job_id=base).id
    new = succeeded(store, clock, "qa", "sim", "ft:qa:new")                    # qa's exported model
    legal = succeeded(store, clock, "legal", "ray", "x", promotion="skip")
    # the Ray job's model sits in the artifacts folder, with two checkpoints
    from ftctl.controller.engine.jobs import note
    note(store, legal, {"fine_tuned_model": ray_model(root, "legal", legal)})
    gone = succeeded(store, clock, "qa", "sim", "ft:qa:rejected", promotion=None)
    fire_promotion(store, gone, "reject", now=clock())

    # day 1: only the Ray job's checkpoints go (checkpoints = "best")
    assert [(d.kind, d.job_id) for d in gc.plan()] == [("checkpoints", legal)]
    gc.run_once()
    assert (root / f"legal/job-{legal}/model").is_dir() and not list((root / f"legal/job-{legal}/checkpoints").iterdir())
    assert gc.plan() == []  # pruned once

    # day 9: the rejected model goes; the rejected base of a pipeline stage still waiting does not
    clock.advance(8 * DAY)
    assert [(d.kind, d.job_id, d.rule) for d in gc.plan()] == [("model", gone, "rejected")]
    # an intent left by a killed process, for a model a person promoted again since: never deleted
    stale = gc._intent(Doomed("model", "sim", "ft:qa:rejected", gone, "rejected"), clock())
    fire_promotion(store, gone, "promote", now=clock())
    assert gc.run_once() == []
    assert sim.models == [] and [(d.id, d.outcome) for d in store.deletions(done=True)][-1] == (stale, "kept")

    # day 40: qa's first two models, superseded on day 1 and day 9 (when `gone` was promoted again);
    # `base` stays while the pipeline stage that trains on it is not done
    clock.advance(31 * DAY)
    assert [(d.kind, d.job_id, d.rule) for d in gc.plan()] == [("model", old, "superseded"),
                                                              ("model", new, "superseded")]
    fire(store, child, "cancel", now=clock())  # the stage that trained on `base` is done with it
    clock.advance(DAY)
    done = gc.run_once()
    assert [(r["job_id"], r["rule"]) for r in done] == [(old, "superseded"), (base, "rejected"), (new, "superseded")]
    assert sim.models == ["ft:qa:old", "ft:legal:base", "ft:qa:new"]
    assert set(store.promoted_models().values()) == {"ft:qa:rejected", str(root / f"legal/job-{legal}/model")}
    assert gc.plan() == []  # the exported models stay, whatever the clock

    # the hooks get each deletion, with its rule in the reason
    Dispatcher(store, cfg, {}, clock=clock).run_once()
    told = hook_out.read_text().splitlines()
    assert [line.split()[:2] for line in told] == [["checkpoints-deleted", str(legal)], ["model-deleted", str(old)],
                                                   ["model-deleted", str(base)], ["model-deleted", str(new)]]
    assert 'superseded_after = "30d"' in told[1] and 'rejected_after = "7d"' in told[2]
    kept, saved = store.storage_fees()
    assert saved == 0.0  # the simulated provider charges no storage fee
    store.close()
    gc.close()


def test_the_rules_over_the_store_on_sqlite(make_config, tmp_path, clock):
    run(make_config, tmp_path, clock, "sqlite:///ftctl.db")


@pytest.mark.postgres
def test_the_rules_over_the_store_on_postgres(make_config, tmp_path, clock, postgres_server):
    # a database of its own: the shared one holds other tests' promoted models
    run(make_config, tmp_path, clock, postgres_server.database("ftctl_gc"))
