"""fallback providers: the providers a job may still move to (each checked
and priced at submit) and how long a pause lasts before it does; since when
a provider has been paused

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("fallbacks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("fallback_after", sa.Float(), nullable=True))
    with op.batch_alter_table("provider_state") as batch:
        batch.add_column(sa.Column("paused_since", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("provider_state") as batch:
        batch.drop_column("paused_since")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("fallback_after")
        batch.drop_column("fallbacks")
