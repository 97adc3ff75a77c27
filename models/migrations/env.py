"""Alembic environment: run by models.store with a live connection."""

from alembic import context
from sqlmodel import SQLModel

import ftctl.models.tables  # noqa: F401  (registers the tables on the metadata)

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True,
                  compare_type=True)
context.run_migrations()
