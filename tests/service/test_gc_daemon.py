"""A real daemon SIGKILLed in the middle of a deletion at the provider: the
intent it wrote first is finished by the next daemon, nothing is deleted
twice by mistake, and the exported models are never touched."""

import sqlite3

from tests.conftest import FAKE_KEY, KEY_ENV, Daemon, ftctl_env, run_ftctl, start_emulator, wait_until
from tests.service.test_gc import campaign, provider_models

from ftctl.models import Store

DELETE = "DELETE /v1/models/{model_id}"
FAST = '\n[retention]\nrejected_after = "0s"\nsuperseded_after = "0s"\ninterval = "0.2s"\n'


def deletions(db):
    with sqlite3.connect(db) as c:
        return c.execute("SELECT job_id, target, done_at IS NOT NULL, outcome FROM deletions ORDER BY id").fetchall()


def test_a_daemon_killed_mid_deletion_neither_forgets_nor_deletes_what_it_should_not(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    env = ftctl_env(**{KEY_ENV: FAKE_KEY})
    with start_emulator("mistral", tmp_path, queue_time=0.02, validate_time=0.02, train_time=0.05) as srv:
        cfg, jobs, qa = campaign(tmp_path, srv, "mistral", retention=FAST)
        store = Store(cfg.database_url)
        exported = set(store.promoted_models().values())
        store.close()
        doomed = {jobs[qa[0]].fine_tuned_model, jobs[qa[1]].fine_tuned_model}
        db = cfg.path.parent / "ftctl.db"
        # the first delete is held 4 s at the provider before it takes effect
        srv.emulator.faults.add(method="DELETE", path="/v1/models/", delay=4.0, times=1)

        first = Daemon(cfg.path, env=env)
        assert first.wait_for("deleting at the provider", timeout=60), first.stderr[-3000:]
        assert wait_until(lambda: srv.emulator.calls.get(DELETE, 0) >= 1, timeout=10)
        first.kill()
        # the kill landed mid-deletion: the intent is stored and open, the provider still has the model
        (job_id, target, done, _), = deletions(db)
        assert not done and target in doomed and target in provider_models(srv)
        # ... and the request it had sent lands after the daemon is gone
        assert wait_until(lambda: target not in provider_models(srv), timeout=10)

        second = Daemon(cfg.path, env=env)
        try:
            assert wait_until(lambda: len(deletions(db)) == 2 and all(d[2] for d in deletions(db)), timeout=60), \
                second.stderr[-3000:]
            # while a daemon leads, `ftctl gc` leaves the deleting to it: one line, exit 3
            refused = run_ftctl("gc", config=cfg.path, env=env)
            assert refused.returncode == 3 and "applies [retention]" in refused.stderr, refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1
        finally:
            second.kill()
        rows = deletions(db)
        assert {r[1] for r in rows} == doomed
        assert dict((r[1], r[3]) for r in rows) == {target: "gone", (doomed - {target}).pop(): "deleted"}
        assert provider_models(srv) == exported
        assert srv.emulator.calls[DELETE] == 3  # the interrupted one, its retry (404), the other one
        with sqlite3.connect(db) as c:
            told = c.execute("SELECT job_id, COUNT(*) FROM job_events WHERE name = 'model-deleted' "
                             "GROUP BY job_id").fetchall()
            deleted_at_provider = {r[0] for r in sqlite3.connect(srv.emulator.engine.path).execute(
                "SELECT model FROM deleted_models")}
        assert dict(told) == {qa[0]: 1, qa[1]: 1}
        assert not (deleted_at_provider & exported)
