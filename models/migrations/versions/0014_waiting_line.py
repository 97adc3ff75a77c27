"""the waiting line: each provider's line of waiting jobs read in order only
as far as admission goes, the waiting jobs held for a reason of their own,
and why each provider's line does not move (issue 18.9)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_WAITING = "state = 'prepared'"
# written out (a migration does not follow later code): models.schema's HELD_SQL and TRIED_SQL
_CODES = ("'daemon', 'slot', 'paused', 'unreachable', 'unobserved', 'unknown_provider', 'budget_left', "
          "'budget_cap', 'budget_no_estimate', 'resources', 'resources_short'")
HELD_SQL = f"state = 'prepared' AND COALESCE(reason_code, '') NOT IN ({_CODES})"
TRIED_SQL = "state = 'prepared' AND attempt > 0"


def upgrade() -> None:
    with op.batch_alter_table("provider_state") as batch:
        batch.add_column(sa.Column("line_code", sa.String(), nullable=True))
        batch.add_column(sa.Column("line_args", sa.JSON(), nullable=True))
    op.create_index("ix_jobs_line", "jobs", ["provider", "created_at", "id", "reason_code", "estimated_cost", "state"],
                    sqlite_where=sa.text(_WAITING), postgresql_where=sa.text(_WAITING))
    op.create_index("ix_jobs_held", "jobs", ["id"], sqlite_where=sa.text(HELD_SQL),
                    postgresql_where=sa.text(HELD_SQL))
    op.create_index("ix_jobs_tried", "jobs", ["attempt"], sqlite_where=sa.text(TRIED_SQL),
                    postgresql_where=sa.text(TRIED_SQL))


def downgrade() -> None:
    for name in ("ix_jobs_tried", "ix_jobs_held", "ix_jobs_line"):
        op.drop_index(name, table_name="jobs")
    with op.batch_alter_table("provider_state") as batch:
        batch.drop_column("line_args")
        batch.drop_column("line_code")
