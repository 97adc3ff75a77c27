"""a unique identity among live jobs: concurrent submits cannot store twins

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import hashlib
import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

LIVE = ("prepared", "queued", "running", "succeeded")
_WHERE = sa.text("state IN ('prepared', 'queued', 'running', 'succeeded')")


def _identity(agent, provider, model, content_hash, hyperparameters) -> str:
    # frozen here as it was at this revision (models.tables.job_identity)
    key = json.dumps([agent, provider, model, content_hash, hyperparameters], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode()).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("identity", sa.String(), nullable=False, server_default=""))
        batch.add_column(sa.Column("replica", sa.Integer(), nullable=False, server_default="0"))
    jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("agent", sa.String),
                    sa.column("provider", sa.String), sa.column("model", sa.String),
                    sa.column("content_hash", sa.String), sa.column("hyperparameters", sa.JSON),
                    sa.column("state", sa.String), sa.column("identity", sa.String),
                    sa.column("replica", sa.Integer))
    conn = op.get_bind()
    seen: dict[str, int] = {}
    rows = conn.execute(sa.select(jobs.c.id, jobs.c.agent, jobs.c.provider, jobs.c.model, jobs.c.content_hash,
                                  jobs.c.hyperparameters, jobs.c.state).order_by(jobs.c.id)).all()
    for job_id, agent, provider, model, content_hash, hp, state in rows:
        identity = _identity(agent, provider, model, content_hash, hp or {})
        replica = 0
        if state in LIVE:  # twins stored before this revision keep apart
            replica = seen.get(identity, -1) + 1
            seen[identity] = replica
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(identity=identity, replica=replica))
    op.create_index("ux_jobs_live_identity", "jobs", ["identity", "replica"], unique=True,
                    sqlite_where=_WHERE, postgresql_where=_WHERE)


def downgrade() -> None:
    op.drop_index("ux_jobs_live_identity", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("replica")
        batch.drop_column("identity")
