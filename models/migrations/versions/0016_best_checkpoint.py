"""the gate's checkpoints = "best": the checkpoints an evaluation asks as
candidates beside the final model, and the model its verdict chose

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("checkpoints", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("chosen_model", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("chosen_model")
        batch.drop_column("checkpoints")
