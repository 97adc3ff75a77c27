"""the gate's criteria: repeats, the score's spread across them, the
candidate's p95 latency and a safety file; each answer keyed by its part
(eval or safety), example, role and repeat, with the seconds it took

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# the unnamed UNIQUE (evaluation_id, example, role) of 0007, as each dialect names it
_OLD = {"postgresql": "eval_answers_evaluation_id_example_role_key"}
_CONVENTION = {"uq": "uq_%(table_name)s_%(column_0_N_name)s"}


def _old_name() -> str:
    return _OLD.get(op.get_bind().dialect.name, "uq_eval_answers_evaluation_id_example_role")


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.add_column(sa.Column("repeats", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("temperature", sa.Float(), nullable=True))
        batch.add_column(sa.Column("max_score_stdev", sa.Float(), nullable=True))
        batch.add_column(sa.Column("max_latency_p95", sa.Float(), nullable=True))
        batch.add_column(sa.Column("safety_file", sa.String(), nullable=True))
        batch.add_column(sa.Column("safety_hash", sa.String(), nullable=True))
        batch.add_column(sa.Column("safety_examples", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("criteria", sa.JSON(), nullable=True))
    old = _old_name()
    # SQLite cannot drop a constraint: the batch copies the table, naming the
    # unnamed one by the convention so that it can be left out
    with op.batch_alter_table("eval_answers", naming_convention=_CONVENTION) as batch:
        batch.add_column(sa.Column("part", sa.String(), nullable=False, server_default="eval"))
        batch.add_column(sa.Column("repeat", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("seconds", sa.Float(), nullable=True))
        batch.drop_constraint(old, type_="unique")
        batch.create_unique_constraint("uq_eval_answers_question", ["evaluation_id", "part", "example", "role",
                                                                    "repeat"])


def downgrade() -> None:
    op.execute("DELETE FROM eval_answers WHERE part <> 'eval' OR repeat <> 0")
    with op.batch_alter_table("eval_answers") as batch:
        batch.drop_constraint("uq_eval_answers_question", type_="unique")
        batch.create_unique_constraint(_old_name(), ["evaluation_id", "example", "role"])
        batch.drop_column("seconds")
        batch.drop_column("repeat")
        batch.drop_column("part")
    with op.batch_alter_table("evaluations") as batch:
        for name in ("criteria", "safety_examples", "safety_hash", "safety_file", "max_latency_p95",
                     "max_score_stdev", "temperature", "repeats"):
            batch.drop_column(name)
