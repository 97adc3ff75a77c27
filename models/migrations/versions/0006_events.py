"""events: stable event ids, the hooks' outbox, training logs, seen webhooks

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_events") as batch:
        batch.add_column(sa.Column("event_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("name", sa.String(), nullable=True))
    # the history written before this revision gets its ids and names too
    if op.get_bind().dialect.name == "sqlite":
        new_id = "'evt_' || lower(hex(randomblob(16)))"
    else:
        new_id = "'evt_' || md5(random()::text || clock_timestamp()::text || id::text)"
    op.execute(f"UPDATE job_events SET event_id = {new_id}, name = CASE WHEN from_state IS NULL OR "
               f"from_state <> to_state THEN to_state ELSE \"trigger\" END")
    op.create_index("ux_job_events_event_id", "job_events", ["event_id"], unique=True)

    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("next_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("done", sa.JSON(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("gave_up_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_outbox_due", "outbox", ["delivered_at", "next_at"], unique=False)
    op.create_index("ix_outbox_job_id", "outbox", ["job_id"], unique=False)

    op.create_table(
        "log_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("provider_job_id", sa.String(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("message", sa.String(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("fetched_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider_job_id", "key"),
    )
    op.create_index("ix_log_points_job_id", "log_points", ["job_id"], unique=False)

    op.create_table(
        "log_cursors",
        sa.Column("provider_job_id", sa.String(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("provider_job_id"),
    )
    op.create_index("ix_log_cursors_job_id", "log_cursors", ["job_id"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("webhook_id", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("provider", "webhook_id"),
    )
    op.create_index("ix_webhook_deliveries_received_at", "webhook_deliveries", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_received_at", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_log_cursors_job_id", table_name="log_cursors")
    op.drop_table("log_cursors")
    op.drop_index("ix_log_points_job_id", table_name="log_points")
    op.drop_table("log_points")
    op.drop_index("ix_outbox_job_id", table_name="outbox")
    op.drop_index("ix_outbox_due", table_name="outbox")
    op.drop_table("outbox")
    op.drop_index("ux_job_events_event_id", table_name="job_events")
    with op.batch_alter_table("job_events") as batch:
        batch.drop_column("name")
        batch.drop_column("event_id")
