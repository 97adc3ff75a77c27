"""re-homing a promoted model (`ftctl rehome`): the re-home of each job that
trains an agent's promoted spec on another provider, its golden set, and the
provider an evaluation's comparison model answers on

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("compare_provider", sa.String(), nullable=True))
    op.create_table(
        "rehomes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False, unique=True),
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("from_job_id", sa.Integer(), nullable=False),
        sa.Column("from_model", sa.String(), nullable=False),
        sa.Column("from_provider", sa.String(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("min_improvement", sa.Float(), nullable=False),
        sa.Column("golden", sa.Integer(), nullable=True),
        sa.Column("mapping", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_rehomes_agent", "rehomes", ["agent"])
    op.create_table(
        "golden_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("rehome_id", sa.Integer(), sa.ForeignKey("rehomes.id"), nullable=False),
        sa.Column("example", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("expected", sa.String(), nullable=False),
        sa.UniqueConstraint("rehome_id", "example"),
    )
    op.create_index("ix_golden_answers_rehome_id", "golden_answers", ["rehome_id"])


def downgrade() -> None:
    op.drop_index("ix_golden_answers_rehome_id", table_name="golden_answers")
    op.drop_table("golden_answers")
    op.drop_index("ix_rehomes_agent", table_name="rehomes")
    op.drop_table("rehomes")
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("compare_provider")
