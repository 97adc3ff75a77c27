"""The SQLite store: WAL, migrations, the daemon lock."""

import tempfile
import os
import sqlite3
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from ftctl.models import LockHeld, Store, StoreError
from ftctl.models.tables import SCHEMA_HEAD


def test_wal_mode_and_schema_head(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    store.close()
    with sqlite3.connect(tmp_path / "a.db") as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_HEAD


def test_migrations_build_exactly_the_models(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    store.close()
    assert diff == []


def test_a_newer_schema_is_refused(tmp_path):
    Store(f"sqlite:///{tmp_path / 'a.db'}").close()
    with sqlite3.connect(tmp_path / "a.db") as c:
        c.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="newer than this ftctl"):
        Store(f"sqlite:///{tmp_path / 'a.db'}")


def test_readers_are_not_blocked_by_an_open_write(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'a.db'}")
    with store.write() as s:
        s.connection().exec_driver_sql("UPDATE alembic_version SET version_num = version_num")
        # a writer holds the lock; a reader in another process still answers at once
        p = subprocess.run([sys.executable, "-c",
                            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=0.5);"
                            "print(c.execute('select count(*) from jobs').fetchone()[0])",
                            str(tmp_path / "a.db")], capture_output=True, text=True, timeout=20, cwd=tempfile.gettempdir())
        assert p.returncode == 0 and p.stdout.strip() == "0", p.stderr
    store.close()


def test_daemon_lock_is_exclusive_and_dies_with_its_holder(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys,time; from ftctl.models import Store; s=Store(sys.argv[1]);"
                               "s.acquire_daemon_lock(); print('held', flush=True); time.sleep(60)", url],
                              stdout=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
    try:
        assert holder.stdout.readline().strip() == "held"
        other = Store(url)
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            other.acquire_daemon_lock()
        holder.kill()
        holder.wait()
        other.acquire_daemon_lock()  # no stale lock after SIGKILL
        other.close()
    finally:
        holder.kill()


def test_password_in_url_never_shown(tmp_path):
    with pytest.raises(StoreError) as err:
        Store("postgresql://ftctl:s3cret-pw@127.0.0.1:1/nodb")
    assert "s3cret-pw" not in str(err.value)
    assert "ftctl:***@127.0.0.1:1/nodb" in str(err.value)


def test_an_older_database_is_migrated_in_place(tmp_path):
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from ftctl.models.store import MIGRATIONS

    db = tmp_path / "old.db"
    from sqlalchemy import create_engine

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with create_engine(f"sqlite:///{db}").begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.exec_driver_sql(
            "INSERT INTO jobs (agent, provider, model, training_file, content_hash, hyperparameters, state, attempt,"
            " cancel_pending, created_at, updated_at) VALUES ('qa', 'sim', 'm', 'f', 'h', '{}', 'succeeded', 1, 0,"
            " '2026-01-01 00:00:00', '2026-01-01 00:00:00')")
    store = Store(f"sqlite:///{db}")
    (job,) = store.list_jobs()
    assert (job.agent, job.state, job.data_tokens, job.trained_tokens) == ("qa", "succeeded", None, None)
    store.close()
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_HEAD


def test_the_daemon_probe_sees_a_holder_without_taking_the_lock(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    store = Store(url)
    assert store.daemon_holder() is None  # no daemon ever ran
    store.acquire_daemon_lock()
    other = Store(url)
    assert other.daemon_holder() == f"pid {os.getpid()}"
    assert other.daemon_holder() == f"pid {os.getpid()}"  # probing took nothing
    store.release_daemon_lock()
    assert other.daemon_holder() is None
    other.close()
    store.close()


def test_the_waiting_lines_indexes_are_the_same_from_the_migration_and_the_models(tmp_path):
    from sqlalchemy import create_engine

    Store(f"sqlite:///{tmp_path / 'migrated.db'}").close()
    SQLModel.metadata.create_all(create_engine(f"sqlite:///{tmp_path / 'models.db'}"))
    sql = {}
    for name in ("migrated", "models"):
        with sqlite3.connect(tmp_path / f"{name}.db") as c:
            sql[name] = {n: " ".join(s.replace('"', "").split()) for n, s in c.execute(
                "SELECT name, sql FROM sqlite_master WHERE name IN ('ix_jobs_line', 'ix_jobs_held', 'ix_jobs_tried')")}
    assert len(sql["migrated"]) == 3 and sql["migrated"] == sql["models"]
