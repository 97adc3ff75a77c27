"""indexes for cost that follows what is live: the last finished jobs, each
agent's latest promoted model, cancels still owed to a provider

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_MODELS = sa.text("state = 'succeeded' AND promotion = 'promoted' AND fine_tuned_model IS NOT NULL")
_CANCEL = sa.text("cancel_pending")


def upgrade() -> None:
    # `status`: the last finished jobs by state; the budget: money spent since a time
    op.create_index("ix_jobs_state_updated", "jobs", ["state", "updated_at"])
    # `models` and [export]: each agent's latest promoted model, grouped in the index alone
    op.create_index("ix_jobs_promoted", "jobs", ["agent", "promoted_at"], sqlite_where=_MODELS,
                    postgresql_where=_MODELS)
    # the tick: finished jobs that still owe the provider a cancel, without a scan
    op.create_index("ix_jobs_cancel_pending", "jobs", ["id"], sqlite_where=_CANCEL, postgresql_where=_CANCEL)


def downgrade() -> None:
    op.drop_index("ix_jobs_cancel_pending", table_name="jobs")
    op.drop_index("ix_jobs_promoted", table_name="jobs")
    op.drop_index("ix_jobs_state_updated", table_name="jobs")
