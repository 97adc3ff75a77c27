"""The reads the command line makes (models.reads): grouped and indexed in the
database, streamed out of it, and without the ORM."""

import sqlite3
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta

import pytest

from ftctl.models import Store
from ftctl.models.reads import Filter, Reads, open_reads

T0 = datetime(2026, 3, 1, 12, 0, 0)


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "ftctl.db"
    Store(f"sqlite:///{path}").close()
    rows = []
    for i in range(1, 2001):  # 40 agents, 50 succeeded jobs each, the newest last
        at = (T0 + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f")
        rows.append((f"agent{i % 40:02d}", "sim", f"id{i}", "succeeded", at, at, f"ft:m:{i}", "promoted", at))
    # a newer model that its gate rejected is never an agent's model
    rows.append(("agent00", "sim", "idr", "succeeded", rows[-1][4], rows[-1][4], "ft:m:rejected", "rejected", None))
    rows.append(("agent00", "sim", "idx", "failed", rows[-1][4], rows[-1][4], None, None, None))
    with sqlite3.connect(path) as c:
        c.executemany("INSERT INTO jobs (agent, provider, model, training_file, content_hash, hyperparameters, "
                      "identity, replica, state, attempt, created_at, updated_at, fine_tuned_model, promotion, "
                      "promoted_at, cancel_pending) VALUES (?, ?, 'm', 'f', 'h', '{}', ?, 0, ?, 1, ?, ?, ?, ?, ?, 0)",
                      rows)
    return f"sqlite:///{path}"


def traced(reads):
    statements = []
    reads._conn.set_trace_callback(statements.append)
    return statements


def test_models_is_one_query_grouped_by_agent(db):
    reads = Reads(db)
    statements = traced(reads)
    latest = reads.promoted_models()
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1 and "GROUP BY agent" in selects[0]
    assert len(latest) == 40 and latest[0].agent == "agent00" and latest[0].model == "ft:m:2000"
    assert {m.model for m in latest} == {f"ft:m:{i}" for i in range(1961, 2001)}
    assert [m.model for m in reads.promoted_models(Filter(None, ["agent07"]))] == ["ft:m:1967"]
    plan = reads._conn.execute("EXPLAIN QUERY PLAN " + selects[0]).fetchall()
    assert any("ix_jobs_promoted" in str(step) for step in plan), plan
    reads.close()


def test_the_last_finished_jobs_come_from_an_index_and_rows_stream(db):
    reads = Reads(db)
    last = reads.last_finished(Filter(), 5)
    assert [j.id for j in last] == [1998, 1999, 2000, 2001, 2002]
    assert last[-1].state == "failed" and last[0].created_at == T0 + timedelta(seconds=1998)
    assert reads.count(Filter(), states=["succeeded"]) == 2001
    rows = reads.jobs(Filter(agents=["agent01"]))
    assert next(rows).id == 1 and next(rows).id == 41  # a generator: rows come as they are read
    sql = "SELECT id FROM jobs WHERE state = 'succeeded' ORDER BY updated_at DESC, id DESC LIMIT 50"
    assert "ix_jobs_state_updated" in str(reads._conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall())
    reads.close()


def test_an_older_schema_is_migrated_before_it_is_read(db, tmp_path):
    path = db.split(":///", 1)[1]
    with sqlite3.connect(path) as c:
        for index in ("ix_jobs_promoted", "ix_jobs_state_updated", "ix_jobs_cancel_pending", "ix_log_cursors_open",
                      "ix_outbox_owed", "ix_outbox_failing", "ix_jobs_line", "ix_jobs_held", "ix_jobs_tried"):
            c.execute(f"DROP INDEX {index}")
        c.execute("ALTER TABLE log_cursors DROP COLUMN thinned_at")  # 0010
        c.execute("ALTER TABLE evaluations DROP COLUMN compare_provider")  # 0011
        c.execute("DROP TABLE golden_answers")
        c.execute("DROP TABLE rehomes")
        for table, column in (("jobs", "fallbacks"), ("jobs", "fallback_after"), ("provider_state", "paused_since")):
            c.execute(f"ALTER TABLE {table} DROP COLUMN {column}")  # 0012
        c.execute("DROP TABLE deletions")  # 0013
        for column in ("line_code", "line_args"):  # 0014
            c.execute(f"ALTER TABLE provider_state DROP COLUMN {column}")
        for column in ("repeats", "temperature", "max_score_stdev", "max_latency_p95", "safety_file", "safety_hash",
                       "safety_examples", "criteria", "checkpoints", "chosen_model"):  # 0015, 0016
            c.execute(f"ALTER TABLE evaluations DROP COLUMN {column}")
        c.execute("DROP TABLE eval_answers")  # 0015 keys answers by part and repeat too: as 0007 made it
        c.execute("CREATE TABLE eval_answers (id INTEGER NOT NULL PRIMARY KEY, evaluation_id INTEGER NOT NULL "
                  "REFERENCES evaluations (id), example INTEGER NOT NULL, role VARCHAR NOT NULL, answer VARCHAR "
                  "NOT NULL, score FLOAT NOT NULL, at DATETIME NOT NULL, UNIQUE (evaluation_id, example, role))")
        c.execute("CREATE INDEX ix_eval_answers_evaluation_id ON eval_answers (evaluation_id)")
        c.execute("UPDATE alembic_version SET version_num = '0008'")
    reads = open_reads(db)
    assert len(reads.promoted_models()) == 40
    reads.close()
    assert open_reads(f"sqlite:///{tmp_path / 'none.db'}") is None


def test_a_read_imports_neither_sqlalchemy_nor_the_orm(db):
    code = ("import sys\nfrom ftctl.models.reads import open_reads\nr = open_reads(sys.argv[1])\n"
            "assert len(list(r.jobs())) == 2002 and r.promoted_models() and r.daemon_holder() is None\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'sqlmodel', 'pydantic')))")
    p = subprocess.run([sys.executable, "-c", code, db], capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
