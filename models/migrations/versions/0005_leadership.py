"""leadership with an epoch, the daemons that stand by, and the probe hold of a learned limit

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    leadership = op.create_table(
        "leadership",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("holder", sa.String(), nullable=True),
        sa.Column("host", sa.String(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("since", sa.DateTime(), nullable=True),
        sa.Column("renewed_at", sa.DateTime(), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
    )
    op.bulk_insert(leadership, [{"id": 1, "epoch": 0}])
    op.create_table(
        "daemons",
        sa.Column("member", sa.String(), primary_key=True),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
    )
    with op.batch_alter_table("provider_state") as batch:
        batch.add_column(sa.Column("probe_hold", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("provider_state") as batch:
        batch.drop_column("probe_hold")
    op.drop_table("daemons")
    op.drop_table("leadership")
