"""reasons as data, provider pauses by class, slot counts, quote jobs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("reason_code", sa.String(), nullable=True))
        batch.add_column(sa.Column("reason_args", sa.JSON(), nullable=True))
    jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("reason", sa.String),
                    sa.column("reason_code", sa.String), sa.column("reason_args", sa.JSON))
    conn = op.get_bind()
    for job_id, reason in conn.execute(sa.select(jobs.c.id, jobs.c.reason).where(jobs.c.reason.is_not(None))):
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(reason_code="text",
                                                                     reason_args={"text": reason}))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reason")

    with op.batch_alter_table("provider_state") as batch:
        batch.add_column(sa.Column("paused_why", sa.String(), nullable=True))
        batch.add_column(sa.Column("paused_message", sa.String(), nullable=True))
        batch.add_column(sa.Column("slots_used", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("slots_limit", sa.Integer(), nullable=True))
    state = sa.table("provider_state", sa.column("paused_reason", sa.String), sa.column("paused_why", sa.String),
                     sa.column("paused_message", sa.String))
    conn.execute(state.update().where(state.c.paused_reason.is_not(None)).values(
        paused_why="auth", paused_message=state.c.paused_reason))
    with op.batch_alter_table("provider_state") as batch:
        batch.drop_column("paused_reason")

    op.create_table(
        "quote_jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("provider_job_id", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("settled_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_quote_jobs_provider", "quote_jobs", ["provider"])


def downgrade() -> None:
    op.drop_index("ix_quote_jobs_provider", table_name="quote_jobs")
    op.drop_table("quote_jobs")
    with op.batch_alter_table("provider_state") as batch:
        batch.add_column(sa.Column("paused_reason", sa.String(), nullable=True))
        batch.drop_column("slots_limit")
        batch.drop_column("slots_used")
        batch.drop_column("paused_message")
        batch.drop_column("paused_why")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("reason", sa.String(), nullable=True))
        batch.drop_column("reason_args")
        batch.drop_column("reason_code")
