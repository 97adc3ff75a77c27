"""pipelines: upstream jobs, weighted training files, the promotion of a
succeeded job's model, and the evaluation gate's runs and answers

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("upstream_job_ids", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("model_job_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("base_model", sa.String(), nullable=True))
        batch.add_column(sa.Column("training_files", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("promotion", sa.String(), nullable=True))
        batch.add_column(sa.Column("promoted_at", sa.DateTime(), nullable=True))
        batch.create_index("ix_jobs_promotion", ["promotion"], unique=False)
    # before this revision every succeeded job's model was the agent's model
    jobs = sa.table("jobs", sa.column("state", sa.String), sa.column("promotion", sa.String),
                    sa.column("promoted_at", sa.DateTime), sa.column("updated_at", sa.DateTime))
    op.get_bind().execute(jobs.update().where(jobs.c.state == "succeeded").values(
        promotion="promoted", promoted_at=jobs.c.updated_at))

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False, unique=True),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("file", sa.String(), nullable=False),
        sa.Column("file_hash", sa.String(), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("candidate_model", sa.String(), nullable=False),
        sa.Column("compare_model", sa.String(), nullable=False),
        sa.Column("min_improvement", sa.Float(), nullable=False),
        sa.Column("estimated_cost", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("candidate_score", sa.Float(), nullable=True),
        sa.Column("compare_score", sa.Float(), nullable=True),
        sa.Column("improvement", sa.Float(), nullable=True),
        sa.Column("not_before", sa.DateTime(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("error", sa.String(), nullable=True),
    )
    op.create_table(
        "eval_answers",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("evaluation_id", sa.Integer(), sa.ForeignKey("evaluations.id"), nullable=False),
        sa.Column("example", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("answer", sa.String(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("evaluation_id", "example", "role"),
    )
    op.create_index("ix_eval_answers_evaluation_id", "eval_answers", ["evaluation_id"])


def downgrade() -> None:
    op.drop_index("ix_eval_answers_evaluation_id", table_name="eval_answers")
    op.drop_table("eval_answers")
    op.drop_table("evaluations")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_promotion")
        batch.drop_column("promoted_at")
        batch.drop_column("promotion")
        batch.drop_column("training_files")
        batch.drop_column("base_model")
        batch.drop_column("model_job_id")
        batch.drop_column("upstream_job_ids")
