"""deletions at the providers (`[retention]`): each one's intent, written
before the provider is asked, and how it ended

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_OPEN = sa.text("done_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "deletions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("content_hash", sa.String(), nullable=True),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("fee_per_month", sa.Float(), nullable=False, server_default="0"),
        sa.Column("intent_at", sa.DateTime(), nullable=False),
        sa.Column("done_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
    )
    op.create_index("ix_deletions_job_id", "deletions", ["job_id"])
    op.create_index("ix_deletions_open", "deletions", ["id"], sqlite_where=_OPEN, postgresql_where=_OPEN)


def downgrade() -> None:
    op.drop_index("ix_deletions_open", table_name="deletions")
    op.drop_index("ix_deletions_job_id", table_name="deletions")
    op.drop_table("deletions")
