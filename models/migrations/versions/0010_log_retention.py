"""history kept for a while: when a finished job's training log was thinned
(`[history] keep_logs_for`), an index over the logs not thinned yet, and
indexes that count the hooks' owed events without reading their rows

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_OPEN = sa.text("thinned_at IS NULL")
_OWED = sa.text("delivered_at IS NULL")
_FAILING = sa.text("delivered_at IS NULL AND last_error IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("log_cursors") as batch:
        batch.add_column(sa.Column("thinned_at", sa.DateTime(), nullable=True))
    # the daemon's retention pass: only the logs not thinned yet, without a scan
    op.create_index("ix_log_cursors_open", "log_cursors", ["job_id"], sqlite_where=_OPEN, postgresql_where=_OPEN)
    # `status`: events owed to the hooks, counted in the index alone; the last error among them
    op.create_index("ix_outbox_owed", "outbox", ["name", "gave_up_at", "created_at", "delivered_at"],
                    sqlite_where=_OWED, postgresql_where=_OWED)
    op.create_index("ix_outbox_failing", "outbox", ["id"], sqlite_where=_FAILING, postgresql_where=_FAILING)


def downgrade() -> None:
    op.drop_index("ix_outbox_failing", table_name="outbox")
    op.drop_index("ix_outbox_owed", table_name="outbox")
    op.drop_index("ix_log_cursors_open", table_name="log_cursors")
    with op.batch_alter_table("log_cursors") as batch:
        batch.drop_column("thinned_at")
